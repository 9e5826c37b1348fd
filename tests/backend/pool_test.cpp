// The session pool: bounded, waits with a deadline, and is safe under many threads.
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::TestDb;

TEST_CASE("the pool never opens more than pool_size sessions and times out waiters", "[backend][threads]") {
  Options options;
  options.pool_size = 2;
  options.pool_wait = std::chrono::milliseconds(200);
  TestDb t(options);
  {
    auto a = t.db().begin({Isolation::read_committed, TxAccess::read_only});
    auto b = t.db().begin({Isolation::read_committed, TxAccess::read_only});
    const auto start = std::chrono::steady_clock::now();
    try {
      t.db().exec("SELECT 1");
      FAIL("a third session was handed out");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::transient);
    }
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(150));
    CHECK(t.db().pool_stats().open == 2);
  }
  CHECK(t.db().exec("SELECT 1").one().i64(0) == 1);
  CHECK(t.db().pool_stats().waits >= 1);
}

TEST_CASE("many threads share a small pool", "[backend][threads]") {
  Options options;
  options.pool_size = 3;
  TestDb t(options);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w)
    threads.emplace_back([&, w] {
      for (std::int64_t i = 0; i < 25; ++i)
        if (t.db().exec("SELECT CAST($1 AS bigint) * 2", {w * 1000 + i}).one().i64(0) == 2 * (w * 1000 + i)) ++good;
    });
  for (auto& th : threads) th.join();
  CHECK(good == 8 * 25);
  const auto stats = t.db().pool_stats();
  CHECK(stats.created <= 3);
  CHECK(stats.open <= 3);
  CHECK(stats.discarded == 0);
}

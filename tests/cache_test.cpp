// The read-through cache: hits, misses, one loader per key across threads and processes,
// stale write-backs refused, transactional invalidation.
#include <atomic>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support.hpp"

using namespace rowguard;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::TestDb;

TEST_CASE("cache: put, get, expiry, binary values and invalidation", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  CHECK_FALSE(cache.get("k"));
  std::string bytes("\0\x01\xff payload \0", 13);
  cache.put("k", bytes, 10s);
  CHECK(cache.get("k") == bytes);
  cache.put("short", "v", 200ms);
  CHECK(cache.get("short") == "v");
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(cache.get("short"));  // expired on the database clock
  cache.invalidate("k");
  CHECK_FALSE(cache.get("k"));
  for (const char* key : {"user:1:name", "user:1:email", "user:2:name"}) cache.put(key, "x", 10s);
  CHECK(cache.invalidate_prefix("user:1:") == 2);
  CHECK_FALSE(cache.get("user:1:name"));
  CHECK(cache.get("user:2:name") == "x");
  const auto s = cache.stats();
  CHECK(s.hits >= 3);
  CHECK(s.misses >= 3);
}

TEST_CASE("cache: 16 threads asking for one cold key run the loader once", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::atomic<int> loads{0};
  std::vector<std::future<std::optional<std::string>>> callers;
  for (int i = 0; i < 16; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      return cache.get_or_load("report:2024", 30s, [&] {
        ++loads;
        std::this_thread::sleep_for(200ms);
        return std::optional<std::string>("the report");
      });
    }));
  for (auto& c : callers) CHECK(c.get() == "the report");
  CHECK(loads == 1);
  CHECK(cache.get("report:2024") == "the report");
}

TEST_CASE("cache: 8 processes asking for one cold key run the loader once", "[backend]") {
  if (!rowguard::test::processes_share_database()) return;
  TestDb t;
  t.db().migrate();
  const auto dir = rowguard::test::scratch_dir();
  const std::string counter = (dir / "loads").string();
  // The loader appends a line per run and takes a while, so concurrent callers would overlap.
  const std::string loader = fmt::format("echo run >> '{}'; sleep 0.3; printf 'value-42'", counter);
  std::vector<std::future<std::pair<int, std::string>>> procs;
  for (int p = 0; p < 8; ++p)
    procs.push_back(std::async(std::launch::async, [&] {
      std::string out;
      const int rc = rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "fetch",
                                              "shared-key", "--ttl", "60s", "--", "sh", "-c", loader},
                                             &out);
      return std::make_pair(rc, out);
    }));
  for (auto& p : procs) {
    const auto [rc, out] = p.get();
    CHECK(rc == 0);
    CHECK(out == "value-42");
  }
  std::ifstream in(counter);
  int runs = 0;
  for (std::string line; std::getline(in, line);) ++runs;
  CHECK(runs == 1);
  // A failing loader command: its exit code passes through and nothing is cached.
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "fetch", "failing",
                                 "--", "sh", "-c", "exit 9"}) == 9);
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "get", "failing"}) == 5);
}

TEST_CASE("cache: a loader that throws releases its waiters with the error and stores nothing", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::atomic<int> loads{0};
  auto failing = [&] {
    ++loads;
    std::this_thread::sleep_for(100ms);
    throw std::runtime_error("upstream down");
    return std::optional<std::string>();
  };
  std::vector<std::future<bool>> callers;
  for (int i = 0; i < 4; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      try {
        cache.get_or_load("flaky", 30s, failing);
      } catch (const std::runtime_error&) {
        return true;
      }
      return false;
    }));
  for (auto& c : callers) CHECK(c.wait_for(10s) == std::future_status::ready);
  for (auto& c : callers) CHECK(c.get());
  CHECK(loads == 1);
  CHECK(cache.stats().load_failures == 1);
  CHECK_FALSE(cache.get("flaky"));
  CHECK(cache.get_or_load("flaky", 30s, [] { return std::optional<std::string>("ok now"); }) == "ok now");
}

TEST_CASE("cache: a loader whose process died frees the key when its lease expires", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  // A loader elsewhere took the key's lease and died without releasing it.
  Locks locks(t.db());
  auto dead = locks.try_acquire("cache:orphan", 500ms);
  REQUIRE(dead);
  dead->detach();
  const auto start = std::chrono::steady_clock::now();
  CHECK(cache.get_or_load("orphan", 30s, [] { return std::optional<std::string>("loaded"); }) == "loaded");
  CHECK(std::chrono::steady_clock::now() - start >= 400ms);
  CHECK(cache.stats().waits == 1);
}

TEST_CASE("cache: a slow loader never writes back a value an invalidation made stale", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::promise<void> loading;
  std::promise<void> invalidated;
  auto slow = std::async(std::launch::async, [&] {
    return cache.get_or_load("balance:alice", 30s, [&] {
      loading.set_value();
      invalidated.get_future().wait();  // a transfer commits while we load the old balance
      return std::optional<std::string>("100");
    });
  });
  loading.get_future().wait();
  cache.invalidate("balance:alice");
  invalidated.set_value();
  CHECK(slow.get() == "100");                // the caller gets what it loaded...
  CHECK_FALSE(cache.get("balance:alice"));   // ...but the stale value was not stored
  CHECK(cache.stats().stale_skipped == 1);
}

TEST_CASE("cache: invalidation inside a transaction commits with it, and not on rollback", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  Ledger ledger(t.db());
  ledger.open("alice", "EUR");
  cache.put("balance:alice", "0", 60s);
  {
    auto tx = t.db().begin();
    tx.exec(fmt::format("UPDATE {}accounts SET min_balance = -1 WHERE id = 'alice'", t.db().table_prefix()));
    cache.invalidate(tx, "balance:alice");
    tx.rollback();
  }
  CHECK(cache.get("balance:alice") == "0");
  {
    auto tx = t.db().begin();
    tx.exec(fmt::format("UPDATE {}accounts SET min_balance = -1 WHERE id = 'alice'", t.db().table_prefix()));
    cache.invalidate(tx, "balance:alice");
    tx.commit();
  }
  CHECK_FALSE(cache.get("balance:alice"));
  CHECK(ledger.get("alice").min_balance == -1);
}

TEST_CASE("cache: absent values are cached only when asked", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  int calls = 0;
  auto absent = [&] {
    ++calls;
    return std::optional<std::string>();
  };
  CHECK_FALSE(cache.get_or_load("nobody", 30s, absent));
  CHECK_FALSE(cache.get_or_load("nobody", 30s, absent));
  CHECK(calls == 2);  // not cached by default
  LoadOptions negative;
  negative.negative_ttl = 30s;
  CHECK_FALSE(cache.get_or_load("ghost", 30s, absent, negative));
  CHECK_FALSE(cache.get_or_load("ghost", 30s, absent, negative));
  CHECK(calls == 3);  // the absence was cached
}

TEST_CASE("cache: sweep deletes long-expired rows in batches", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.sweep_grace = 0ms;
  Cache cache(t.db(), options);
  for (int i = 0; i < 25; ++i) cache.put(fmt::format("old-{}", i), "x", 50ms);
  cache.put("fresh", "y", 60s);
  std::this_thread::sleep_for(150ms);
  CHECK(cache.sweep(10) == 25);
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 1);
  CHECK(cache.get("fresh") == "y");
  CHECK(cache.stats().evictions == 25);
}

TEST_CASE("cache: sweep enforces row and byte bounds, oldest writes first", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.max_rows = 10;
  Cache cache(t.db(), options);
  for (int i = 0; i < 30; ++i) {
    cache.put(fmt::format("k{:02}", i), std::string(100, 'x'), 60s);
    std::this_thread::sleep_for(2ms);  // distinct write times
  }
  CHECK(cache.sweep(7) == 20);
  CHECK(cache.table_stats().rows == 10);
  CHECK_FALSE(cache.get("k00"));  // the oldest went
  CHECK(cache.get("k29"));
  CacheOptions by_bytes;
  by_bytes.max_bytes = 350;
  Cache small(t.db(), by_bytes);
  CHECK(small.sweep() >= 6);
  CHECK(small.table_stats().bytes <= 350);
}

TEST_CASE("cache: bad keys, values and ttls are invalid_argument and write nothing", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.max_value_bytes = 16;
  Cache cache(t.db(), options);
  CHECK(kind_of([&] { cache.put("", "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put(std::string(1025, 'k'), "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("bad\xff", "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("k", std::string(17, 'v'), 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("k", "v", 0ms); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.get_or_load("k", -1ms, [] { return std::optional<std::string>("v"); }); }) ==
        ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.get_or_load("k", 1s, [] { return std::optional<std::string>(std::string(17, 'v')); }); }) ==
        ErrorKind::invalid_argument);
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 0);
  const std::string long_key(1024, 'k');  // the maximum is allowed; its lease name is hashed
  CHECK(cache.get_or_load(long_key, 1s, [] { return std::optional<std::string>("v"); }) == "v");
}

TEST_CASE("cache: stale-while-revalidate serves the old value while another caller refreshes", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.ttl_jitter = 0;
  Cache cache(t.db(), options);
  int loads = 0;
  auto loader = [&] { return std::optional<std::string>(fmt::format("v{}", ++loads)); };
  LoadOptions swr;
  swr.stale_for = 10s;
  CHECK(cache.get_or_load("quote", 100ms, loader, swr) == "v1");
  std::this_thread::sleep_for(200ms);  // expired, within stale_for
  // Someone else is refreshing it (holds the key's loader lease): the stale value comes back at once.
  Locks locks(t.db());
  auto refresher = locks.try_acquire("cache:quote", 10s);
  REQUIRE(refresher);
  CHECK(cache.get_or_load("quote", 100ms, loader, swr) == "v1");
  CHECK(loads == 1);
  CHECK(cache.stats().stale_served == 1);
  refresher->release();
  // Nobody refreshing: this caller refreshes and gets the new value.
  CHECK(cache.get_or_load("quote", 10s, loader, swr) == "v2");
  CHECK(cache.get("quote") == "v2");
  // Without stale_for an expired value is a plain miss.
  cache.put("plain", "old", 50ms);
  std::this_thread::sleep_for(100ms);
  CHECK(cache.get_or_load("plain", 10s, [] { return std::optional<std::string>("new"); }) == "new");
}

TEST_CASE("cache: early refresh (XFetch) reloads a hot key before it expires, one caller at a time", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  int loads = 0;
  auto loader = [&] { return std::optional<std::string>(fmt::format("v{}", ++loads)); };
  LoadOptions xfetch;
  xfetch.early_refresh = true;
  xfetch.beta = 0.0;  // never early
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v1");
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v1");
  CHECK(loads == 1);
  xfetch.beta = 1e12;  // always early: the value is refreshed although it is live
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v2");
  CHECK(cache.stats().early_refreshes == 1);
  CHECK(cache.get("hot") == "v2");
}

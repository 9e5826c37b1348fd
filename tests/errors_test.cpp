// Driver errors map onto rowguard's kinds, proven on real servers and files.
#include <chrono>
#include <future>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support.hpp"

using namespace rowguard;
using rowguard::test::TestDb;

namespace {
Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  FAIL("no rowguard::Error was thrown");
  return Error(ErrorKind::permanent, "unreachable");
}
}  // namespace

TEST_CASE("a unique violation is permanent with SQLSTATE 23505", "[backend]") {
  TestDb t;
  t.db().migrate();
  const std::string insert = fmt::format("INSERT INTO {}fences (resource, last_token, updated_at) VALUES ($1, 1, {})",
                                         t.db().table_prefix(),
                                         t.db().backend().dialect().ms_to_timestamp("0"));
  t.db().exec(insert, {std::string("printer")});
  const Error e = error_of([&] { t.db().exec(insert, {std::string("printer")}); });
  CHECK(e.kind() == ErrorKind::permanent);
  CHECK(e.sqlstate() == "23505");
  CHECK_FALSE(e.retriable());
  CHECK(t.db().exec("SELECT 1").one().i64(0) == 1);  // the session survived
}

TEST_CASE("concurrent writers: the loser gets conflict", "[backend]") {
  Options options;
  options.busy_timeout = std::chrono::milliseconds(200);
  options.pool_size = 2;
  TestDb t(options);
  t.db().migrate();
  const std::string table = t.db().table_prefix() + "fences";
  const auto& d = t.db().backend().dialect();
  t.db().exec(fmt::format("INSERT INTO {} (resource, last_token, updated_at) VALUES ('r', 1, {})", table,
                          d.ms_to_timestamp("0")));
  const std::string bump = fmt::format("UPDATE {} SET last_token = last_token + 1 WHERE resource = 'r'", table);
  auto other = t.another(options);

  if (rowguard::test::is_postgres()) {
    // A serialization failure between two real REPEATABLE READ transactions.
    auto first = t.db().begin({Isolation::repeatable_read, TxAccess::read_write});
    first.exec(fmt::format("SELECT last_token FROM {} WHERE resource = 'r'", table));  // takes the snapshot
    {
      auto second = other->begin({Isolation::repeatable_read, TxAccess::read_write});
      second.exec(bump);
      second.commit();
    }
    const Error e = error_of([&] { first.exec(bump); });
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::conflict);
    CHECK(e.sqlstate() == "40001");
    CHECK(e.retriable());
  } else {
    // SQLITE_BUSY past the busy timeout: the writer's lock is held by another connection.
    auto holder = t.db().begin();
    holder.exec(bump);
    const auto start = std::chrono::steady_clock::now();
    const Error e = error_of([&] {
      auto tx = other->begin();
      tx.exec(bump);
      tx.commit();
    });
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK(e.kind() == ErrorKind::conflict);
    CHECK(waited >= std::chrono::milliseconds(150));  // it waited for the busy timeout first
    holder.commit();
  }
  CHECK(other->exec(fmt::format("SELECT last_token FROM {} WHERE resource = 'r'", table)).one().i64(0) == 2);
}

TEST_CASE("a session killed by pg_terminate_backend is transient and replaced", "[pg][direct]") {
  Options one;
  one.pool_size = 1;
  TestDb t(one);
  auto admin = t.another(Options{});
  const std::int64_t pid = t.db().exec("SELECT CAST(pg_backend_pid() AS bigint)").one().i64(0);
  CHECK(admin->exec("SELECT CAST(count(*) AS bigint) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
                    {pid, std::string("rowguard")})
            .one()
            .i64(0) == 1);
  admin->exec("SELECT 1 FROM (SELECT pg_terminate_backend(CAST($1 AS integer))) AS k", {pid});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const Error e = error_of([&] { t.db().exec("SELECT 1"); });
  CHECK(e.kind() == ErrorKind::transient);
  CHECK(t.db().pool_stats().discarded == 1);
  // The pool opened a new session in its place.
  const std::int64_t new_pid = t.db().exec("SELECT CAST(pg_backend_pid() AS bigint)").one().i64(0);
  CHECK(new_pid != pid);
  CHECK(t.db().pool_stats().created == 2);
}

TEST_CASE("a connection killed mid-statement: a write is in_doubt, a read transient, nothing applied", "[pg][direct]") {
  // The client sees the connection close without the statement's reply, so for a write it cannot
  // know whether the server committed: in_doubt (never retried blindly). A read is just transient.
  Options one;
  one.pool_size = 1;
  TestDb t(one);
  t.db().migrate();
  auto admin = t.another(Options{});
  const std::string table = t.db().table_prefix() + "fences";
  const std::string write = fmt::format(
      "INSERT INTO {} (resource, last_token, updated_at) SELECT 'x', 1, clock_timestamp() FROM pg_sleep(2)", table);
  const std::string read = "SELECT CAST(1 AS bigint) FROM pg_sleep(2)";
  auto kill_during = [&](const std::string& sql) {
    const std::int64_t pid = t.db().exec("SELECT CAST(pg_backend_pid() AS bigint)").one().i64(0);
    auto killer = std::async(std::launch::async, [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      admin->exec("SELECT 1 FROM (SELECT pg_terminate_backend(CAST($1 AS integer))) AS k", {pid});
    });
    const Error e = error_of([&] { t.db().exec(sql); });
    killer.get();
    return e;
  };
  const Error w = kill_during(write);
  INFO(w.what());
  CHECK(w.kind() == ErrorKind::in_doubt);
  CHECK_FALSE(w.retriable());
  const Error r = kill_during(read);
  INFO(r.what());
  CHECK(r.kind() == ErrorKind::transient);
  CHECK(t.db().pool_stats().discarded == 2);
  CHECK(t.db().exec(fmt::format("SELECT count(*) FROM {}", table)).one().i64(0) == 0);  // the write was rolled back
}

TEST_CASE("PostgreSQL sessions carry application_name and cache prepared statements", "[pg]") {
  Options named;
  named.application_name = "payments-api";
  named.pool_size = 1;
  TestDb t(named);
  CHECK(t.db().exec("SELECT current_setting('application_name')").one().text(0) == "payments-api");
  const std::string marker = "SELECT CAST($1 AS bigint) + 1 AS rowguard_cache_marker";
  for (std::int64_t i = 0; i < 5; ++i) CHECK(t.db().exec(marker, {i}).one().i64(0) == i + 1);
  if (rowguard::test::backend() == "postgres")
    CHECK(t.db().exec("SELECT CAST(count(*) AS bigint) FROM pg_prepared_statements "
                      "WHERE statement LIKE '%rowguard_cache_marker%' AND statement NOT LIKE '%pg_prepared%'")
              .one()
              .i64(0) == 1);
}

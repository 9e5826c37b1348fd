// Database::transact and rowguard::with_retries: the retry loop the ledger uses, around a service's
// own transactions.
#include <atomic>
#include <future>
#include <latch>
#include <stdexcept>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/support.hpp"

using namespace rowguard;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::TestDb;

namespace {
// A versioned row, as a service keeps one for optimistic updates: (id 1, value 0, version 0).
std::string create_counter(Database& db) {
  const std::string table = db.table_prefix() + "counter";
  db.exec(
      fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, value bigint NOT NULL, version bigint NOT NULL)", table));
  db.exec(fmt::format("INSERT INTO {} (id, value, version) VALUES (1, 0, 0)", table));
  return table;
}

// Adds n to the row unless its version moved since it was read (Error(conflict) then); returns the
// version it wrote.
std::int64_t add_checked(Transaction& tx, const std::string& table, std::int64_t n) {
  const Result read = tx.exec(fmt::format("SELECT version FROM {} WHERE id = 1", table));
  const std::int64_t version = read.one().i64(0);
  const Result written = tx.exec(
      fmt::format("UPDATE {} SET value = value + $1, version = version + 1 WHERE id = 1 AND version = $2", table),
      {n, version});
  if (written.affected == 0) throw Error(ErrorKind::conflict, "the row's version moved since it was read");
  return version + 1;
}

std::pair<std::int64_t, std::int64_t> value_and_version(Database& db, const std::string& table) {
  const Result r = db.exec(fmt::format("SELECT value, version FROM {} WHERE id = 1", table));
  return {r.one().i64(0), r.one().i64(1)};
}

double conflicts_retried() { return metrics().value("rowguard_retries_total", {{"kind", "conflict"}}); }
}  // namespace

TEST_CASE("transact: fn runs once, its transaction commits and its result is returned", "[backend]") {
  TestDb t;
  const std::string table = create_counter(t.db());
  int calls = 0;
  const std::int64_t version = t.db().transact({}, [&](Transaction& tx) {
    ++calls;
    return add_checked(tx, table, 5);
  });
  CHECK(calls == 1);
  CHECK(version == 1);
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{5, 1});
  // A fn that returns nothing, and one that ends the transaction itself: nothing more is committed.
  t.db().transact({}, [&](Transaction& tx) { add_checked(tx, table, 1); });
  t.db().transact({}, [&](Transaction& tx) {
    add_checked(tx, table, 100);
    tx.rollback();
  });
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{6, 2});
}

TEST_CASE("transact: a thread whose version-checked update meets another thread's is retried, and nothing is lost",
          "[backend][threads]") {
  // The first thread holds its update open for a while. On PostgreSQL the second reads the old
  // version, its UPDATE waits for the first to commit and then matches no row (fn throws
  // conflict); on SQLite its BEGIN IMMEDIATE meets the first's write lock past the busy timeout
  // (conflict). Either way transact runs it again, after the first committed.
  Options options;
  options.busy_timeout = 100ms;
  TestDb t(options);
  const std::string table = create_counter(t.db());
  const double retried_before = conflicts_retried();
  std::latch first_wrote(1);
  std::atomic<int> first_calls{0};
  auto first = std::async(std::launch::async, [&] {
    return t.db().transact({}, [&](Transaction& tx) {
      ++first_calls;
      const std::int64_t v = add_checked(tx, table, 1);
      if (first_calls == 1) first_wrote.count_down();
      std::this_thread::sleep_for(400ms);  // holds the row (PostgreSQL), the write lock (SQLite)
      return v;
    });
  });
  first_wrote.wait();
  int second_calls = 0;
  const std::int64_t second = t.db().transact({}, [&](Transaction& tx) {
    ++second_calls;
    return add_checked(tx, table, 10);
  });
  CHECK(first.get() == 1);
  CHECK(first_calls == 1);
  CHECK(second == 2);  // it wrote after the first
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{11, 2});
  CHECK(conflicts_retried() >= retried_before + 1);
  CHECK(second_calls <= RetryPolicy{}.attempts);
  if (rowguard::test::can().row_locks) CHECK(second_calls >= 2);  // fn itself found the version moved
}

TEST_CASE("transact: four threads adding to one versioned row under contention lose no update", "[backend][threads]") {
  TestDb t;
  const std::string table = create_counter(t.db());
  RetryPolicy patient;
  patient.attempts = 1000;
  patient.deadline = 60s;
  std::atomic<int> calls{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) try {
          t.db().transact(patient, [&](Transaction& tx) {
            ++calls;
            add_checked(tx, table, 1);
          });
        } catch (const Error&) {
          ++failures;
        }
    });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{40, 40});
  CHECK(calls >= 40);
}

TEST_CASE("transact: a permanent error is not retried and what fn wrote is rolled back", "[backend]") {
  TestDb t;
  const std::string table = create_counter(t.db());
  int calls = 0;
  std::string message;
  const ErrorKind kind = kind_of(
      [&] {
        t.db().transact({}, [&](Transaction& tx) {
          ++calls;
          add_checked(tx, table, 7);
          tx.exec(fmt::format("INSERT INTO {} (id, value, version) VALUES (1, 0, 0)", table));  // a duplicate key
        });
      },
      &message);
  INFO(message);
  CHECK(kind == ErrorKind::permanent);
  CHECK(calls == 1);
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{0, 0});
}

TEST_CASE("transact: an exception fn throws rolls back and goes through untouched, without a retry", "[backend]") {
  TestDb t;
  const std::string table = create_counter(t.db());
  int calls = 0;
  CHECK_THROWS_AS(t.db().transact({},
                                  [&](Transaction& tx) {
                                    ++calls;
                                    add_checked(tx, table, 7);
                                    throw std::runtime_error("the service gave up");
                                  }),
                  std::runtime_error);
  CHECK(calls == 1);
  // Error(in_doubt) from inside fn (an operation whose outcome was lost) is never retried blindly.
  CHECK(kind_of([&] {
          t.db().transact({}, [&](Transaction& tx) {
            ++calls;
            add_checked(tx, table, 7);
            throw Error(ErrorKind::in_doubt, "a call's outcome was lost");
          });
        }) == ErrorKind::in_doubt);
  CHECK(calls == 2);
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{0, 0});
  // The session went back to the pool after each rollback.
  CHECK(t.db().pool_stats().idle == t.db().pool_stats().open);
}

TEST_CASE("transact: a COMMIT whose connection dies is in_doubt, surfaces, and fn does not run again",
          "[pg][direct][threads]") {
  // A deferred constraint trigger makes COMMIT take 2 s inside the server; the session is killed
  // meanwhile. The client cannot know whether the server committed: in_doubt, never retried.
  TestDb t;
  t.db().migrate();
  const std::string prefix = t.db().table_prefix();
  const std::string table = create_counter(t.db());
  (*rowguard::test::backend_of(t.db()).borrow())
      ->exec_script(fmt::format("CREATE FUNCTION {0}slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                                "PERFORM pg_sleep(2); RETURN NULL; END $$;"
                                "CREATE CONSTRAINT TRIGGER {0}slow_commit AFTER UPDATE ON {1} DEFERRABLE INITIALLY "
                                "DEFERRED FOR EACH ROW EXECUTE FUNCTION {0}slow_commit()",
                                prefix, table));
  auto admin = t.another(Options{});
  std::promise<std::int64_t> pid;
  auto killer = std::async(std::launch::async, [&] {
    auto victim = pid.get_future();
    if (victim.wait_for(30s) != std::future_status::ready) return;  // fn never ran: the CHECKs below say so
    std::this_thread::sleep_for(500ms);                             // fn has returned: COMMIT is running the trigger
    admin->exec("SELECT 1 FROM (SELECT pg_terminate_backend(CAST($1 AS integer))) AS k", {victim.get()});
  });
  int calls = 0;
  std::string message;
  const ErrorKind kind = kind_of(
      [&] {
        t.db().transact({}, [&](Transaction& tx) {
          if (++calls == 1) pid.set_value(tx.exec("SELECT CAST(pg_backend_pid() AS bigint)").one().i64(0));
          add_checked(tx, table, 1);
        });
      },
      &message);
  killer.get();
  INFO(message);
  CHECK(kind == ErrorKind::in_doubt);
  CHECK(calls == 1);
  CHECK(value_and_version(t.db(), table) == std::pair<std::int64_t, std::int64_t>{0, 0});  // killed before it committed
}

TEST_CASE("with_retries: retries conflicts and transient failures up to the policy, never in_doubt or others",
          "[unit]") {
  RetryPolicy quick;
  quick.attempts = 3;
  quick.initial_backoff = 0ms;
  quick.max_backoff = 1ms;
  int calls = 0;
  CHECK(with_retries(quick, [&] {
          if (++calls < 3) throw Error(calls == 1 ? ErrorKind::conflict : ErrorKind::transient, "try again");
          return calls;
        }) == 3);
  calls = 0;
  CHECK(kind_of([&] {
          with_retries(quick, [&] {
            ++calls;
            throw Error(ErrorKind::conflict, "always");
          });
        }) == ErrorKind::conflict);
  CHECK(calls == 3);  // the policy's attempts, then the last error
  for (ErrorKind kind : {ErrorKind::in_doubt, ErrorKind::permanent, ErrorKind::lock_lost}) {
    calls = 0;
    CHECK(kind_of([&] {
            with_retries(quick, [&] {
              ++calls;
              throw Error(kind, "no retry");
            });
          }) == kind);
    CHECK(calls == 1);
  }
  calls = 0;
  CHECK_THROWS_AS(with_retries(quick,
                               [&] {
                                 ++calls;
                                 throw std::logic_error("not a rowguard::Error");
                               }),
                  std::logic_error);
  CHECK(calls == 1);
  RetryPolicy bad;
  bad.attempts = 0;
  calls = 0;
  CHECK(kind_of([&] { with_retries(bad, [&] { ++calls; }); }) == ErrorKind::invalid_argument);
  CHECK(calls == 0);
  // The deadline bounds the attempts too.
  RetryPolicy short_deadline;
  short_deadline.attempts = 1'000'000;
  short_deadline.initial_backoff = 5ms;
  short_deadline.max_backoff = 5ms;
  short_deadline.deadline = 50ms;
  calls = 0;
  const auto started = std::chrono::steady_clock::now();
  CHECK(kind_of([&] {
          with_retries(short_deadline, [&] {
            ++calls;
            throw Error(ErrorKind::conflict, "always");
          });
        }) == ErrorKind::conflict);
  CHECK(std::chrono::steady_clock::now() - started < 2s);
  CHECK(calls < 1000);
}

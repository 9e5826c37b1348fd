// Driver errors map onto rowguard's kinds, proven on real servers and files.
#include <chrono>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include "rowguard/config.hpp"
#if ROWGUARD_HAVE_SOCI
#include <soci/soci.h>
#include <soci/sqlite3/soci-sqlite3.h>
#endif
#if ROWGUARD_HAVE_SOCI
// SOCI's header includes sqlite3.h inside namespace sqlite_api, so a second include adds nothing.
using namespace sqlite_api;
#else
#include <sqlite3.h>
#endif

#include <catch2/catch.hpp>
#include <fmt/format.h>

#if ROWGUARD_HAVE_SOCI
#include "rowguard/soci.hpp"
#endif
#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::backend_of;
using rowguard::test::dialect_of;
using rowguard::test::TestDb;
using namespace std::chrono_literals;

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
                                         t.db().table_prefix(), dialect_of(t.db()).ms_to_timestamp("0"));
  t.db().exec(insert, {std::string("printer")});
  const Error e = error_of([&] { t.db().exec(insert, {std::string("printer")}); });
  CHECK(e.kind() == ErrorKind::permanent);
  CHECK(e.sqlstate() == "23505");
  CHECK_FALSE(e.retriable());
  CHECK(t.db().exec("SELECT 1").one().i64(0) == 1);  // the session survived
}

TEST_CASE("concurrent writers: the loser gets conflict", "[backend][threads]") {
  Options options;
  options.busy_timeout = std::chrono::milliseconds(200);
  options.pool_size = 2;
  TestDb t(options);
  t.db().migrate();
  const std::string table = t.db().table_prefix() + "fences";
  const auto& d = dialect_of(t.db());
  t.db().exec(fmt::format("INSERT INTO {} (resource, last_token, updated_at) VALUES ('r', 1, {})", table,
                          d.ms_to_timestamp("0")));
  const std::string bump = fmt::format("UPDATE {} SET last_token = last_token + 1 WHERE resource = 'r'", table);
  auto other = t.another(options);

  if (rowguard::test::can().serialization_failures) {
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

TEST_CASE("a session killed by pg_terminate_backend is transient and replaced", "[pg][direct][threads]") {
  Options one;
  one.pool_size = 1;
  TestDb t(one);
  auto admin = t.another(Options{});
  const std::int64_t pid = t.db().exec("SELECT CAST(pg_backend_pid() AS bigint)").one().i64(0);
  CHECK(admin
            ->exec("SELECT CAST(count(*) AS bigint) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
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

TEST_CASE("a connection killed mid-statement: a write is in_doubt, a read transient, nothing applied",
          "[pg][direct][threads]") {
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

TEST_CASE("a transfer whose connection dies inside the server-side function is in doubt and replayed by its key",
          "[pg][direct][threads]") {
  // The call of rowguard_apply_transfer is a SELECT that writes: a lost reply must count as in
  // doubt (retried only because the key makes it safe), never as a read that is merely transient.
  Options one;
  one.pool_size = 1;
  TestDb t(one);
  t.db().migrate();
  Ledger ledger(t.db());
  ledger.open("doubt-a", "EUR");
  ledger.open("doubt-b", "EUR");
  ledger.deposit("doubt-a", 1000, "doubt-seed");
  auto admin = t.another(Options{});
  const auto retried = [](const char* kind) { return metrics().value("rowguard_retries_total", {{"kind", kind}}); };
  const double in_doubt_before = retried("in_doubt");
  // The admin holds the source's row, so the function waits inside the server until it is killed.
  Transaction holder = admin->begin();
  holder.exec(fmt::format("SELECT 1 FROM {}accounts WHERE id = 'doubt-a' FOR UPDATE", t.db().table_prefix()));
  auto transfer = std::async(std::launch::async, [&] { return ledger.transfer("doubt-a", "doubt-b", 300, "doubt-1"); });
  std::int64_t killed = 0;
  for (int i = 0; i < 250 && killed == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    killed = admin
                 ->exec(
                     "SELECT CAST(count(pg_terminate_backend(pid)) AS bigint) FROM pg_stat_activity "
                     "WHERE query LIKE '%apply_transfer%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
                 .one()
                 .i64(0);
  }
  if (killed != 1) {
    for (const auto& row : admin
                               ->exec("SELECT COALESCE(wait_event_type, '-') || ' ' || query FROM pg_stat_activity "
                                      "WHERE pid <> pg_backend_pid() AND datname = current_database()")
                               .rows)
      UNSCOPED_INFO(row.text(0));
  }
  REQUIRE(killed == 1);
  holder.rollback();
  const TransferResult r = transfer.get();
  CHECK(r.ok());
  CHECK(retried("in_doubt") == in_doubt_before + 1);
  CHECK(ledger.get("doubt-a").balance == 700);  // applied once
  CHECK(ledger.get("doubt-b").balance == 300);
  CHECK(ledger.check().ok());
}

TEST_CASE("PostgreSQL sessions carry application_name and cache prepared statements", "[pg]") {
  Options named;
  named.application_name = "payments-api";
  named.pool_size = 1;
  TestDb t(named);
  CHECK(t.db().exec("SELECT current_setting('application_name')").one().text(0) == "payments-api");
  const std::string marker = "SELECT CAST($1 AS bigint) + 1 AS rowguard_cache_marker";
  for (std::int64_t i = 0; i < 5; ++i) CHECK(t.db().exec(marker, {i}).one().i64(0) == i + 1);
  if (rowguard::test::can().named_prepared_statements)
    CHECK(t.db()
              .exec("SELECT CAST(count(*) AS bigint) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%rowguard_cache_marker%' AND statement NOT LIKE '%pg_prepared%'")
              .one()
              .i64(0) == 1);
}

namespace {
// Issue 21, defect 15: a COMMIT the database refuses with a conflict while `block` holds, on db
// (whose pool hands the refused transaction's session to the next caller). The caller is told
// conflict, nothing of the refused transaction is visible or commits later, and once `release`
// ran the retry commits once.
void refused_commit_leaves_nothing(Database& db, const std::string& table, const std::function<void()>& block,
                                   const std::function<void()>& release) {
  const std::string insert = fmt::format("INSERT INTO {} (id, n) VALUES ($1, $2)", table);
  auto rows = [&](std::int64_t id) {
    return db.exec(fmt::format("SELECT count(*) FROM {} WHERE id = $1", table), {id}).one().i64(0);
  };
  block();
  {
    auto tx = db.begin();
    tx.exec(insert, {std::int64_t{1}, std::int64_t{1}});
    bool hook_ran = false;
    tx.on_commit([&] { hook_ran = true; });
    const Error e = error_of([&] { tx.commit(); });
    INFO(e.what());
    CHECK(e.kind() == ErrorKind::conflict);
    CHECK_FALSE(hook_ran);
  }
  CHECK(rows(1) == 0);  // the session is back in the pool with nothing of it pending
  release();
  {
    // The caller's retry (in a payment service, perhaps under a new key) commits, once.
    auto tx = db.begin();
    tx.exec(insert, {std::int64_t{2}, std::int64_t{2}});
    tx.commit();
  }
  db.exec(insert, {std::int64_t{3}, std::int64_t{3}});  // later work on the same session
  CHECK(rows(1) == 0);
  CHECK(rows(2) == 1);
  CHECK(rows(3) == 1);
}

// A reader holding a read transaction (and so SQLite's SHARED lock) on the file at path: another
// connection, through SQLite's own C API.
struct SqliteReader {
  sqlite3* db = nullptr;
  std::string table;
  SqliteReader(const std::string& path, std::string t) : table(std::move(t)) {
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  }
  ~SqliteReader() { sqlite3_close(db); }
  SqliteReader(const SqliteReader&) = delete;
  SqliteReader& operator=(const SqliteReader&) = delete;
  void hold() {
    REQUIRE(sqlite3_exec(db, ("BEGIN; SELECT count(*) FROM " + table).c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  void release() { REQUIRE(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK); }
};
}  // namespace

TEST_CASE(
    "a COMMIT refused as busy (SQLite) or for a conflict (PostgreSQL) leaves no transaction open: nothing of "
    "it commits later, and the retry commits",
    "[backend]") {
  Options options;
  options.busy_timeout = 100ms;
  // One session, so the retry runs where the refused transaction ran; in memory the reader is the
  // pool's second session.
  options.pool_size = rowguard::test::can().shared_database ? 1 : 2;
  TestDb t(options);
  const std::string prefix = t.db().table_prefix();
  const std::string table = prefix + "busy_commit";
  t.db().exec(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, n bigint)", table));
  if (rowguard::test::can().serialization_failures) {
    // A deferred constraint trigger refuses COMMIT with a serialization failure while the gate has a row.
    (*backend_of(t.db()).borrow())
        ->exec_script(
            fmt::format("CREATE TABLE {0}commit_gate (x bigint);"
                        "CREATE FUNCTION {0}refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF EXISTS (SELECT 1 FROM {0}commit_gate) THEN "
                        "RAISE EXCEPTION 'commit refused by the test gate' USING ERRCODE = '40001'; END IF; "
                        "RETURN NULL; END $$;"
                        "CREATE CONSTRAINT TRIGGER {0}refuse_commit AFTER INSERT ON {1} DEFERRABLE INITIALLY DEFERRED "
                        "FOR EACH ROW EXECUTE FUNCTION {0}refuse_commit()",
                        prefix, table));
    refused_commit_leaves_nothing(
        t.db(), table, [&] { t.db().exec(fmt::format("INSERT INTO {}commit_gate VALUES (1)", prefix)); },
        [&] { t.db().exec(fmt::format("DELETE FROM {}commit_gate", prefix)); });
    return;
  }
  // SQLite in a rollback-journal mode: a writer's COMMIT needs the EXCLUSIVE lock, which a reader's
  // SHARED lock keeps from it (in WAL, rowguard's own mode, readers never block a commit).
  if (!rowguard::test::can().shared_database) {
    std::optional<Transaction> reader;
    refused_commit_leaves_nothing(
        t.db(), table,
        [&] {
          reader.emplace(t.db().begin({Isolation::read_committed, TxAccess::read_only}));
          reader->exec(fmt::format("SELECT count(*) FROM {}", table));
        },
        [&] { reader->rollback(); });
  } else {
    REQUIRE(t.db().exec("PRAGMA journal_mode = DELETE").one().text(0) == "delete");  // the only session
    SqliteReader reader(t.url().substr(t.url().find(':') + 1), table);
    refused_commit_leaves_nothing(
        t.db(), table, [&] { reader.hold(); }, [&] { reader.release(); });
  }
#if ROWGUARD_HAVE_SOCI
  // As reported: the service's own soci::session on a DELETE-journal file, handed in.
  const std::string path = (rowguard::test::scratch_dir() / "service.db").string();
  soci::session service(soci::sqlite3, "db=" + path);
  service << "PRAGMA journal_mode = DELETE";
  auto db = from_soci(service, options);
  db.exec(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, n bigint)", table));
  SqliteReader reader(path, table);
  refused_commit_leaves_nothing(
      db, table, [&] { reader.hold(); }, [&] { reader.release(); });
#endif
}

TEST_CASE("a PostgreSQL session never reports COMMIT of a transaction the server aborted as done", "[pg]") {
  // Below Transaction (which refuses such a commit itself): rowguard's own code that drives a
  // session directly gets the same error, not PostgreSQL's silent ROLLBACK.
  TestDb t;
  auto lease = backend_of(t.db()).borrow();
  auto& session = **lease;
  const std::string failing = "SELECT CAST(1 AS bigint) / CAST(0 AS bigint)";  // 22012
  session.begin(TxOptions{});
  CHECK(rowguard::test::kind_of([&] { session.exec(failing, {}); }) == ErrorKind::permanent);
  const Error e = error_of([&] { session.commit(); });
  INFO(e.what());
  CHECK(e.kind() == ErrorKind::permanent);
  CHECK(e.sqlstate() == "25P02");
  CHECK_FALSE(session.in_transaction());
  CHECK_FALSE(session.broken());
  // Rolled back to a savepoint taken before the failure, the transaction is whole again.
  session.begin(TxOptions{});
  session.exec("SAVEPOINT before_failure", {});
  CHECK(rowguard::test::kind_of([&] { session.exec(failing, {}); }) == ErrorKind::permanent);
  session.exec("ROLLBACK TO SAVEPOINT before_failure", {});
  CHECK(session.exec("SELECT CAST(7 AS bigint)", {}).one().i64(0) == 7);
  session.commit();
  CHECK(session.exec("SELECT CAST(8 AS bigint)", {}).one().i64(0) == 8);
}

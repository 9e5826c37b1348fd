#pragma once
// Test support: the backend under test, fresh isolated databases, and running the CLI.

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rowguard/rowguard.hpp"

#include "backend/backend.hpp"

#include "core/database_gate.hpp"

// The CLI the tests run (tests/CMakeLists.txt); empty in a build without it (ROWGUARD_BUILD_TOOLS=OFF),
// which registers no test tagged [cli].
#ifndef ROWGUARD_CLI
#define ROWGUARD_CLI ""
#endif

namespace rowguard::test {

// Whether this build has the CLI (tests that only may use it, such as the interleavings' CLI
// maintenance, leave it out without).
inline bool has_cli() { return !std::string_view(ROWGUARD_CLI).empty(); }

// White-box tests reach a Database's backend through the gate rowguard's own components use
// (src/core/database_gate.hpp): to borrow a session, or to write SQL through the dialect.
inline detail::Backend& backend_of(const Database& db) { return detail::DatabaseGate::backend(db); }
inline const detail::Dialect& dialect_of(const Database& db) { return backend_of(db).dialect(); }

bool set_backend(const std::string& name);
// "sqlite-file", "sqlite-memory", "postgres", "soci-sqlite3" or "soci-postgresql".
const std::string& backend();

// What the backend under test can do. Tests ask these instead of testing the backend's name (as
// SOCI's tests/test-context.h does); the one table in support.cpp says which backend has what.
struct Capabilities {
  // Another process or a second Database can open the test's database (false for sqlite-memory,
  // private to one Database).
  bool shared_database = true;
  // The engine is a server the tests share, whose tables outlive the test (PostgreSQL): each test
  // gets a table prefix of its own.
  bool shared_server = false;
  // Times are timestamptz columns (PostgreSQL); false: integer milliseconds (SQLite).
  bool timestamptz = false;
  // Blob columns are bytea (PostgreSQL); false: BLOB (SQLite).
  bool bytea = false;
  // A row lock held by an open transaction stops another session's write to that row only
  // (PostgreSQL); false: a write transaction excludes every other writer (SQLite).
  bool row_locks = false;
  // LISTEN/NOTIFY wakes waiters in other processes (PostgreSQL); false: they poll.
  bool notify = false;
  // REPEATABLE READ transactions fail with serialization failures, and constraint triggers can be
  // deferred to COMMIT (PostgreSQL).
  bool serialization_failures = false;
  // Streaming standbys to read from, and partitioned ledger tables (PostgreSQL).
  bool standbys = false;
  bool partitioning = false;
  // A session keeps named prepared statements visible in pg_prepared_statements (libpqxx directly,
  // not through SOCI nor a transaction pooler).
  bool named_prepared_statements = false;
  // The connection goes through a transaction-pooling PgBouncer: a test that kills server sessions
  // needs a database (pool) of its own.
  bool transaction_pooler = false;
  // The driver reads a column declared INTEGER into 32 bits (SOCI's SQLite backend): rowguard
  // refuses such a column rather than truncate it.
  bool narrows_integer_columns = false;
};
const Capabilities& can();
// Tests that start other processes on the test's database are tagged [shared-db], which
// sqlite-memory does not register (tests/CMakeLists.txt): its database is private to one Database.
// run_cli and start_cli_holding fail the test there, so an untagged one shows up.

// The throwaway server's URL from $ROWGUARD_TEST_PG (scripts/pg-throwaway.sh sets it). Fails the
// test, never skips it, when unset.
std::string pg_url();
std::string pgbouncer_url();  // ROWGUARD_TEST_PGBOUNCER

// url (the test server's, rowguard_test) naming database `name` instead, which is created on the
// server first if needed. Behind PgBouncer a database of its own is a pool of its own: tests that
// kill server sessions use one, so that no other test's client meets a killed server connection.
std::string own_database(const std::string& url, const std::string& name);

// A libpq URI of the test servers (postgresql://user@host:port/dbname?key=value&..., soci+ in
// front kept as soci+postgresql:) as a libpq keyword/value string, with `extra` appended.
std::string keyword_form(const std::string& url, const std::string& extra = "");

// A new scratch directory under the system temp dir, removed at exit.
std::filesystem::path scratch_dir();

// A fresh database for one test: its own SQLite file, or its own table prefix on PostgreSQL.
class TestDb {
 public:
  // route: rewrites the backend's URL (e.g. to go through the fault proxy).
  explicit TestDb(Options options = {}, const std::function<std::string(const std::string&)>& route = {});
  Database& db() { return *primary_; }
  // Another Database on the same data (for memory: the same object, since nothing else can see it).
  std::shared_ptr<Database> another(Options options);
  std::shared_ptr<Database> another() { return another(options_); }
  const std::string& url() const { return url_; }
  const Options& options() const { return options_; }
  // An engine-specific column type for tests that create their own tables.
  std::string blob_type() const;

 private:
  std::string url_;
  Options options_;
  std::shared_ptr<Database> primary_;
};

// The kind of the rowguard::Error f throws (its message into *message); fails the test when f
// throws nothing.
ErrorKind kind_of(const std::function<void()>& f, std::string* message = nullptr);

// Rows in one of rowguard's tables ("locks", "cache", ...) under db's prefix.
std::int64_t rows_in(Database& db, const char* table);

// While it lives, every UPDATE of one of rowguard's tables ("locks", ...) under db's prefix fails
// with a server error (a trigger): a release that reaches the database and is refused, on every
// engine. Dropped with the object.
class RefusedUpdates {
 public:
  RefusedUpdates(Database& db, const std::string& table);
  ~RefusedUpdates();
  RefusedUpdates(const RefusedUpdates&) = delete;
  RefusedUpdates& operator=(const RefusedUpdates&) = delete;

 private:
  Database& db_;
  std::string table_;
};

// Runs command through /bin/sh, its standard output into *output; returns its exit code (128+N
// when signal N ended it). No Catch2 assertion inside: safe from worker threads.
int run_command(const std::string& command, std::string* output);

// Runs the rowguard CLI with args (each shell-quoted), returns its exit code and its stdout (and
// stderr after it with with_stderr).
int run_cli(const std::vector<std::string>& args, std::string* out = nullptr, bool with_stderr = false);

// Runs every call on a thread of its own, all released at once by a start barrier, while `gate` (an
// open transaction holding a lock that each call needs: on SQLite any write transaction, on
// PostgreSQL a row lock) keeps them from finishing. The gate is rolled back once every thread has
// begun its call and has had a moment to reach the database, so the calls then race for real.
// Returns how many calls had returned before the gate opened: 0 means they were all in flight
// together (they overlapped). Calls must catch their own errors and use no Catch2 assertion.
int race_through_gate(Transaction gate, const std::vector<std::function<void()>>& calls);

// Each call reuses an idempotency key with one field of the request, or the operation itself,
// changed: every one must be idempotency_mismatch naming what differs ("<field> differs") and write
// nothing (the journal, the holds and every balance and held amount stay as they were), and
// ledger.check() must stay clean. field is the word the message names.
void require_mismatches(Database& db, Ledger& ledger,
                        const std::vector<std::pair<std::string, std::function<void()>>>& calls);

// Starts the rowguard CLI on t's database (--db, --prefix, then args) in a child process and waits
// until the lock named held is held; returns the child's pid. FAILs when it never is.
int start_cli_holding(TestDb& t, const std::vector<std::string>& args, const std::string& held);

}  // namespace rowguard::test

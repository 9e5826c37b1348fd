#pragma once
// rowguard::Database: a thread-safe, pooled handle on one SQL database, opened from a URL.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "rowguard/error.hpp"
#include "rowguard/retry.hpp"
#include "rowguard/transaction.hpp"
#include "rowguard/value.hpp"

namespace rowguard {

namespace detail {
class Backend;
struct DatabaseGate;  // src/core/database_gate.hpp: how rowguard's own components reach the backend
}  // namespace detail

// How a Database is opened. Every field has a default; open() validates them all.
struct Options {
  // Most sessions open at once; an operation waits for a free one. Default: 8. REQUIRES: >= 1.
  std::size_t pool_size = 8;
  // How long an operation waits for a free session before Error(transient). Default: 30s.
  std::chrono::milliseconds pool_wait{30'000};
  // Shown in pg_stat_activity on PostgreSQL, unless the URL sets application_name. Default: "rowguard".
  std::string application_name = "rowguard";
  // Prefix of every rowguard table. Default: "rowguard_". REQUIRES: [a-z_][a-z0-9_]*, at most 40 bytes.
  std::string table_prefix = "rowguard_";
  // SQLite: how long a writer waits for the file's write lock before Error(conflict). Default: 5s.
  std::chrono::milliseconds busy_timeout{5'000};
  // SQLite (sqlite: and soci+sqlite3:): whether open() creates a database file that does not exist
  // yet. With false, open() of a missing file throws Error(not_found) naming it and creates
  // nothing, so a mistyped path never leaves an empty database behind (the rowguard CLI opens
  // with false for every command but migrate). A file: URI is not checked beforehand: SQLite
  // itself then refuses to create it. Default: true.
  bool create_if_missing = true;
  // PostgreSQL: how long a connection attempt may take. Default: 10s. REQUIRES: >= 1s.
  std::chrono::seconds connect_timeout{10};
  // PostgreSQL: how long a session waits on a network that stopped answering (nothing
  // acknowledged, no reply to TCP keepalives: a partition, a dead host) before it fails as broken,
  // instead of the operating system's many minutes. Sets libpq's keepalives and tcp_user_timeout,
  // unless the URL sets them. A busy server is not affected: its TCP stack still answers. 0 leaves
  // the operating system's defaults. Default: 30s. REQUIRES: 0 or 2s..1h.
  std::chrono::seconds network_timeout{30};
};

// Statistics of the session pool, for dashboards and tests.
struct PoolStats {
  std::size_t open = 0;         // sessions currently open (idle + borrowed)
  std::size_t idle = 0;         // sessions waiting in the pool
  std::uint64_t created = 0;    // sessions opened since the Database was opened
  std::uint64_t discarded = 0;  // broken sessions dropped instead of being returned
  std::uint64_t waits = 0;      // borrows that had to wait for a free session
};

// Thread-safety: a Database is safe for concurrent use from many threads without external
// synchronisation; each call borrows a pooled session for its duration. Move-only.
//
// Example:
//   auto db = rowguard::Database::open("sqlite:payments.db");
//   db.migrate();
//   auto now = db.now_ms();
class Database {
 public:
  // Opens a database from a URL:
  //   sqlite:PATH              a SQLite file (WAL, busy timeout, foreign keys on)
  //   sqlite::memory:          one in-memory SQLite database shared by every session of this Database
  //   postgresql://...         PostgreSQL through libpqxx (postgres:// and libpq keyword strings too)
  //   soci+sqlite3:PATH        SQLite through SOCI
  //   soci+postgresql://...    PostgreSQL through SOCI
  // Opens one session at once, so a wrong path or an unreachable server fails here.
  // Throws Error(invalid_argument) for a malformed URL or option, Error(transient) when the server
  // cannot be reached. Messages never contain the URL's secrets (password, sslpassword; see
  // docs/backend.md).
  static Database open(std::string_view url, const Options& options = {});

  Database(Database&&) noexcept;
  Database& operator=(Database&&) noexcept;
  ~Database();

  // "sqlite", "postgres", "soci+sqlite3" or "soci+postgresql".
  std::string_view backend_name() const noexcept;
  // The URL with every secret (password, sslpassword) replaced by "***", in every URL form: safe to log.
  const std::string& display_url() const noexcept;
  const std::string& table_prefix() const noexcept;
  const Options& options() const noexcept;

  // Applies the missing schema migrations, one transaction per step; safe to run concurrently from
  // several processes. Returns the number of steps applied. Error(schema_mismatch) when the
  // database is newer than this library.
  int migrate();
  // The schema version recorded in the database; 0 when rowguard was never migrated there.
  int schema_version();
  // The schema version this library was built with.
  static int library_schema_version() noexcept;
  // Error(schema_mismatch) naming both numbers unless the database is at library_schema_version().
  void require_schema();

  // The database clock, in milliseconds since the Unix epoch. Leases and TTLs use only this clock.
  std::int64_t now_ms();

  // Runs one statement in autocommit mode. SQL uses $1, $2, ... placeholders on every backend;
  // values are always bound, never spliced into the text.
  Result exec(std::string_view sql, const std::vector<Value>& params = {});

  // Starts a transaction on a pooled session; it rolls back unless committed.
  Transaction begin(TxOptions options = {});

  // Runs fn(tx) in a transaction of its own and commits it; on a conflict (a serialization
  // failure, a deadlock, SQLite busy past the busy timeout, or an Error(conflict) fn throws, e.g.
  // when a version-checked UPDATE matched no row) or a transient failure, rolls back and runs it all
  // again in a new transaction, by the rules and under the policy the ledger uses (with_retries,
  // rowguard/retry.hpp). Returns what fn returns.
  //   REQUIRES fn: it may run more than once, so it has no effect outside tx (no message sent, no
  //   call to another service, no write through another transaction, Database or Ledger) and keeps
  //   no state from an earlier run; it throws to give up (transact rolls back). It may commit or
  //   roll back tx itself: transact then commits nothing more.
  // Errors: the last conflict or transient failure when the policy ran out; Error(in_doubt) when
  // COMMIT's outcome was lost: never retried, since the transaction may have committed (make its
  // writes idempotent, e.g. keyed, before retrying it yourself); whatever else fn throws, at once,
  // after the rollback. Thread-safety: as begin(); fn runs on the calling thread.
  //   const std::int64_t version = db.transact({}, [&](rowguard::Transaction& tx) {
  //     const std::int64_t v = tx.exec("SELECT version FROM orders WHERE id = $1", {id}).one().i64(0);
  //     if (tx.exec("UPDATE orders SET state = 'paid', version = version + 1 WHERE id = $1 AND version = $2",
  //                 {id, v}).affected == 0)
  //       throw rowguard::Error(rowguard::ErrorKind::conflict, "order changed meanwhile");
  //     return v + 1;
  //   });
  template <class Fn>
  auto transact(const RetryPolicy& policy, Fn&& fn) -> std::invoke_result_t<Fn&, Transaction&> {
    return transact(policy, TxOptions{}, fn);
  }
  // The same, with the transaction's isolation and access mode.
  template <class Fn>
  auto transact(const RetryPolicy& policy, TxOptions options, Fn&& fn) -> std::invoke_result_t<Fn&, Transaction&>;

  PoolStats pool_stats() const;

 private:
  friend struct detail::DatabaseGate;
  explicit Database(std::shared_ptr<detail::Backend> backend);

  std::shared_ptr<detail::Backend> backend_;
};

template <class Fn>
auto Database::transact(const RetryPolicy& policy, TxOptions options, Fn&& fn)
    -> std::invoke_result_t<Fn&, Transaction&> {
  using R = std::invoke_result_t<Fn&, Transaction&>;
  // Conflicts and transient failures only: an in-doubt COMMIT may have committed.
  return detail::with_retries(
      policy, detail::RetryIn::conflicts,
      [&]() -> R {
        Transaction tx = begin(options);  // an exception from here on rolls it back as it unwinds
        if constexpr (std::is_void_v<R>) {
          fn(tx);
          if (tx.active()) tx.commit();
        } else {
          R result = fn(tx);
          if (tx.active()) tx.commit();
          return result;
        }
      },
      [](const Error&) noexcept {});
}

}  // namespace rowguard

#pragma once
// The narrow interface every backend implements: sessions that run bound statements, a dialect
// that holds the SQL which differs between engines, and a bounded pool. No driver header here.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/error.hpp"
#include "rowguard/transaction.hpp"
#include "rowguard/value.hpp"

namespace rowguard::detail {

// The SQL text that differs between engines. Features never branch on the backend; they ask this.
// Thread-safety: immutable, shared by all sessions.
class Dialect {
 public:
  virtual ~Dialect() = default;
  // "sqlite" or "postgres": also the folder of the schema scripts.
  virtual std::string_view name() const noexcept = 0;
  // An expression for the database clock in integer milliseconds since the epoch. On PostgreSQL it
  // reads clock_timestamp(), never now() (the transaction's start time).
  virtual std::string now_ms() const = 0;
  // An expression turning integer milliseconds into the engine's timestamp column type
  // (timestamptz on PostgreSQL, integer milliseconds on SQLite), and back.
  virtual std::string ms_to_timestamp(std::string_view ms_expr) const = 0;
  virtual std::string timestamp_to_ms(std::string_view ts_expr) const = 0;
  // The database clock as the engine's timestamp column type (clock_timestamp() on PostgreSQL).
  virtual std::string now_timestamp() const = 0;
  // A timestamp expression plus a bound number of milliseconds.
  virtual std::string timestamp_plus_ms(std::string_view ts_expr, std::string_view ms_param) const = 0;
  // Appended to a SELECT that must hold the rows it read until commit against updates by others
  // (" FOR SHARE" on PostgreSQL; "" on SQLite, where a write transaction already excludes writers).
  virtual std::string share_lock() const { return {}; }
  // Appended to a SELECT that locks the rows it reads for update (" FOR NO KEY UPDATE" on
  // PostgreSQL; "" on SQLite). Empty means the engine has no row locks (and so no NOWAIT).
  virtual std::string for_update() const { return {}; }
  // A condition for an UPDATE's WHERE that bounds how long the statement waits for a row lock
  // held by another transaction to ms_param milliseconds, then fails it with 55P03 (conflict).
  // PostgreSQL sets lock_timeout for the statement's own transaction only, so it also works behind
  // a transaction pooler. "" where the engine bounds the wait itself (SQLite: the busy timeout).
  virtual std::string lock_wait_limit(std::string_view /*ms_param*/) const { return {}; }
  // Whether the schema holds rowguard's server-side statements (PostgreSQL, schema steps 008 and 009):
  // functions, called as SELECT * FROM <prefix>name(...), whose inner statements the server plans
  // once per session, also for a client behind a transaction pooler.
  virtual bool has_server_statements() const noexcept { return false; }
  // The value for a new row's id in an INSERT ... VALUES list: DEFAULT (bigserial) on PostgreSQL,
  // MAX(id) + 1 on SQLite, where every write transaction holds the database's write lock.
  virtual std::string next_id(std::string_view table) const = 0;
  // Whether a write transaction holds the database's one write lock from its first statement
  // (SQLite's BEGIN IMMEDIATE): nothing it reads can change before it commits, and next_id() read
  // by an earlier SELECT of it is still free at its INSERT. False where writers lock rows
  // (PostgreSQL, whose next_id() is only known inside the INSERT).
  virtual bool has_single_writer() const noexcept { return false; }
  // Whether the engine has LISTEN/NOTIFY (pg_notify(channel, payload)).
  virtual bool has_notify() const noexcept { return false; }
  // How a bound Blob parameter enters SQL, and how a blob column leaves it (read it with Row::bytes).
  virtual std::string blob_param(std::string_view param) const { return std::string(param); }
  virtual std::string blob_column(std::string_view expr) const { return std::string(expr); }
  // The statement that opens a transaction.
  virtual std::string begin(const TxOptions& options) const = 0;
  // One row, one integer column: 1 when the table named $1 exists (in the search path), else 0.
  virtual std::string table_exists() const = 0;
  // A statement that takes an exclusive lock named by the text $1 until the transaction ends, or "" where the engine
  // needs none because its writers are serialised anyway (SQLite takes its write lock before a writing statement reads
  // anything). Run it as a transaction's first statement: on PostgreSQL a READ COMMITTED statement's snapshot is taken
  // before it starts, so only the statements after the lock see what earlier holders committed.
  virtual std::string transaction_lock() const { return {}; }
  // One row, one bigint column: an upper bound, in ms, on how far behind its primary the data of
  // this server is, NULL when it is no streaming standby; "" where the engine has no standbys to
  // read from (SQLite). Standby reads (StandbyReads) need it on both sides.
  virtual std::string standby_staleness() const { return {}; }
  // Whether the engine has prepared transactions (PREPARE TRANSACTION, COMMIT / ROLLBACK PREPARED)
  // for two-phase commit. PostgreSQL does (with max_prepared_transactions > 0); SQLite does not.
  virtual bool has_prepared_transactions() const noexcept { return false; }
};

// Error(permanent, SQLSTATE 25P02) for a COMMIT that the server answered by rolling back, since a
// statement in the transaction had failed: nothing of it committed.
Error failed_commit(std::string_view backend_name);

// Error(invalid_argument) unless gid is a usable global transaction id: 1 to 200 bytes (PostgreSQL's
// limit) of [A-Za-z0-9:_-]. PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED take the id
// as a literal, never as a bound parameter, so it is spliced into the text: this check is what
// makes that safe (no quote, backslash or space can get in).
void check_gid(std::string_view gid);
// Error(invalid_argument, SQLSTATE 0A000) naming the backend when its engine has no prepared transactions.
void require_prepared_transactions(const Dialect& dialect, std::string_view what);

// One connection. Thread-safety: none; a session is used by one thread at a time (the pool's job).
class Session {
 public:
  virtual ~Session() = default;
  virtual const Dialect& dialect() const noexcept = 0;
  // Runs one statement written with $1, $2, ... placeholders; prepared once per session and cached.
  virtual Result exec(std::string_view sql, const std::vector<Value>& params) = 0;
  // Runs a script of several statements with no parameters (the schema migrations).
  virtual void exec_script(const std::string& script) = 0;
  virtual void begin(const TxOptions& options);
  // Ends the transaction whatever happens: when COMMIT fails and the engine kept the transaction
  // open (SQLite after SQLITE_BUSY or a deferred constraint), it is rolled back, so nothing of it
  // can commit later with another COMMIT on this session; a session that cannot is broken.
  void commit();
  virtual void rollback();
  // Two-phase commit, phase one: PREPARE TRANSACTION 'gid' ends the open transaction, which stays
  // on the server, locks and all, under gid until finish_prepared(). After a lost connection its
  // outcome is in doubt (Error(in_doubt)): the transaction may be prepared.
  void prepare(std::string_view gid);
  // Phase two, outside any transaction, on any session of the same database: COMMIT PREPARED or
  // ROLLBACK PREPARED. Returns false when no prepared transaction has that gid (already finished,
  // or never prepared). Error(conflict, 55000) while another session is finishing it or it is still
  // being prepared.
  bool finish_prepared(std::string_view gid, bool commit);

  bool in_transaction() const noexcept { return in_transaction_; }
  // A broken session is dropped by the pool instead of being reused.
  bool broken() const noexcept { return broken_; }

 protected:
  // Sends COMMIT. A backend that can tell that the server rolled the transaction back instead
  // (PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK) throws failed_commit().
  virtual void send_commit() { exec("COMMIT", {}); }
  // Whether the engine still has a transaction open on this connection (after a failed COMMIT).
  virtual bool transaction_open() const noexcept { return false; }

  bool in_transaction_ = false;
  // The open transaction was begun READ ONLY: a write in it (25006) is the caller's mistake, not a
  // server that turned into a standby.
  bool read_only_transaction_ = false;
  bool broken_ = false;
};

using SessionFactory = std::function<std::unique_ptr<Session>()>;

// Receives notifications on one dedicated direct connection (PostgreSQL LISTEN).
// Thread-safety: used by one thread.
class Listener {
 public:
  virtual ~Listener() = default;
  // Waits up to timeout for a notification; returns its payload, or nothing on timeout.
  // Error(transient) when the connection broke: notifications may have been missed.
  virtual std::optional<std::string> wait(std::chrono::milliseconds timeout) = 0;
};
// Opens a listener on a channel (a validated identifier); empty when the backend has none
// (SQLite, and connections handed in by the service, which rowguard cannot reopen).
using ListenerFactory = std::function<std::unique_ptr<Listener>(const std::string& channel)>;

class Pool;

// A session borrowed from the pool; returns it on destruction (rolling back an open transaction),
// or drops it when broken. Thread-safety: one thread at a time.
class SessionLease {
 public:
  SessionLease(Pool& pool, std::unique_ptr<Session> session);
  SessionLease(const SessionLease&) = delete;
  SessionLease& operator=(const SessionLease&) = delete;
  ~SessionLease();
  Session& operator*() const noexcept { return *session_; }
  Session* operator->() const noexcept { return session_.get(); }
  // Keeps the pool's owner alive while the session is out: a Transaction may outlive the Database
  // object it began on (the backend is shared), and must still return its session to a live pool.
  void keep_owner(std::shared_ptr<const void> owner) noexcept { owner_ = std::move(owner); }

 private:
  Pool& pool_;
  std::unique_ptr<Session> session_;
  std::shared_ptr<const void> owner_;  // destroyed after ~SessionLease has given the session back
};

// A bounded pool of sessions, opened lazily. Thread-safety: all members are safe to call concurrently.
class Pool {
 public:
  Pool(SessionFactory factory, std::size_t max_sessions, std::chrono::milliseconds wait);
  ~Pool();
  // Waits up to the pool's wait time for a free session; Error(transient) when none frees up.
  std::unique_ptr<SessionLease> borrow();
  PoolStats stats() const;

 private:
  friend class SessionLease;
  void give_back(std::unique_ptr<Session> session) noexcept;

  SessionFactory factory_;
  const std::size_t max_;
  const std::chrono::milliseconds wait_;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Session>> idle_;
  PoolStats stats_;
};

// What a Database holds: identity, options, dialect and pool. Thread-safety: safe for concurrent use.
class Backend : public std::enable_shared_from_this<Backend> {
 public:
  Backend(std::string name, std::string display_url, Options options, std::shared_ptr<const Dialect> dialect,
          SessionFactory factory);
  const std::string& name() const noexcept { return name_; }
  const std::string& display_url() const noexcept { return display_url_; }
  const Options& options() const noexcept { return options_; }
  const Dialect& dialect() const noexcept { return *dialect_; }
  // Table name with the configured prefix: table("locks") == "rowguard_locks".
  std::string table(std::string_view base) const { return options_.table_prefix + std::string(base); }
  // A call of one of the schema's server-side functions (Dialect::has_server_statements) with its
  // parameters bound as $1..$n: function_call("lock_renew", 5) ==
  // "/* rowguard writes */ SELECT * FROM rowguard_lock_renew($1, $2, $3, $4, $5)" (writes_marker: a lost
  // reply leaves it in doubt). The function name is prefixed as a table is.
  std::string function_call(std::string_view function, std::size_t params) const;
  std::unique_ptr<SessionLease> borrow() {
    auto lease = pool_.borrow();
    lease->keep_owner(weak_from_this().lock());
    return lease;
  }
  PoolStats stats() const { return pool_.stats(); }
  // Keeps something alive as long as the backend (the anchor connection of an in-memory database).
  void keep_alive(std::shared_ptr<void> anchor) { anchor_ = std::move(anchor); }
  void set_listener_factory(ListenerFactory factory) { listener_factory_ = std::move(factory); }
  const ListenerFactory& listener_factory() const noexcept { return listener_factory_; }

 private:
  std::string name_;
  std::string display_url_;
  Options options_;
  std::shared_ptr<const Dialect> dialect_;
  std::shared_ptr<void> anchor_;
  ListenerFactory listener_factory_;
  Pool pool_;
};

// Validates options shared by every backend; Error(invalid_argument) naming the bad field.
void validate_options(const Options& options);

}  // namespace rowguard::detail

#pragma once
// rowguard::Transaction: an RAII transaction on one pooled session.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "rowguard/value.hpp"

namespace rowguard {

namespace detail {
class SessionLease;
struct DatabaseGate;  // src/core/database_gate.hpp: begins transactions for rowguard's own components
}  // namespace detail

enum class Isolation { read_committed, repeatable_read, serializable };

// Whether a transaction will write. SQLite begins write transactions IMMEDIATE (it takes the
// write lock up front instead of failing at the first write); PostgreSQL adds READ ONLY.
enum class TxAccess { read_write, read_only };

struct TxOptions {
  // Default: read_committed. SQLite always runs serializable.
  Isolation isolation = Isolation::read_committed;
  // Default: read_write.
  TxAccess access = TxAccess::read_write;
};

// Thread-safety: a Transaction belongs to one thread at a time and must not be shared.
// It is move-only; destruction rolls back an uncommitted transaction and never throws.
//
// A statement that fails (exec() throws, whatever the reason) spoils the transaction on every
// backend alike: commit() then rolls it back and throws, as PostgreSQL, which aborts such a
// transaction, would (SQLite would commit the statements around the failed one). To go on after
// a failure, roll back to a savepoint taken before it:
//   tx.exec("SAVEPOINT item");
//   try { tx.exec(...); } catch (const rowguard::Error&) { tx.exec("ROLLBACK TO SAVEPOINT item"); }
//   tx.exec("RELEASE SAVEPOINT item");
//
// Example:
//   auto tx = db.begin();
//   tx.exec("UPDATE orders SET state = $1 WHERE id = $2", {std::string("paid"), order_id});
//   tx.commit();
class Transaction {
 public:
  Transaction(Transaction&&) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();

  // Runs one statement inside the transaction ($1, $2, ... placeholders, bound values). When it
  // throws, the transaction is spoilt (see above) until a ROLLBACK TO SAVEPOINT run here undoes
  // the failure (SAVEPOINT, ROLLBACK TO and RELEASE run through exec() are followed).
  Result exec(std::string_view sql, const std::vector<Value>& params = {});
  // Error(permanent, SQLSTATE 25P02) when a statement in the transaction failed and was not rolled
  // back to a savepoint: nothing of the transaction commits (it is rolled back) and the on_commit
  // hooks do not run. Error(conflict) when the database refused the COMMIT for a conflict (SQLite
  // busy past the busy timeout, PostgreSQL serialization failure): rolled back too, on every
  // backend, so nothing of it can commit later. Error(in_doubt) when the connection broke while
  // COMMIT was in flight.
  void commit();
  void rollback() noexcept;
  // Two-phase commit, phase one (PostgreSQL): PREPARE TRANSACTION under gid. The transaction ends
  // here but stays on the server, holding its locks, until COMMIT PREPARED or ROLLBACK PREPARED
  // from any session of the database (rowguard::TwoPhase does both, and its recover()). gid must be
  // 1 to 200 characters of [A-Za-z0-9:_-]: PREPARE TRANSACTION takes no bind parameters, so the
  // id is written into the statement as a literal and is validated strictly instead.
  // Error(invalid_argument, SQLSTATE 0A000) on SQLite, which has no prepared transactions;
  // Error(in_doubt) when the connection broke during PREPARE (it may be prepared); Error(permanent,
  // 25P02) as commit() when a statement in it failed. The on_commit hooks run here, since the
  // transaction may now commit from elsewhere.
  void prepare(std::string_view gid);
  bool active() const noexcept { return session_ != nullptr; }

  // Runs f after COMMIT succeeds, and also when its outcome is lost (Error(in_doubt)), since the
  // change may have committed; never after a rollback. For dropping in-process copies of what the
  // transaction changed (the cache's in-process tier uses it). f must not throw.
  void on_commit(std::function<void()> f);

 private:
  friend struct detail::DatabaseGate;
  explicit Transaction(std::unique_ptr<detail::SessionLease> session, TxOptions options);

  void run_commit_hooks() noexcept;
  // Error(permanent, 25P02) after rolling back, when a failed statement spoils the transaction.
  void refuse_if_failed(std::string_view what);

  std::unique_ptr<detail::SessionLease> session_;
  std::vector<std::function<void()>> on_commit_;
  std::vector<std::string> savepoints_;  // open savepoints set through exec(), oldest first
  bool failed_ = false;                  // a failed statement not rolled back to a savepoint
  std::size_t failed_depth_ = 0;         // savepoints open when it failed (the outermost such failure)
  std::string failure_;                  // the first such failure's message
};

}  // namespace rowguard

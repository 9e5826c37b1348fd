#pragma once
// rowguard::Transaction: an RAII transaction on one pooled session.

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "rowguard/value.hpp"

namespace rowguard {

namespace detail {
class SessionLease;
}

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
// Example:
//   auto tx = db.begin();
//   tx.exec("UPDATE orders SET state = $1 WHERE id = $2", {std::string("paid"), order_id});
//   tx.commit();
class Transaction {
 public:
  explicit Transaction(std::unique_ptr<detail::SessionLease> session, TxOptions options);
  Transaction(Transaction&&) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();

  // Runs one statement inside the transaction ($1, $2, ... placeholders, bound values).
  Result exec(std::string_view sql, const std::vector<Value>& params = {});
  // Error(in_doubt) when the connection broke while COMMIT was in flight.
  void commit();
  void rollback() noexcept;
  // Two-phase commit, phase one (PostgreSQL): PREPARE TRANSACTION under gid. The transaction ends
  // here but stays on the server, holding its locks, until COMMIT PREPARED or ROLLBACK PREPARED
  // from any session of the database (rowguard::TwoPhase does both, and its recover()). gid must be
  // 1 to 200 characters of [A-Za-z0-9:_-]: PREPARE TRANSACTION takes no bind parameters, so the
  // id is written into the statement as a literal and is validated strictly instead.
  // Error(invalid_argument, SQLSTATE 0A000) on SQLite, which has no prepared transactions;
  // Error(in_doubt) when the connection broke during PREPARE (it may be prepared). The on_commit
  // hooks run here, since the transaction may now commit from elsewhere.
  void prepare(std::string_view gid);
  bool active() const noexcept { return session_ != nullptr; }

  // Runs f after COMMIT succeeds, and also when its outcome is lost (Error(in_doubt)), since the
  // change may have committed; never after a rollback. For dropping in-process copies of what the
  // transaction changed (the cache's in-process tier uses it). f must not throw.
  void on_commit(std::function<void()> f);

  // For rowguard's own components: the borrowed session.
  detail::SessionLease& session();

 private:
  void run_commit_hooks() noexcept;

  std::unique_ptr<detail::SessionLease> session_;
  std::vector<std::function<void()>> on_commit_;
};

}  // namespace rowguard

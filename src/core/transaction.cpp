#include "backend/backend.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

Transaction::Transaction(std::unique_ptr<detail::SessionLease> session, TxOptions options)
    : session_(std::move(session)) {
  (*session_)->begin(options);
}

Transaction::Transaction(Transaction&& other) noexcept = default;

Transaction::~Transaction() { rollback(); }

Result Transaction::exec(std::string_view sql, const std::vector<Value>& params) {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  return (*session_)->exec(sql, params);
}

void Transaction::commit() {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  auto session = std::move(session_);  // returned to the pool whatever COMMIT does
  (*session)->commit();
}

void Transaction::rollback() noexcept {
  if (!session_) return;
  auto session = std::move(session_);
  try {
    (*session)->rollback();
  } catch (...) {
    // Best effort: a session whose ROLLBACK failed is broken and the pool drops it.
  }
}

detail::SessionLease& Transaction::session() {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  return *session_;
}

}  // namespace rowguard

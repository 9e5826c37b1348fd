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
  try {
    (*session)->commit();
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::in_doubt) run_commit_hooks();
    throw;
  }
  run_commit_hooks();
}

void Transaction::prepare(std::string_view gid) {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  detail::require_prepared_transactions((*session_)->dialect(), "Transaction::prepare");
  detail::check_gid(gid);
  auto session = std::move(session_);  // returned to the pool: the prepared transaction no longer needs it
  try {
    (*session)->prepare(gid);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::in_doubt) run_commit_hooks();
    throw;
  }
  run_commit_hooks();
}

void Transaction::on_commit(std::function<void()> f) {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  on_commit_.push_back(std::move(f));
}

void Transaction::run_commit_hooks() noexcept {
  auto hooks = std::move(on_commit_);
  for (auto& hook : hooks) hook();
}

void Transaction::rollback() noexcept {
  if (!session_) return;
  auto session = std::move(session_);
  on_commit_.clear();
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

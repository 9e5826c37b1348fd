#include "rowguard/transaction.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "base/sql_text.hpp"

#include "backend/backend.hpp"

namespace rowguard {

Transaction::Transaction(std::unique_ptr<detail::SessionLease> session, TxOptions options)
    : session_(std::move(session)) {
  (*session_)->begin(options);
}

Transaction::Transaction(Transaction&& other) noexcept = default;

Transaction::~Transaction() { rollback(); }

Result Transaction::exec(std::string_view sql, const std::vector<Value>& params) {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  const detail::SavepointStatement savepoint = detail::savepoint_statement(sql);
  auto note_failure = [&](std::string_view message) {
    if (!failed_ || savepoints_.size() < failed_depth_) failed_depth_ = savepoints_.size();
    if (!failed_) failure_ = message;
    failed_ = true;
  };
  Result result;
  try {
    result = (*session_)->exec(sql, params);
  } catch (const std::exception& e) {
    note_failure(e.what());
    throw;
  } catch (...) {
    note_failure("an exception that is not a std::exception");
    throw;
  }
  if (savepoint.op == detail::SavepointOp::set) {
    savepoints_.push_back(savepoint.name);
  } else if (savepoint.op != detail::SavepointOp::none) {
    // The latest savepoint of that name (the database's rule when names repeat); one set some
    // other way, unknown here, changes nothing.
    const auto named = std::find(savepoints_.rbegin(), savepoints_.rend(), savepoint.name);
    if (named != savepoints_.rend()) {
      const auto index = static_cast<std::size_t>(named.base() - savepoints_.begin()) - 1;
      if (savepoint.op == detail::SavepointOp::rollback_to) {
        savepoints_.resize(index + 1);                          // the savepoint itself stays
        if (failed_ && index < failed_depth_) failed_ = false;  // it was taken before the failure
      } else {
        savepoints_.resize(index);
        failed_depth_ = std::min(failed_depth_, index);  // a failure inside it now belongs to the level outside
      }
    }
  }
  return result;
}

void Transaction::refuse_if_failed(std::string_view what) {
  if (!failed_) return;
  const std::string failure = failure_;
  rollback();
  throw Error(ErrorKind::permanent,
              fmt::format("{} refused: a statement in this transaction failed ({}); the transaction was rolled back "
                          "and nothing of it committed (roll back to a savepoint taken before a statement that may "
                          "fail to go on after it)",
                          what, failure),
              "25P02");
}

void Transaction::commit() {
  if (!session_) throw Error(ErrorKind::invalid_argument, "transaction is already committed or rolled back");
  refuse_if_failed("commit");
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
  refuse_if_failed("prepare");
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

}  // namespace rowguard

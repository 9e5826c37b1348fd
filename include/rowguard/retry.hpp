#pragma once
// rowguard::RetryPolicy and rowguard::with_retries: how often and how long an operation retries a
// conflict, and the one retry loop of the library (the ledger, sagas, two-phase transfers and
// Database::transact all run in it).

#include <chrono>
#include <type_traits>

#include "rowguard/error.hpp"

namespace rowguard {

// Exponential backoff with full jitter (sleep a random time in [0, min(max_backoff, initial * 2^n)])
// under an overall deadline. Default: 20 attempts, 1ms doubling to 100ms, at most 10s in all.
struct RetryPolicy {
  int attempts = 20;                             // REQUIRES: >= 1
  std::chrono::milliseconds initial_backoff{1};  // REQUIRES: >= 0
  std::chrono::milliseconds max_backoff{100};    // REQUIRES: >= initial_backoff
  std::chrono::milliseconds deadline{10'000};    // REQUIRES: > 0
};

namespace detail {

// Error(invalid_argument) unless the policy meets its REQUIRES.
void validate(const RetryPolicy& policy);

// Which failures an operation may retry. Conflicts and transient failures never committed
// anything. An in-doubt outcome is retried only by operations that carry an idempotency key,
// whose retry finds the first attempt's record instead of applying twice.
enum class RetryIn { conflicts, conflicts_and_in_doubt };

// The attempts, deadline and backoff of one run of the retry loop, kept out of line so that the
// loop below stays small and the metrics and the log stay private. Thread-safety: one per run.
class RetryBudget {
 public:
  // Error(invalid_argument) for a policy that does not meet its REQUIRES.
  RetryBudget(const RetryPolicy& policy, RetryIn what);
  // Whether the attempt that failed with e may run again: e is retriable under `what` and the
  // policy has attempts and time left. Counts the retry (rowguard_retries_total), or logs the
  // retriable error given up on (rowguard_retries_exhausted_total).
  bool retry_after(const Error& e);
  // Sleeps the backoff before the next attempt: a random time up to the current backoff (full
  // jitter), which then doubles up to max_backoff.
  void pause();

 private:
  RetryPolicy policy_;
  RetryIn what_;
  std::chrono::steady_clock::time_point deadline_;
  std::chrono::milliseconds backoff_;
  int attempt_ = 1;
};

// Calls op() until it returns, or throws an error that is not retriable, or the policy runs out;
// then the last error is rethrown (a conflict keeps its kind, so the CLI exits 6). Exceptions that
// are not a rowguard::Error go through at once. on_retry(error) is called before each retry.
template <class Op, class OnRetry>
auto with_retries(const RetryPolicy& policy, RetryIn what, Op&& op, OnRetry&& on_retry) -> decltype(op()) {
  RetryBudget budget(policy, what);
  for (;;) {
    try {
      return op();
    } catch (const Error& e) {
      if (!budget.retry_after(e)) throw;
      on_retry(e);
    }
    budget.pause();  // outside the handler: the failed attempt's error is gone while we sleep
  }
}

}  // namespace detail

// Calls fn() until it returns, and again after a conflict or a transient failure, by the rules the
// ledger uses: backoff with full jitter between attempts, at most policy.attempts of them within
// policy.deadline; then the last error is rethrown. Error(in_doubt) is never retried (a write or
// COMMIT whose outcome was lost may have committed: retry it yourself only when it is idempotent,
// e.g. keyed), nor is any other error or exception. For code that manages its own transactions:
// fn begins, and commits or rolls back, a whole transaction on each call; fn must not have effects
// outside the database that a second call would repeat. Database::transact is the same loop with
// the transaction managed for you. Thread-safety: fn runs on the calling thread.
//   rowguard::with_retries({}, [&] { auto tx = db.begin(); ...; tx.commit(); });
// Error(invalid_argument) for a policy that does not meet its REQUIRES (fn does not run).
template <class Fn>
auto with_retries(const RetryPolicy& policy, Fn&& fn) -> std::invoke_result_t<Fn&> {
  return detail::with_retries(policy, detail::RetryIn::conflicts, fn, [](const Error&) noexcept {});
}

}  // namespace rowguard

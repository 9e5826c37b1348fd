#pragma once
// Runs an operation under a RetryPolicy: retries what the error kind says is safe to retry.

#include <random>
#include <thread>

#include <fmt/format.h>

#include "rowguard/error.hpp"
#include "rowguard/retry.hpp"

#include "obs/instruments.hpp"

namespace rowguard::detail {

void validate(const RetryPolicy& policy);

// Which failures an operation may retry. Conflicts and transient failures never committed
// anything. An in-doubt outcome is retried only by operations that carry an idempotency key,
// whose retry finds the first attempt's record instead of applying twice.
enum class RetryIn { conflicts, conflicts_and_in_doubt };

// Calls op() until it returns, or throws an error that is not retriable, or the policy runs out;
// then the last error is rethrown (a conflict keeps its kind, so the CLI exits 6).
// on_retry(error) is called before each retry (for stats).
template <class Op, class OnRetry>
auto with_retries(const RetryPolicy& policy, RetryIn what, Op&& op, OnRetry&& on_retry) -> decltype(op()) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const auto deadline = std::chrono::steady_clock::now() + policy.deadline;
  auto backoff = policy.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    try {
      return op();
    } catch (const Error& e) {
      const bool retriable = e.kind() == ErrorKind::conflict || e.kind() == ErrorKind::transient ||
                             (what == RetryIn::conflicts_and_in_doubt && e.kind() == ErrorKind::in_doubt);
      if (!retriable) throw;
      if (attempt >= policy.attempts || std::chrono::steady_clock::now() >= deadline) {
        instruments::retries_exhausted(e, attempt);
        throw;
      }
      instruments::count_retry(e);
      on_retry(e);
      // Full jitter: a random sleep up to the current backoff, which doubles up to the cap.
      const auto cap = std::max<long long>(0, backoff.count());
      std::this_thread::sleep_for(
          std::chrono::microseconds(std::uniform_int_distribution<long long>(0, cap * 1000)(rng)));
      backoff = std::min(policy.max_backoff, backoff * 2 + std::chrono::milliseconds(backoff.count() == 0 ? 1 : 0));
    }
  }
}

}  // namespace rowguard::detail

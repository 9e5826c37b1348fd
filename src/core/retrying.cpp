#include <algorithm>
#include <random>
#include <thread>

#include "rowguard/retry.hpp"

#include "obs/instruments.hpp"

namespace rowguard::detail {

void validate(const RetryPolicy& p) {
  if (p.attempts < 1 || p.initial_backoff.count() < 0 || p.max_backoff < p.initial_backoff || p.deadline.count() <= 0)
    throw Error(ErrorKind::invalid_argument,
                "RetryPolicy needs attempts >= 1, 0 <= initial_backoff <= max_backoff and a positive deadline");
}

RetryBudget::RetryBudget(const RetryPolicy& policy, RetryIn what)
    : policy_(policy),
      what_(what),
      deadline_(std::chrono::steady_clock::now() + policy.deadline),
      backoff_(policy.initial_backoff) {
  validate(policy);
}

bool RetryBudget::retry_after(const Error& e) {
  const bool retriable = e.kind() == ErrorKind::conflict || e.kind() == ErrorKind::transient ||
                         (what_ == RetryIn::conflicts_and_in_doubt && e.kind() == ErrorKind::in_doubt);
  if (!retriable) return false;
  if (attempt_ >= policy_.attempts || std::chrono::steady_clock::now() >= deadline_) {
    instruments::retries_exhausted(e, attempt_);
    return false;
  }
  ++attempt_;
  instruments::count_retry(e);
  return true;
}

void RetryBudget::pause() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const auto cap = std::max<long long>(0, backoff_.count());
  std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<long long>(0, cap * 1000)(rng)));
  backoff_ = std::min(policy_.max_backoff, backoff_ * 2 + std::chrono::milliseconds(backoff_.count() == 0 ? 1 : 0));
}

}  // namespace rowguard::detail

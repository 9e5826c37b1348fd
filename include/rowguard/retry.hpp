#pragma once
// rowguard::RetryPolicy: how often and how long an operation retries a conflict.

#include <chrono>

namespace rowguard {

// Exponential backoff with full jitter (sleep a random time in [0, min(max_backoff, initial * 2^n)])
// under an overall deadline. Default: 20 attempts, 1ms doubling to 100ms, at most 10s in all.
struct RetryPolicy {
  int attempts = 20;                             // REQUIRES: >= 1
  std::chrono::milliseconds initial_backoff{1};  // REQUIRES: >= 0
  std::chrono::milliseconds max_backoff{100};    // REQUIRES: >= initial_backoff
  std::chrono::milliseconds deadline{10'000};    // REQUIRES: > 0
};

}  // namespace rowguard

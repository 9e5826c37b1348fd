#pragma once
// A lease's shared state and the renew/release statements behind Lease and Locks.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "rowguard/locks.hpp"

#include "locks/locks_impl.hpp"

namespace rowguard {

struct Lease::State {
  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State();  // leaves the process's registry of held (name, owner) pairs

  std::shared_ptr<detail::LocksImpl> locks;
  std::string name;
  std::string owner;
  std::int64_t token = 0;
  std::chrono::milliseconds ttl{0};
  // This lease's key in the process's registry of held (name, owner) pairs (re-entry refusal);
  // empty when it is not registered.
  std::string held_key;

  mutable std::mutex mutex;
  LeaseState state = LeaseState::held;
  std::chrono::steady_clock::time_point deadline;
  bool loss_reported = false;  // rowguard_leases_lost_total and the log count a lease once
  // Set by release_at_least before its statement: when that fails (a lost reply), the destructor's
  // release keeps the window instead of ending the lease at once.
  std::optional<std::chrono::milliseconds> at_least;
  // When the heartbeat's watchdog gave up at the local deadline (and called on_lost).
  std::optional<std::chrono::steady_clock::time_point> gave_up_at;

  // Notified (under mutex) when deadline or state changes, so the watchdog re-reads them.
  std::condition_variable_any deadline_moved;
  std::condition_variable_any heartbeat_wakeup;
  // Last: stopped and joined before the rest is destroyed. The heartbeat renews; the watchdog
  // calls on_lost when the local deadline passes, even while a renewal is stuck on a dead network.
  std::jthread heartbeat;
  std::jthread watchdog;
};

namespace detail {

// The local deadline of a lease of ttl whose statement was sent at `sent`: a tenth of the ttl
// (at least 1 ms, at most 5 s) short of it, for clock-rate differences and scheduling.
std::chrono::steady_clock::time_point local_deadline(std::chrono::steady_clock::time_point sent,
                                                     std::chrono::milliseconds ttl);

// One statement each. Error(lock_lost) when the lease is not (or no longer) this owner's with this
// token; a repeated release of a released lease succeeds. Returns the new expiry / nothing.
void renew_lease(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token,
                 std::chrono::milliseconds ttl);
void release_lease(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token);
// A release that failed with error leaves the lease taken until its ttl, and whoever waits for the
// lock waits until then: logged at warn, for an operator to see. Not a lost lease (logged when it
// was lost). Never throws.
void log_unreleased(const std::string& name, std::int64_t token, const std::exception& error) noexcept;
// Lease::release_at_least's statement: returns how long the lease stays held on the database clock
// (zero when it was released at once, or had been released already).
std::chrono::milliseconds release_lease_at_least(detail::LocksImpl& locks, const std::string& name,
                                                 const std::string& owner, std::int64_t token,
                                                 std::chrono::milliseconds at_least);

}  // namespace detail
}  // namespace rowguard

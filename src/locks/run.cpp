// Locks::run: a lease held while a function runs, with a heartbeat that asks the function to stop
// when the lease is lost. `rowguard lock run` holds its lease through it too.
#include <atomic>

#include <fmt/format.h>

#include "rowguard/locks.hpp"

#include "locks/lease_state.hpp"

namespace rowguard::detail {

struct LeaseRun::Shared {
  std::stop_source stop;
  std::atomic<bool> lost{false};
};

namespace {
// Checked before the lock is taken, so that a bad window never holds it.
std::optional<std::chrono::milliseconds> checked_window(Locks& locks, const LockRunOptions& options) {
  const auto longest = LocksAccess::impl(locks).options.max_ttl;
  if (options.hold_at_least &&
      (*options.hold_at_least < std::chrono::milliseconds::zero() || *options.hold_at_least > longest))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("LockRunOptions::hold_at_least: {} ms is not between 0 and the longest lease ({} ms)",
                            options.hold_at_least->count(), longest.count()));
  return options.hold_at_least;
}
}  // namespace

LeaseRun::LeaseRun(Locks& locks, std::string_view name, std::chrono::milliseconds ttl, const LockRunOptions& options)
    : shared_(std::make_shared<Shared>()),
      hold_at_least_(checked_window(locks, options)),
      held_for_(options.held_for),
      release_error_(options.release_error) {
  if (release_error_) release_error_->reset();
  lease_.emplace(locks.acquire(
      name, ttl, {.wait = options.wait, .order = options.order, .owner = options.owner, .stop = options.stop}));
  if (held_for_) *held_for_ = std::chrono::milliseconds::zero();
  HeartbeatOptions heartbeat;
  heartbeat.interval = options.heartbeat_interval;
  // The flag first: whoever sees the stop may look at it.
  heartbeat.on_lost = [shared = shared_] {
    shared->lost = true;
    shared->stop.request_stop();
  };
  lease_->start_heartbeat(std::move(heartbeat));
  if (options.stop.stop_possible())
    forward_stop_.emplace(options.stop, std::function<void()>([shared = shared_] { shared->stop.request_stop(); }));
}

LeaseRun::~LeaseRun() {
  if (finished_ || !lease_) return;
  forward_stop_.reset();
  try {
    lease_->release();
  } catch (const std::exception& e) {
    log_unreleased(lease_->name(), lease_->token(), e);
    const auto* error = dynamic_cast<const Error*>(&e);
    if (error && error->kind() == ErrorKind::lock_lost) return;  // a lost lease is not ours to release
    lease_->detach();  // one attempt, reported once: ~Lease would try and log again
    if (release_error_) *release_error_ = error ? *error : Error(ErrorKind::transient, e.what());
  }
}

std::stop_token LeaseRun::stop_token() const noexcept { return shared_->stop.get_token(); }

void LeaseRun::finish() {
  finished_ = true;
  forward_stop_.reset();
  // Read before the release: a loss after fn returned is the release's to report.
  const bool lost = shared_->lost;
  try {
    if (hold_at_least_ && !lost) {
      const auto held = lease_->release_at_least(*hold_at_least_);
      if (held_for_) *held_for_ = held;
    } else {
      lease_->release();
    }
  } catch (const Error&) {
    if (!lost) {
      // run() reports this error (the lease then runs out at its ttl): ~Lease must not try again,
      // which would cost another wait on the error path and could make that report untrue.
      lease_->detach();
      throw;
    }
    // A lost lease's release fails as lost too; the error below says when it was lost.
  }
  if (lost)
    throw Error(ErrorKind::lock_lost,
                fmt::format("lease on '{}' (token {}) was lost while the function ran: it was asked to stop, and "
                            "another holder may have taken the lock meanwhile",
                            lease_->name(), lease_->token()));
}

}  // namespace rowguard::detail

#include <fmt/format.h>

#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "locks/lease_state.hpp"

namespace rowguard {

std::string_view to_string(LeaseState state) noexcept {
  switch (state) {
    case LeaseState::held:
      return "held";
    case LeaseState::released:
      return "released";
    case LeaseState::lost:
      return "lost";
    case LeaseState::unknown:
      return "unknown";
  }
  return "unknown";
}

namespace detail {

std::chrono::steady_clock::time_point local_deadline(std::chrono::steady_clock::time_point sent,
                                                     std::chrono::milliseconds ttl) {
  const auto margin = std::clamp(ttl / 10, std::chrono::milliseconds(1), std::chrono::milliseconds(5000));
  return sent + ttl - margin;
}

namespace {
// Why (name, owner, token) matched nothing: released by this owner already, or lost.
Error lost_or_released(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token,
                       bool& released) {
  released = false;
  const Result s = locks.run(locks.sql.state, {name});
  if (s.rows.empty()) return Error(ErrorKind::lock_lost, fmt::format("lock '{}' does not exist", name));
  const Row& row = s.rows[0];
  const bool same = !row.is_null(0) && row.text(0) == owner && row.i64(1) == token;
  // released_at set: released by its owner, perhaps with a release_at_least window since run out.
  if (same && (row.is_null(2) || row.i64(5) != 0)) {
    released = true;
    return Error(ErrorKind::lock_lost, fmt::format("lease on '{}' was already released", name));
  }
  if (same)
    return Error(ErrorKind::lock_lost,
                 fmt::format("lease on '{}' (token {}) expired before it was renewed or released", name, token));
  const auto reason = row.opt_text(4);
  return Error(ErrorKind::lock_lost,
               fmt::format("lease on '{}' (token {}) was lost: the lock is now at token {}{}", name, token, row.i64(1),
                           reason ? fmt::format(" (force-released: {})", *reason) : std::string()));
}
void release_statement(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token);
// Wakes this process's waiters on name, and other processes' through NOTIFY when the released
// row reported waiters.
void wake_waiters(detail::LocksImpl& locks, const std::string& name, std::int64_t waiters);

// A renew or release that gave up waiting for the lock row (55P03 after LockOptions::row_lock_timeout
// on PostgreSQL, SQLITE_BUSY after the busy timeout on SQLite): nearly always a transaction that
// guarded the lease and is still open. Waiting longer cannot help when that transaction belongs to
// the caller's own thread, which is why the wait is bounded.
Error row_lock_busy(const Error& e, std::string_view doing, const std::string& name, std::int64_t token) {
  return Error(ErrorKind::conflict,
               fmt::format("{} the lease on '{}' (token {}) gave up waiting for its lock row: a transaction that "
                           "guarded this lease (Lease::guard) is still open, or another writer holds the row; commit "
                           "or roll back the guarded transaction first (a release on the thread that holds it open "
                           "can never succeed) [{}]",
                           doing, name, token, e.what()),
               e.sqlstate());
}
}  // namespace

void renew_lease(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token,
                 std::chrono::milliseconds ttl) {
  const auto& m = instruments::locks();
  try {
    Result r;
    try {
      r = locks.run(locks.sql.renew, locks.bounded({name, owner, token, static_cast<std::int64_t>(ttl.count())}));
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::conflict) throw row_lock_busy(e, "renewing", name, token);
      throw;
    }
    if (!r.rows.empty()) {
      m.renewed.add();
      return;
    }
    bool released = false;
    throw lost_or_released(locks, name, owner, token, released);
  } catch (const Error& e) {
    (e.kind() == ErrorKind::lock_lost ? m.renew_lost : m.renew_error).add();
    throw;
  }
}

void log_unreleased(const std::string& name, std::int64_t token, const std::exception& error) noexcept {
  const auto* e = dynamic_cast<const Error*>(&error);
  if ((e && e->kind() == ErrorKind::lock_lost) || !log_enabled(LogLevel::warn)) return;
  try {
    log(LogLevel::warn, "locks", "lease not released: it stays taken until its ttl",
        {{"lock", name}, {"token", std::to_string(token)}, {"error", error.what()}});
  } catch (...) {
    // Out of memory for the fields: nothing else to do in a destructor's path.
  }
}

void release_lease(detail::LocksImpl& locks, const std::string& name, const std::string& owner, std::int64_t token) {
  const auto& m = instruments::locks();
  try {
    release_statement(locks, name, owner, token);
    m.released.add();
  } catch (const Error& e) {
    (e.kind() == ErrorKind::lock_lost ? m.release_lost : m.release_error).add();
    throw;
  }
}

namespace {
void release_statement(detail::LocksImpl& locks, const std::string& name, const std::string& owner,
                       std::int64_t token) {
  Result r;
  try {
    r = locks.run(locks.sql.release, locks.bounded({name, owner, token}));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::conflict) throw row_lock_busy(e, "releasing", name, token);
    throw;
  }
  if (!r.rows.empty()) {
    wake_waiters(locks, name, r.rows[0].i64(0));
    return;
  }
  bool released = false;
  Error e = lost_or_released(locks, name, owner, token, released);
  if (!released) throw e;  // a repeated release answers released
}

void wake_waiters(detail::LocksImpl& locks, const std::string& name, std::int64_t waiters) {
  locks.wake(name);  // waiters in this process
  if (waiters > 0 && !locks.sql.notify_release.empty()) {
    try {
      locks.run(locks.sql.notify_release, {name});
    } catch (const Error&) {
      // Waiters that miss this wake-up re-check at their next poll.
    }
  }
}
}  // namespace

std::chrono::milliseconds release_lease_at_least(detail::LocksImpl& locks, const std::string& name,
                                                 const std::string& owner, std::int64_t token,
                                                 std::chrono::milliseconds at_least) {
  const auto& m = instruments::locks();
  try {
    Result r;
    try {
      r = locks.run(locks.sql.release_at_least,
                    locks.bounded({name, owner, token, static_cast<std::int64_t>(at_least.count())}));
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::conflict) throw row_lock_busy(e, "releasing", name, token);
      throw;
    }
    if (r.rows.empty()) {
      bool released = false;
      Error e = lost_or_released(locks, name, owner, token, released);
      if (!released) throw e;  // a repeated release answers released
      m.released.add();
      return std::chrono::milliseconds::zero();
    }
    const Row& row = r.rows[0];
    // Also while the window stays open: a waiter slept until the old expiry (or its poll), and
    // wakes now to read the new one and sleep until exactly then (expiry notifies nobody).
    wake_waiters(locks, name, row.i64(0));
    m.released.add();
    if (row.is_null(1)) return std::chrono::milliseconds::zero();
    return std::chrono::milliseconds(std::max<std::int64_t>(0, row.i64(1) - row.i64(2)));
  } catch (const Error& e) {
    (e.kind() == ErrorKind::lock_lost ? m.release_lost : m.release_error).add();
    throw;
  }
}

// Counts and logs a lease this process lost, once per lease. Called with s.mutex NOT held.
void report_lost(detail::LeaseData& s, std::string_view why) {
  {
    std::lock_guard lock(s.mutex);
    if (s.loss_reported) return;
    s.loss_reported = true;
  }
  instruments::locks().leases_lost.add();
  if (log_enabled(LogLevel::warn))
    log(LogLevel::warn, "locks", "lease lost",
        {{"lock", s.name}, {"token", std::to_string(s.token)}, {"reason", std::string(why)}});
}

}  // namespace detail

Lease::State::~State() {
  if (!held_key.empty()) detail::forget_held(held_key);
}

Lease::Lease(std::shared_ptr<State> state) : state_(std::move(state)) {}
Lease::Lease(Lease&&) noexcept = default;

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Lease old(std::move(*this));  // releases what this held
    state_ = std::move(other.state_);
  }
  return *this;
}

namespace {
// Stops one of the lease's threads and waits for it, unless called from that thread itself
// (on_lost released or dropped the lease: the thread ends right after it).
void stop_thread(std::jthread& thread) {
  if (!thread.joinable()) return;
  if (thread.get_id() == std::this_thread::get_id())
    thread.detach();
  else
    thread.join();
}

// Stops the heartbeat and its watchdog. Waits for a renewal in flight to end, which on a
// partitioned network takes as long as the connection's TCP timeouts (docs/scaling.md).
void stop_heartbeat(detail::LeaseData& s) {
  s.heartbeat.request_stop();
  s.watchdog.request_stop();
  s.heartbeat_wakeup.notify_all();
  s.deadline_moved.notify_all();
  stop_thread(s.watchdog);
  stop_thread(s.heartbeat);
}

// Ends the lease by end() (a release statement) and records what came of it: released, or what
// its error says of the lease (lost; unknown when the outcome is in doubt) before the error goes on.
template <class End>
auto end_lease(detail::LeaseData& s, End&& end) {
  try {
    auto result = end();
    std::lock_guard lock(s.mutex);
    s.state = LeaseState::released;
    return result;
  } catch (const Error& e) {
    {
      std::lock_guard lock(s.mutex);
      if (e.kind() == ErrorKind::lock_lost) s.state = LeaseState::lost;
      if (e.kind() == ErrorKind::in_doubt) s.state = LeaseState::unknown;
    }
    if (e.kind() == ErrorKind::lock_lost) detail::report_lost(s, e.what());
    throw;
  }
}
}  // namespace

Lease::~Lease() {
  if (!state_) return;
  stop_heartbeat(*state_);
  bool held = false;
  {
    std::lock_guard lock(state_->mutex);
    held = state_->state == LeaseState::held || state_->state == LeaseState::unknown;
  }
  if (!held) return;
  try {
    std::optional<std::chrono::milliseconds> at_least;
    {
      std::lock_guard lock(state_->mutex);
      at_least = state_->at_least;
    }
    if (at_least)
      (void)release_at_least(*at_least);
    else
      release();
  } catch (const std::exception& e) {
    detail::log_unreleased(state_->name, state_->token, e);  // best effort: it expires at its ttl
  }
}

namespace {
bool state_valid(const detail::LeaseData& s);
void renew_state(detail::LeaseData& s, std::chrono::milliseconds ttl);
detail::LeaseData& checked(const std::shared_ptr<detail::LeaseData>& s) {
  if (!s) throw Error(ErrorKind::invalid_argument, "this Lease was moved from");
  return *s;
}
}  // namespace

const std::string& Lease::name() const noexcept { return state_->name; }
const std::string& Lease::owner() const noexcept { return state_->owner; }
std::int64_t Lease::token() const noexcept { return state_->token; }

LeaseState Lease::state() const noexcept {
  if (!state_) return LeaseState::released;
  std::lock_guard lock(state_->mutex);
  return state_->state;
}

bool Lease::valid() const noexcept { return state_ && state_valid(*state_); }

std::chrono::milliseconds Lease::remaining() const noexcept {
  if (!valid()) return std::chrono::milliseconds::zero();
  std::lock_guard lock(state_->mutex);
  return std::chrono::duration_cast<std::chrono::milliseconds>(state_->deadline - std::chrono::steady_clock::now());
}

namespace {
void renew_state(detail::LeaseData& s, std::chrono::milliseconds ttl) {
  s.locks->validate_ttl(ttl);
  {
    std::lock_guard lock(s.mutex);
    if (s.state == LeaseState::released || s.state == LeaseState::lost)
      throw Error(ErrorKind::lock_lost, fmt::format("lease on '{}' is {}", s.name, to_string(s.state)));
  }
  const auto sent = std::chrono::steady_clock::now();
  try {
    detail::renew_lease(*s.locks, s.name, s.owner, s.token, ttl);
  } catch (const Error& e) {
    bool lost = false;
    {
      std::lock_guard lock(s.mutex);
      const bool live = s.state == LeaseState::held || s.state == LeaseState::unknown;
      lost = live && e.kind() == ErrorKind::lock_lost;
      if (lost) s.state = LeaseState::lost;
      if (live && e.kind() == ErrorKind::in_doubt) s.state = LeaseState::unknown;
    }
    s.deadline_moved.notify_all();
    if (lost) detail::report_lost(s, e.what());
    throw;
  }
  std::lock_guard lock(s.mutex);
  if (s.state == LeaseState::released) return;  // released meanwhile by another thread
  // A renewal sent before the watchdog gave up (one stuck on a silent network) does not bring the
  // lease back: on_lost has told the holder to stop. The row stays held until it expires or the
  // Lease releases it; a renew() called after on_lost may take it back.
  if (s.gave_up_at && sent <= *s.gave_up_at) return;
  s.state = LeaseState::held;
  s.ttl = ttl;
  s.deadline = detail::local_deadline(sent, ttl);
  s.deadline_moved.notify_all();
}

bool state_valid(const detail::LeaseData& s) {
  std::lock_guard lock(s.mutex);
  const bool live = s.state == LeaseState::held || s.state == LeaseState::unknown;
  return live && std::chrono::steady_clock::now() < s.deadline;
}
}  // namespace

void Lease::renew(std::chrono::milliseconds ttl) { renew_state(checked(state_), ttl); }

void Lease::release() {
  State& s = checked(state_);
  {
    std::lock_guard lock(s.mutex);
    if (s.state == LeaseState::released) return;
    if (s.state == LeaseState::lost)
      throw Error(ErrorKind::lock_lost, fmt::format("lease on '{}' was lost before release", s.name));
  }
  stop_heartbeat(s);
  end_lease(s, [&] {
    detail::release_lease(*s.locks, s.name, s.owner, s.token);
    return true;
  });
}

std::chrono::milliseconds Lease::release_at_least(std::chrono::milliseconds at_least) {
  State& s = checked(state_);
  if (at_least < std::chrono::milliseconds::zero() || at_least > s.locks->options.max_ttl)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("release_at_least: {} ms is not between 0 and the longest lease ({} ms)", at_least.count(),
                            s.locks->options.max_ttl.count()));
  {
    std::lock_guard lock(s.mutex);
    if (s.state == LeaseState::released) return std::chrono::milliseconds::zero();
    if (s.state == LeaseState::lost)
      throw Error(ErrorKind::lock_lost, fmt::format("lease on '{}' was lost before release", s.name));
  }
  // Before the statement: a renewal after it would move the expiry it set.
  stop_heartbeat(s);
  {
    std::lock_guard lock(s.mutex);
    s.at_least = at_least;
  }
  return end_lease(s, [&] { return detail::release_lease_at_least(*s.locks, s.name, s.owner, s.token, at_least); });
}

void Lease::detach() noexcept {
  if (!state_) return;
  stop_heartbeat(*state_);
  state_.reset();
}

void Lease::guard(Transaction& tx) const {
  const State& s = checked(state_);
  if (tx.exec(s.locks->sql.guard, {s.name, s.owner, s.token}).rows.empty())
    throw Error(ErrorKind::lock_lost,
                fmt::format("guard: lease on '{}' (token {}) is no longer held; the transaction must not commit",
                            s.name, s.token));
}

void Lease::start_heartbeat(HeartbeatOptions options) {
  State& s = checked(state_);
  if (s.heartbeat.joinable()) throw Error(ErrorKind::invalid_argument, "the heartbeat is already running");
  const auto interval = options.interval.value_or(std::max(s.ttl / 3, std::chrono::milliseconds(1)));
  if (interval <= std::chrono::milliseconds::zero())
    throw Error(ErrorKind::invalid_argument, "heartbeat interval must be positive");
  // on_lost runs at most once, from whichever thread sees the loss first. It is shared, not kept in
  // the State, because it may drop the Lease (and so the State) while it runs.
  struct LostCallback {
    std::function<void()> callback;
    std::atomic<bool> fired{false};
    void fire() {
      if (fired.exchange(true) || !callback) return;
      try {
        callback();
      } catch (...) {
        // A throwing callback must not take the process down from a background thread.
      }
    }
  };
  auto lost = std::make_shared<LostCallback>();
  lost->callback = std::move(options.on_lost);

  // Both threads use only the State, which outlives them: the Lease joins them before letting go.
  s.heartbeat = std::jthread([&s, interval, lost](const std::stop_token& stop) {
    // After a renewal that gave up waiting for a guarded transaction, the next one goes soon: the
    // renewal used to wait for the guard's commit however long it took, and must not lose the lease
    // now just because its wait is bounded.
    auto pause = interval;
    for (;;) {
      {
        std::mutex m;
        std::unique_lock lock(m);
        s.heartbeat_wakeup.wait_for(lock, stop, pause, [] { return false; });
      }
      pause = interval;
      if (stop.stop_requested() || lost->fired) return;
      std::chrono::milliseconds ttl;
      {
        std::lock_guard lock(s.mutex);  // renew() from another thread may change it
        ttl = s.ttl;
      }
      try {
        renew_state(s, ttl);
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::lock_lost && !stop.stop_requested()) lost->fire();
        if (e.kind() == ErrorKind::lock_lost) return;
        if (e.kind() == ErrorKind::conflict) pause = std::min(interval, std::chrono::milliseconds(50));
        // transient, conflict or in doubt: try again; the watchdog ends it at the deadline.
      }
    }
  });
  s.watchdog = std::jthread([&s, lost](const std::stop_token& stop) {
    {
      std::unique_lock lock(s.mutex);
      for (;;) {
        if (s.state != LeaseState::held && s.state != LeaseState::unknown) return;  // released or lost
        const auto deadline = s.deadline;
        s.deadline_moved.wait_until(lock, stop, deadline, [&] {
          return s.deadline != deadline || (s.state != LeaseState::held && s.state != LeaseState::unknown);
        });
        if (stop.stop_requested()) return;
        if (s.deadline == deadline && std::chrono::steady_clock::now() >= deadline) break;
      }
      if (s.state == LeaseState::held) s.state = LeaseState::unknown;
      s.gave_up_at = std::chrono::steady_clock::now();
    }
    detail::report_lost(s, "the heartbeat could not renew the lease before its local deadline");
    if (!stop.stop_requested()) lost->fire();
  });
}

}  // namespace rowguard

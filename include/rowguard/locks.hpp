#pragma once
// rowguard::Locks: leases on named rows with expiry, fencing tokens that only ever grow,
// blocking waits, heartbeats, guarded writes and semaphores.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

class Locks;
namespace detail {
struct LocksAccess;  // src/locks/locks_impl.hpp: rowguard's own components and tests reach Locks::Impl
}

// What a lease knows about itself.
//   held      acquired and, as far as this process knows, not yet expired
//   released  released by its owner (a repeated release answers released too)
//   lost      taken over, expired, or force-released: the holder must stop
//   unknown   a renew or release whose reply was lost; valid() still runs out at the local deadline
enum class LeaseState { held, released, lost, unknown };

std::string_view to_string(LeaseState state) noexcept;

// How a lease is kept alive in the background.
struct HeartbeatOptions {
  // Renew every interval. Default: ttl / 3.
  std::optional<std::chrono::milliseconds> interval;
  // Called at most once, from one of the lease's background threads, when a renewal finds the
  // lease lost or the local deadline passes without a successful renewal: on time even while a
  // renewal is stuck on a server that stopped answering (a partition). Must not block for long;
  // dropping or releasing the Lease from it waits for that stuck renewal to end.
  std::function<void()> on_lost;
};

// A held lock. Thread-safety: a Lease may be used from several threads (its heartbeat thread
// renews it); state()/valid()/token() are safe to call concurrently with renew() and release().
// Move-only; destruction releases the lease (best effort) and never throws or hangs: it waits at
// most for a renewal in flight and then its release, each bounded (see release()).
//
// Example:
//   if (auto lease = locks.try_acquire("nightly-payout", 30s)) {
//     auto tx = db.begin();
//     lease->guard(tx);  // the transaction fails unless the lease is still ours
//     ...
//     tx.commit();
//   }
class Lease {
 public:
  Lease(Lease&&) noexcept;
  Lease& operator=(Lease&&) noexcept;
  ~Lease();

  const std::string& name() const noexcept;
  const std::string& owner() const noexcept;
  // The fencing token: strictly greater than every token issued for this name before.
  std::int64_t token() const noexcept;
  LeaseState state() const noexcept;
  // True while the lease is held and its local deadline (measured on this process's monotonic
  // clock from before the acquire or last renew was sent, minus a safety margin) has not passed.
  bool valid() const noexcept;
  // Time left until the local deadline (zero when it has passed).
  std::chrono::milliseconds remaining() const noexcept;

  // Extends the lease to ttl from now on the database clock. Error(lock_lost) when it was taken
  // over, expired or force-released; Error(in_doubt) -> state unknown when the reply was lost;
  // Error(conflict), lease unchanged, after waiting LockOptions::row_lock_timeout (SQLite: the busy
  // timeout) for a transaction that guarded the lease and is still open.
  void renew(std::chrono::milliseconds ttl);
  // Releases the lease. Safe to repeat. Error(lock_lost) when it was no longer ours. Release after
  // the transactions that guarded it have ended: while one is open, the release waits for it at
  // most LockOptions::row_lock_timeout (SQLite: the busy timeout), then throws Error(conflict)
  // naming the open guarding transaction, and the lease stays held.
  void release();
  // Ends the lease, but keeps it held until at least `at_least` after it was acquired, on the
  // database clock (ShedLock's lockAtLeastFor): a job that ends sooner does not run again at once
  // elsewhere. The heartbeat stops first. While that window is open one statement (owner and token
  // checked) sets the lease's expiry to acquired + at_least, earlier or later than its ttl, and
  // waiters wake to sleep until then; once it has passed this is release(). Returns how long the
  // lease stays held (zero when it ended at once or was released already). Errors as release();
  // Error(invalid_argument) unless 0 <= at_least <= LockOptions::max_ttl.
  //   lease.release_at_least(5min);  // a nightly job that took 3 s: the lock stays taken 5 min
  std::chrono::milliseconds release_at_least(std::chrono::milliseconds at_least);

  // Inside the caller's transaction on the same database: fails the transaction with
  // Error(lock_lost) unless the lease is still held with this token, and holds the lock row (FOR
  // SHARE on PostgreSQL; the write lock on SQLite) so a takeover waits for this commit.
  void guard(Transaction& tx) const;

  // Starts renewing in the background (see HeartbeatOptions); stops on release or destruction.
  void start_heartbeat(HeartbeatOptions options = {});

  // Stops managing the lease: the heartbeat stops and destruction no longer releases it. It stays
  // held until its ttl runs out, unless renewed or released by (name, owner, token) through Locks.
  void detach() noexcept;

 private:
  friend struct detail::LocksAccess;  // src/locks/locks_impl.hpp: Locks makes leases through it
  struct State;
  explicit Lease(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

struct LockOptions {
  // Longest ttl a lease may ask for. Default: 24h.
  std::chrono::milliseconds max_ttl{std::chrono::hours(24)};
  // A readable owner prefix shown to DBAs; default "host:pid". A random 128-bit id always follows.
  std::string owner_prefix{};
  // Poll interval while waiting when no notification arrives (jittered). Default: 250ms.
  std::chrono::milliseconds poll_interval{250};
  // Longest a renew or release waits for the lease's lock row while another transaction holds it
  // (one that called Lease::guard and is still open), before Error(conflict). PostgreSQL; on SQLite
  // the database's Options::busy_timeout bounds the same wait. Default: 5s. REQUIRES: >= 1ms.
  std::chrono::milliseconds row_lock_timeout{5000};
  // How long a fair waiter's ticket (WaitOrder::fair) lasts on the database clock unless its waiter
  // moves it on, which it does at every try, at least every queue_ttl / 3: a waiter that died
  // (crash, kill -9, lost connection) holds up the waiters behind it at most this long. Default:
  // 5s. REQUIRES: >= 30ms.
  std::chrono::milliseconds queue_ttl{5000};
};

// Who gets a lock first when several wait for it.
//   any   whoever tries first once it frees up (the default): no queue, no extra statement
//   fair  arrival order, as etcd's mutex and Redisson's FairLock: a waiter whose first try found
//         the lock busy takes a ticket and acquires only when no live ticket is ahead of its own
// Callers that do not queue (try_acquire, WaitOrder::any) never jump ahead of fair waiters: while
// a live ticket waits for a name, only its current holder's own retry gets an answer.
enum class WaitOrder { any, fair };

// How Locks::acquire waits. Example: locks.acquire("payout", 30s, {.wait = 2min, .order = WaitOrder::fair});
struct AcquireOptions {
  // How long to wait. Default: 0 (one try, then Error(lock_busy)).
  std::chrono::milliseconds wait{0};
  // Default: WaitOrder::any.
  WaitOrder order = WaitOrder::any;
  // Default: a new owner id (Locks::new_owner()).
  std::optional<std::string> owner{};
  // Cancels the wait (Error(lock_busy)).
  std::stop_token stop{};
};

// How Locks::run takes, keeps and ends its lease. Every field has a default.
struct LockRunOptions {
  // How long run() waits for the lock, as Locks::acquire. Default: 0 (Error(lock_busy) at once
  // when it is held, as `rowguard lock run` without --wait).
  std::chrono::milliseconds wait{0};
  // How run() waits, as AcquireOptions::order. Default: WaitOrder::any.
  WaitOrder order = WaitOrder::any;
  // Cancels the wait; once fn runs, asks it to stop through its stop_token, as a lost lease does
  // (a service shutting down). A stop requested here is no loss: run() returns fn's result.
  // Default: none.
  std::stop_token stop;
  // The lease's owner id (see Locks::acquire). Default: a new one.
  std::optional<std::string> owner;
  // How often the heartbeat renews the lease. Default: ttl / 3.
  std::optional<std::chrono::milliseconds> heartbeat_interval;
  // When fn returns, the lock stays held until at least this long after it was acquired
  // (Lease::release_at_least, ShedLock's lockAtLeastFor). Not when fn throws or the lease was lost:
  // the lock is then released at once. Default: released when fn returns. REQUIRES: 0..max_ttl.
  std::optional<std::chrono::milliseconds> hold_at_least;
  // When set, receives how long the lock stays held after run() returned (hold_at_least; zero when
  // it was released at once). Default: nullptr.
  std::chrono::milliseconds* held_for = nullptr;
  // When set, and fn throws: receives the error of the release that should end the lease at once,
  // when it failed (the database unreachable, say) and the lock stays taken until its ttl runs out;
  // left empty when the release succeeded or the lease had been lost anyway. run() rethrows fn's
  // exception either way. Default: nullptr (the failure is only logged, at warn).
  std::optional<Error>* release_error = nullptr;
};

// One row of `rowguard lock list`.
struct LockInfo {
  std::string name;
  std::string owner;  // current or last holder; empty if never held
  std::int64_t token = 0;
  bool held = false;  // unexpired
  std::int64_t acquired_at_ms = 0;
  std::int64_t expires_in_ms = 0;  // 0 when not held
  std::int64_t renewals = 0;
  // Processes waiting that registered for a release's NOTIFY (PostgreSQL; 0 elsewhere).
  std::int64_t waiters = 0;
  std::string release_reason;  // set by force_release
  // The last lease ran out unreleased (its holder died or stopped renewing); one that ran out at
  // the end of a Lease::release_at_least window was released, and is not expired.
  bool expired = false;
  // Fair waiters in line (WaitOrder::fair): live tickets of the name's queue, on every engine.
  std::int64_t queued = 0;
};

// Lock rows by state at one instant, counted by one aggregate (dashboards: rowguard serve).
struct LockCounts {
  std::int64_t rows = 0;
  std::int64_t held = 0;       // unexpired lease
  std::int64_t expired = 0;    // ran out unreleased (LockInfo::expired)
  std::int64_t contended = 0;  // held, with waiters
  std::int64_t waiters = 0;
};

// Hands out leases. Thread-safety: safe for concurrent use; one per Database is enough.
class Locks {
 public:
  explicit Locks(Database& db, LockOptions options = {});
  Locks(Locks&&) noexcept;
  ~Locks();

  // One statement; never blocks (a row held by another transaction's guard counts as busy).
  // Returns nothing when the lock is held by someone else, or free while fair waiters queue for it.
  // Leases are not re-entrant and keep no hold count: an owner whose lease on the name is still
  // live in the database gets the same token back (so an acquire whose reply was lost can be
  // retried with the same owner, and a restarted process can take a detached lease back), but
  // while a Lease of this process holds (name, owner) (held or unknown; not released, lost,
  // detached or destroyed) another acquire of it is refused with Error(invalid_argument) and
  // changes nothing: releasing either of two Leases would end both. Pass the Lease down instead.
  std::optional<Lease> try_acquire(std::string_view name, std::chrono::milliseconds ttl,
                                   std::optional<std::string> owner = std::nullopt);
  // Waits up to `wait` (cancellable through stop). On PostgreSQL a release wakes waiters through
  // LISTEN/NOTIFY; otherwise, and as a fallback, a waiter sleeps until the holder's expiry on the
  // database clock or the jittered poll interval. Error(lock_busy) when the wait ran out.
  Lease acquire(std::string_view name, std::chrono::milliseconds ttl, std::chrono::milliseconds wait,
                const std::stop_token& stop = {}, std::optional<std::string> owner = std::nullopt);
  // The same, with the wait order (AcquireOptions). WaitOrder::fair takes a ticket when the first
  // try finds the lock busy, then acquires in ticket order; the ticket is dropped when the wait
  // ends either way. Re-entrancy as try_acquire.
  //   auto lease = locks.acquire("settlement", 30s, {.wait = 2min, .order = WaitOrder::fair});
  Lease acquire(std::string_view name, std::chrono::milliseconds ttl, const AcquireOptions& options);

  // Runs fn(lease, stop) while holding the lock `name`: acquires it (waiting up to options.wait),
  // renews it in the background (Lease::start_heartbeat), requests stop on fn's stop_token when the
  // lease is lost (taken over, force-released, expired, or not renewed before its local deadline:
  // HeartbeatOptions::on_lost), and releases it when fn returns or throws. fn should check stop
  // between steps and return soon after it is requested, and fence its writes with the lease
  // (Lease::guard, a Fence with its token): stop only asks, and a lost lease may have a new holder.
  // Returns fn's result when the lease was held until fn returned and was released.
  // Errors: Error(lock_busy) when the lock was not acquired in time (fn did not run);
  // Error(lock_lost) when the lease was lost while fn ran, after fn returned, whatever fn returned
  // (its work may have overlapped another holder's); what fn throws, after the lease was released
  // at once (an error of that release is dropped: the lease then runs out at its ttl); an error of
  // the release after fn returned (Lease::release). Callbacks registered on the stop_token run on
  // the lease's background thread: keep them short. Thread-safety: as acquire(); fn runs on the
  // calling thread.
  //   locks.run("nightly-payout", 30s, [&](const rowguard::Lease& lease, std::stop_token stop) {
  //     while (!stop.stop_requested() && pay_next_batch(lease)) {
  //     }
  //   });
  template <class Fn>
  auto run(std::string_view name, std::chrono::milliseconds ttl, Fn&& fn, const LockRunOptions& options = {})
      -> std::invoke_result_t<Fn&, const Lease&, std::stop_token>;

  // Renew or release a lease known only by (name, owner, token), e.g. from the CLI.
  void renew(std::string_view name, std::string_view owner, std::int64_t token, std::chrono::milliseconds ttl);
  void release(std::string_view name, std::string_view owner, std::int64_t token);

  std::vector<LockInfo> list();
  // Both judged at at_ms on the database clock (Database::now_ms()), so a page that shows both
  // agrees with itself. counts(): one aggregate over every lock. active(): at most `limit` locks
  // (1..10000), held ones first (the longest held first), then the most recently expired, then
  // released ones someone waits for; released ones nobody waits for are only counted.
  LockCounts counts(std::int64_t at_ms);
  std::vector<LockInfo> active(std::int64_t at_ms, std::size_t limit);
  // Ends whoever holds name, raising its token so the evicted holder's guard fails at once.
  // Error(not_found) when the lock never existed.
  void force_release(std::string_view name, std::string_view reason);
  // Clears holder fields of leases expired for longer than `older_than`; never deletes a row or
  // lowers a token. Returns the number of lock rows cleared. Fair waiters' tickets that ran out
  // longer than `older_than` ago are deleted too (not counted).
  std::int64_t sweep(std::chrono::milliseconds older_than);

  // A new owner id: "<prefix>:<32 hex digits>".
  std::string new_owner() const;

 private:
  struct Impl;  // src/<component>/: the state and statements behind the handle
  friend struct detail::LocksAccess;
  std::shared_ptr<Impl> impl_;  // shared with the leases it made
};

// At most `permits` concurrent holders of `name`; each permit has its own lease and token.
// Thread-safety: as Locks. acquire() polls every ~50 ms until a permit is free or the wait runs
// out (Error(lock_busy)).
class Semaphore {
 public:
  // Error(invalid_argument) when permits < 1 or > 10000, or the name is invalid.
  Semaphore(Locks& locks, std::string name, int permits);
  std::optional<Lease> try_acquire(std::chrono::milliseconds ttl);
  Lease acquire(std::chrono::milliseconds ttl, std::chrono::milliseconds wait, const std::stop_token& stop = {});
  int permits() const noexcept { return permits_; }

 private:
  Locks& locks_;
  std::string name_;
  int permits_;
};

namespace detail {
// Locks::run's lease, from its acquire to its end: the part of run() that does not depend on fn
// (src/locks/run.cpp). Thread-safety: one per run(), used from its thread; the heartbeat's
// threads only request stop.
class LeaseRun {
 public:
  // Acquires the lock and starts the heartbeat, whose on_lost requests stop.
  LeaseRun(Locks& locks, std::string_view name, std::chrono::milliseconds ttl, const LockRunOptions& options);
  LeaseRun(const LeaseRun&) = delete;
  LeaseRun& operator=(const LeaseRun&) = delete;
  // Without finish() (fn threw): releases at once; a failure goes to LockRunOptions::release_error
  // and the log, never out of the destructor.
  ~LeaseRun();
  const Lease& lease() const noexcept { return *lease_; }
  std::stop_token stop_token() const noexcept;
  // After fn returned: ends the lease (hold_at_least unless it was lost), then Error(lock_lost)
  // when it was lost while fn ran.
  void finish();

 private:
  struct Shared;  // the stop source and the lost flag, shared with the heartbeat's on_lost
  std::shared_ptr<Shared> shared_;
  std::optional<Lease> lease_;
  std::optional<std::chrono::milliseconds> hold_at_least_;
  std::chrono::milliseconds* held_for_;
  std::optional<Error>* release_error_;
  bool finished_ = false;
  std::optional<std::stop_callback<std::function<void()>>> forward_stop_;  // options.stop -> shared_
};
}  // namespace detail

template <class Fn>
auto Locks::run(std::string_view name, std::chrono::milliseconds ttl, Fn&& fn, const LockRunOptions& options)
    -> std::invoke_result_t<Fn&, const Lease&, std::stop_token> {
  using R = std::invoke_result_t<Fn&, const Lease&, std::stop_token>;
  detail::LeaseRun held(*this, name, ttl, options);  // when fn throws, its destructor releases
  if constexpr (std::is_void_v<R>) {
    fn(held.lease(), held.stop_token());
    held.finish();
  } else {
    R result = fn(held.lease(), held.stop_token());
    held.finish();
    return result;
  }
}

}  // namespace rowguard

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <unistd.h>

#include <fmt/format.h>
#include <sys/random.h>

#include "base/sql_text.hpp"
#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "core/database_gate.hpp"

#include "locks/lease_state.hpp"
#include "locks/locks_impl.hpp"

namespace rowguard {

namespace {
constexpr std::size_t max_name_bytes = 255;
constexpr std::size_t max_owner_bytes = 200;

std::string default_owner_prefix() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  return fmt::format("{}:{}", host, ::getpid());
}

std::chrono::milliseconds jittered(std::chrono::milliseconds base) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<long long> spread(base.count() * 3 / 4, base.count() * 5 / 4 + 1);
  return std::chrono::milliseconds(spread(rng));
}
}  // namespace

Locks::Impl::Impl(std::shared_ptr<detail::Backend> b, LockOptions o)
    : backend(std::move(b)),
      options(std::move(o)),
      table(backend->table("locks")),
      channel(backend->table("locks")),
      sql(*backend, channel),
      owner_prefix(options.owner_prefix.empty() ? default_owner_prefix() : options.owner_prefix),
      wake_prefix(backend->display_url() + "|" + table + "|") {
  if (options.max_ttl <= std::chrono::milliseconds::zero())
    throw Error(ErrorKind::invalid_argument, "LockOptions::max_ttl must be positive");
  if (options.poll_interval < std::chrono::milliseconds(1))
    throw Error(ErrorKind::invalid_argument, "LockOptions::poll_interval must be at least 1ms");
  if (options.row_lock_timeout < std::chrono::milliseconds(1))
    throw Error(ErrorKind::invalid_argument, "LockOptions::row_lock_timeout must be at least 1ms");
  if (options.queue_ttl < std::chrono::milliseconds(30))
    throw Error(ErrorKind::invalid_argument, "LockOptions::queue_ttl must be at least 30ms");
  validate_owner(owner_prefix);
}

Locks::Impl::~Impl() = default;

Result Locks::Impl::run(const std::string& statement, const std::vector<Value>& params) {
  auto session = backend->borrow();
  return (*session)->exec(statement, params);
}

std::vector<Value> Locks::Impl::bounded(std::vector<Value> params) const {
  if (sql.row_lock_timeout_param) params.emplace_back(static_cast<std::int64_t>(options.row_lock_timeout.count()));
  return params;
}

void Locks::Impl::validate_name(std::string_view name) const {
  if (name.empty()) throw Error(ErrorKind::invalid_argument, "lock name must not be empty");
  if (name.size() > max_name_bytes)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("lock name is {} bytes; the maximum is {}", name.size(), max_name_bytes));
  if (!detail::is_text(name))
    throw Error(ErrorKind::invalid_argument, "lock name is not valid UTF-8 or holds a NUL byte");
}

void Locks::Impl::validate_ttl(std::chrono::milliseconds ttl) const {
  if (ttl <= std::chrono::milliseconds::zero())
    throw Error(ErrorKind::invalid_argument, fmt::format("lease ttl must be positive, got {} ms", ttl.count()));
  if (ttl > options.max_ttl)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("lease ttl {} ms exceeds the maximum of {} ms", ttl.count(), options.max_ttl.count()));
}

void Locks::Impl::validate_owner(std::string_view owner) const {
  if (owner.empty() || owner.size() > max_owner_bytes || !detail::is_text(owner))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("lock owner must be 1 to {} bytes of UTF-8 without NUL", max_owner_bytes));
}

// The names that waiters in this process wait on, each with a generation that a release, a
// force-release or a NOTIFY bumps, waking that name's waiters in every Locks of the process. An
// entry exists only while someone waits on its name (Locks::Impl::Watch counts them): a release,
// wait or NOTIFY used to add an entry that nothing removed, so a service locking one name per
// saga or cache key grew this map without bound.
struct detail::WakeEntry {
  std::uint64_t generation = 0;
  std::size_t watchers = 0;
};

namespace {
struct WakeHub {
  std::mutex mutex;
  std::condition_variable_any changed;
  std::unordered_map<std::string, detail::WakeEntry> entries;  // node-based: entry addresses are stable
  std::uint64_t epoch = 0;                                     // bumped by wake_everyone(): every waiter re-checks
};
WakeHub& hub() {
  static WakeHub h;
  return h;
}

void wake_key(const std::string& key) {
  auto& h = hub();
  {
    std::lock_guard lock(h.mutex);
    const auto it = h.entries.find(key);
    if (it == h.entries.end()) return;  // nobody in this process waits on it
    ++it->second.generation;
  }
  h.changed.notify_all();
}

void wake_everyone() {
  auto& h = hub();
  {
    std::lock_guard lock(h.mutex);
    ++h.epoch;
  }
  h.changed.notify_all();
}
}  // namespace

std::size_t detail::wake_entries() {
  auto& h = hub();
  std::lock_guard lock(h.mutex);
  return h.entries.size();
}

void Locks::Impl::wake(const std::string& name) { wake_key(wake_prefix + name); }

namespace {
// The (name, owner) pairs a Lease of this process holds, across every Locks: leases are not
// re-entrant, so an acquire of a pair held here is refused instead of handing out a second Lease
// whose release would end the first one's lease too (the database cannot tell a nested acquire from
// a retried one, so it gives the same owner its token back). An acquire in flight reserves its pair
// (pending), so two threads with one owner cannot both get it. An entry lives while its Lease's
// State does, so the map is as small as the number of live Leases.
struct HeldEntry {
  std::weak_ptr<detail::LeaseData> lease;
  bool pending = false;
};
struct HeldRegistry {
  std::mutex mutex;
  std::unordered_map<std::string, HeldEntry> entries;
};
HeldRegistry& held_registry() {
  static HeldRegistry r;
  return r;
}

bool managing(const detail::LeaseData& s) {
  std::lock_guard lock(s.mutex);
  return s.state == LeaseState::held || s.state == LeaseState::unknown;
}

// Reserves (name, owner) for one acquire: bind() hands it to the Lease made, else the destructor
// frees it. Error(invalid_argument) when a live Lease of this process, or another acquire in
// flight, has it.
class HeldReservation {
 public:
  HeldReservation(const detail::LocksImpl& impl, std::string_view name, const std::string& owner)
      : key_(impl.wake_prefix + std::string(name) + '\0' + owner) {
    auto& r = held_registry();
    std::shared_ptr<detail::LeaseData> existing;  // dropped after the mutex: it may be the last reference
    {
      std::lock_guard lock(r.mutex);
      auto [it, fresh] = r.entries.try_emplace(key_);
      if (!fresh) {
        existing = it->second.lease.lock();
        if (it->second.pending || (existing && managing(*existing)))
          throw Error(ErrorKind::invalid_argument,
                      fmt::format("lock '{}' is already held by owner '{}' through a Lease of this process (or being "
                                  "acquired by it): leases are not re-entrant and keep no hold count; pass that Lease "
                                  "on, or release it before acquiring again",
                                  name, owner));
      }
      it->second = HeldEntry{{}, true};
    }
    reserved_ = true;
  }
  HeldReservation(const HeldReservation&) = delete;
  HeldReservation& operator=(const HeldReservation&) = delete;
  ~HeldReservation() {
    if (!reserved_) return;
    auto& r = held_registry();
    std::lock_guard lock(r.mutex);
    const auto it = r.entries.find(key_);
    if (it != r.entries.end() && it->second.pending) r.entries.erase(it);
  }
  void bind(const std::shared_ptr<detail::LeaseData>& lease) {
    auto& r = held_registry();
    std::lock_guard lock(r.mutex);
    r.entries[key_] = HeldEntry{lease, false};
    lease->held_key = key_;
    reserved_ = false;
  }

 private:
  std::string key_;
  bool reserved_ = false;
};
}  // namespace

void detail::forget_held(const std::string& key) noexcept {
  auto& r = held_registry();
  std::lock_guard lock(r.mutex);
  const auto it = r.entries.find(key);
  // Another Lease (or acquire) of the same pair may have taken the entry over meanwhile.
  if (it != r.entries.end() && !it->second.pending && it->second.lease.expired()) r.entries.erase(it);
}

std::size_t detail::held_entries() {
  auto& r = held_registry();
  std::lock_guard lock(r.mutex);
  return r.entries.size();
}

Locks::Impl::Watch::Watch(Impl& impl, const std::string& name) : key_(impl.wake_prefix + name) {
  auto& h = hub();
  std::lock_guard lock(h.mutex);
  entry_ = &h.entries[key_];
  ++entry_->watchers;
}

Locks::Impl::Watch::~Watch() {
  auto& h = hub();
  std::lock_guard lock(h.mutex);
  if (--entry_->watchers == 0) h.entries.erase(key_);
}

std::uint64_t Locks::Impl::Watch::generation() const {
  auto& h = hub();
  std::lock_guard lock(h.mutex);
  return entry_->generation + h.epoch;
}

void Locks::Impl::Watch::wait_for_change(std::uint64_t seen, std::chrono::milliseconds timeout,
                                         const std::stop_token& stop) const {
  auto& h = hub();
  std::unique_lock lock(h.mutex);
  h.changed.wait_for(lock, stop, timeout, [&] { return entry_->generation + h.epoch != seen; });
}

struct Locks::Impl::ListenerThread {
  std::atomic<bool> connected{false};
  std::jthread thread;  // last: joined before the rest is destroyed

  // Shared by every Locks with the same wake prefix (database and table), so it keeps only that.
  ListenerThread(const detail::ListenerFactory& factory, const std::string& channel, const std::string& prefix) {
    thread = std::jthread([this, factory, channel, prefix](const std::stop_token& stop) {
      while (!stop.stop_requested()) {
        try {
          auto l = factory(channel);
          connected = true;
          wake_everyone();  // anything sent while we were not listening is lost: everyone re-checks
          while (!stop.stop_requested())
            if (auto payload = l->wait(std::chrono::milliseconds(200))) wake_key(prefix + *payload);
        } catch (const std::exception&) {
          connected = false;
          wake_everyone();
          std::mutex m;
          std::unique_lock pause(m);
          std::condition_variable_any().wait_for(pause, stop, std::chrono::seconds(1), [] { return false; });
        }
      }
      connected = false;
    });
  }
};

bool Locks::Impl::ensure_listener() {
  if (!backend->listener_factory()) return false;
  std::lock_guard lock(mutex);
  if (!listener) {
    static std::mutex registry_mutex;
    static std::unordered_map<std::string, std::weak_ptr<ListenerThread>> registry;
    std::lock_guard registry_lock(registry_mutex);
    std::erase_if(registry, [](const auto& entry) { return entry.second.expired(); });
    auto& slot = registry[wake_prefix];
    listener = slot.lock();
    if (!listener) {
      listener = std::make_shared<ListenerThread>(backend->listener_factory(), channel, wake_prefix);
      slot = listener;
    }
  }
  return listener->connected;
}

Locks::Locks(Database& db, LockOptions options)
    : impl_(std::make_shared<Impl>(detail::DatabaseGate::shared_backend(db), std::move(options))) {}
Locks::Locks(Locks&&) noexcept = default;
Locks::~Locks() = default;

std::string Locks::new_owner() const {
  // 128 bits from the kernel's CSPRNG (getrandom(2), no file to open): an owner id is the lease's
  // credential for renew and release, so it must not be predictable from ids seen before, as a
  // seeded mt19937 stream would be.
  std::uint64_t bits[2];
  std::size_t got = 0;
  while (got < sizeof bits) {
    const ssize_t n = ::getrandom(reinterpret_cast<char*>(bits) + got, sizeof bits - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorKind::permanent, fmt::format("getrandom failed: {}", std::strerror(errno)));
    got += static_cast<std::size_t>(n);
  }
  // prefix:32 hex digits, assembled without a format string: it runs on every try_acquire.
  std::string owner;
  owner.reserve(impl_->owner_prefix.size() + 1 + 2 * sizeof bits);
  owner += impl_->owner_prefix;
  owner += ':';
  owner += detail::to_hex(std::string_view(reinterpret_cast<const char*>(bits), sizeof bits));
  return owner;
}

namespace {
// The one-statement acquire: the token, or nothing when busy (held by another owner, its row held
// by another transaction's guard, or fair waiters queue for it).
std::optional<std::int64_t> acquire_statement(detail::LocksImpl& impl, const std::string& name,
                                              const std::string& owner, std::chrono::milliseconds ttl) {
  const auto& m = detail::instruments::locks();
  const auto sent = std::chrono::steady_clock::now();
  Result r;
  try {
    r = impl.run(impl.sql.acquire, {name, owner, static_cast<std::int64_t>(ttl.count())});
  } catch (const Error& e) {
    m.acquire_seconds.observe_since(sent);
    if (e.sqlstate() == "55P03") {  // the row is held by another transaction's guard
      m.busy.add();
      return std::nullopt;
    }
    m.error.add();
    throw;
  }
  m.acquire_seconds.observe_since(sent);
  if (r.rows.empty()) {
    m.busy.add();
    return std::nullopt;
  }
  m.acquired.add();
  return r.rows[0].i64(0);
}

// What a fair waiter's try found.
struct QueuedTry {
  std::optional<std::int64_t> token;              // acquired
  std::optional<std::int64_t> holder_expires_ms;  // else: the live holder's expiry (nothing when free)
  std::int64_t now_ms = 0;
  std::int64_t ahead = 0;                        // live tickets of other owners ahead
  std::optional<std::int64_t> ahead_expires_ms;  // the earliest of their expiries
  bool queued = true;                            // the ticket still lives (else: take a new one)
};

// A fair waiter's try with its ticket (LockStatements::acquire_queued): acquires when no live
// ticket is ahead, dropping the ticket; else moves the ticket's expiry on and says what to wait for.
QueuedTry queued_statement(detail::LocksImpl& impl, const std::string& name, const std::string& owner,
                           std::chrono::milliseconds ttl, std::int64_t ticket) {
  const auto& m = detail::instruments::locks();
  const auto& sql = impl.sql;
  const auto ttl_ms = static_cast<std::int64_t>(ttl.count());
  const auto queue_ms = static_cast<std::int64_t>(impl.options.queue_ttl.count());
  const auto sent = std::chrono::steady_clock::now();
  QueuedTry out;
  try {
    if (sql.queued_in_one_call) {
      const Result r = impl.run(sql.acquire_queued, {name, owner, ttl_ms, ticket, queue_ms});
      const Row& row = r.one();
      if (!row.is_null(0)) out.token = row.i64(0);
      if (!out.token && !row.is_null(1)) out.holder_expires_ms = row.i64(1);
      out.now_ms = row.i64(2);
      out.ahead = row.i64(3);
      if (!row.is_null(4)) out.ahead_expires_ms = row.i64(4);
      out.queued = row.i64(5) != 0;
    } else {
      const Result r = impl.run(sql.acquire_queued, {name, owner, ttl_ms, ticket});
      if (!r.rows.empty()) {
        out.token = r.rows[0].i64(0);
        try {
          impl.run(sql.dequeue, {name, ticket, owner});
        } catch (const Error&) {
          // The ticket runs out at its expiry; the lease is held either way.
        }
      } else {
        out.queued = impl.run(sql.queue_refresh, {name, ticket, owner, queue_ms}).affected == 1;
        const Result s = impl.run(sql.queue_state, {name, ticket, owner});
        const Row& row = s.one();
        if (!row.is_null(0)) out.holder_expires_ms = row.i64(0);
        out.now_ms = row.i64(1);
        out.ahead = row.i64(2);
        if (!row.is_null(3)) out.ahead_expires_ms = row.i64(3);
      }
    }
  } catch (const Error&) {
    m.acquire_seconds.observe_since(sent);
    m.error.add();
    throw;
  }
  m.acquire_seconds.observe_since(sent);
  (out.token ? m.acquired : m.busy).add();
  return out;
}

Lease make_lease(const std::shared_ptr<detail::LocksImpl>& impl, std::string_view name, const std::string& owner,
                 std::int64_t token, std::chrono::milliseconds ttl, std::chrono::steady_clock::time_point sent,
                 HeldReservation& held) {
  auto state = std::make_shared<detail::LeaseData>();
  state->locks = impl;
  state->name = std::string(name);
  state->owner = owner;
  state->token = token;
  state->ttl = ttl;
  state->deadline = detail::local_deadline(sent, ttl);
  held.bind(state);
  return detail::LocksAccess::lease(std::move(state));
}
}  // namespace

std::optional<Lease> Locks::try_acquire(std::string_view name, std::chrono::milliseconds ttl,
                                        std::optional<std::string> owner) {
  impl_->validate_name(name);
  impl_->validate_ttl(ttl);
  if (owner) impl_->validate_owner(*owner);
  const std::string who = owner ? *owner : new_owner();
  HeldReservation held(*impl_, name, who);
  const auto sent = std::chrono::steady_clock::now();
  const auto token = acquire_statement(*impl_, std::string(name), who, ttl);
  if (!token) return std::nullopt;
  return make_lease(impl_, name, who, *token, ttl, sent, held);
}

Lease Locks::acquire(std::string_view name, std::chrono::milliseconds ttl, std::chrono::milliseconds wait,
                     const std::stop_token& stop, std::optional<std::string> owner) {
  return acquire(name, ttl, AcquireOptions{wait, WaitOrder::any, std::move(owner), stop});
}

namespace {
// The wait, from the first try that found the lock held until acquire returns or throws.
struct WaitClock {
  std::optional<std::chrono::steady_clock::time_point> since;
  void start() {
    if (since) return;
    since = std::chrono::steady_clock::now();
    detail::instruments::locks().waits.add();
  }
  WaitClock() = default;
  WaitClock(const WaitClock&) = delete;
  WaitClock& operator=(const WaitClock&) = delete;
  ~WaitClock() {
    if (since) detail::instruments::locks().wait_seconds.observe_since(*since);
  }
};
}  // namespace

Lease Locks::acquire(std::string_view name, std::chrono::milliseconds ttl, const AcquireOptions& options) {
  impl_->validate_name(name);
  impl_->validate_ttl(ttl);
  if (options.wait < std::chrono::milliseconds::zero())
    throw Error(ErrorKind::invalid_argument, "wait must not be negative");
  if (options.owner) impl_->validate_owner(*options.owner);
  const std::string who = options.owner ? *options.owner : new_owner();
  const std::string key(name);
  const std::chrono::milliseconds wait = options.wait;
  const std::stop_token& stop = options.stop;
  const bool fair = options.order == WaitOrder::fair;
  HeldReservation held(*impl_, key, who);
  const auto deadline = std::chrono::steady_clock::now() + wait;
  bool registered = false;
  struct Unregister {
    Impl& impl;
    const std::string& key;
    bool& registered;
    ~Unregister() {
      if (!registered) return;
      try {
        impl.run(impl.sql.remove_waiter, impl.bounded({key}));
      } catch (...) {
        // A stale waiter count only costs an unneeded NOTIFY.
      }
    }
  } unregister{*impl_, key, registered};
  // A fair waiter's ticket, dropped when the wait ends without the lock (when it acquires, the
  // acquiring statement drops it). Those queued behind may go at once then: they are woken.
  std::optional<std::int64_t> ticket;
  struct Dequeue {
    Impl& impl;
    const std::string& key;
    const std::string& owner;
    std::optional<std::int64_t>& ticket;
    ~Dequeue() {
      if (!ticket) return;
      try {
        if (impl.run(impl.sql.dequeue, {key, *ticket, owner}).affected == 0) return;
        impl.wake(key);
        if (!impl.sql.notify_release.empty()) impl.run(impl.sql.notify_release, {key});
      } catch (...) {
        // The ticket runs out at its expiry (LockOptions::queue_ttl).
      }
    }
  } dequeue{*impl_, key, who, ticket};

  // A failure the wait can ride out: a conflict, a lost connection (the pool reconnects), or an
  // acquire whose reply was lost (retrying with the same owner returns the same token).
  std::string last_failure;
  auto survivable = [&](const Error& e) {
    const bool ok =
        e.kind() == ErrorKind::conflict || e.kind() == ErrorKind::transient || e.kind() == ErrorKind::in_doubt;
    if (ok) last_failure = e.what();
    return ok;
  };
  WaitClock waited;
  auto free_backoff = std::chrono::milliseconds(5);
  const Impl::Watch watch(*impl_, key);  // before the first try, so no wake-up after it is missed
  for (;;) {
    const std::uint64_t seen = watch.generation();
    std::optional<QueuedTry> queue;  // what this round's fair try found
    try {
      const auto sent = std::chrono::steady_clock::now();
      if (ticket) {
        queue = queued_statement(*impl_, key, who, ttl, *ticket);
        if (queue->token) {
          ticket.reset();  // dropped by the statement
          return make_lease(impl_, key, who, *queue->token, ttl, sent, held);
        }
      } else if (const auto token = acquire_statement(*impl_, key, who, ttl)) {
        return make_lease(impl_, key, who, *token, ttl, sent, held);
      }
    } catch (const Error& e) {
      if (!survivable(e)) throw;
    }
    waited.start();
    const auto now = std::chrono::steady_clock::now();
    if (stop.stop_requested())
      throw Error(ErrorKind::lock_busy, fmt::format("waiting for lock '{}' was cancelled", key));
    if (now >= deadline)
      throw Error(ErrorKind::lock_busy,
                  fmt::format("lock '{}' was not acquired within {} ms{}", key, wait.count(),
                              last_failure.empty() ? "" : " (last failure: " + last_failure + ")"));
    // A fair waiter queues once its first try found the lock busy, and queues again (at the back)
    // when its ticket ran out while it could not move it on.
    if (fair && (!ticket || (queue && !queue->queued))) {
      ticket.reset();
      try {
        impl_->run(impl_->sql.prune_queue, {key, who});
        const Result r =
            impl_->run(impl_->sql.enqueue, {key, who, static_cast<std::int64_t>(impl_->options.queue_ttl.count())});
        ticket = r.one().i64(0);
        continue;  // try with the ticket at once: nobody may be ahead
      } catch (const Error& e) {
        if (!survivable(e)) throw;
      }
    }
    const bool notified = impl_->ensure_listener();
    if (notified && !registered && !impl_->sql.add_waiter.empty()) {
      try {
        registered = impl_->run(impl_->sql.add_waiter, {key}).affected == 1;
      } catch (const Error& e) {
        if (!survivable(e)) throw;  // 55P03 (a guard holds the row) is a conflict: just poll
      }
      if (registered) continue;  // the holder may have released before it could see us: try again
    }
    // Sleep until the holder's lease expires on the database clock (expiry notifies nobody), or a
    // release wakes us, or the poll interval passes (the only path without notifications).
    auto sleep = notified ? impl_->options.poll_interval * 4 : jittered(impl_->options.poll_interval);
    const auto until = [](std::int64_t at_ms, std::int64_t now_ms) {
      return std::chrono::milliseconds(std::max<std::int64_t>(0, at_ms - now_ms)) + std::chrono::milliseconds(1);
    };
    if (queue) {
      // A fair waiter: its try said what to wait for, and its ticket must be moved on in time.
      sleep = std::min(sleep, impl_->options.queue_ttl / 3);
      if (queue->holder_expires_ms)
        sleep = std::min(sleep, until(*queue->holder_expires_ms, queue->now_ms));
      else if (queue->ahead > 0 && queue->ahead_expires_ms)  // free, but its turn is theirs: until a dead one runs out
        sleep = std::min(sleep, until(*queue->ahead_expires_ms, queue->now_ms));
      else
        sleep = std::min(sleep, jittered(std::chrono::milliseconds(5)));  // free, nobody ahead: retry soon
    } else {
      Result s;
      try {
        s = impl_->run(impl_->sql.state, {key});
      } catch (const Error& e) {
        if (!survivable(e)) throw;
      }
      if (!s.rows.empty() && !s.rows[0].is_null(2) && s.rows[0].i64(2) > s.rows[0].i64(3)) {
        sleep = std::min(sleep, until(s.rows[0].i64(2), s.rows[0].i64(3)));
        free_backoff = std::chrono::milliseconds(5);
      } else if (!s.rows.empty()) {
        // Free (released, or a lease that ran out unreleased) but contended (another waiter got
        // there first), or fair waiters queue for it: retry soon, then less often while it stays
        // that way (a dead fair waiter's ticket can take LockOptions::queue_ttl to run out). An
        // expiry already past is no time to wait for: sleeping until it would retry every 1 ms.
        sleep = std::min(sleep, jittered(free_backoff));
        free_backoff = std::min(free_backoff * 2, impl_->options.poll_interval);
      }
    }
    sleep = std::min(
        sleep, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) + std::chrono::milliseconds(1));
    watch.wait_for_change(seen, sleep, stop);
  }
}

void Locks::renew(std::string_view name, std::string_view owner, std::int64_t token, std::chrono::milliseconds ttl) {
  impl_->validate_name(name);
  impl_->validate_owner(owner);
  impl_->validate_ttl(ttl);
  detail::renew_lease(*impl_, std::string(name), std::string(owner), token, ttl);
}

void Locks::release(std::string_view name, std::string_view owner, std::int64_t token) {
  impl_->validate_name(name);
  impl_->validate_owner(owner);
  detail::release_lease(*impl_, std::string(name), std::string(owner), token);
}

namespace {
std::vector<LockInfo> lock_infos(const Result& r) {
  std::vector<LockInfo> out;
  for (const auto& row : r.rows)
    out.push_back(LockInfo{row.text(0), row.text(1), row.i64(2), row.i64(3) != 0, row.i64(4), row.i64(5), row.i64(6),
                           row.i64(7), row.text(8), row.i64(9) != 0, row.i64(10)});
  return out;
}
}  // namespace

std::vector<LockInfo> Locks::list() { return lock_infos(impl_->run(impl_->sql.list, {})); }

LockCounts Locks::counts(std::int64_t at_ms) {
  const Row r = impl_->run(impl_->sql.counts, {at_ms}).one();
  return LockCounts{r.i64(0), r.i64(1), r.i64(2), r.i64(3), r.i64(4)};
}

std::vector<LockInfo> Locks::active(std::int64_t at_ms, std::size_t limit) {
  if (limit < 1 || limit > 10'000)
    throw Error(ErrorKind::invalid_argument, fmt::format("Locks::active: limit must be 1 to 10000, got {}", limit));
  return lock_infos(impl_->run(impl_->sql.active, {at_ms, static_cast<std::int64_t>(limit)}));
}

void Locks::force_release(std::string_view name, std::string_view reason) {
  impl_->validate_name(name);
  if (reason.empty() || reason.size() > 1000 || !detail::is_text(reason))
    throw Error(ErrorKind::invalid_argument, "force-release needs a reason of 1 to 1000 bytes of UTF-8 without NUL");
  const Result r = impl_->run(impl_->sql.force_release, {std::string(name), std::string(reason)});
  if (r.rows.empty()) throw Error(ErrorKind::not_found, fmt::format("lock '{}' does not exist", name));
  impl_->wake(std::string(name));
  detail::instruments::locks().force_releases.add();
  if (detail::log_enabled(LogLevel::warn))
    detail::log(LogLevel::warn, "locks", "lock force-released",
                {{"lock", std::string(name)}, {"reason", std::string(reason)}});
}

std::int64_t Locks::sweep(std::chrono::milliseconds older_than) {
  if (older_than < std::chrono::milliseconds::zero())
    throw Error(ErrorKind::invalid_argument, "sweep age must not be negative");
  const std::int64_t age = -older_than.count();
  const std::int64_t cleared = impl_->run(impl_->sql.sweep, {age}).affected;
  impl_->run(impl_->sql.sweep_queue, {age});  // tickets of waiters that died (a live waiter moves its own on)
  return cleared;
}

Semaphore::Semaphore(Locks& locks, std::string name, int permits)
    : locks_(locks), name_(std::move(name)), permits_(permits) {
  if (permits < 1 || permits > 10000)
    throw Error(ErrorKind::invalid_argument, fmt::format("a semaphore needs 1 to 10000 permits, got {}", permits));
  if (name_.empty() || name_.size() + 6 > max_name_bytes || !detail::is_text(name_))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("semaphore name must be 1 to {} bytes of UTF-8 without NUL", max_name_bytes - 6));
}

std::optional<Lease> Semaphore::try_acquire(std::chrono::milliseconds ttl) {
  // Start at a random permit so holders spread out instead of all probing permit 0 first.
  thread_local std::mt19937 rng{std::random_device{}()};
  const int first = std::uniform_int_distribution<int>(0, permits_ - 1)(rng);
  for (int i = 0; i < permits_; ++i) {
    const int permit = (first + i) % permits_;
    if (auto lease = locks_.try_acquire(fmt::format("{}#{}", name_, permit), ttl)) return lease;
  }
  return std::nullopt;
}

Lease Semaphore::acquire(std::chrono::milliseconds ttl, std::chrono::milliseconds wait, const std::stop_token& stop) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (auto lease = try_acquire(ttl)) return std::move(*lease);
    if (stop.stop_requested() || std::chrono::steady_clock::now() >= deadline)
      throw Error(ErrorKind::lock_busy, fmt::format("no permit of semaphore '{}' within {} ms", name_, wait.count()));
    std::this_thread::sleep_for(
        std::min(jittered(std::chrono::milliseconds(50)),
                 std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()) +
                     std::chrono::milliseconds(1)));
  }
}

}  // namespace rowguard

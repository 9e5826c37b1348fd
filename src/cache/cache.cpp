#include "rowguard/cache.hpp"

#include <cmath>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

#include "rowguard/locks.hpp"

#include "base/sql_text.hpp"
#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "backend/backend.hpp"

#include "core/database_gate.hpp"
#include "core/standby_route.hpp"

#include "cache/cache_sql.hpp"
#include "cache/local_tier.hpp"

namespace rowguard {

namespace {
// A key's row as read, or its absence, and when it was read: a load judges its store by these.
struct Entry {
  bool exists = false;
  std::optional<std::string> value;  // nullopt with live = a cached "absent"
  bool live = false;
  std::int64_t generation = 0;
  std::int64_t expires_in_ms = 0;  // negative once expired
  std::int64_t load_ms = 0;
  std::int64_t read_at_ms = 0;  // the database clock of the read: a load that follows it began then
  std::chrono::steady_clock::time_point read_returned;
};

std::size_t code_points(std::string_view utf8) {
  std::size_t n = 0;
  for (const char c : utf8) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return n;
}

// The lease guarding one key's loader. Lock names stop at 255 bytes: long keys use a hash, and a
// collision only makes two keys share a loader lease (serialised loads), never a wrong value.
std::string lease_name(std::string_view key) {
  if (key.size() <= 200) return fmt::format("cache:{}", key);
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a
  for (const char c : key) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return fmt::format("cache:{}#{:016x}", key.substr(0, 160), h);
}
}  // namespace

struct Cache::Impl {
  std::shared_ptr<detail::Backend> backend;
  CacheOptions options;
  Locks locks;
  detail::StandbyRoute standby;
  detail::CacheStatements sql;

  // What a load in flight in this process returns, and the read its value answers (see Landed).
  struct Landed {
    std::optional<std::string> value;
    Entry basis;  // the primary's row as the load read it before calling the loader (or its hit)
    // Whether a caller whose own read found `mine` may take this value: only when nothing that
    // read could have seen is newer than the load's read. A row's generation orders its versions;
    // a key without a row (where invalidate_prefix only records the prefix) is ordered by the
    // database clock of the reads, strictly, as an invalidation in the same millisecond could sit
    // between them.
    bool answers(const Entry& mine) const {
      if (mine.exists && basis.exists && basis.generation >= mine.generation) return true;
      return basis.read_at_ms > mine.read_at_ms;
    }
  };
  std::mutex mutex;  // guards flights and stats
  std::unordered_map<std::string, std::shared_future<Landed>> flights;
  CacheStats stats;
  // Shared with commit hooks, which may run after the Cache is gone.
  std::shared_ptr<detail::LocalTier> local;

  // The background sweeper (sweep_every): stopped and joined by ~Cache before anything else goes.
  std::mutex sweeper_mutex;
  std::condition_variable sweeper_wake;
  bool stopping = false;
  std::thread sweeper;

  Impl(Database& db, CacheOptions o)
      : backend(detail::DatabaseGate::shared_backend(db)),
        options(o),
        locks(db),
        standby(*backend, options.standby, "CacheOptions::standby"),
        sql(*backend) {
    if (options.max_key_bytes < 1 || options.max_key_bytes > 4096)
      throw Error(ErrorKind::invalid_argument, "CacheOptions::max_key_bytes must be 1 to 4096");
    if (!(options.ttl_jitter >= 0.0 && options.ttl_jitter < 1.0))
      throw Error(ErrorKind::invalid_argument, "CacheOptions::ttl_jitter must be in [0, 1)");
    if (options.load_lease_ttl.count() <= 0 || options.load_wait.count() < 0 || options.sweep_grace.count() < 0)
      throw Error(ErrorKind::invalid_argument, "CacheOptions durations must not be negative (lease ttl positive)");
    if (options.max_rows < 0 || options.max_bytes < 0)
      throw Error(ErrorKind::invalid_argument, "CacheOptions::max_rows and max_bytes must not be negative");
    if (options.sweep_every.count() < 0)
      throw Error(ErrorKind::invalid_argument, "CacheOptions::sweep_every must not be negative");
    if (options.local_max_bytes > 0) {
      if (options.local_ttl.count() <= 0)
        throw Error(ErrorKind::invalid_argument,
                    "CacheOptions::local_ttl must be positive when the in-process tier is on");
      local = std::make_shared<detail::LocalTier>(options.local_max_bytes, options.local_ttl);
    }
  }

  // Starts the background sweeper; separate from the constructor so ~Cache can always join it.
  void start_sweeper() {
    if (options.sweep_every.count() == 0) return;
    sweeper = std::thread([this] {
      std::unique_lock lock(sweeper_mutex);
      while (!sweeper_wake.wait_for(lock, options.sweep_every, [this] { return stopping; })) {
        lock.unlock();
        try {
          sweep(1000);
        } catch (...) {
          count([](CacheStats& s) { ++s.sweep_failures; });
        }
        lock.lock();
      }
    });
  }

  void stop_sweeper() {
    {
      std::lock_guard lock(sweeper_mutex);
      stopping = true;
    }
    sweeper_wake.notify_all();
    if (sweeper.joinable()) sweeper.join();
  }

  std::int64_t sweep(std::int64_t batch);
  CacheTableStats table_stats();

  // Takes the write gate, exclusive, as tx's first statement. A store judges a load by rows and
  // records that deletions and prefix invalidations leave; on PostgreSQL its statement sees only
  // what had committed when the statement began, yet its INSERT waits for, and then passes, a
  // tombstone that a sweep in flight deletes: the sweep's record of that deletion comes too late
  // for the statement to see, and a load that read before the invalidation would store its old
  // value. So stores hold the gate shared (rowguard_cache_store takes it, schema step 010) and
  // sweeps, evictions and prefix invalidations exclusive: a store's statement begins after every
  // such change before it has committed, and every such change waits for the stores in flight.
  // Per-key writes need no gate: they meet a store on the key's row itself.
  void gate(Transaction& tx) const {
    if (!sql.gate_exclusive.empty()) tx.exec(sql.gate_exclusive, {sql.gate_name});
  }

  // The in-process tier, when on: a fresh local copy of key, or nothing.
  std::optional<std::optional<std::string>> local_get(std::string_view key) {
    if (!local) return std::nullopt;
    auto found = local->get(key);
    if (found) {
      count([](CacheStats& s) { ++s.hits, ++s.local_hits; });
      detail::instruments::cache().hit.add();
    }
    return found;
  }
  std::uint64_t local_stamp(std::string_view key) { return local ? local->stamp(key) : 0; }
  void local_fill(std::string_view key, const Entry& e, std::uint64_t stamp) {
    if (local && e.live) local->fill(key, e.value, e.generation, std::chrono::milliseconds(e.expires_in_ms), stamp);
  }
  // After an invalidation or put made through this Cache commits; inside a transaction, at its commit.
  void local_drop(std::string_view key) {
    if (local) local->drop(key);
  }
  void local_drop_at_commit(Transaction& tx, std::string_view key) {
    if (local) tx.on_commit([tier = local, k = std::string(key)] { tier->drop(k); });
  }

  void check_key(std::string_view key) const {
    if (key.empty() || key.size() > options.max_key_bytes || !detail::is_text(key))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("cache key must be 1 to {} bytes of UTF-8 without NUL", options.max_key_bytes));
  }
  void check_value(std::string_view value) const {
    if (value.size() > options.max_value_bytes)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("cache value is {} bytes; the maximum is {}", value.size(), options.max_value_bytes));
  }
  static void check_ttl(std::chrono::milliseconds ttl) {
    if (ttl.count() <= 0 || ttl > Cache::max_ttl)
      throw Error(ErrorKind::invalid_argument, fmt::format("cache ttl must be 1 ms to {} ms (366 days), got {} ms",
                                                           Cache::max_ttl.count(), ttl.count()));
  }
  std::int64_t jittered(std::chrono::milliseconds ttl) const {
    if (options.ttl_jitter == 0.0) return ttl.count();
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const auto cut = static_cast<std::int64_t>(static_cast<double>(ttl.count()) * options.ttl_jitter *
                                               std::uniform_real_distribution<double>(0.0, 1.0)(rng));
    return std::max<std::int64_t>(1, ttl.count() - cut);
  }

  template <class F>
  void count(F&& f) {
    std::lock_guard lock(mutex);
    f(stats);
  }

  // The key's row on the primary (a load's start).
  Entry read(std::string_view key) { return entry_of((*backend->borrow())->exec(sql.read, {std::string(key)})); }

  // The key's row where a hit may come from: a live row on the standby when one is configured and
  // fresh enough, else the primary's row. Anything but a live row comes from the primary.
  Entry read_for_hit(std::string_view key) {
    Entry e;
    if (standby.run([&](detail::Session& s) { e = entry_of(s.exec(sql.read, {std::string(key)})); }) && e.live)
      return e;
    return read(key);
  }

  static Entry entry_of(const Result& r) {
    Entry e;
    e.read_returned = std::chrono::steady_clock::now();
    const Row& row = r.one();
    e.read_at_ms = row.i64(5);
    if (row.is_null(2)) return e;  // no row
    e.exists = true;
    if (!row.is_null(0)) e.value = row.bytes(0);
    e.live = row.i64(1) != 0;
    e.generation = row.i64(2);
    e.expires_in_ms = row.i64(3);
    e.load_ms = row.i64(4);
    return e;
  }

  // stamp: the in-process tier's stamp taken before this caller first read the table;
  // seen: what that read found on the primary (a miss).
  // basis: set to the read the returned value answers (seen, or the read after the lease).
  std::optional<std::string> load(const std::string& key, std::chrono::milliseconds ttl, const CacheLoader& loader,
                                  const LoadOptions& load_options, std::uint64_t stamp, const Entry& seen,
                                  Entry& basis);
  // Loads and stores what the loader returns, judged against seen (the read the load began with);
  // lease: the key's loader lease, or null under LoadScope::this_process.
  std::optional<std::string> load_holding(Lease* lease, const std::string& key, const Entry& seen,
                                          std::chrono::milliseconds ttl, const CacheLoader& loader,
                                          const LoadOptions& load_options, std::uint64_t stamp);
  // Stores a loaded value (or absence) unless the load is too old or was overtaken.
  void store(const std::string& key, const Entry& seen, const std::optional<std::string>& value,
             const LoadOptions& load_options, std::chrono::milliseconds took, std::chrono::milliseconds ttl,
             std::uint64_t stamp);
  // The loader lease goes back once the value is stored (or refused). A lease that was lost or
  // cannot be released changes nothing for the callers: the store was judged by the table, and an
  // unreleased lease expires at its ttl.
  void release_loader_lease(Lease& lease, const std::string& key);
  // A refresh that must not wait: the key's lease now, or nothing (someone else is refreshing).
  std::optional<Lease> try_lease(const std::string& key) {
    return locks.try_acquire(lease_name(key), options.load_lease_ttl);
  }

  // XFetch: refresh early with probability rising as expiry nears (gap = -load_ms * beta * ln U).
  static bool refresh_early(const Entry& e, const LoadOptions& o) {
    if (!o.early_refresh || o.beta <= 0.0) return false;
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const double u = std::uniform_real_distribution<double>(std::numeric_limits<double>::min(), 1.0)(rng);
    const double gap = -static_cast<double>(std::max<std::int64_t>(e.load_ms, 1)) * o.beta * std::log(u);
    return gap >= static_cast<double>(e.expires_in_ms);
  }
};

std::optional<std::string> Cache::Impl::load(const std::string& key, std::chrono::milliseconds ttl,
                                             const CacheLoader& loader, const LoadOptions& load_options,
                                             std::uint64_t stamp, const Entry& seen, Entry& basis) {
  basis = seen;
  // Without a lease the caller's miss is the read the load began with.
  if (load_options.scope == LoadScope::this_process)
    return load_holding(nullptr, key, seen, ttl, loader, load_options, stamp);
  // One loader per key across processes: the lease. Whoever waited for it looks again first.
  std::optional<Lease> lease = locks.try_acquire(lease_name(key), options.load_lease_ttl);
  if (!lease) {
    count([](CacheStats& s) { ++s.waits; });
    lease = locks.acquire(lease_name(key), options.load_lease_ttl, options.load_wait);
  }
  const auto again = read(key);
  basis = again;
  if (again.live) {
    count([](CacheStats& s) { ++s.hits; });
    local_fill(key, again, stamp);
    release_loader_lease(*lease, key);
    return again.value;
  }
  return load_holding(&*lease, key, again, ttl, loader, load_options, stamp);
}

void Cache::Impl::release_loader_lease(Lease& lease, const std::string& key) {
  try {
    lease.release();
  } catch (const Error& e) {
    count([](CacheStats& s) { ++s.lease_lost; });
    if (detail::log_enabled(LogLevel::warn))
      detail::log(LogLevel::warn, "cache", "cache loader lease lost", {{"key", key}, {"error", e.what()}});
  }
}

std::optional<std::string> Cache::Impl::load_holding(Lease* lease, const std::string& key, const Entry& seen,
                                                     std::chrono::milliseconds ttl, const CacheLoader& loader,
                                                     const LoadOptions& load_options, std::uint64_t stamp) {
  // However long the loader runs, the lease stays ours while this process lives (renewed every
  // load_lease_ttl / 3), so no other process starts a second load meanwhile.
  if (lease) lease->start_heartbeat();
  count([](CacheStats& s) { ++s.loads; });
  const auto& m = detail::instruments::cache();
  std::optional<std::string> value;
  const auto started = std::chrono::steady_clock::now();
  try {
    value = loader();
  } catch (...) {
    m.load_seconds.observe_since(started);
    m.load_error.add();
    count([](CacheStats& s) { ++s.load_failures; });
    if (detail::log_enabled(LogLevel::warn)) {
      std::string why = "a non-standard exception";
      try {
        throw;
      } catch (const std::exception& e) {
        why = e.what();
      } catch (...) {
      }
      detail::log(LogLevel::warn, "cache", "cache load failed", {{"key", key}, {"error", why}});
    }
    throw;  // the lease is released on the way out: other processes take their own turn
  }
  m.load_seconds.observe_since(started);
  m.load_ok.add();
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  if (value) check_value(*value);
  if (value || load_options.negative_ttl) store(key, seen, value, load_options, took, ttl, stamp);
  if (lease) release_loader_lease(*lease, key);
  return value;
}

void Cache::Impl::store(const std::string& key, const Entry& seen, const std::optional<std::string>& value,
                        const LoadOptions& load_options, std::chrono::milliseconds took, std::chrono::milliseconds ttl,
                        std::uint64_t stamp) {
  const auto refused = [&](bool too_old) {
    count([&](CacheStats& s) { ++s.stale_skipped, s.too_old += too_old; });
    detail::instruments::cache().stale_writes_refused.add();
  };
  // Already older than the grace on this process's clock, so on the database's too (whose clock
  // read began before this one started counting): refused without a round trip. The store
  // statement checks the same on the database clock, which has the last word.
  if (std::chrono::steady_clock::now() - seen.read_returned >= options.sweep_grace) return refused(true);
  const auto keep = jittered(value ? ttl : *load_options.negative_ttl);
  const auto size = static_cast<std::int64_t>(value ? value->size() : 0);
  const std::vector<Value> params{key,
                                  value ? Value(Blob{*value}) : Value(nullptr),
                                  size,
                                  keep,
                                  seen.generation,
                                  static_cast<std::int64_t>(took.count()),
                                  seen.read_at_ms,
                                  static_cast<std::int64_t>(options.sweep_grace.count())};
  // One statement in autocommit: it takes the write gate itself where the engine needs one.
  Result stored = (*backend->borrow())->exec(sql.store, params);
  if (!stored.empty() && stored.rows[0].is_null(0)) {
    // Not judged: the server's default isolation is above READ COMMITTED, where the statement
    // could not see what the gate's holders committed (schema/postgres/010_cache_statements.sql).
    Transaction tx = detail::DatabaseGate::begin(*backend, {});
    stored = tx.exec(sql.store, params);
    tx.commit();
  }
  if (stored.empty()) return refused(false);
  count([&](CacheStats& s) { s.bytes_stored += static_cast<std::uint64_t>(size); });
  if (local) local->fill(key, value, stored.rows[0].i64(0), std::chrono::milliseconds(keep), stamp);
}

Cache::Cache(Database& db, CacheOptions options) : impl_(std::make_unique<Impl>(db, options)) {
  impl_->start_sweeper();
}
Cache::~Cache() { impl_->stop_sweeper(); }

std::optional<std::string> Cache::get(std::string_view key) {
  impl_->check_key(key);
  if (!impl_->local) {
    Result r;
    if (!impl_->standby.run([&](detail::Session& s) { r = s.exec(impl_->sql.hit, {std::string(key)}); }) || r.empty())
      r = (*impl_->backend->borrow())->exec(impl_->sql.hit, {std::string(key)});
    impl_->count([&](CacheStats& s) { ++(r.empty() ? s.misses : s.hits); });
    (r.empty() ? detail::instruments::cache().miss : detail::instruments::cache().hit).add();
    if (r.empty() || r.rows[0].is_null(0)) return std::nullopt;
    return r.rows[0].bytes(0);
  }
  if (auto local = impl_->local_get(key)) return *local;
  const auto stamp = impl_->local_stamp(key);
  const auto e = impl_->read_for_hit(key);
  impl_->count([&](CacheStats& s) { ++(e.live ? s.hits : s.misses); });
  (e.live ? detail::instruments::cache().hit : detail::instruments::cache().miss).add();
  if (e.live) impl_->local_fill(key, e, stamp);
  return e.live ? e.value : std::nullopt;
}

void Cache::put(std::string_view key, std::string_view value, std::chrono::milliseconds ttl) {
  impl_->check_key(key);
  impl_->check_value(value);
  Impl::check_ttl(ttl);
  auto session = impl_->backend->borrow();
  (*session)->exec(impl_->sql.put, {std::string(key), Blob{std::string(value)}, static_cast<std::int64_t>(value.size()),
                                    impl_->jittered(ttl)});
  impl_->count([&](CacheStats& s) { s.bytes_stored += value.size(); });
  impl_->local_drop(key);
}

void Cache::put(Transaction& tx, std::string_view key, std::string_view value, std::chrono::milliseconds ttl) {
  impl_->check_key(key);
  impl_->check_value(value);
  Impl::check_ttl(ttl);
  tx.exec(impl_->sql.put,
          {std::string(key), Blob{std::string(value)}, static_cast<std::int64_t>(value.size()), impl_->jittered(ttl)});
  impl_->count([&](CacheStats& s) { s.bytes_stored += value.size(); });
  impl_->local_drop_at_commit(tx, key);
}

void Cache::invalidate(std::string_view key) {
  impl_->check_key(key);
  auto session = impl_->backend->borrow();
  (*session)->exec(impl_->sql.invalidate, {std::string(key)});
  detail::instruments::cache().invalidations.add();
  impl_->local_drop(key);
}

void Cache::invalidate(Transaction& tx, std::string_view key) {
  impl_->check_key(key);
  tx.exec(impl_->sql.invalidate, {std::string(key)});
  detail::instruments::cache().invalidations.add();
  impl_->local_drop_at_commit(tx, key);
}

std::int64_t Cache::invalidate_prefix(std::string_view prefix) {
  impl_->check_key(prefix);
  // The rows under the prefix get tombstones, and the prefix is recorded for keys without a row:
  // together, at one commit. The record comes last, so its time is after every row it covers.
  Transaction tx = detail::DatabaseGate::begin(*impl_->backend, {});
  impl_->gate(tx);
  const std::int64_t n =
      tx.exec(impl_->sql.invalidate_prefix, {std::string(prefix), static_cast<std::int64_t>(code_points(prefix))})
          .affected;
  tx.exec(impl_->sql.record_prefix, {std::string(prefix)});
  tx.commit();
  detail::instruments::cache().invalidations.add();
  if (impl_->local) impl_->local->drop_prefix(prefix);
  return n;
}

void Cache::forget_local(std::string_view key) { impl_->local_drop(key); }

std::optional<std::string> Cache::get_or_load(std::string_view key, std::chrono::milliseconds ttl,
                                              const CacheLoader& loader, LoadOptions options) {
  impl_->check_key(key);
  Impl::check_ttl(ttl);
  if (options.negative_ttl) Impl::check_ttl(*options.negative_ttl);
  if (!loader) throw Error(ErrorKind::invalid_argument, "get_or_load needs a loader");
  if (options.stale_for && options.stale_for->count() < 0)
    throw Error(ErrorKind::invalid_argument, "stale_for must not be negative");
  if (auto local = impl_->local_get(key)) return *local;
  const auto stamp = impl_->local_stamp(key);
  const auto e = impl_->read_for_hit(key);
  if (e.live) {
    impl_->count([](CacheStats& s) { ++s.hits; });
    detail::instruments::cache().hit.add();
    if (Impl::refresh_early(e, options)) {
      if (auto lease = impl_->try_lease(std::string(key))) {  // one caller refreshes; the rest keep hitting
        impl_->count([](CacheStats& s) { ++s.early_refreshes; });
        // The hit may have come from a standby (its generation and clock are not the primary's):
        // the refresh begins with a read on the primary.
        return impl_->load_holding(&*lease, std::string(key), impl_->read(key), ttl, loader, options, stamp);
      }
    }
    impl_->local_fill(key, e, stamp);
    return e.value;
  }
  if (e.exists && options.stale_for && e.value && -e.expires_in_ms <= options.stale_for->count()) {
    // Stale but within stale_for: refresh if nobody else is, else serve the old value at once.
    if (auto lease = impl_->try_lease(std::string(key))) {
      impl_->count([](CacheStats& s) { ++s.misses; });
      detail::instruments::cache().miss.add();
      return impl_->load_holding(&*lease, std::string(key), e, ttl, loader, options, stamp);
    }
    impl_->count([](CacheStats& s) { ++s.stale_served; });
    detail::instruments::cache().stale.add();
    return e.value;
  }
  impl_->count([](CacheStats& s) { ++s.misses; });
  detail::instruments::cache().miss.add();
  // Single flight in this process: the first caller loads, the others wait for its result. A
  // caller takes the result of a load that read before it only when that read was not older than
  // its own (Landed::answers): a caller that came after an invalidation committed never gets the
  // value of a load that began before it. Otherwise it waits that load out and starts over from
  // its read, which finds the loaded value if the store was allowed (it is then newer than the
  // invalidation), or loads again.
  const std::string k(key);
  std::promise<Impl::Landed> promise;
  std::shared_future<Impl::Landed> flight;
  bool leader = false;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->flights.find(k);
    if (it == impl_->flights.end()) {
      flight = promise.get_future().share();
      impl_->flights.emplace(k, flight);
      leader = true;
    } else {
      flight = it->second;
      ++impl_->stats.waits;
    }
  }
  if (!leader) {
    try {
      const Impl::Landed& landed = flight.get();  // rethrows the leader's exception
      if (landed.answers(e)) return landed.value;
      return get_or_load(key, ttl, loader, options);  // that load read before this caller did
    } catch (const Error& err) {
      throw Error(err);  // each waiter its own copy, for the same reason as below
    }
  }
  struct Land {
    Impl& impl;
    const std::string& key;
    ~Land() {
      std::lock_guard lock(impl.mutex);
      impl.flights.erase(key);
    }
  } land{*impl_, k};
  try {
    Impl::Landed landed;
    landed.value = impl_->load(k, ttl, loader, options, stamp, e, landed.basis);
    promise.set_value(landed);
    return landed.value;
  } catch (const Error& err) {
    // The waiters get a copy: the exception this thread rethrows is never shared with them (its
    // reference count lives in uninstrumented libstdc++, which ThreadSanitizer cannot follow).
    promise.set_exception(std::make_exception_ptr(Error(err)));
    throw;
  } catch (...) {
    promise.set_exception(std::current_exception());  // the loader's own exception type
    throw;
  }
}

std::int64_t Cache::sweep(std::int64_t batch) { return impl_->sweep(batch); }

std::int64_t Cache::Impl::sweep(std::int64_t batch) {
  if (batch < 1) throw Error(ErrorKind::invalid_argument, "sweep batch must be positive");
  const auto grace = static_cast<std::int64_t>(-options.sweep_grace.count());
  std::int64_t total = 0;
  // Counted as each batch commits, so stats() never trails what the table shows for long.
  const auto deleted = [&](std::int64_t n) {
    total += n;
    count([&](CacheStats& s) { s.evictions += static_cast<std::uint64_t>(n); });
  };
  for (;;) {
    Transaction tx = detail::DatabaseGate::begin(*backend, {});
    gate(tx);
    const std::int64_t n = tx.exec(sql.sweep, {grace, batch}).affected;
    if (n > 0) tx.exec(sql.record_sweep, {grace});
    tx.commit();
    deleted(n);
    if (n < batch) break;
  }
  // Prefix records older than this sweeper's grace. A loader with a longer grace may have begun
  // before one of them, so their deletion is recorded like a row's.
  {
    Transaction tx = detail::DatabaseGate::begin(*backend, {});
    gate(tx);
    if (tx.exec(sql.sweep_prefixes, {grace}).affected > 0) tx.exec(sql.record_sweep, {grace});
    tx.commit();
  }
  // Then the size bounds, least recently written first, a batch at a time.
  while (options.max_rows > 0 || options.max_bytes > 0) {
    const CacheTableStats now = table_stats();
    std::int64_t excess = 0;
    if (options.max_rows > 0 && now.rows > options.max_rows) excess = now.rows - options.max_rows;
    if (options.max_bytes > 0 && now.bytes > options.max_bytes && now.rows > 0) {
      // Rows to drop for the bytes, assuming average-sized rows; the loop re-measures.
      const std::int64_t average = std::max<std::int64_t>(1, now.bytes / now.rows);
      excess = std::max(excess, (now.bytes - options.max_bytes + average - 1) / average);
    }
    if (excess <= 0) break;
    const std::int64_t limit = std::min(excess, batch);
    std::int64_t n = 0;
    {
      Transaction tx = detail::DatabaseGate::begin(*backend, {});
      gate(tx);
      n = tx.exec(sql.evict, {grace, limit}).affected;
      if (n > 0) tx.exec(sql.record_sweep, {grace});
      tx.commit();
    }
    if (n == 0) {
      // Every row left was changed within the grace, where a load in flight may need it. The
      // bound holds anyway: the rows go, and the eviction is recorded as an invalidation of every
      // key (the empty prefix) at the same commit, which refuses every load begun before it.
      Transaction tx = detail::DatabaseGate::begin(*backend, {});
      gate(tx);
      n = tx.exec(sql.evict_recent, {limit}).affected;
      tx.exec(sql.record_prefix, {std::string()});
      tx.commit();
    }
    deleted(n);
    if (n == 0) break;
  }
  count([](CacheStats& s) { ++s.sweeps; });
  return total;
}

CacheTableStats Cache::table_stats() { return impl_->table_stats(); }

CacheTableStats Cache::Impl::table_stats() {
  auto session = backend->borrow();
  const Row r = (*session)->exec(sql.table_stats, {}).one();
  return CacheTableStats{r.i64(0), r.i64(1), r.i64(2)};
}

CacheStats Cache::stats() const {
  CacheStats out;
  {
    std::lock_guard lock(impl_->mutex);
    out = impl_->stats;
  }
  if (impl_->local) {
    out.local_bytes = impl_->local->bytes();
    out.local_evictions = impl_->local->evictions();
  }
  return out;
}

}  // namespace rowguard

#pragma once
// rowguard::Cache: a read-through cache table in the same database as the data, so an
// invalidation commits in the same transaction as the write that makes a value stale.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "rowguard/database.hpp"
#include "rowguard/standby.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

struct CacheOptions {
  // Longest key. Default: 1024 bytes of UTF-8. REQUIRES: 1..4096.
  std::size_t max_key_bytes = 1024;
  // Largest value. Default: 1 MiB.
  std::size_t max_value_bytes = 1 << 20;
  // Each stored TTL is shortened by a random fraction up to this, so keys loaded together do not
  // all expire together. Default: 0.05 (up to 5%). REQUIRES: 0 <= jitter < 1.
  double ttl_jitter = 0.05;
  // The cross-process loader lease. It is renewed in the background (every third of it) while the
  // loader runs, however long that takes; a loader whose process dies frees the key after this.
  // Default: 30s.
  std::chrono::milliseconds load_lease_ttl{30'000};
  // How long get_or_load waits for another process's loader before Error(lock_busy). Default: 60s.
  std::chrono::milliseconds load_wait{60'000};
  // sweep() deletes rows expired and last changed longer ago than this, so a tombstone stays this
  // long to refuse loads that began before it. It is also the longest a load may take from its
  // miss to its store: a slower load is not stored (CacheStats::too_old), and with 0 no load is
  // ever stored. docs/cache.md, "What a load may store", has the exact bounds. Default: 1h.
  std::chrono::milliseconds sweep_grace{3'600'000};
  // Size bounds enforced by sweep(): after expired rows, the least recently written rows go until
  // at most max_rows rows and max_bytes value bytes remain. 0 = no bound. Default: 0 and 0.
  // When that takes rows changed within sweep_grace, the loads in flight at that moment are not
  // stored (the eviction counts as an invalidation of every key).
  std::int64_t max_rows = 0;
  std::int64_t max_bytes = 0;
  // When positive, sweep() runs on a background thread this often (failures are counted in
  // CacheStats::sweep_failures and tried again next time). Default: 0 (never; call sweep() yourself).
  std::chrono::milliseconds sweep_every{0};
  // The in-process tier: a bounded LRU in front of the table holding up to this many bytes (keys,
  // values and about 128 bytes of bookkeeping per entry). Default: 0 (off).
  std::size_t local_max_bytes = 0;
  // How long the in-process tier keeps a value (never past its expiry in the table). Invalidations
  // made through this Cache drop local copies when they commit; those made by other processes (or
  // other Cache objects) reach this tier only when its copy expires, so this is how stale a read
  // can be. Default: 1s. REQUIRES: > 0 when the tier is on.
  std::chrono::milliseconds local_ttl{1000};
  // Hits may come from a standby at most standby.max_staleness behind the primary: get() and
  // get_or_load() look there first and return a live value found there (it may predate an
  // invalidation or put by up to that bound, plus local_ttl when the in-process tier keeps it); a
  // miss, an expired value, or a standby too stale or failing, and every write, load and lease go
  // to the primary. Default: none.
  StandbyReads standby;
};

// What the table holds, counted by Cache::table_stats() (a scan: for dashboards, not hot paths).
struct CacheTableStats {
  std::int64_t rows = 0;
  std::int64_t live_rows = 0;
  std::int64_t bytes = 0;
};

// What a loader returns: a value, or nothing ("absent", cached only when negative_ttl is set).
using CacheLoader = std::function<std::optional<std::string>()>;

// Where get_or_load keeps loads of one key to one at a time.
enum class LoadScope {
  all_processes,  // a lease on the key in the locks table: one loader anywhere
  this_process,   // single flight in this process only: for loaders cheaper than the lease's writes
};

struct LoadOptions {
  // Default: all_processes. this_process skips the lease (one write each to take and release it):
  // right for a loader that is a single indexed read, such as the ledger's account loader.
  // Either way the generation check keeps a value an invalidation overtook out of the table.
  LoadScope scope = LoadScope::all_processes;
  // How long a cached "absent" lives; unset: absence is not cached. Default: unset.
  std::optional<std::chrono::milliseconds> negative_ttl;
  // Stale-while-revalidate: a value past its ttl but within stale_for is returned at once, unless
  // this caller is the one that gets to refresh it (then it loads and returns the new value).
  // Default: unset (an expired value is a miss).
  std::optional<std::chrono::milliseconds> stale_for;
  // Probabilistic early refresh (XFetch): a hit refreshes early with a probability that grows as
  // expiry nears, scaled by how long the last load took and by beta, so hot keys are refreshed by
  // one caller before they expire instead of by all of them at once. Default: off; beta 1.0.
  bool early_refresh = false;
  double beta = 1.0;
};

// Counters kept in process since the Cache was made.
struct CacheStats {
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t loads = 0;          // loader calls in this process
  std::uint64_t load_failures = 0;  // loader calls that threw
  std::uint64_t waits = 0;          // calls that waited for another thread's or process's loader
  std::uint64_t stale_skipped = 0;  // loaded values not stored: an invalidation or put came first, or too_old
  std::uint64_t evictions = 0;      // rows deleted by sweep()
  std::uint64_t stale_served = 0;   // expired values returned within stale_for while another caller refreshed
  std::uint64_t early_refreshes = 0;
  std::uint64_t local_hits = 0;       // hits answered by the in-process tier (also counted in hits)
  std::uint64_t local_evictions = 0;  // in-process entries pushed out by its byte bound
  std::uint64_t local_bytes = 0;      // bytes the in-process tier holds now
  std::uint64_t bytes_stored = 0;     // value bytes written by put() and by loads
  std::uint64_t sweep_failures = 0;   // background sweeps that failed (see sweep_every)
  std::uint64_t sweeps = 0;           // sweeps completed, background ones included
  std::uint64_t too_old = 0;     // loads not stored because they took longer than sweep_grace (also in stale_skipped)
  std::uint64_t lease_lost = 0;  // loads whose loader lease was lost or not released (their value was still judged)
};

// Thread-safety: safe for concurrent use. Reads never write: no hit counters or LRU updates in the table.
//
// Example:
//   rowguard::Cache cache(db);
//   auto balance = cache.get_or_load("balance:alice", 30s, [&] { return load_balance("alice"); });
//   auto tx = db.begin();  ...write...;  cache.invalidate(tx, "balance:alice");  tx.commit();
class Cache {
 public:
  explicit Cache(Database& db, CacheOptions options = {});
  ~Cache();

  // The live value, or nothing when absent, expired or cached as absent.
  std::optional<std::string> get(std::string_view key);
  // The longest ttl a value may be given: one year (a longer one is invalid_argument, as is zero or less).
  static constexpr std::chrono::milliseconds max_ttl{366LL * 24 * 3600 * 1000};
  // Stores a value for ttl (jittered). Makes any load in flight for the key stale.
  void put(std::string_view key, std::string_view value, std::chrono::milliseconds ttl);
  void put(Transaction& tx, std::string_view key, std::string_view value, std::chrono::milliseconds ttl);
  // Drops the key; inside tx it takes effect when tx commits, and not at all if it rolls back.
  void invalidate(std::string_view key);
  void invalidate(Transaction& tx, std::string_view key);
  // Drops every key that starts with prefix, and makes every load in flight of a key under it
  // stale, whether the key has a row or not; returns how many rows it touched.
  std::int64_t invalidate_prefix(std::string_view prefix);
  // Drops key from this process's in-process tier only, for a write made outside this Cache whose
  // invalidation has committed (the ledger's one-statement transfer uses it). Call it after commit.
  void forget_local(std::string_view key);

  // A hit returns the stored value. On a miss exactly one loader runs per key at a time, across
  // threads (single flight) and processes (a lease on the key, kept while the loader runs); the
  // others wait and get its value. A loader that throws stores nothing: waiters in this process get
  // its exception, other processes take their own turn. The result is stored only if no
  // invalidation, put or prefix invalidation of the key happened since the miss and the load took
  // less than sweep_grace, so a slow loader never writes back a stale value; the caller (and its
  // waiters) get the loaded value either way, never Error(lock_lost) for the loader's lease.
  std::optional<std::string> get_or_load(std::string_view key, std::chrono::milliseconds ttl, const CacheLoader& loader,
                                         LoadOptions options = {});

  // Deletes rows expired and last changed longer than sweep_grace ago, oldest first, then (when
  // max_rows or max_bytes is set) the least recently written rows until the table is within its
  // bounds; at most batch rows per statement, so no statement holds locks for long. Never lets a
  // load that began before the last change of a row it deletes store. Returns how many.
  std::int64_t sweep(std::int64_t batch = 1000);

  CacheTableStats table_stats();

  CacheStats stats() const;

 private:
  struct Impl;  // src/<component>/: the state and statements behind the handle
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard

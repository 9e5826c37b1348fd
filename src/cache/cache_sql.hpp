#pragma once
// The SQL of every cache operation, built once per Cache from the dialect and the table prefix
// (values are always bound parameters), and the invalidation other components run in their own
// transactions (the ledger drops both accounts of a transfer with one statement).

#include <string>
#include <string_view>

#include "backend/backend.hpp"

namespace rowguard::detail {

struct CacheStatements {
  // $1 key -> always one row: (value, live 0/1, generation, expires in ms, load_ms, now ms); the
  // row's columns are NULL without a row. A miss is the start of a load, row or not.
  std::string read;
  // $1 key -> (value) while live: get() without the in-process tier.
  std::string hit;
  // $1 key, $2 value, $3 size, $4 ttl ms: raises the generation, so any load in flight is stale.
  std::string put;
  // $1 key, $2 value or NULL, $3 size, $4 ttl ms, $5 generation read, $6 load ms, $7 database clock
  // of the read that began the load, $8 sweep_grace ms -> (generation) when stored, no row when
  // refused (docs/cache.md, "What a load may store"). Sent alone, in autocommit: on PostgreSQL it
  // is the call of rowguard_cache_store (schema step 010), which takes the write gate shared
  // itself, and answers (NULL) without judging outside READ COMMITTED: then send it again in a
  // READ COMMITTED transaction. SQLite needs no gate.
  std::string store;
  // $1 key: a tombstone with a higher generation, even for a key never cached.
  std::string invalidate;
  // $1 prefix, $2 its length in code points -> rows turned into tombstones.
  std::string invalidate_prefix;
  // $1 prefix: records a prefix invalidation for keys without a row, never moving it back.
  std::string record_prefix;
  // $1 = -(sweep_grace ms), $2 batch -> rows deleted: expired and last changed before the cutoff.
  std::string sweep;
  // $1 = -(sweep_grace ms) -> prefix records older than the cutoff deleted (never the empty one).
  std::string sweep_prefixes;
  // $1 = -(sweep_grace ms): records the cutoff under the empty prefix (every key), never moving it
  // back, in the transaction of a sweep or eviction that deleted something.
  std::string record_sweep;
  // $1 = -(sweep_grace ms), $2 limit -> least recently written rows older than the cutoff deleted.
  std::string evict;
  // $1 limit -> least recently written rows deleted whatever their age (recorded by record_prefix '').
  std::string evict_recent;
  // -> (rows, live rows, bytes)
  std::string table_stats;
  // The write gate: a transaction-scoped lock named gate_name (the cache table), exclusive for
  // sweeps, evictions and prefix invalidations (Cache::Impl::gate says why; stores take it shared
  // inside store); "" where the engine needs none (Dialect::transaction_lock).
  std::string gate_exclusive, gate_name;

  explicit CacheStatements(const Backend& backend);
};

// $1, $2 keys, either NULL for none: the tombstones of CacheStatements::invalidate for both, in
// one statement (on PostgreSQL the call of rowguard_cache_invalidate, schema step 010), for a
// component that drops two keys in its own transaction (the ledger's accounts). Bind them in
// order, so PostgreSQL takes the rows' locks in one order; the keys must differ. The in-process
// tier is the caller's to drop, at commit (Cache::forget_local).
std::string cache_invalidate_two_sql(const Backend& backend);

}  // namespace rowguard::detail

#include "cache/cache_sql.hpp"

#include <fmt/format.h>

#include "base/sql_text.hpp"

namespace rowguard::detail {

namespace {
// The generation of a row that did not exist: the database clock in ms times 1000. A key whose row
// a sweep deleted and a write then recreated would otherwise start again at the generation a load
// in flight may have read before the sweep (its store also checks updated_at, in milliseconds).
std::string fresh_generation(const Dialect& d) { return fmt::format("({} * 1000)", d.now_ms()); }

// A call of a function of schema step 010 (schema/postgres/010_cache_statements.sql) with these
// argument expressions, marked as a write as Backend::function_call marks its calls (a lost reply
// leaves it in doubt).
std::string cache_function_call(const Backend& backend, std::string_view function, std::string_view args) {
  return fmt::format("{}SELECT * FROM {}({})", writes_marker, backend.table(function), args);
}

// An upsert that leaves an expired tombstone with a higher generation for every key that
// "SELECT key_expr <tail>" yields, so any load that began earlier cannot store afterwards. tail
// must contain a WHERE (SQLite's upsert grammar needs one after INSERT ... SELECT). PostgreSQL's
// functions rowguard_cache_invalidate, rowguard_apply_transfer and rowguard_hold_drop_cached
// (schema/postgres/010, 008 and 009) write the same tombstones: keep them alike.
std::string cache_invalidate_sql(const Backend& backend, std::string_view key_expr, std::string_view tail) {
  const auto& d = backend.dialect();
  const std::string now = d.now_timestamp();
  // The tombstone expires as it is written (never at the epoch): sweeps keep it for sweep_grace.
  return fmt::format(
      "INSERT INTO {t} AS c (key, expires_at, generation, size_bytes, created_at, updated_at) "
      "SELECT {key}, {now}, {fresh}, 0, {now}, {now} {tail} ON CONFLICT (key) DO UPDATE SET value = NULL, "
      "expires_at = excluded.expires_at, generation = c.generation + 1, size_bytes = 0, "
      "updated_at = excluded.updated_at",
      fmt::arg("t", backend.table("cache")), fmt::arg("key", key_expr), fmt::arg("fresh", fresh_generation(d)),
      fmt::arg("now", now), fmt::arg("tail", tail));
}
}  // namespace

std::string cache_invalidate_two_sql(const Backend& backend) {
  if (backend.dialect().has_server_statements()) return cache_function_call(backend, "cache_invalidate", "$1, $2");
  return cache_invalidate_sql(backend, "v.k",
                              "FROM (SELECT CAST($1 AS text) AS k UNION ALL SELECT CAST($2 AS text) AS k) v "
                              "WHERE v.k IS NOT NULL");
}

CacheStatements::CacheStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string t = backend.table("cache");
  const std::string prefixes = backend.table("cache_prefixes");
  gate_exclusive = d.transaction_lock();
  gate_name = t;
  const std::string now = d.now_timestamp();
  const std::string fresh = fresh_generation(d);
  // Always one row, with the database clock: a miss is the start of a load, row or not.
  read = fmt::format(
      "SELECT {}, CASE WHEN c.expires_at > {} THEN 1 ELSE 0 END, c.generation, {} - n.now_ms, c.load_ms, n.now_ms "
      "FROM (SELECT {} AS now_ms) n LEFT JOIN {} c ON c.key = $1",
      d.blob_column("c.value"), now, d.timestamp_to_ms("c.expires_at"), d.now_ms(), t);
  // get() without the in-process tier needs only a live value: the primary-key lookup alone,
  // without the columns that loads and the tier use.
  hit = fmt::format("SELECT {} FROM {} WHERE key = $1 AND expires_at > {}", d.blob_column("value"), t, now);
  // A put, like an invalidation, bumps the generation: any load in flight is now stale.
  put = fmt::format(
      "INSERT INTO {t} AS c (key, value, expires_at, generation, size_bytes, created_at, updated_at) "
      "VALUES ($1, {v}, {exp}, {fresh}, $3, {now}, {now}) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
      "expires_at = excluded.expires_at, generation = c.generation + 1, size_bytes = excluded.size_bytes, "
      "updated_at = excluded.updated_at",
      fmt::arg("t", t), fmt::arg("v", d.blob_param("$2")), fmt::arg("exp", d.timestamp_plus_ms(now, "$4")),
      fmt::arg("fresh", fresh), fmt::arg("now", now));
  if (d.has_server_statements()) {
    // PostgreSQL: the functions of schema step 010 (schema/postgres/010_cache_statements.sql, which
    // holds the same statements as below), planned once per server session, also behind a
    // transaction pooler. The store takes the write gate itself, so it is one call in autocommit
    // where it was a transaction of four round trips (bench/RESULTS.md, "Issue 23: cache store and
    // invalidate as functions").
    store =
        cache_function_call(backend, "cache_store", fmt::format("$1, {}, $3, $4, $5, $6, $7, $8", d.blob_param("$2")));
    invalidate = cache_function_call(backend, "cache_invalidate", "$1, NULL");
  } else {
    // A loader's write-back ($7: the database clock of the read that began the load; $8:
    // sweep_grace). Refused when the load began sweep_grace ago or more (the rows that could judge
    // it may be gone), when a prefix invalidation over the key (or an eviction inside the grace)
    // came at or after its start, and, for an existing row, unless it still has the generation the
    // load read and was last written no later than the load's start. Sweeps and evictions keep
    // every row for sweep_grace after its last change (or record the eviction), so every change
    // made after the load began is still there to refuse it.
    store = fmt::format(
        "INSERT INTO {t} AS c (key, value, expires_at, generation, size_bytes, load_ms, created_at, updated_at) "
        "SELECT $1, {v}, {exp}, {fresh}, $3, $6, {now}, {now} "
        "WHERE CAST($7 AS bigint) > {now_ms} - CAST($8 AS bigint) AND NOT EXISTS (SELECT 1 FROM {p} p "
        "WHERE p.invalidated_at >= {start} AND substr(CAST($1 AS text), 1, length(p.prefix)) = p.prefix) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
        "expires_at = excluded.expires_at, size_bytes = excluded.size_bytes, load_ms = excluded.load_ms, "
        "updated_at = excluded.updated_at WHERE c.generation = $5 AND {updated} <= CAST($7 AS bigint) "
        "RETURNING generation",
        fmt::arg("t", t), fmt::arg("v", d.blob_param("$2")), fmt::arg("exp", d.timestamp_plus_ms(now, "$4")),
        fmt::arg("fresh", fresh), fmt::arg("now", now), fmt::arg("now_ms", d.now_ms()), fmt::arg("p", prefixes),
        fmt::arg("start", d.ms_to_timestamp("$7")), fmt::arg("updated", d.timestamp_to_ms("c.updated_at")));
    // Invalidation leaves an expired tombstone with a higher generation, even for a key never
    // cached, so a load that began before it cannot store afterwards.
    invalidate = cache_invalidate_sql(backend, "CAST($1 AS text)", "WHERE 1 = 1");
  }
  invalidate_prefix = fmt::format(
      "UPDATE {} SET value = NULL, expires_at = {}, generation = generation + 1, size_bytes = 0, updated_at = {} "
      "WHERE substr(key, 1, $2) = $1",
      t, now, now);
  // Never moved back: on PostgreSQL now() is the transaction's start, so a transaction that began
  // before a sweep recorded its cutoff may commit after it.
  record_prefix = fmt::format(
      "INSERT INTO {} AS p (prefix, invalidated_at) VALUES ($1, {}) ON CONFLICT (prefix) DO UPDATE SET "
      "invalidated_at = CASE WHEN excluded.invalidated_at > p.invalidated_at THEN excluded.invalidated_at "
      "ELSE p.invalidated_at END",
      prefixes, now);
  // Rows expired and last changed longer than sweep_grace ($1, negative) ago, by the expires_at
  // index, in bounded batches that never hold long locks. Every write sets expires_at at or after
  // updated_at, so the index finds them; the second condition states the rule.
  const std::string cut = d.timestamp_plus_ms(now, "$1");
  sweep = fmt::format(
      "DELETE FROM {0} WHERE key IN (SELECT key FROM {0} WHERE expires_at < {1} AND updated_at < {1} "
      "ORDER BY expires_at LIMIT $2)",
      t, cut);
  // The empty prefix's record stays: it carries the latest sweep cutoff (record_sweep).
  sweep_prefixes = fmt::format("DELETE FROM {} WHERE invalidated_at < {} AND prefix <> ''", prefixes, cut);
  // A sweep that deleted rows records its cutoff as an invalidation of every key (the empty
  // prefix), never moving it back, in the same transaction: a load that began before the cutoff
  // may have read a row now gone, and is refused whatever its own sweep_grace says. So a sweeper
  // with a shorter grace than the loaders' (another process, `rowguard cache sweep`) cannot let
  // a stale value in; it refuses loads older than its own grace instead.
  record_sweep = fmt::format(
      "INSERT INTO {0} AS p (prefix, invalidated_at) VALUES ('', {1}) ON CONFLICT (prefix) DO UPDATE SET "
      "invalidated_at = CASE WHEN excluded.invalidated_at > p.invalidated_at THEN excluded.invalidated_at "
      "ELSE p.invalidated_at END",
      prefixes, cut);
  // Size bounds: least recently written first, outside the grace; then, only if that is not
  // enough, inside it (evict_recent, with the eviction recorded in the same transaction).
  evict = fmt::format(
      "DELETE FROM {0} WHERE key IN (SELECT key FROM {0} WHERE updated_at < {1} ORDER BY updated_at LIMIT $2)", t, cut);
  evict_recent = fmt::format("DELETE FROM {0} WHERE key IN (SELECT key FROM {0} ORDER BY updated_at LIMIT $1)", t);
  table_stats = fmt::format(
      "SELECT count(*), CAST(COALESCE(SUM(CASE WHEN expires_at > {} THEN 1 ELSE 0 END), 0) AS bigint), "
      "CAST(COALESCE(SUM(size_bytes), 0) AS bigint) FROM {}",
      now, t);
}

}  // namespace rowguard::detail

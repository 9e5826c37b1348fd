-- rowguard schema, PostgreSQL dialect. Step 010: server-side statements for the cache's writes.
--
-- The same kind of functions as step 008 (read its header for why functions, behind a transaction
-- pooler and on a direct connection), for the cache's two writes that were still statements:
-- - the loader's write-back (store) was a transaction of four round trips: BEGIN, the write gate,
--   the conditional upsert, COMMIT; now it is one call, which takes the gate itself;
-- - an invalidation (Cache::invalidate, also inside a caller's transaction, and the ledger's drop
--   of both accounts' cached copies) was an upsert the server planned on every call behind a
--   transaction pooler; now its plan stays in the server session.
-- docs/cache.md, "What a load may store", says what the store must refuse and why; bench/RESULTS.md,
-- "Issue 23: cache store and invalidate as functions", has the measurements. SQLite, in process,
-- keeps the statements. A step of its own, so a database already at 9 gets these by
-- `rowguard migrate` like any other step.
--
-- Every function is SECURITY INVOKER (the caller's rights on the tables), its search_path is
-- pinned to the schema this migration ran in (the DO block at the end), and EXECUTE is revoked
-- from PUBLIC and granted to rowguard_app (here when the role exists already, else by roles.sql).
-- The table prefix applies to the function names as to the tables.

-- A loader's write-back: the value (NULL: a cached absence) of p_key, p_size bytes, for p_ttl_ms,
-- from a load that read generation p_generation (any value when the key had no row) at the
-- database clock p_read_at_ms and took p_load_ms; p_grace_ms is the loader's sweep_grace.
-- -> (generation) when stored; (NULL) when not judged (below); no row when refused: the load began p_grace_ms ago or more, a
-- prefix invalidation over the key (or an eviction inside the grace: the empty prefix) came at or
-- after its start, or the key's row no longer has the generation the load read or was written after
-- its start.
--
-- The write gate first: the transaction-scoped advisory lock named after the cache table, shared
-- (sweeps, evictions and prefix invalidations take it exclusive; Cache::Impl::gate says why). The
-- upsert is a statement of its own after it, so in READ COMMITTED its snapshot is taken once the
-- lock is granted and it sees every such change committed before. Both run in the call's own
-- transaction: the library sends this call alone, in autocommit, so the lock goes at its commit.
-- Where a default_transaction_isolation above READ COMMITTED (server, database or role) made that
-- transaction REPEATABLE READ or SERIALIZABLE, its snapshot was taken before the gate, so the
-- upsert would miss what the gate's holders committed: the call then judges nothing and returns
-- one row with a NULL generation, and the library calls again inside a READ COMMITTED transaction.
CREATE OR REPLACE FUNCTION rowguard_cache_store(p_key text, p_value bytea, p_size bigint, p_ttl_ms bigint,
                                                p_generation bigint, p_load_ms bigint, p_read_at_ms bigint,
                                                p_grace_ms bigint)
RETURNS TABLE (r_generation bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    r_generation := NULL;
    RETURN NEXT;
    RETURN;
  END IF;
  PERFORM pg_advisory_xact_lock_shared(hashtextextended('rowguard_cache', 0));
  RETURN QUERY
  INSERT INTO rowguard_cache AS c (key, value, expires_at, generation, size_bytes, load_ms, created_at, updated_at)
  -- A key without a row starts at the database clock in ms times 1000 (cache_sql.cpp says why).
  SELECT p_key, p_value, clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond',
         CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) * 1000, p_size, p_load_ms,
         clock_timestamp(), clock_timestamp()
   WHERE p_read_at_ms > CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) - p_grace_ms
     AND NOT EXISTS (SELECT 1 FROM rowguard_cache_prefixes p
                      WHERE p.invalidated_at >= TIMESTAMPTZ 'epoch' + p_read_at_ms * INTERVAL '1 millisecond'
                        AND substr(p_key, 1, length(p.prefix)) = p.prefix)
  ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,
                                  size_bytes = excluded.size_bytes, load_ms = excluded.load_ms,
                                  updated_at = excluded.updated_at
   WHERE c.generation = p_generation
     AND CAST(floor(EXTRACT(EPOCH FROM c.updated_at) * 1000) AS bigint) <= p_read_at_ms
  RETURNING c.generation;
END
$fn$;

-- Invalidation: an expired tombstone with a higher generation for p_a and for p_b (either NULL for
-- none; they must differ), even for a key never cached, so a load that began before it cannot
-- store afterwards. The tombstone expires as it is written (never at the epoch): sweeps keep it for
-- sweep_grace. The rows are written in argument order: the ledger passes its two keys sorted, so
-- concurrent transactions lock them in one order. rowguard_apply_transfer (step 008) and
-- rowguard_hold_drop_cached (step 009) write the same tombstones: keep them alike.
-- -> (rows written)
CREATE OR REPLACE FUNCTION rowguard_cache_invalidate(p_a text, p_b text)
RETURNS bigint
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE n bigint;
BEGIN
  INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at)
  SELECT x.k, clock_timestamp(), CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) * 1000, 0,
         clock_timestamp(), clock_timestamp()
    FROM (VALUES (p_a), (p_b)) AS x(k)
   WHERE x.k IS NOT NULL
  ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = excluded.expires_at, generation = c.generation + 1,
                                  size_bytes = 0, updated_at = excluded.updated_at;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$fn$;

-- Pinned to this schema (and pg_temp last), so a caller's search_path cannot put other tables or
-- functions in front of rowguard's; EXECUTE only for the roles roles.sql grants it to.
DO $$
DECLARE f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['rowguard_cache_store(text, bytea, bigint, bigint, bigint, bigint, bigint, bigint)',
                           'rowguard_cache_invalidate(text, text)'] LOOP
    EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO rowguard_app', f);
    END IF;
  END LOOP;
END
$$;

INSERT INTO rowguard_schema_version (version, name) VALUES (10, '010_cache_statements');

-- rowguard schema, PostgreSQL dialect. Step 008: server-side statements for the hot paths.
--
-- Why functions: behind a transaction-pooling PgBouncer (1.18, Debian 12) a client cannot keep
-- named prepared statements, so every statement it sends is parsed and planned again on every call.
-- A PL/pgSQL function's inner statements are planned once per server session and their plans
-- cached there, so the pooled call pays for planning a one-line SELECT instead of the whole
-- statement (docs/backend.md, "Behind PgBouncer", has the figures). On a direct connection rowguard
-- prepares the call like any other statement.
--
-- Every function is SECURITY INVOKER (it runs with the caller's rights on the tables: the
-- application role needs the same DML grants as without it), its search_path is pinned to the
-- schema this migration ran in (the DO block at the end), and EXECUTE is revoked from PUBLIC and
-- granted to rowguard_app (here when the role exists already, else by roles.sql). The table
-- prefix applies to the function names as to the tables (rowguard_apply_transfer becomes
-- <prefix>apply_transfer).

-- A transfer in one statement: the same data-modifying CTE the library sent as a statement before
-- this step (docs/ledger.md, "The SQL of a transfer"), now planned once per session.
--   p_from, p_to, p_amount, p_key: the request.
--   p_cache_a, p_cache_b: the cache keys of both accounts' cached copies (in key order), dropped
--     in the same statement when money moved; NULL when the ledger has no cache.
-- One row: the key's earlier record (r_id ... r_timeout_ms, NULL when the key is new: the caller
-- compares every field and answers the replay or idempotency_mismatch), both accounts' currencies
-- (NULL for an account that does not exist), 1 when the credit would overflow int64, the new
-- record's id and outcome (NULL when nothing was recorded: a replay, a refusal, or a source short
-- only while it holds holds, which the caller then decides after closing expired ones), and how
-- many rows the debit, the credit and the entries changed (4 for an applied transfer).
CREATE OR REPLACE FUNCTION rowguard_apply_transfer(p_from text, p_to text, p_amount bigint, p_key text,
                                                   p_cache_a text, p_cache_b text)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  WITH prior AS (
    -- The record of the key, among the transfers or the holds: at most one row.
    SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id,
           CAST(NULL AS bigint) AS timeout_ms
      FROM rowguard_transfers t WHERE t.idempotency_key = p_key
    UNION ALL
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms
      FROM rowguard_holds h WHERE h.idempotency_key = p_key
    LIMIT 1),
  -- Both rows locked in key order first (no deadlocks), and only for a new key.
  locked AS (
    SELECT a.id, a.currency, a.balance, a.held FROM rowguard_accounts a
     WHERE a.id IN (p_from, p_to) AND NOT EXISTS (SELECT 1 FROM prior) ORDER BY a.id FOR NO KEY UPDATE),
  src AS (SELECT * FROM locked l WHERE l.id = p_from),
  dst AS (SELECT * FROM locked l WHERE l.id = p_to),
  allowed AS (
    SELECT src.currency,
           CASE WHEN CAST(dst.balance AS numeric) + p_amount > 9223372036854775807 THEN 1 ELSE 0 END AS overflow
      FROM src JOIN dst ON src.currency = dst.currency),
  -- The funds condition lives in the debit's own WHERE, evaluated on the row it updates (deciding
  -- from the locked values instead broke the CHECK constraint under concurrency).
  debit AS (
    UPDATE rowguard_accounts a SET balance = a.balance - p_amount, version = a.version + 1,
           updated_at = clock_timestamp()
      FROM allowed
     WHERE a.id = p_from AND allowed.overflow = 0
       AND CAST(a.balance AS numeric) - p_amount - a.held >= a.min_balance
    RETURNING a.id),
  -- The credit runs only if the debit happened: never money from nowhere.
  credit AS (
    UPDATE rowguard_accounts a SET balance = a.balance + p_amount, version = a.version + 1,
           updated_at = clock_timestamp()
     WHERE a.id = p_to AND EXISTS (SELECT 1 FROM debit)
    RETURNING a.id),
  rec AS (
    INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                    created_at)
    SELECT p_key, 'transfer', p_from, p_to, p_amount, al.currency,
           CASE WHEN EXISTS (SELECT 1 FROM debit) THEN 'ok' ELSE 'insufficient_funds' END, clock_timestamp()
      FROM allowed al
     WHERE al.overflow = 0
       -- Short while holding holds: record nothing, the caller decides after closing expired ones.
       AND (EXISTS (SELECT 1 FROM debit) OR (SELECT s.held FROM src s) = 0)
    RETURNING rowguard_transfers.id, rowguard_transfers.outcome),
  entries AS (
    INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at)
    SELECT rec.id, x.account, x.amount, clock_timestamp()
      FROM rec, (VALUES (p_from, -p_amount), (p_to, p_amount)) AS x(account, amount)
     WHERE rec.outcome = 'ok'
    RETURNING 1),
  -- With a cache, both accounts' cached copies become tombstones (as Cache::invalidate writes them)
  -- in this same statement, only if money moved.
  invalidated AS (
    INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at)
    SELECT x.k, clock_timestamp(), (CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) * 1000), 0,
           clock_timestamp(), clock_timestamp()
      FROM (VALUES (p_cache_a), (p_cache_b)) AS x(k)
     WHERE x.k IS NOT NULL AND EXISTS (SELECT 1 FROM debit)
    ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = excluded.expires_at, generation = c.generation + 1,
                                    size_bytes = 0, updated_at = excluded.updated_at
    RETURNING 1)
  SELECT p.id, p.kind, p.from_account, p.to_account, p.amount, p.outcome, p.global_txid, p.reverses, p.hold_id,
         p.timeout_ms, (SELECT CAST(s.currency AS text) FROM src s), (SELECT CAST(d.currency AS text) FROM dst d),
         (SELECT al.overflow FROM allowed al), (SELECT r.id FROM rec r), (SELECT r.outcome FROM rec r),
         (SELECT count(*) FROM debit) + (SELECT count(*) FROM credit) + (SELECT count(*) FROM entries)
    FROM (SELECT 1 AS one) AS x LEFT JOIN prior p ON true;
END
$fn$;

-- Leases (docs/locks.md): acquire, renew and release, each the one statement the library sent
-- before this step.
--
-- Acquire: one conditional upsert. A live lease of another owner makes the WHERE false: no row
-- comes back. The token grows on every new lease and stays for the same owner's live lease, so a
-- retried acquire gets its own token back. The probe locks the row NOWAIT first: a row held by
-- another transaction's guard (FOR SHARE) fails fast with 55P03 instead of blocking.
-- -> (token, expires_at ms, now ms); no row when another owner holds a live lease.
CREATE OR REPLACE FUNCTION rowguard_lock_acquire(p_name text, p_owner text, p_ttl_ms bigint)
RETURNS TABLE (r_token bigint, r_expires_ms bigint, r_now_ms bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  WITH probe AS (SELECT p.name FROM rowguard_locks p WHERE p.name = p_name FOR NO KEY UPDATE NOWAIT)
  INSERT INTO rowguard_locks AS l (name, owner, token, acquired_at, expires_at, released_at, renewals, waiters,
                                   release_reason)
  SELECT p_name, p_owner, 1, clock_timestamp(), clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond', NULL, 0, 0,
         NULL
    FROM (SELECT 1) AS one LEFT JOIN probe ON true WHERE true
  ON CONFLICT (name) DO UPDATE SET
    token = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                 THEN l.token ELSE l.token + 1 END,
    -- A takeover's acquired_at is read after the WHERE found the old lease expired (PostgreSQL
    -- checks it before it computes the SET), never the statement's earlier clock reading, so it
    -- never lies before the old lease's expiry.
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL
                            AND l.expires_at > clock_timestamp()
                       THEN l.acquired_at ELSE clock_timestamp() END,
    renewals = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                    THEN l.renewals ELSE 0 END,
    owner = excluded.owner, expires_at = excluded.expires_at, released_at = NULL, release_reason = NULL
  WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp() OR l.owner = excluded.owner
  RETURNING l.token, CAST(floor(EXTRACT(EPOCH FROM l.expires_at) * 1000) AS bigint),
            CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint);
END
$fn$;

-- Renew and release wait for a row held by a guard's transaction at most p_lock_timeout_ms (then
-- 55P03, a conflict): lock_timeout is set for this statement's own transaction only, so it also
-- holds behind a transaction pooler.
-- Renew -> (expires_at ms); no row when the lease was lost.
CREATE OR REPLACE FUNCTION rowguard_lock_renew(p_name text, p_owner text, p_token bigint, p_ttl_ms bigint,
                                               p_lock_timeout_ms bigint)
RETURNS TABLE (r_expires_ms bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  PERFORM set_config('lock_timeout', CAST(p_lock_timeout_ms AS text), true);
  RETURN QUERY
  UPDATE rowguard_locks l SET expires_at = clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond',
                              renewals = l.renewals + 1
   WHERE l.name = p_name AND l.owner = p_owner AND l.token = p_token AND l.expires_at > clock_timestamp()
  RETURNING CAST(floor(EXTRACT(EPOCH FROM l.expires_at) * 1000) AS bigint);
END
$fn$;

-- Release -> (waiters); no row when the lease was lost or released already. When it reports
-- waiters the library sends the NOTIFY as a second statement: folding pg_notify in cost every
-- release about 9% of an uncontended acquire+release pair's server time to save a round trip on
-- contended ones only.
CREATE OR REPLACE FUNCTION rowguard_lock_release(p_name text, p_owner text, p_token bigint,
                                                 p_lock_timeout_ms bigint)
RETURNS TABLE (r_waiters bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  PERFORM set_config('lock_timeout', CAST(p_lock_timeout_ms AS text), true);
  RETURN QUERY
  UPDATE rowguard_locks l SET expires_at = NULL, released_at = clock_timestamp()
   WHERE l.name = p_name AND l.owner = p_owner AND l.token = p_token AND l.expires_at > clock_timestamp()
  RETURNING CAST(l.waiters AS bigint);
END
$fn$;

-- Pinned to this schema (and pg_temp last), so a caller's search_path cannot put other tables or
-- functions in front of rowguard's; EXECUTE only for the roles roles.sql grants it to.
DO $$
DECLARE f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['rowguard_apply_transfer(text, text, bigint, text, text, text)',
                           'rowguard_lock_acquire(text, text, bigint)',
                           'rowguard_lock_renew(text, text, bigint, bigint, bigint)',
                           'rowguard_lock_release(text, text, bigint, bigint)'] LOOP
    EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    -- A database whose roles.sql ran before this step (its default privileges then covered tables
    -- and sequences only): the application role keeps working after the upgrade.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO rowguard_app', f);
    END IF;
  END LOOP;
END
$$;

INSERT INTO rowguard_schema_version (version, name) VALUES (8, '008_server_statements');

-- rowguard schema, PostgreSQL dialect. Step 009: server-side statements for batches and holds.
--
-- The same kind of functions as step 008 (read its header for why functions, behind a transaction
-- pooler and on a direct connection), for the paths that still paid a round trip per statement:
-- - a batch (Ledger::transfer_batch) paid one per item; now it is one call for the whole batch;
-- - a hold, a capture and a void were each a transaction of several statements the library sent
--   one by one (7, 12 and 7 round trips with BEGIN and COMMIT); now each is one call: one round
--   trip and one commit (docs/ledger.md, "Holds"; bench/RESULTS.md, "Issue 23: holds in one round
--   trip"). SQLite, in process, keeps the statements.
-- A step of its own, not more of step 008: a database already at version 8 gets these by
-- `rowguard migrate` like any other step.
--
-- Every function is SECURITY INVOKER (the caller's rights on the tables), its search_path is
-- pinned to the schema this migration ran in (the DO block at the end), and EXECUTE is revoked
-- from PUBLIC and granted to rowguard_app (here when the role exists already, else by roles.sql).
-- The table prefix applies to the function names as to the tables.

-- One item of a batch: rowguard_apply_transfer's row and a verdict: 'ok'; 'failed' when the item
-- fails its chain (a missing account, currencies that differ, an overflow, a rejection, a replay of
-- a rejection or of another request: the client names which, from the same columns); 'client'
-- when the source is short only while it holds holds (the client closes the expired ones). No
-- row for a NULL key: an item the client refused before sending. PL/pgSQL, not SQL: the server
-- keeps a PL/pgSQL function's plans for the session, but plans a SQL function's body on every call.
CREATE OR REPLACE FUNCTION rowguard_batch_item(p_from text, p_to text, p_amount bigint, p_key text,
                                               p_cache_a text, p_cache_b text)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint, r_verdict text)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  SELECT t.*,
         CASE WHEN t.r_id IS NOT NULL THEN
                CASE WHEN t.r_kind = 'transfer' AND t.r_global_txid IS NULL AND t.r_reverses IS NULL
                          AND t.r_hold_id IS NULL AND t.r_from = p_from AND t.r_to = p_to AND t.r_amount = p_amount
                          AND t.r_outcome = 'ok' THEN 'ok' ELSE 'failed' END
              WHEN t.r_src_currency IS NULL OR t.r_dst_currency IS NULL OR t.r_src_currency <> t.r_dst_currency
                   OR t.r_overflow <> 0 THEN 'failed'
              WHEN t.r_record_id IS NULL THEN 'client'
              WHEN t.r_record_outcome = 'ok' AND t.r_rows = 4 THEN 'ok'
              ELSE 'failed' END
    FROM rowguard_apply_transfer(p_from, p_to, p_amount, p_key, p_cache_a, p_cache_b) AS t
   WHERE p_key IS NOT NULL;
END
$fn$;

-- A batch (Ledger::transfer_batch) in one round trip: every item through rowguard_apply_transfer,
-- in order, inside the caller's transaction. Items are the arrays' elements (same length); an item
-- whose key is NULL was refused by the client before sending (it fails its chain unexecuted).
-- p_linked[i] links item i to the next one: a linked chain applies whole or not at all, so each
-- chain runs in a subtransaction (an exception block) that a failing item rolls back. A standalone
-- item's refusal writes nothing, so it needs no subtransaction.
-- One row per item looked at, in order: the columns of rowguard_apply_transfer, then r_item (the
-- item's 0-based index), r_failed (1 when the item fails its chain: a refusal, a rejection, a
-- replay of another request or of a rejection), and r_sqlstate and r_message of a server error an
-- item of a chain raised (the chain is rolled back; errors a retry can cure are raised instead).
-- A chain's rows stop at its failing item. When an item needs the client (a source short only
-- while it holds holds, which the client closes when expired), the batch stops there: the chain it
-- belongs to is rolled back and a last row carries that chain's first index with r_stopped = 1.
CREATE OR REPLACE FUNCTION rowguard_apply_batch(p_from text[], p_to text[], p_amount bigint[], p_key text[],
                                                p_linked boolean[], p_cache_a text[], p_cache_b text[])
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint, r_item integer, r_failed integer, r_stopped integer,
               r_sqlstate text, r_message text)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  n integer := coalesce(array_length(p_key, 1), 0);
  s integer := 1;  -- the chain is items s..e (1-based); a standalone item is a chain of one
  e integer;
  j integer;
  verdict text;  -- 'ok', 'failed' (the item fails its chain), 'client' (the client must decide)
  state text;
  all_apply boolean;
BEGIN
  IF array_length(p_from, 1) IS DISTINCT FROM n OR array_length(p_to, 1) IS DISTINCT FROM n
     OR array_length(p_amount, 1) IS DISTINCT FROM n OR array_length(p_linked, 1) IS DISTINCT FROM n
     OR array_length(p_cache_a, 1) IS DISTINCT FROM n OR array_length(p_cache_b, 1) IS DISTINCT FROM n
     OR (n > 0 AND p_linked[n]) THEN
    RAISE EXCEPTION 'rowguard_apply_batch: arrays of one length, the last item unlinked' USING ERRCODE = '22023';
  END IF;
  -- Every account the batch names, locked in id order before the first item: items lock in item
  -- order, so two batches over the same accounts would otherwise deadlock (and wait deadlock_timeout
  -- to find out). Transfers lock in id order too, so nothing waits in a cycle.
  PERFORM a.id FROM rowguard_accounts a WHERE a.id = ANY (p_from || p_to) ORDER BY a.id FOR NO KEY UPDATE;
  -- All at once when every item surely applies, whatever their order: no item refused by the
  -- client, every key new and distinct, every account there, currencies alike, each source
  -- funded for the sum of its debits without counting its credits, no credit sum that could
  -- overflow. Then a few set statements do what the loop below does item by item, with the same
  -- records, entries, versions and tombstones, and the same rows back.
  WITH items AS (SELECT * FROM unnest(p_from, p_to, p_amount, p_key) AS i(f, t, amount, k)),
  per AS (
    SELECT x.id, sum(x.debit) AS debits, sum(x.credit) AS credits
      FROM (SELECT i.f AS id, i.amount AS debit, 0 AS credit FROM items i
            UNION ALL SELECT i.t, 0, i.amount FROM items i) AS x
     GROUP BY x.id)
  SELECT n > 0 AND NOT EXISTS (SELECT 1 FROM items i WHERE i.k IS NULL OR i.f IS NULL OR i.t IS NULL)
         AND (SELECT count(DISTINCT i.k) FROM items i) = n
         AND NOT EXISTS (SELECT 1 FROM rowguard_transfers x WHERE x.idempotency_key = ANY (p_key))
         AND NOT EXISTS (SELECT 1 FROM rowguard_holds x WHERE x.idempotency_key = ANY (p_key))
         AND NOT EXISTS (SELECT 1 FROM per LEFT JOIN rowguard_accounts a ON a.id = per.id
                          WHERE a.id IS NULL OR CAST(a.balance AS numeric) - per.debits - a.held < a.min_balance
                             OR CAST(a.balance AS numeric) + per.credits > 9223372036854775807)
         AND NOT EXISTS (SELECT 1 FROM items i JOIN rowguard_accounts src ON src.id = i.f
                                               JOIN rowguard_accounts dst ON dst.id = i.t
                          WHERE src.currency <> dst.currency)
    INTO all_apply;
  IF all_apply THEN
    -- In a subtransaction: a server error here (a trigger, a constraint) undoes it, and the items
    -- go one by one below, where such an error fails its own chain only.
    BEGIN
      UPDATE rowguard_accounts a SET balance = a.balance + m.delta, version = a.version + m.touches,
             updated_at = clock_timestamp()
        FROM (SELECT x.id, sum(x.delta) AS delta, count(*) AS touches
                FROM (SELECT u.f AS id, -u.amount AS delta FROM unnest(p_from, p_amount) AS u(f, amount)
                      UNION ALL SELECT u.t, u.amount FROM unnest(p_to, p_amount) AS u(t, amount)) AS x
               GROUP BY x.id) AS m
       WHERE a.id = m.id;
      WITH items AS (SELECT * FROM unnest(p_from, p_to, p_amount, p_key) WITH ORDINALITY AS i(f, t, amount, k, ord)),
      rec AS (
        INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                        created_at)
        SELECT i.k, 'transfer', i.f, i.t, i.amount, a.currency, 'ok', clock_timestamp()
          FROM items i JOIN rowguard_accounts a ON a.id = i.f ORDER BY i.ord
        RETURNING rowguard_transfers.id, rowguard_transfers.idempotency_key),
      journal AS (
        INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at)
        SELECT r.id, x.account, x.amount, clock_timestamp()
          FROM rec r JOIN items i ON i.k = r.idempotency_key,
               LATERAL (VALUES (i.f, -i.amount), (i.t, i.amount)) AS x(account, amount)
        RETURNING 1),
      -- As rowguard_apply_transfer writes them: keep the two alike.
      invalidated AS (
        INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at)
        SELECT x.k, clock_timestamp(),
               (CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) * 1000), 0, clock_timestamp(),
               clock_timestamp()
          FROM (SELECT DISTINCT u.k FROM unnest(p_cache_a || p_cache_b) AS u(k) WHERE u.k IS NOT NULL) AS x
        ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = excluded.expires_at,
                                        generation = c.generation + 1, size_bytes = 0, updated_at = excluded.updated_at
        RETURNING 1)
      SELECT (SELECT count(*) FROM rec) + (SELECT count(*) FROM journal) + (SELECT count(*) FROM invalidated) INTO j;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
      -- As in a chain below: what a retry of the whole batch can cure goes to the client.
      IF left(state, 2) IN ('40', '08', '53', '57', '58', 'XX') OR state IN ('55P03', '23505', '25P03', '25006') THEN
        RAISE;
      END IF;
      all_apply := false;
    END;
  END IF;
  IF all_apply THEN
    RETURN QUERY
    SELECT CAST(NULL AS bigint), CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS bigint),
           CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS bigint), CAST(NULL AS bigint), CAST(NULL AS bigint),
           CAST(r.currency AS text), CAST(r.currency AS text), 0, r.id, r.outcome, CAST(4 AS bigint),
           CAST(i.ord - 1 AS integer), 0, 0, CAST(NULL AS text), CAST(NULL AS text)
      FROM unnest(p_key) WITH ORDINALITY AS i(k, ord) JOIN rowguard_transfers r ON r.idempotency_key = i.k
     ORDER BY i.ord;
    RETURN;
  END IF;
  WHILE s <= n LOOP
    e := s;
    WHILE p_linked[e] LOOP
      e := e + 1;
    END LOOP;
    j := s;
    IF s = e THEN
      -- Standalone: a refusal or a rejection writes nothing but its record, so no subtransaction.
      SELECT * INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id,
                    r_timeout_ms, r_src_currency, r_dst_currency, r_overflow, r_record_id, r_record_outcome, r_rows,
                    verdict
        FROM rowguard_batch_item(p_from[j], p_to[j], p_amount[j], p_key[j], p_cache_a[j], p_cache_b[j]);
      r_item := j - 1; r_failed := CAST(verdict IS DISTINCT FROM 'ok' AS integer);
      r_stopped := CAST(verdict IS NOT DISTINCT FROM 'client' AS integer);
      RETURN NEXT;
      IF r_stopped = 1 THEN
        RETURN;
      END IF;
    ELSE
      -- A linked chain: a subtransaction that its first failing item rolls back.
      BEGIN
        WHILE j <= e LOOP
          SELECT * INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id,
                        r_timeout_ms, r_src_currency, r_dst_currency, r_overflow, r_record_id, r_record_outcome,
                        r_rows, verdict
            FROM rowguard_batch_item(p_from[j], p_to[j], p_amount[j], p_key[j], p_cache_a[j], p_cache_b[j]);
          r_item := j - 1; r_failed := CAST(verdict IS DISTINCT FROM 'ok' AS integer); r_stopped := 0;
          IF verdict = 'client' THEN
            RAISE EXCEPTION 'the client decides' USING ERRCODE = 'RGB02';
          END IF;
          RETURN NEXT;
          IF r_failed = 1 THEN
            RAISE EXCEPTION 'the chain failed' USING ERRCODE = 'RGB01';
          END IF;
          j := j + 1;
        END LOOP;
      EXCEPTION
        WHEN SQLSTATE 'RGB01' THEN
          NULL;  -- the chain's writes are undone; its rows say why
        WHEN SQLSTATE 'RGB02' THEN
          SELECT * INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id,
                        r_timeout_ms, r_src_currency, r_dst_currency, r_overflow, r_record_id, r_record_outcome,
                        r_rows, verdict
            FROM rowguard_batch_item(NULL, NULL, NULL, NULL, NULL, NULL);  -- no row: every column NULL
          r_item := s - 1; r_failed := 0; r_stopped := 1;
          RETURN NEXT;
          RETURN;
        WHEN OTHERS THEN
          GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, r_message = MESSAGE_TEXT;
          -- What a retry of the whole batch can cure goes to the client's retry loop: serialization
          -- failures and deadlocks, lock timeouts, a concurrent request with the same key (23505:
          -- the retry replays it), the connection, the server's resources or state.
          IF left(state, 2) IN ('40', '08', '53', '57', '58', 'XX')
             OR state IN ('55P03', '23505', '25P03', '25006') THEN
            RAISE;
          END IF;
          r_item := j - 1; r_failed := 1; r_stopped := 0; r_sqlstate := state;
          RETURN NEXT;
          r_sqlstate := NULL;
          r_message := NULL;
      END;
    END IF;
    s := e + 1;
  END LOOP;
END
$fn$;

-- Holds (docs/ledger.md, "Holds"): a hold, a capture and a void, each the whole transaction the
-- library sent as several statements before this step (holds.cpp, which keeps that form for
-- SQLite), in one call: one round trip and one commit each. Each answers with one row from which
-- the library makes the same result or error as before; a refused request writes nothing. The
-- order of work is the same: the account row(s) first (key order), then the hold row, so a hold's
-- state changes only under its source account's row lock. p_cache_prefix: with a cache, the cached
-- copy of account X is the key p_cache_prefix || X ('ledger:account:X'), dropped in the same
-- transaction when the account changes; NULL when the ledger has no cache.

-- Closes the holds of p_account past their timeout (state expired) and takes them out of its held
-- amount, without a new version (readers never counted them). REQUIRES: the caller locked the
-- account row. -> the amount released.
CREATE OR REPLACE FUNCTION rowguard_hold_release_expired(p_account text)
RETURNS bigint
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE v_released bigint;
BEGIN
  WITH closed AS (
    UPDATE rowguard_holds h SET state = 'expired', closed_at = clock_timestamp()
     WHERE h.from_account = p_account AND h.state = 'held' AND h.expires_at <= clock_timestamp()
    RETURNING h.amount)
  SELECT CAST(COALESCE(SUM(c.amount), 0) AS bigint) INTO v_released FROM closed c;
  IF v_released > 0 THEN
    UPDATE rowguard_accounts a SET held = a.held - v_released WHERE a.id = p_account;
  END IF;
  RETURN v_released;
END
$fn$;

-- Drops the cached copies of the accounts p_a and p_b (p_b may be NULL) as Cache::invalidate
-- does, with the same tombstones as rowguard_apply_transfer, in key order.
CREATE OR REPLACE FUNCTION rowguard_hold_drop_cached(p_cache_prefix text, p_a text, p_b text)
RETURNS void
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at)
  SELECT x.k, clock_timestamp(), (CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint) * 1000), 0,
         clock_timestamp(), clock_timestamp()
    FROM (SELECT DISTINCT p_cache_prefix || y.id AS k FROM (VALUES (p_a), (p_b)) AS y(id) WHERE y.id IS NOT NULL) x
   ORDER BY x.k
  ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = excluded.expires_at, generation = c.generation + 1,
                                  size_bytes = 0, updated_at = excluded.updated_at;
END
$fn$;

-- A hold: reserve p_amount of p_from's available amount for p_to until p_timeout_ms from now.
-- One row: the key's earlier record (r_id ... r_timeout_ms, as in rowguard_apply_transfer; NULL
-- for a new key, and then nothing else is done: the caller answers the replay or
-- idempotency_mismatch), both accounts' currencies (NULL for an account that does not exist), 1
-- when the source's held amount would leave int64, and the new hold's id and state (held, or
-- rejected for want of funds; NULL when nothing was recorded). Only the source row is locked:
-- holds towards one merchant account never queue on it. When the source is short while it has
-- holds, its expired ones are closed first and the funds decided again.
CREATE OR REPLACE FUNCTION rowguard_apply_hold(p_from text, p_to text, p_amount bigint, p_key text,
                                               p_timeout_ms bigint, p_cache_prefix text)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_new_hold_id bigint,
               r_new_state text)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  v_balance bigint;
  v_min bigint;
  v_held bigint;
  v_funded boolean;
BEGIN
  -- The record of the key, among the transfers or the holds (one namespace).
  SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id, NULL
    INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms
    FROM rowguard_transfers t WHERE t.idempotency_key = p_key;
  IF NOT FOUND THEN
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms
      INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms
      FROM rowguard_holds h WHERE h.idempotency_key = p_key;
  END IF;
  IF r_id IS NOT NULL THEN
    RETURN NEXT;
    RETURN;
  END IF;
  SELECT CAST(a.currency AS text), a.balance, a.min_balance, a.held
    INTO r_src_currency, v_balance, v_min, v_held
    FROM rowguard_accounts a WHERE a.id = p_from FOR NO KEY UPDATE;
  SELECT CAST(a.currency AS text) INTO r_dst_currency FROM rowguard_accounts a WHERE a.id = p_to;
  IF r_src_currency IS NULL OR r_dst_currency IS NULL OR r_src_currency <> r_dst_currency THEN
    RETURN NEXT;
    RETURN;
  END IF;
  r_overflow := CASE WHEN CAST(v_held AS numeric) + p_amount > 9223372036854775807 THEN 1 ELSE 0 END;
  IF r_overflow = 1 THEN
    RETURN NEXT;
    RETURN;
  END IF;
  -- Available, not balance; held may still count expired holds, closed only when in the way.
  v_funded := CAST(v_balance AS numeric) - p_amount - v_held >= v_min;
  IF NOT v_funded AND v_held > 0 THEN
    v_funded := CAST(v_balance AS numeric) - p_amount - (v_held - rowguard_hold_release_expired(p_from)) >= v_min;
  END IF;
  IF v_funded THEN
    UPDATE rowguard_accounts a SET held = a.held + p_amount, version = a.version + 1, updated_at = clock_timestamp()
     WHERE a.id = p_from;
  END IF;
  INSERT INTO rowguard_holds (idempotency_key, from_account, to_account, amount, currency, state, expires_at,
                              created_at, timeout_ms)
  VALUES (p_key, p_from, p_to, p_amount, r_src_currency, CASE WHEN v_funded THEN 'held' ELSE 'rejected' END,
          clock_timestamp() + p_timeout_ms * INTERVAL '1 millisecond', clock_timestamp(), p_timeout_ms)
  RETURNING rowguard_holds.id, rowguard_holds.state INTO r_new_hold_id, r_new_state;
  IF v_funded AND p_cache_prefix IS NOT NULL THEN
    PERFORM rowguard_hold_drop_cached(p_cache_prefix, p_from, NULL);
  END IF;
  RETURN NEXT;
END
$fn$;

-- A capture of hold p_hold: p_amount of it (NULL: all of it) moves as a transfer recorded under
-- p_key, the rest is released. One row: the hold (h_id ... h_expires_in_ms, the columns of a hold
-- as the library reads it, NULL when there is no such hold; read under its account's lock when the
-- call got that far), the key's earlier record (r_id ... r_timeout_ms, NULL for a new key), 1 when
-- the destination account exists, 1 when its balance would leave int64, 1 when the source holds
-- less than the hold (which cannot happen), and the capture's transfer id (NULL when nothing was
-- done: the caller tells why from the rest of the row, as it decided before this step).
CREATE OR REPLACE FUNCTION rowguard_apply_capture(p_hold bigint, p_amount bigint, p_key text, p_cache_prefix text)
RETURNS TABLE (h_id bigint, h_key text, h_from text, h_to text, h_amount bigint, h_currency text, h_state text,
               h_captured bigint, h_transfer_id bigint, h_expires_in_ms bigint,
               r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_dst_exists integer, r_overflow integer, r_short integer, r_transfer_id bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  v_take bigint;
  v_src_held bigint;
  v_dst_balance bigint;
BEGIN
  SELECT h.id, h.idempotency_key, h.from_account, h.to_account, h.amount, CAST(h.currency AS text), h.state,
         h.captured, h.transfer_id,
         CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint)
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms
    FROM rowguard_holds h WHERE h.id = p_hold;
  v_take := COALESCE(p_amount, h_amount);
  IF h_id IS NULL OR h_state = 'rejected' OR v_take > h_amount THEN
    RETURN NEXT;
    RETURN;
  END IF;
  -- Accounts first (key order), then the hold: its state is final once its source is locked.
  SELECT max(CASE WHEN l.id = h_from THEN l.held END), max(CASE WHEN l.id = h_to THEN l.balance END),
         max(CASE WHEN l.id = h_to THEN 1 ELSE 0 END)
    INTO v_src_held, v_dst_balance, r_dst_exists
    FROM (SELECT a.id, a.balance, a.held FROM rowguard_accounts a WHERE a.id IN (h_from, h_to) ORDER BY a.id
          FOR NO KEY UPDATE) l;
  SELECT h.id, h.idempotency_key, h.from_account, h.to_account, h.amount, CAST(h.currency AS text), h.state,
         h.captured, h.transfer_id,
         CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint)
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms
    FROM rowguard_holds h WHERE h.id = p_hold FOR NO KEY UPDATE;
  -- The key's record, in the transfers or the holds: the caller compares it with this capture.
  SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id, NULL
    INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms
    FROM rowguard_transfers t WHERE t.idempotency_key = p_key;
  IF NOT FOUND THEN
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms
      INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms
      FROM rowguard_holds h WHERE h.idempotency_key = p_key;
  END IF;
  r_dst_exists := COALESCE(r_dst_exists, 0);
  r_overflow := CASE WHEN CAST(v_dst_balance AS numeric) + v_take > 9223372036854775807 THEN 1 ELSE 0 END;
  r_short := CASE WHEN COALESCE(v_src_held, 0) < h_amount THEN 1 ELSE 0 END;
  -- Captured already, closed, expired, a key recorded already, or a refusal: nothing is written.
  IF h_state <> 'held' OR h_expires_in_ms <= 0 OR r_id IS NOT NULL OR r_dst_exists = 0 OR r_overflow = 1
     OR r_short = 1 THEN
    RETURN NEXT;
    RETURN;
  END IF;
  -- The capture pays from what the hold reserved: the whole hold leaves held, v_take the balance.
  UPDATE rowguard_accounts a SET balance = a.balance - v_take, held = a.held - h_amount, version = a.version + 1,
         updated_at = clock_timestamp()
   WHERE a.id = h_from;
  UPDATE rowguard_accounts a SET balance = a.balance + v_take, version = a.version + 1, updated_at = clock_timestamp()
   WHERE a.id = h_to;
  INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                  hold_id, created_at)
  VALUES (p_key, 'transfer', h_from, h_to, v_take, h_currency, 'ok', p_hold, clock_timestamp())
  RETURNING rowguard_transfers.id INTO r_transfer_id;
  INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at)
  VALUES (r_transfer_id, h_from, -v_take, clock_timestamp()), (r_transfer_id, h_to, v_take, clock_timestamp());
  UPDATE rowguard_holds h SET state = 'captured', captured = v_take, transfer_id = r_transfer_id,
         closed_at = clock_timestamp()
   WHERE h.id = p_hold AND h.state = 'held';
  IF NOT FOUND THEN  -- cannot happen under the locks; retried as a conflict
    RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                          MESSAGE = format('hold %s changed under its account''s lock', p_hold);
  END IF;
  IF p_cache_prefix IS NOT NULL THEN
    PERFORM rowguard_hold_drop_cached(p_cache_prefix, h_from, h_to);
  END IF;
  RETURN NEXT;
END
$fn$;

-- A void of hold p_hold: an open hold is released (voided), or closed as expired when it is past
-- its timeout (with the account's other expired holds). One row: the hold as read under its
-- account's lock (the columns of rowguard_apply_capture's h_*; NULL when there is no such hold),
-- from which the caller tells what happened, as it decided before this step: a rejected or
-- captured hold is refused, a voided or expired one is returned unchanged.
CREATE OR REPLACE FUNCTION rowguard_apply_void(p_hold bigint, p_cache_prefix text)
RETURNS TABLE (h_id bigint, h_key text, h_from text, h_to text, h_amount bigint, h_currency text, h_state text,
               h_captured bigint, h_transfer_id bigint, h_expires_in_ms bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  SELECT h.from_account INTO h_from FROM rowguard_holds h WHERE h.id = p_hold;
  IF NOT FOUND THEN
    RETURN NEXT;
    RETURN;
  END IF;
  PERFORM 1 FROM rowguard_accounts a WHERE a.id = h_from FOR NO KEY UPDATE;
  SELECT h.id, h.idempotency_key, h.from_account, h.to_account, h.amount, CAST(h.currency AS text), h.state,
         h.captured, h.transfer_id,
         CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint)
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms
    FROM rowguard_holds h WHERE h.id = p_hold FOR NO KEY UPDATE;
  IF h_state = 'held' AND h_expires_in_ms <= 0 THEN
    -- It had stopped reserving money before this call: record that truth.
    PERFORM rowguard_hold_release_expired(h_from);
  ELSIF h_state = 'held' THEN
    UPDATE rowguard_holds h SET state = 'voided', captured = 0, transfer_id = NULL, closed_at = clock_timestamp()
     WHERE h.id = p_hold AND h.state = 'held';
    UPDATE rowguard_accounts a SET held = a.held - h_amount, version = a.version + 1, updated_at = clock_timestamp()
     WHERE a.id = h_from;
    IF p_cache_prefix IS NOT NULL THEN
      PERFORM rowguard_hold_drop_cached(p_cache_prefix, h_from, NULL);
    END IF;
  END IF;
  RETURN NEXT;
END
$fn$;

-- Pinned to this schema (and pg_temp last), so a caller's search_path cannot put other tables or
-- functions in front of rowguard's; EXECUTE only for the roles roles.sql grants it to.
DO $$
DECLARE f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['rowguard_batch_item(text, text, bigint, text, text, text)',
                           'rowguard_apply_batch(text[], text[], bigint[], text[], boolean[], text[], text[])',
                           'rowguard_hold_release_expired(text)',
                           'rowguard_hold_drop_cached(text, text, text)',
                           'rowguard_apply_hold(text, text, bigint, text, bigint, text)',
                           'rowguard_apply_capture(bigint, bigint, text, text)',
                           'rowguard_apply_void(bigint, text)'] LOOP
    EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO rowguard_app', f);
    END IF;
  END LOOP;
END
$$;

INSERT INTO rowguard_schema_version (version, name) VALUES (9, '009_batches_and_holds');

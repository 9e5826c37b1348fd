-- rowguard schema, PostgreSQL dialect. Step 011: codes, references, metadata and event times on
-- transfers and holds (TransferDetails, docs/ledger.md "Codes, references and metadata"), and the
-- running balance on every journal entry (docs/ledger.md "Running balances").
--
-- - code: the kind of payment as a team numbers them, 0 = none, 1..65535.
-- - reference: an external id (an order number), 1 to 128 bytes, indexed for Ledger::transfers.
-- - metadata: a JSON object (jsonb; the library checks it is an object of at most 4 KiB of input
--   text), GIN-indexed for @>.
-- - event_at: when the payment took effect outside the ledger (imported transfers); created_at
--   stays the database clock.
-- Existing rows get code 0 and NULL for the rest, which the library reads as "no details": a key
-- recorded before this step replays for a request without details. Adding the columns rewrites
-- nothing (a constant default); the code's CHECK is NOT VALID, so no scan either (the existing
-- rows satisfy it: they hold only the default). Reference and metadata have no CHECK here (SQLite's
-- step has them): the library checks both before sending, and PostgreSQL parses every CHECK's
-- stored expression again for each statement that inserts a row: the two cost a transfer 82,000
-- server instructions, 4.6% (bench/profile/server-instructions.sh, 1,775,081 against 1,692,746). The indexes are built here; on a large live
-- ledger build them by hand first with CREATE INDEX CONCURRENTLY under these names and the step
-- finds them (IF NOT EXISTS) instead of locking the table against writes while it builds them.
--
-- The server-side functions of steps 008 and 009 that record transfers and holds take and return
-- the details now: their argument lists change, so the old ones are dropped (a function with
-- another argument list would be an overload, left behind and still callable) and created anew,
-- pinned and granted as before (the DO block at the end). Each stays one call, one round trip.
--
-- Running balances: every entry records balance_after (the account's balance after it) and
-- account_version (the account's version after it), written by the statement that writes the
-- entry from the account row it just updated (UPDATE ... RETURNING), so the chain
-- balance_after = previous balance_after + amount holds per account in entry id order (ids are
-- taken under the account's row lock). The functions return both accounts' balances after the
-- operation (r_from_balance, r_to_balance). Existing entries are backfilled below.

ALTER TABLE rowguard_transfers
  ADD COLUMN IF NOT EXISTS code integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS reference text,
  ADD COLUMN IF NOT EXISTS metadata jsonb,
  ADD COLUMN IF NOT EXISTS event_at timestamptz,
  ADD CONSTRAINT rowguard_transfers_code CHECK (code BETWEEN 0 AND 65535) NOT VALID;
ALTER TABLE rowguard_holds
  ADD COLUMN IF NOT EXISTS code integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS reference text,
  ADD COLUMN IF NOT EXISTS metadata jsonb,
  ADD COLUMN IF NOT EXISTS event_at timestamptz,
  ADD CONSTRAINT rowguard_holds_code CHECK (code BETWEEN 0 AND 65535) NOT VALID;
-- Archiving moves them with their transfers.
ALTER TABLE rowguard_transfers_archive
  ADD COLUMN IF NOT EXISTS code integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS reference text,
  ADD COLUMN IF NOT EXISTS metadata jsonb,
  ADD COLUMN IF NOT EXISTS event_at timestamptz;
COMMENT ON COLUMN rowguard_transfers.code IS 'the kind of payment as the team numbers them; 0 = none, 1..65535';
COMMENT ON COLUMN rowguard_transfers.reference IS 'an external id, e.g. an order number; NULL = none';
COMMENT ON COLUMN rowguard_transfers.metadata IS 'a JSON object the caller attached; NULL = none';
COMMENT ON COLUMN rowguard_transfers.event_at IS
  'when the payment took effect outside the ledger (imported); created_at stays the database clock';

ALTER TABLE rowguard_entries
  ADD COLUMN IF NOT EXISTS balance_after bigint,
  ADD COLUMN IF NOT EXISTS account_version bigint;
ALTER TABLE rowguard_entries_archive
  ADD COLUMN IF NOT EXISTS balance_after bigint,
  ADD COLUMN IF NOT EXISTS account_version bigint;
COMMENT ON COLUMN rowguard_entries.balance_after IS
  'the account''s balance after this entry: the previous entry''s balance_after (or the opening) + amount';
COMMENT ON COLUMN rowguard_entries.account_version IS
  'the account''s version after this entry; NULL for entries written before schema step 011 (not knowable)';

-- The backfill: per account, over its live and archived entries in id order, the running sum from
-- what the account held before the oldest entry still stored: 0, or, when a DBA exported archived
-- entries (the archive holds fewer than the opening balance counts), the opening balance minus
-- the archived entries still there. Computed once into a temporary table, then written to both
-- tables. The version after a backfilled entry cannot be known (holds and min_balance changes
-- also moved it, and left no row): NULL. Measured in docs/ledger.md (1,000,000 entries).
CREATE TEMPORARY TABLE rowguard_backfill ON COMMIT DROP AS
SELECT u.id, CAST(COALESCE(o.balance, 0) - COALESCE(s.present, 0)
                  + sum(u.amount) OVER (PARTITION BY u.account_id ORDER BY u.id) AS bigint) AS running
  FROM (SELECT e.id, e.account_id, e.amount FROM rowguard_entries e
        UNION ALL SELECT a.id, a.account_id, a.amount FROM rowguard_entries_archive a) u
  LEFT JOIN rowguard_opening_balances o ON o.account_id = u.account_id
  LEFT JOIN (SELECT a.account_id, sum(a.amount) AS present FROM rowguard_entries_archive a
              GROUP BY a.account_id) s ON s.account_id = u.account_id;
ANALYZE rowguard_backfill;
UPDATE rowguard_entries e SET balance_after = b.running FROM rowguard_backfill b
 WHERE b.id = e.id AND e.balance_after IS NULL;
UPDATE rowguard_entries_archive e SET balance_after = b.running FROM rowguard_backfill b
 WHERE b.id = e.id AND e.balance_after IS NULL;
DROP TABLE rowguard_backfill;

-- Ledger::transfers pages newest first (id DESC): each index ends in id, so a filtered page is a
-- walk of one index range. Transfers without a code or a reference stay out of those indexes (the
-- queries repeat the predicates), so the hot path of a transfer without details pays for neither.
CREATE INDEX IF NOT EXISTS rowguard_transfers_code ON rowguard_transfers (code, id) WHERE code > 0;
CREATE INDEX IF NOT EXISTS rowguard_transfers_reference ON rowguard_transfers (reference, id)
  WHERE reference IS NOT NULL;
CREATE INDEX IF NOT EXISTS rowguard_transfers_metadata ON rowguard_transfers USING gin (metadata jsonb_path_ops)
  WHERE metadata IS NOT NULL;

-- Epoch milliseconds as a timestamptz, exactly: seconds and milliseconds apart, since one product
-- of milliseconds and an interval goes through a double and can be off by microseconds past year
-- 2255 (2^53 microseconds), enough to read back the millisecond before. NULL for NULL.
CREATE OR REPLACE FUNCTION rowguard_ms_to_timestamp(p_ms bigint)
RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY INVOKER AS $fn$
  SELECT TIMESTAMPTZ 'epoch' + (p_ms / 1000) * INTERVAL '1 second' + (p_ms % 1000) * INTERVAL '1 millisecond'
$fn$;

DROP FUNCTION IF EXISTS rowguard_apply_batch(text[], text[], bigint[], text[], boolean[], text[], text[]);
DROP FUNCTION IF EXISTS rowguard_batch_item(text, text, bigint, text, text, text);
DROP FUNCTION IF EXISTS rowguard_apply_transfer(text, text, bigint, text, text, text);
DROP FUNCTION IF EXISTS rowguard_apply_hold(text, text, bigint, text, bigint, text);
DROP FUNCTION IF EXISTS rowguard_apply_capture(bigint, bigint, text, text);
DROP FUNCTION IF EXISTS rowguard_apply_void(bigint, text);

-- Step 008's transfer (read its comment there), with the details: p_code, p_reference, p_metadata
-- and p_event_at_ms (epoch ms) are recorded with the transfer, and the key's earlier record comes
-- back with its own (r_code ... r_event_at_ms) for the caller to compare.
CREATE FUNCTION rowguard_apply_transfer(p_from text, p_to text, p_amount bigint, p_key text,
                                        p_cache_a text, p_cache_b text, p_code integer, p_reference text,
                                        p_metadata jsonb, p_event_at_ms bigint)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_code integer, r_reference text, r_metadata text, r_event_at_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint, r_from_balance bigint, r_to_balance bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  WITH prior AS (
    -- The record of the key, among the transfers or the holds: at most one row.
    SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id,
           CAST(NULL AS bigint) AS timeout_ms, t.code, t.reference, CAST(t.metadata AS text) AS metadata,
           CAST(floor(EXTRACT(EPOCH FROM t.event_at) * 1000) AS bigint) AS event_at_ms
      FROM rowguard_transfers t WHERE t.idempotency_key = p_key
    UNION ALL
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms,
           h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
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
  -- The funds condition lives in the debit's own WHERE, evaluated on the row it updates.
  debit AS (
    UPDATE rowguard_accounts a SET balance = a.balance - p_amount, version = a.version + 1,
           updated_at = clock_timestamp()
      FROM allowed
     WHERE a.id = p_from AND allowed.overflow = 0
       AND CAST(a.balance AS numeric) - p_amount - a.held >= a.min_balance
    RETURNING a.id, a.balance, a.version),
  -- The credit runs only if the debit happened: never money from nowhere.
  credit AS (
    UPDATE rowguard_accounts a SET balance = a.balance + p_amount, version = a.version + 1,
           updated_at = clock_timestamp()
     WHERE a.id = p_to AND EXISTS (SELECT 1 FROM debit)
    RETURNING a.id, a.balance, a.version),
  rec AS (
    INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                    created_at, code, reference, metadata, event_at)
    SELECT p_key, 'transfer', p_from, p_to, p_amount, al.currency,
           CASE WHEN EXISTS (SELECT 1 FROM debit) THEN 'ok' ELSE 'insufficient_funds' END, clock_timestamp(),
           p_code, p_reference, p_metadata, rowguard_ms_to_timestamp(p_event_at_ms)
      FROM allowed al
     WHERE al.overflow = 0
       -- Short while holding holds: record nothing, the caller decides after closing expired ones.
       AND (EXISTS (SELECT 1 FROM debit) OR (SELECT s.held FROM src s) = 0)
    RETURNING rowguard_transfers.id, rowguard_transfers.outcome),
  -- Each entry with the balance and version its own account row now has.
  entries AS (
    INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at, balance_after, account_version)
    SELECT rec.id, x.account, x.amount, clock_timestamp(), x.balance, x.version
      FROM rec, (SELECT d.id, -p_amount, d.balance, d.version, 1 FROM debit d
                 UNION ALL SELECT c.id, p_amount, c.balance, c.version, 2 FROM credit c)
                AS x(account, amount, balance, version, pos)
     WHERE rec.outcome = 'ok'
     ORDER BY x.pos
    RETURNING 1),
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
         p.timeout_ms, p.code, p.reference, p.metadata, p.event_at_ms,
         (SELECT CAST(s.currency AS text) FROM src s), (SELECT CAST(d.currency AS text) FROM dst d),
         (SELECT al.overflow FROM allowed al), (SELECT r.id FROM rec r), (SELECT r.outcome FROM rec r),
         (SELECT count(*) FROM debit) + (SELECT count(*) FROM credit) + (SELECT count(*) FROM entries),
         (SELECT d.balance FROM debit d), (SELECT c.balance FROM credit c)
    FROM (SELECT 1 AS one) AS x LEFT JOIN prior p ON true;
END
$fn$;

-- Step 009's batch item, with the details: a replay is 'ok' only when every field of its record,
-- the details included (metadata as jsonb values), is the item's.
CREATE FUNCTION rowguard_batch_item(p_from text, p_to text, p_amount bigint, p_key text,
                                    p_cache_a text, p_cache_b text, p_code integer, p_reference text,
                                    p_metadata jsonb, p_event_at_ms bigint)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_code integer, r_reference text, r_metadata text, r_event_at_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint, r_from_balance bigint, r_to_balance bigint, r_verdict text)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  SELECT t.*,
         CASE WHEN t.r_id IS NOT NULL THEN
                CASE WHEN t.r_kind = 'transfer' AND t.r_global_txid IS NULL AND t.r_reverses IS NULL
                          AND t.r_hold_id IS NULL AND t.r_from = p_from AND t.r_to = p_to AND t.r_amount = p_amount
                          AND t.r_code = p_code AND t.r_reference IS NOT DISTINCT FROM p_reference
                          AND CAST(t.r_metadata AS jsonb) IS NOT DISTINCT FROM p_metadata
                          AND t.r_event_at_ms IS NOT DISTINCT FROM p_event_at_ms
                          AND t.r_outcome = 'ok' THEN 'ok' ELSE 'failed' END
              WHEN t.r_src_currency IS NULL OR t.r_dst_currency IS NULL OR t.r_src_currency <> t.r_dst_currency
                   OR t.r_overflow <> 0 THEN 'failed'
              WHEN t.r_record_id IS NULL THEN 'client'
              WHEN t.r_record_outcome = 'ok' AND t.r_rows = 4 THEN 'ok'
              ELSE 'failed' END
    FROM rowguard_apply_transfer(p_from, p_to, p_amount, p_key, p_cache_a, p_cache_b, p_code, p_reference,
                                 p_metadata, p_event_at_ms) AS t
   WHERE p_key IS NOT NULL;
END
$fn$;

-- Step 009's batch (read its comment there), with the details as four more arrays: p_code,
-- p_reference, p_metadata (JSON text, NULL for none) and p_event_at (epoch ms).
CREATE FUNCTION rowguard_apply_batch(p_from text[], p_to text[], p_amount bigint[], p_key text[],
                                     p_linked boolean[], p_cache_a text[], p_cache_b text[], p_code integer[],
                                     p_reference text[], p_metadata text[], p_event_at bigint[])
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_code integer, r_reference text, r_metadata text, r_event_at_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_record_id bigint,
               r_record_outcome text, r_rows bigint, r_item integer, r_failed integer, r_stopped integer,
               r_sqlstate text, r_message text, r_from_balance bigint, r_to_balance bigint)
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
     OR array_length(p_code, 1) IS DISTINCT FROM n OR array_length(p_reference, 1) IS DISTINCT FROM n
     OR array_length(p_metadata, 1) IS DISTINCT FROM n OR array_length(p_event_at, 1) IS DISTINCT FROM n
     OR (n > 0 AND p_linked[n]) THEN
    RAISE EXCEPTION 'rowguard_apply_batch: arrays of one length, the last item unlinked' USING ERRCODE = '22023';
  END IF;
  PERFORM a.id FROM rowguard_accounts a WHERE a.id = ANY (p_from || p_to) ORDER BY a.id FOR NO KEY UPDATE;
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
    BEGIN
      UPDATE rowguard_accounts a SET balance = a.balance + m.delta, version = a.version + m.touches,
             updated_at = clock_timestamp()
        FROM (SELECT x.id, sum(x.delta) AS delta, count(*) AS touches
                FROM (SELECT u.f AS id, -u.amount AS delta FROM unnest(p_from, p_amount) AS u(f, amount)
                      UNION ALL SELECT u.t, u.amount FROM unnest(p_to, p_amount) AS u(t, amount)) AS x
               GROUP BY x.id) AS m
       WHERE a.id = m.id;
      WITH items AS (SELECT * FROM unnest(p_from, p_to, p_amount, p_key, p_code, p_reference, p_metadata, p_event_at)
                              WITH ORDINALITY AS i(f, t, amount, k, code, reference, metadata, event_at, ord)),
      rec AS (
        INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                        created_at, code, reference, metadata, event_at)
        SELECT i.k, 'transfer', i.f, i.t, i.amount, a.currency, 'ok', clock_timestamp(), i.code, i.reference,
               CAST(i.metadata AS jsonb), rowguard_ms_to_timestamp(i.event_at)
          FROM items i JOIN rowguard_accounts a ON a.id = i.f ORDER BY i.ord
        RETURNING rowguard_transfers.id, rowguard_transfers.idempotency_key),
      -- The accounts were updated once for the whole batch (above): each entry's balance and version
      -- is the account's now, less what the account's later entries of this batch add. Entry ids
      -- follow the items' order, as the running sums do.
      journal AS (
        INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at, balance_after, account_version)
        SELECT j.tid, j.account, j.amount, clock_timestamp(), CAST(a.balance - j.total + j.running AS bigint),
               a.version - j.touches + j.nth
          FROM (SELECT r.id AS tid, x.account, x.amount, i.ord, x.pos,
                       sum(x.amount) OVER w AS running, count(*) OVER w AS nth,
                       sum(x.amount) OVER (PARTITION BY x.account) AS total,
                       count(*) OVER (PARTITION BY x.account) AS touches
                  FROM rec r JOIN items i ON i.k = r.idempotency_key,
                       LATERAL (VALUES (i.f, -i.amount, 1), (i.t, i.amount, 2)) AS x(account, amount, pos)
                WINDOW w AS (PARTITION BY x.account ORDER BY i.ord, x.pos)) j
          JOIN rowguard_accounts a ON a.id = j.account
         ORDER BY j.ord, j.pos
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
           CAST(NULL AS integer), CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS bigint),
           CAST(r.currency AS text), CAST(r.currency AS text), 0, r.id, r.outcome, CAST(4 AS bigint),
           CAST(i.ord - 1 AS integer), 0, 0, CAST(NULL AS text), CAST(NULL AS text),
           (SELECT e.balance_after FROM rowguard_entries e WHERE e.transfer_id = r.id AND e.amount < 0),
           (SELECT e.balance_after FROM rowguard_entries e WHERE e.transfer_id = r.id AND e.amount > 0)
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
      SELECT * INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id,
                    r_timeout_ms, r_code, r_reference, r_metadata, r_event_at_ms, r_src_currency, r_dst_currency,
                    r_overflow, r_record_id, r_record_outcome, r_rows, r_from_balance, r_to_balance, verdict
        FROM rowguard_batch_item(p_from[j], p_to[j], p_amount[j], p_key[j], p_cache_a[j], p_cache_b[j], p_code[j],
                                 p_reference[j], CAST(p_metadata[j] AS jsonb), p_event_at[j]);
      r_item := j - 1; r_failed := CAST(verdict IS DISTINCT FROM 'ok' AS integer);
      r_stopped := CAST(verdict IS NOT DISTINCT FROM 'client' AS integer);
      RETURN NEXT;
      IF r_stopped = 1 THEN
        RETURN;
      END IF;
    ELSE
      BEGIN
        WHILE j <= e LOOP
          SELECT * INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id,
                        r_timeout_ms, r_code, r_reference, r_metadata, r_event_at_ms, r_src_currency,
                        r_dst_currency, r_overflow, r_record_id, r_record_outcome, r_rows, r_from_balance,
                        r_to_balance, verdict
            FROM rowguard_batch_item(p_from[j], p_to[j], p_amount[j], p_key[j], p_cache_a[j], p_cache_b[j],
                                     p_code[j], p_reference[j], CAST(p_metadata[j] AS jsonb), p_event_at[j]);
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
                        r_timeout_ms, r_code, r_reference, r_metadata, r_event_at_ms, r_src_currency,
                        r_dst_currency, r_overflow, r_record_id, r_record_outcome, r_rows, r_from_balance,
                        r_to_balance, verdict
            FROM rowguard_batch_item(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);  -- no row
          r_item := s - 1; r_failed := 0; r_stopped := 1;
          RETURN NEXT;
          RETURN;
        WHEN OTHERS THEN
          GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, r_message = MESSAGE_TEXT;
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

-- Step 009's hold (read its comment there), with the details recorded on the hold and the key's
-- earlier record returned with its own.
CREATE FUNCTION rowguard_apply_hold(p_from text, p_to text, p_amount bigint, p_key text,
                                    p_timeout_ms bigint, p_cache_prefix text, p_code integer, p_reference text,
                                    p_metadata jsonb, p_event_at_ms bigint)
RETURNS TABLE (r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_code integer, r_reference text, r_metadata text, r_event_at_ms bigint,
               r_src_currency text, r_dst_currency text, r_overflow integer, r_new_hold_id bigint,
               r_new_state text)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  v_balance bigint;
  v_min bigint;
  v_held bigint;
  v_funded boolean;
BEGIN
  SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id, NULL,
         t.code, t.reference, CAST(t.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM t.event_at) * 1000) AS bigint)
    INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms,
         r_code, r_reference, r_metadata, r_event_at_ms
    FROM rowguard_transfers t WHERE t.idempotency_key = p_key;
  IF NOT FOUND THEN
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms,
           h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
      INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms,
           r_code, r_reference, r_metadata, r_event_at_ms
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
  v_funded := CAST(v_balance AS numeric) - p_amount - v_held >= v_min;
  IF NOT v_funded AND v_held > 0 THEN
    v_funded := CAST(v_balance AS numeric) - p_amount - (v_held - rowguard_hold_release_expired(p_from)) >= v_min;
  END IF;
  IF v_funded THEN
    UPDATE rowguard_accounts a SET held = a.held + p_amount, version = a.version + 1, updated_at = clock_timestamp()
     WHERE a.id = p_from;
  END IF;
  INSERT INTO rowguard_holds (idempotency_key, from_account, to_account, amount, currency, state, expires_at,
                              created_at, timeout_ms, code, reference, metadata, event_at)
  VALUES (p_key, p_from, p_to, p_amount, r_src_currency, CASE WHEN v_funded THEN 'held' ELSE 'rejected' END,
          clock_timestamp() + p_timeout_ms * INTERVAL '1 millisecond', clock_timestamp(), p_timeout_ms,
          p_code, p_reference, p_metadata, rowguard_ms_to_timestamp(p_event_at_ms))
  RETURNING rowguard_holds.id, rowguard_holds.state INTO r_new_hold_id, r_new_state;
  IF v_funded AND p_cache_prefix IS NOT NULL THEN
    PERFORM rowguard_hold_drop_cached(p_cache_prefix, p_from, NULL);
  END IF;
  RETURN NEXT;
END
$fn$;

-- Step 009's capture (read its comment there): the hold's columns and the key's record come back
-- with their details (h_code ... and r_code ...), and the capture's transfer carries the hold's.
CREATE FUNCTION rowguard_apply_capture(p_hold bigint, p_amount bigint, p_key text, p_cache_prefix text)
RETURNS TABLE (h_id bigint, h_key text, h_from text, h_to text, h_amount bigint, h_currency text, h_state text,
               h_captured bigint, h_transfer_id bigint, h_expires_in_ms bigint,
               h_code integer, h_reference text, h_metadata text, h_event_at_ms bigint,
               r_id bigint, r_kind text, r_from text, r_to text, r_amount bigint, r_outcome text,
               r_global_txid text, r_reverses bigint, r_hold_id bigint, r_timeout_ms bigint,
               r_code integer, r_reference text, r_metadata text, r_event_at_ms bigint,
               r_dst_exists integer, r_overflow integer, r_short integer, r_transfer_id bigint,
               r_from_balance bigint, r_to_balance bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  v_take bigint;
  v_src_held bigint;
  v_dst_balance bigint;
  v_from_version bigint;
  v_to_version bigint;
BEGIN
  SELECT h.id, h.idempotency_key, h.from_account, h.to_account, h.amount, CAST(h.currency AS text), h.state,
         h.captured, h.transfer_id,
         CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint)
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint),
         h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms,
         h_code, h_reference, h_metadata, h_event_at_ms
    FROM rowguard_holds h WHERE h.id = p_hold;
  v_take := COALESCE(p_amount, h_amount);
  IF h_id IS NULL OR h_state = 'rejected' OR v_take > h_amount THEN
    RETURN NEXT;
    RETURN;
  END IF;
  SELECT max(CASE WHEN l.id = h_from THEN l.held END), max(CASE WHEN l.id = h_to THEN l.balance END),
         max(CASE WHEN l.id = h_to THEN 1 ELSE 0 END)
    INTO v_src_held, v_dst_balance, r_dst_exists
    FROM (SELECT a.id, a.balance, a.held FROM rowguard_accounts a WHERE a.id IN (h_from, h_to) ORDER BY a.id
          FOR NO KEY UPDATE) l;
  SELECT h.id, h.idempotency_key, h.from_account, h.to_account, h.amount, CAST(h.currency AS text), h.state,
         h.captured, h.transfer_id,
         CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint)
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint),
         h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms,
         h_code, h_reference, h_metadata, h_event_at_ms
    FROM rowguard_holds h WHERE h.id = p_hold FOR NO KEY UPDATE;
  SELECT t.id, t.kind, t.from_account, t.to_account, t.amount, t.outcome, t.global_txid, t.reverses, t.hold_id, NULL,
         t.code, t.reference, CAST(t.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM t.event_at) * 1000) AS bigint)
    INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms,
         r_code, r_reference, r_metadata, r_event_at_ms
    FROM rowguard_transfers t WHERE t.idempotency_key = p_key;
  IF NOT FOUND THEN
    SELECT h.id, 'hold', h.from_account, h.to_account, h.amount, h.state, NULL, NULL, NULL, h.timeout_ms,
           h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
      INTO r_id, r_kind, r_from, r_to, r_amount, r_outcome, r_global_txid, r_reverses, r_hold_id, r_timeout_ms,
           r_code, r_reference, r_metadata, r_event_at_ms
      FROM rowguard_holds h WHERE h.idempotency_key = p_key;
  END IF;
  r_dst_exists := COALESCE(r_dst_exists, 0);
  r_overflow := CASE WHEN CAST(v_dst_balance AS numeric) + v_take > 9223372036854775807 THEN 1 ELSE 0 END;
  r_short := CASE WHEN COALESCE(v_src_held, 0) < h_amount THEN 1 ELSE 0 END;
  IF h_state <> 'held' OR h_expires_in_ms <= 0 OR r_id IS NOT NULL OR r_dst_exists = 0 OR r_overflow = 1
     OR r_short = 1 THEN
    RETURN NEXT;
    RETURN;
  END IF;
  UPDATE rowguard_accounts a SET balance = a.balance - v_take, held = a.held - h_amount, version = a.version + 1,
         updated_at = clock_timestamp()
   WHERE a.id = h_from
  RETURNING a.balance, a.version INTO r_from_balance, v_from_version;
  UPDATE rowguard_accounts a SET balance = a.balance + v_take, version = a.version + 1, updated_at = clock_timestamp()
   WHERE a.id = h_to
  RETURNING a.balance, a.version INTO r_to_balance, v_to_version;
  INSERT INTO rowguard_transfers (idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                  hold_id, created_at, code, reference, metadata, event_at)
  VALUES (p_key, 'transfer', h_from, h_to, v_take, h_currency, 'ok', p_hold, clock_timestamp(), h_code, h_reference,
          CAST(h_metadata AS jsonb), rowguard_ms_to_timestamp(h_event_at_ms))
  RETURNING rowguard_transfers.id INTO r_transfer_id;
  INSERT INTO rowguard_entries (transfer_id, account_id, amount, created_at, balance_after, account_version)
  VALUES (r_transfer_id, h_from, -v_take, clock_timestamp(), r_from_balance, v_from_version),
         (r_transfer_id, h_to, v_take, clock_timestamp(), r_to_balance, v_to_version);
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

-- Step 009's void (read its comment there): the hold comes back with its details.
CREATE FUNCTION rowguard_apply_void(p_hold bigint, p_cache_prefix text)
RETURNS TABLE (h_id bigint, h_key text, h_from text, h_to text, h_amount bigint, h_currency text, h_state text,
               h_captured bigint, h_transfer_id bigint, h_expires_in_ms bigint,
               h_code integer, h_reference text, h_metadata text, h_event_at_ms bigint)
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
           - CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint),
         h.code, h.reference, CAST(h.metadata AS text), CAST(floor(EXTRACT(EPOCH FROM h.event_at) * 1000) AS bigint)
    INTO h_id, h_key, h_from, h_to, h_amount, h_currency, h_state, h_captured, h_transfer_id, h_expires_in_ms,
         h_code, h_reference, h_metadata, h_event_at_ms
    FROM rowguard_holds h WHERE h.id = p_hold FOR NO KEY UPDATE;
  IF h_state = 'held' AND h_expires_in_ms <= 0 THEN
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
  FOREACH f IN ARRAY ARRAY['rowguard_ms_to_timestamp(bigint)',
                           'rowguard_apply_transfer(text, text, bigint, text, text, text, integer, text, jsonb, bigint)',
                           'rowguard_batch_item(text, text, bigint, text, text, text, integer, text, jsonb, bigint)',
                           'rowguard_apply_batch(text[], text[], bigint[], text[], boolean[], text[], text[], integer[], text[], text[], bigint[])',
                           'rowguard_apply_hold(text, text, bigint, text, bigint, text, integer, text, jsonb, bigint)',
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

INSERT INTO rowguard_schema_version (version, name) VALUES (11, '011_ledger_details');

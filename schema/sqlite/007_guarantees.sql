-- rowguard schema, SQLite dialect. Step 007: guarantees that hold while maintenance runs.
-- Each section below names the promise it keeps (docs/reliability.md lists them all).

-- Cache (docs/cache.md, "What a load may store"): a load that began before an invalidation, a put
-- or a prefix invalidation never stores, whatever sweeps and evictions run meanwhile.
-- * Tombstones expire when they are written (expires_at = updated_at), no longer at the epoch, so
--   the sweep's "expired longer than sweep_grace ago" keeps every row for sweep_grace after its
--   last change. The UPDATE moves tombstones written before this step; safe to rerun.
-- * invalidate_prefix records its prefix here; a load that began at or before invalidated_at does
--   not store a key under it, whether the key had a row or not. Eviction that must delete rows
--   changed within sweep_grace records the empty prefix (every key). sweep() deletes records older
--   than sweep_grace, when every load that began before them is refused anyway.
CREATE TABLE IF NOT EXISTS rowguard_cache_prefixes (
  prefix         TEXT   PRIMARY KEY,
  invalidated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS rowguard_cache_prefixes_invalidated_at ON rowguard_cache_prefixes (invalidated_at);
UPDATE rowguard_cache SET expires_at = updated_at WHERE value IS NULL AND expires_at < updated_at;

-- Idempotency keys compare every field (docs/ledger.md, "Idempotency keys"): a hold keeps the
-- timeout it was asked for, so a retry with another timeout is idempotency_mismatch rather than a
-- replay. NULL for holds placed before this step (their timeout is not compared).
ALTER TABLE rowguard_holds ADD COLUMN timeout_ms BIGINT;

-- Ids never go back (docs/operations.md, "Archival"): the largest transfer and entry ids ever moved
-- to the archive tables, kept here because a DBA may export and empty those tables. New ids are
-- MAX(id) + 1 over the live rows and this mark, so a later transfer never reuses an archived id.
CREATE TABLE IF NOT EXISTS rowguard_id_high_water (
  name    TEXT   PRIMARY KEY,   -- 'transfers' or 'entries'
  last_id BIGINT NOT NULL
);
INSERT INTO rowguard_id_high_water (name, last_id)
SELECT n, m FROM (SELECT 'transfers' AS n, (SELECT MAX(id) FROM rowguard_transfers_archive) AS m
                  UNION ALL SELECT 'entries', (SELECT MAX(id) FROM rowguard_entries_archive)) AS x
 WHERE m IS NOT NULL
ON CONFLICT (name) DO NOTHING;

-- Holds never make money spendable twice, in the database itself too (docs/ledger.md, "Holds"):
-- PostgreSQL's CHECK (balance - held >= min_balance) as triggers, since SQLite cannot add a CHECK
-- to an existing table. A write that breaks it is refused (SQLITE_CONSTRAINT) and changes nothing.
CREATE TRIGGER IF NOT EXISTS rowguard_accounts_available BEFORE UPDATE ON rowguard_accounts
FOR EACH ROW WHEN NEW.balance - NEW.held < NEW.min_balance
BEGIN
  SELECT RAISE(ABORT, 'rowguard_accounts_available: balance - held must stay at or above min_balance');
END;
CREATE TRIGGER IF NOT EXISTS rowguard_accounts_available_on_insert BEFORE INSERT ON rowguard_accounts
FOR EACH ROW WHEN NEW.balance - NEW.held < NEW.min_balance
BEGIN
  SELECT RAISE(ABORT, 'rowguard_accounts_available: balance - held must stay at or above min_balance');
END;

-- Two-phase transfers: a key reused for another request is idempotency_mismatch, never a replay
-- (docs/two_phase.md, "Transfers between databases"). The source's withdrawal leg records where
-- its money went, '<participant>:<account>', which a rejected transfer (no deposit leg) tells
-- nowhere else.
ALTER TABLE rowguard_transfers ADD COLUMN global_peer TEXT;

INSERT INTO rowguard_schema_version (version, name) VALUES (7, '007_guarantees');

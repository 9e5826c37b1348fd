-- rowguard schema, PostgreSQL dialect. Step 007: guarantees that hold while maintenance runs.
-- Each section below names the promise it keeps (docs/reliability.md lists them all).

-- Idempotency keys compare every field (docs/ledger.md, "Idempotency keys"): a hold keeps the
-- timeout it was asked for, so a retry with another timeout is idempotency_mismatch rather than a
-- replay. NULL for holds placed before this step (their timeout is not compared).
ALTER TABLE rowguard_holds ADD COLUMN IF NOT EXISTS timeout_ms bigint;
COMMENT ON COLUMN rowguard_holds.timeout_ms IS
  'the timeout the hold was asked for, in ms; a retry of its key must ask for the same (NULL before schema 7)';

-- Ids never go back (docs/operations.md, "Archival"): the largest transfer and entry ids ever moved
-- to the archive tables, kept here because a DBA may export and empty those tables. PostgreSQL's
-- sequences never go back anyway; SQLite assigns MAX(id) + 1 over the live rows and this mark.
CREATE TABLE IF NOT EXISTS rowguard_id_high_water (
  name    text   PRIMARY KEY,
  last_id bigint NOT NULL
);
COMMENT ON TABLE rowguard_id_high_water IS
  'rowguard: the largest transfer and entry ids ever archived (name transfers or entries); ids stay above them';
INSERT INTO rowguard_id_high_water (name, last_id)
SELECT n, m FROM (SELECT 'transfers' AS n, (SELECT MAX(id) FROM rowguard_transfers_archive) AS m
                  UNION ALL SELECT 'entries', (SELECT MAX(id) FROM rowguard_entries_archive)) AS x
 WHERE m IS NOT NULL
ON CONFLICT (name) DO NOTHING;

INSERT INTO rowguard_schema_version (version, name) VALUES (7, '007_guarantees');

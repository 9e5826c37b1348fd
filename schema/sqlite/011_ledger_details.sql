-- rowguard schema, SQLite dialect. Step 011: codes, references, metadata and event times on
-- transfers and holds (TransferDetails, docs/ledger.md "Codes, references and metadata"), and the
-- running balance on every journal entry (docs/ledger.md "Running balances").
--
-- - code: the kind of payment as a team numbers them, 0 = none, 1..65535 (BIGINT: SOCI reads an INTEGER
--   column as 32 bits and refuses it).
-- - reference: an external id (an order number), 1 to 128 bytes, indexed for Ledger::transfers.
-- - metadata: a JSON object as text (json_valid), at most 4096 bytes, stored as the caller gave it.
-- - event_at: when the payment took effect outside the ledger (imported transfers), epoch ms;
--   created_at stays the database clock.
-- Existing rows get code 0 and NULL for the rest, which the library reads as "no details". ADD
-- COLUMN changes only the table's definition; the two indexes read the table once.

ALTER TABLE rowguard_transfers ADD COLUMN code BIGINT NOT NULL DEFAULT 0 CHECK (code BETWEEN 0 AND 65535);
ALTER TABLE rowguard_transfers ADD COLUMN reference TEXT
  CHECK (reference IS NULL OR length(CAST(reference AS BLOB)) BETWEEN 1 AND 128);
ALTER TABLE rowguard_transfers ADD COLUMN metadata TEXT
  CHECK (metadata IS NULL OR (json_valid(metadata) AND json_type(metadata) = 'object'
                              AND length(CAST(metadata AS BLOB)) <= 4096));
ALTER TABLE rowguard_transfers ADD COLUMN event_at BIGINT;

ALTER TABLE rowguard_holds ADD COLUMN code BIGINT NOT NULL DEFAULT 0 CHECK (code BETWEEN 0 AND 65535);
ALTER TABLE rowguard_holds ADD COLUMN reference TEXT
  CHECK (reference IS NULL OR length(CAST(reference AS BLOB)) BETWEEN 1 AND 128);
ALTER TABLE rowguard_holds ADD COLUMN metadata TEXT
  CHECK (metadata IS NULL OR (json_valid(metadata) AND json_type(metadata) = 'object'
                              AND length(CAST(metadata AS BLOB)) <= 4096));
ALTER TABLE rowguard_holds ADD COLUMN event_at BIGINT;

-- Archiving moves them with their transfers.
ALTER TABLE rowguard_transfers_archive ADD COLUMN code BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rowguard_transfers_archive ADD COLUMN reference TEXT;
ALTER TABLE rowguard_transfers_archive ADD COLUMN metadata TEXT;
ALTER TABLE rowguard_transfers_archive ADD COLUMN event_at BIGINT;

-- Ledger::transfers pages newest first (id DESC): each index ends in id, so a filtered page is a
-- walk of one index range. Transfers without a code or a reference stay out of them (the queries
-- repeat the predicates), so a transfer without details pays for neither. Metadata has no index:
-- a containment filter walks the transfers newest first and compares json_extract per key.
CREATE INDEX rowguard_transfers_code ON rowguard_transfers (code, id) WHERE code > 0;
CREATE INDEX rowguard_transfers_reference ON rowguard_transfers (reference, id) WHERE reference IS NOT NULL;

-- Running balances: every entry records balance_after (the account's balance after it) and
-- account_version (the account's version after it), written by the statement that writes the
-- entry, from the account row the transaction just updated (src/ledger/ledger_sql.cpp).
ALTER TABLE rowguard_entries ADD COLUMN balance_after BIGINT;
ALTER TABLE rowguard_entries ADD COLUMN account_version BIGINT;
ALTER TABLE rowguard_entries_archive ADD COLUMN balance_after BIGINT;
ALTER TABLE rowguard_entries_archive ADD COLUMN account_version BIGINT;

-- The backfill: per account, over its live and archived entries in id order, the running sum from
-- what the account held before the oldest entry still stored: 0, or, when a DBA exported archived
-- entries (the archive holds fewer than the opening balance counts), the opening balance minus
-- the archived entries still there. Computed once into a temporary table, then written to both
-- tables. The version after a backfilled entry cannot be known (holds and min_balance changes
-- also moved it, and left no row): NULL. Measured in docs/ledger.md (1,000,000 entries).
CREATE TEMPORARY TABLE rowguard_backfill (id INTEGER PRIMARY KEY, running BIGINT NOT NULL);
INSERT INTO rowguard_backfill (id, running)
SELECT u.id, COALESCE(o.balance, 0) - COALESCE(s.present, 0)
             + sum(u.amount) OVER (PARTITION BY u.account_id ORDER BY u.id)
  FROM (SELECT e.id, e.account_id, e.amount FROM rowguard_entries e
        UNION ALL SELECT a.id, a.account_id, a.amount FROM rowguard_entries_archive a) u
  LEFT JOIN rowguard_opening_balances o ON o.account_id = u.account_id
  LEFT JOIN (SELECT a.account_id, sum(a.amount) AS present FROM rowguard_entries_archive a
              GROUP BY a.account_id) s ON s.account_id = u.account_id;
UPDATE rowguard_entries SET balance_after = (SELECT b.running FROM rowguard_backfill b WHERE b.id = rowguard_entries.id)
 WHERE balance_after IS NULL;
UPDATE rowguard_entries_archive
   SET balance_after = (SELECT b.running FROM rowguard_backfill b WHERE b.id = rowguard_entries_archive.id)
 WHERE balance_after IS NULL;
DROP TABLE rowguard_backfill;

INSERT INTO rowguard_schema_version (version, name) VALUES (11, '011_ledger_details');

-- rowguard schema, SQLite dialect. Step 010: codes, references, metadata and event times on
-- transfers and holds (TransferDetails, docs/ledger.md "Codes, references and metadata").
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

INSERT INTO rowguard_schema_version (version, name) VALUES (11, '011_transfer_details');

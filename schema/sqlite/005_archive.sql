-- rowguard schema, SQLite dialect. Step 005: carried-forward balances for archived journal rows.
-- Archiving (`rowguard ledger archive`, docs/operations.md) removes the transfers and entries created
-- before a cutoff from the live tables. What they added up to stays here, so every balance still
-- equals its opening balance plus its live entries, and `ledger check` stays valid.

-- Per account, the sum of its archived entries: balance = opening balance + SUM(live entries).
CREATE TABLE rowguard_opening_balances (
  account_id TEXT   PRIMARY KEY REFERENCES rowguard_accounts (id),
  balance    BIGINT NOT NULL,
  entries    BIGINT NOT NULL DEFAULT 0 CHECK (entries >= 0),  -- how many archived entries it adds up
  as_of      BIGINT NOT NULL                                  -- entries created before this were archived
);

-- Per currency, the applied deposits and withdrawals among archived transfers (for the totals check).
CREATE TABLE rowguard_archived_totals (
  currency    TEXT   PRIMARY KEY,
  deposits    BIGINT NOT NULL DEFAULT 0,
  withdrawals BIGINT NOT NULL DEFAULT 0
);

-- One row per archive run; rows created before the latest cutoff are no longer in the live tables.
CREATE TABLE rowguard_archives (
  cutoff      BIGINT PRIMARY KEY,
  transfers   BIGINT NOT NULL,
  entries     BIGINT NOT NULL,
  archived_at BIGINT NOT NULL
);

-- The archived journal: the same columns as the live tables, no foreign keys (the rows they pointed
-- at may be archived too, or their holds kept live), so a DBA can export and delete them.
-- Their keys are no longer recognised by the ledger.
CREATE TABLE rowguard_transfers_archive (
  id              BIGINT  PRIMARY KEY,
  idempotency_key TEXT,
  kind            TEXT    NOT NULL,
  from_account    TEXT,
  to_account      TEXT,
  amount          BIGINT  NOT NULL,
  currency        TEXT    NOT NULL,
  outcome         TEXT    NOT NULL,
  reverses        BIGINT,
  created_at      BIGINT  NOT NULL,
  hold_id         BIGINT,
  global_txid     TEXT
);

-- Journal entries moved with their transfers; per account they add up to the opening balance.
CREATE TABLE rowguard_entries_archive (
  id          BIGINT  PRIMARY KEY,
  transfer_id BIGINT  NOT NULL,
  account_id  TEXT    NOT NULL,
  amount      BIGINT  NOT NULL,
  created_at  BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS rowguard_entries_archive_account ON rowguard_entries_archive (account_id);

-- A DBA may build the two indexes below by hand first under these names: the step keeps them.
-- Archiving deletes transfers: the foreign key from holds is checked per deleted row, by this index.
CREATE INDEX IF NOT EXISTS rowguard_holds_transfer ON rowguard_holds (transfer_id) WHERE transfer_id IS NOT NULL;
-- Archiving selects the transfers created before its cutoff.
CREATE INDEX IF NOT EXISTS rowguard_transfers_created_at ON rowguard_transfers (created_at);

INSERT INTO rowguard_schema_version (version, name) VALUES (5, '005_archive');

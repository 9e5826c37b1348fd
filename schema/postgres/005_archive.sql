-- rowguard schema, PostgreSQL dialect. Step 005: carried-forward balances for archived journal rows.
-- Archiving (`rowguard ledger archive`, docs/operations.md) removes the transfers and entries created
-- before a cutoff from the live tables. What they added up to stays here, so every balance still
-- equals its opening balance plus its live entries, and `ledger check` stays valid.

CREATE TABLE rowguard_opening_balances (
  account_id text        PRIMARY KEY REFERENCES rowguard_accounts (id),
  balance    bigint      NOT NULL,
  entries    bigint      NOT NULL DEFAULT 0 CHECK (entries >= 0),
  as_of      timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_opening_balances IS
  'rowguard: per account, the sum of its archived entries; balance = opening balance + SUM(live entries)';
COMMENT ON COLUMN rowguard_opening_balances.as_of IS 'entries created before this time were archived; balances before it are not known';
COMMENT ON COLUMN rowguard_opening_balances.entries IS 'how many archived entries the opening balance adds up';

CREATE TABLE rowguard_archived_totals (
  currency    char(3) PRIMARY KEY,
  deposits    bigint  NOT NULL DEFAULT 0,
  withdrawals bigint  NOT NULL DEFAULT 0
);
COMMENT ON TABLE rowguard_archived_totals IS
  'rowguard: per currency, the applied deposits and withdrawals among archived transfers (for the ledger totals check)';

CREATE TABLE rowguard_archives (
  cutoff      timestamptz PRIMARY KEY,
  transfers   bigint      NOT NULL,
  entries     bigint      NOT NULL,
  archived_at timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_archives IS
  'rowguard: one row per archive run; rows created before the latest cutoff are no longer in the live tables';

-- The archived journal: the same columns as the live tables, no foreign keys (the rows they pointed
-- at may be archived too, or their holds kept live), so a DBA can export and truncate them.
CREATE TABLE rowguard_transfers_archive (
  id              bigint      PRIMARY KEY,
  idempotency_key text,
  kind            text        NOT NULL,
  from_account    text,
  to_account      text,
  amount          bigint      NOT NULL,
  currency        char(3)     NOT NULL,
  outcome         text        NOT NULL,
  reverses        bigint,
  created_at      timestamptz NOT NULL,
  hold_id         bigint,
  global_txid     text
);
COMMENT ON TABLE rowguard_transfers_archive IS
  'rowguard: transfers moved out of rowguard_transfers by an archive run; their keys are no longer recognised';

CREATE TABLE rowguard_entries_archive (
  id          bigint      PRIMARY KEY,
  transfer_id bigint      NOT NULL,
  account_id  text        NOT NULL,
  amount      bigint      NOT NULL,
  created_at  timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_entries_archive IS
  'rowguard: journal entries moved out of rowguard_entries with their transfers; they add up to rowguard_opening_balances';
CREATE INDEX IF NOT EXISTS rowguard_entries_archive_account ON rowguard_entries_archive (account_id);

-- On a large live ledger, build the two indexes below by hand first with CREATE INDEX CONCURRENTLY
-- under these names and the step finds them (IF NOT EXISTS) instead of locking the tables against writes.
-- Archiving deletes transfers: the foreign key from holds is checked per deleted row, by this index.
CREATE INDEX IF NOT EXISTS rowguard_holds_transfer ON rowguard_holds (transfer_id) WHERE transfer_id IS NOT NULL;
-- Archiving selects the transfers created before its cutoff.
CREATE INDEX IF NOT EXISTS rowguard_transfers_created_at ON rowguard_transfers (created_at);

INSERT INTO rowguard_schema_version (version, name) VALUES (5, '005_archive');

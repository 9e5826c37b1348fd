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

INSERT INTO rowguard_schema_version (version, name) VALUES (5, '005_archive');

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

INSERT INTO rowguard_schema_version (version, name) VALUES (5, '005_archive');

-- rowguard schema, PostgreSQL dialect. Step 006: indexes for the ledger-wide transfer list by account.
-- Ledger::transfers(account) (`rowguard ledger transfers --account ID`) pages an account's transfers,
-- rejected ones included (they have no journal entries), newest first by id: one index per side.
-- Account history itself pages the journal through rowguard_entries_account (step 001).
-- On a large live table, build them by hand first with CREATE INDEX CONCURRENTLY under these names
-- and the step finds them (IF NOT EXISTS) instead of locking the table against writes.
CREATE INDEX IF NOT EXISTS rowguard_transfers_from ON rowguard_transfers (from_account, id);
CREATE INDEX IF NOT EXISTS rowguard_transfers_to ON rowguard_transfers (to_account, id);

INSERT INTO rowguard_schema_version (version, name) VALUES (6, '006_history');

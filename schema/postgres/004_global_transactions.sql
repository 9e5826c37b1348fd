-- rowguard schema, PostgreSQL dialect. Step 004: two-phase commit across databases.
-- The coordinator's decision log: a row is committed here, durably, after every participant has
-- prepared and before any COMMIT PREPARED. Recovery commits the prepared transactions of a gid that
-- has a 'commit' row and rolls back every other rowguard prepared transaction (presumed abort).

CREATE TABLE rowguard_global_transactions (
  gid          text        PRIMARY KEY,
  decision     text        NOT NULL CHECK (decision IN ('commit', 'abort')),
  participants text        NOT NULL,
  decided_at   timestamptz NOT NULL,
  finished_at  timestamptz
);
COMMENT ON TABLE rowguard_global_transactions IS
  'rowguard: two-phase commit decisions; finished_at set once every participant has committed or rolled back';
COMMENT ON COLUMN rowguard_global_transactions.participants IS 'participant names (never URLs), comma-separated';

-- The legs of a global transaction, journaled in each participant database as a withdrawal or a
-- deposit (to or from the outside world), carry its id.
ALTER TABLE rowguard_transfers ADD COLUMN global_txid text;
COMMENT ON COLUMN rowguard_transfers.global_txid IS 'the two-phase-commit transaction this leg belongs to';
-- On a large live ledger, build it by hand first with CREATE INDEX CONCURRENTLY under this name (after
-- adding the column) and the step finds it (IF NOT EXISTS) instead of locking the table against writes.
CREATE INDEX IF NOT EXISTS rowguard_transfers_global_txid ON rowguard_transfers (global_txid) WHERE global_txid IS NOT NULL;

INSERT INTO rowguard_schema_version (version, name) VALUES (4, '004_global_transactions');

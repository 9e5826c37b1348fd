-- rowguard schema, SQLite dialect. Step 004: two-phase commit across databases.
-- SQLite has no prepared transactions, so rowguard's two-phase commit refuses SQLite databases. The
-- step keeps both dialects at the same schema version and their transfers tables alike.

ALTER TABLE rowguard_transfers ADD COLUMN global_txid TEXT;  -- the two-phase-commit transaction of a leg

INSERT INTO rowguard_schema_version (version, name) VALUES (4, '004_global_transactions');

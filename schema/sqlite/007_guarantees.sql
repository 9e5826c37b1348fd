-- rowguard schema, SQLite dialect. Step 007: guarantees that hold while maintenance runs.
-- Each section below names the promise it keeps (docs/reliability.md lists them all).

-- Two-phase transfers: a key reused for another request is idempotency_mismatch, never a replay
-- (docs/two_phase.md, "Transfers between databases"). The source's withdrawal leg records where
-- its money went, '<participant>:<account>', which a rejected transfer (no deposit leg) tells
-- nowhere else.
ALTER TABLE rowguard_transfers ADD COLUMN global_peer TEXT;

INSERT INTO rowguard_schema_version (version, name) VALUES (7, '007_guarantees');

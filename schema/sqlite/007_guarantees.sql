-- rowguard schema, SQLite dialect. Step 007: guarantees that hold while maintenance runs.
-- Each section below names the promise it keeps (docs/reliability.md lists them all).

INSERT INTO rowguard_schema_version (version, name) VALUES (7, '007_guarantees');

-- rowguard schema, SQLite dialect. Step 009: server-side statements for PostgreSQL's batches and
-- holds. SQLite runs in process: the step exists so both dialects keep one version number.

INSERT INTO rowguard_schema_version (version, name) VALUES (9, '009_batches_and_holds');

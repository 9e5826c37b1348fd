-- rowguard schema, SQLite dialect. Step 010: server-side statements for PostgreSQL's cache writes
-- (store and invalidate). SQLite runs in process: the step exists so both dialects keep one version
-- number.

INSERT INTO rowguard_schema_version (version, name) VALUES (10, '010_cache_statements');

-- rowguard schema, SQLite dialect. Step 008: server-side statements for PostgreSQL's hot paths.
-- SQLite runs in process: there is no round trip or planning to save, and rowguard keeps its
-- statements prepared per connection. The step exists so both dialects keep one version number.

INSERT INTO rowguard_schema_version (version, name) VALUES (8, '008_server_statements');

-- rowguard schema, SQLite dialect. Step 000: the schema-version table.
-- rowguard's migrate runs this before every step; it is idempotent.
-- Times are integer (BIGINT) milliseconds since the Unix epoch (UTC) on SQLite.

-- One row per applied migration step; MAX(version) is the schema version.
CREATE TABLE IF NOT EXISTS rowguard_schema_version (
  version    BIGINT  PRIMARY KEY,      -- the step number, 1, 2, ...
  name       TEXT    NOT NULL,         -- the script's file name without .sql
  applied_at BIGINT  NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER) * 1000
                                       + CAST(substr(strftime('%f','now'), 4, 3) AS INTEGER))
);

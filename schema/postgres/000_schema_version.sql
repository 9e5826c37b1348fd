-- rowguard schema, PostgreSQL dialect. Step 000: the schema-version table.
-- rowguard's migrate runs this before every step; it is idempotent.

CREATE TABLE IF NOT EXISTS rowguard_schema_version (
  version    integer     PRIMARY KEY,
  name       text        NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE rowguard_schema_version IS
  'rowguard: one row per applied migration step; MAX(version) is the schema version.';

-- rowguard: monthly partitioning of the journal, PostgreSQL only. A DBA script, not a migration:
-- `rowguard migrate` never runs it. It converts rowguard_transfers and rowguard_entries into tables
-- partitioned by RANGE (created_at), one partition per calendar month (UTC) plus a DEFAULT
-- partition, and adds rowguard_create_partitions(months_ahead, since) to create further months.
-- Review it, then run it once, in one transaction, on a migrated database (schema version 12; it refuses any other):
--   rowguard schema --dialect postgres --partitioning > partitioning.sql   (or take this file)
--   psql -1 -v ON_ERROR_STOP=1 -d app -f partitioning.sql
-- Another table prefix: `rowguard --prefix acme_ schema --dialect postgres --partitioning` prints it
-- with every rowguard_ name replaced, or replace them in this file (sed 's/\browguard_/acme_/g').
--
-- What changes (docs/operations.md, "Growth"):
-- * Primary keys become (id, created_at): a partitioned table's unique constraints must contain its
--   partition key. ids still come from the same sequences, so they stay unique.
-- * The idempotency key can no longer be UNIQUE on rowguard_transfers: rowguard_transfer_keys, kept
--   by a trigger, holds one row per key and raises unique_violation (23505) for a second transfer
--   with a key in use, exactly as the unique index did. rowguard works unchanged on top of it.
-- * Foreign keys that point at rowguard_transfers (id) cannot reference a partitioned table whose
--   key is (id, created_at): rowguard_entries.transfer_id, rowguard_holds.transfer_id and
--   rowguard_transfers.reverses lose theirs. rowguard always writes them together in one
--   transaction; `rowguard ledger check` still reports an entry-less capture (capture_mismatch).
--   Foreign keys from these tables to rowguard_accounts and rowguard_holds stay.
-- * It rewrites both tables (every row is copied): plan a maintenance window, it holds ACCESS
--   EXCLUSIVE locks on them throughout.

-- The layout below is schema version 12's (steps 008 to 010 added functions only, which name the
-- tables and find the partitioned ones; step 011 the columns code, reference, metadata and event_at
-- and their indexes, and balance_after and account_version on the entries; step 012 the fair-lock
-- queue and lock functions, which touch neither table): on another version the script would drop
-- what a later step added (or miss what an earlier one lacks), so it stops instead.
DO $$
BEGIN
  IF (SELECT max(version) FROM rowguard_schema_version) IS DISTINCT FROM 12 THEN
    RAISE EXCEPTION 'partitioning.sql is written for rowguard schema version 12; this database is at %',
      (SELECT max(version) FROM rowguard_schema_version);
  END IF;
END
$$;

LOCK TABLE rowguard_transfers, rowguard_entries, rowguard_holds IN ACCESS EXCLUSIVE MODE;

-- 1. The foreign keys that reference rowguard_transfers, whatever their generated names.
DO $$
DECLARE c record;
BEGIN
  FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
           WHERE contype = 'f' AND confrelid = 'rowguard_transfers'::regclass LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
  END LOOP;
END
$$;

-- 2. The old tables step aside; their sequences stay (ids continue where they were).
ALTER TABLE rowguard_transfers RENAME TO rowguard_transfers_unpartitioned;
ALTER TABLE rowguard_entries RENAME TO rowguard_entries_unpartitioned;
ALTER SEQUENCE rowguard_transfers_id_seq OWNED BY NONE;
ALTER SEQUENCE rowguard_entries_id_seq OWNED BY NONE;

CREATE TABLE rowguard_transfers (
  id              bigint      NOT NULL DEFAULT nextval('rowguard_transfers_id_seq'),
  idempotency_key text,
  kind            text        NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'reversal')),
  from_account    text        REFERENCES rowguard_accounts (id),
  to_account      text        REFERENCES rowguard_accounts (id),
  amount          bigint      NOT NULL CHECK (amount > 0),
  currency        char(3)     NOT NULL,
  outcome         text        NOT NULL,
  reverses        bigint,
  created_at      timestamptz NOT NULL,
  hold_id         bigint      REFERENCES rowguard_holds (id),
  global_txid     text,
  global_peer     text,
  code            integer     NOT NULL DEFAULT 0 CONSTRAINT rowguard_transfers_code CHECK (code BETWEEN 0 AND 65535),
  -- Reference and metadata without a CHECK, as step 011 has them: the library checks both before
  -- sending, and a CHECK is parsed again for every inserting statement (docs/ledger.md, "Migration").
  reference       text,
  metadata        jsonb,
  event_at        timestamptz,
  CONSTRAINT rowguard_transfers_partitioned_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE rowguard_transfers IS
  'rowguard: one row per transfer; partitioned by month of created_at (partitioning.sql); keys unique through rowguard_transfer_keys';
ALTER SEQUENCE rowguard_transfers_id_seq OWNED BY rowguard_transfers.id;

CREATE TABLE rowguard_entries (
  id          bigint      NOT NULL DEFAULT nextval('rowguard_entries_id_seq'),
  transfer_id bigint      NOT NULL,
  account_id  text        NOT NULL REFERENCES rowguard_accounts (id),
  amount      bigint      NOT NULL CHECK (amount <> 0),
  created_at  timestamptz NOT NULL,
  balance_after   bigint,
  account_version bigint,
  CONSTRAINT rowguard_entries_partitioned_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE rowguard_entries IS
  'rowguard: the journal; partitioned by month of created_at (partitioning.sql); balance = opening balance + SUM(amount)';
ALTER SEQUENCE rowguard_entries_id_seq OWNED BY rowguard_entries.id;

CREATE TABLE rowguard_transfers_default PARTITION OF rowguard_transfers DEFAULT;
CREATE TABLE rowguard_entries_default PARTITION OF rowguard_entries DEFAULT;

-- 3. Idempotency keys: one row per key in use, kept by a trigger on every partition.
CREATE TABLE rowguard_transfer_keys (
  idempotency_key text        PRIMARY KEY,
  transfer_id     bigint      NOT NULL,
  created_at      timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_transfer_keys IS
  'rowguard: the idempotency keys of rowguard_transfers (partitioned), kept unique here by rowguard_transfer_keys_sync()';

CREATE OR REPLACE FUNCTION rowguard_transfer_keys_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
  -- A row moved to another partition arrives as a DELETE and then an INSERT: both stay correct.
  IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.idempotency_key IS NOT NULL
     AND (TG_OP = 'DELETE' OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key) THEN
    DELETE FROM rowguard_transfer_keys WHERE idempotency_key = OLD.idempotency_key AND transfer_id = OLD.id;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.idempotency_key IS NOT NULL
     AND (TG_OP = 'INSERT' OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key) THEN
    -- The key's own row (the same transfer) is kept; another transfer's is a unique violation.
    INSERT INTO rowguard_transfer_keys (idempotency_key, transfer_id, created_at)
    VALUES (NEW.idempotency_key, NEW.id, NEW.created_at)
    ON CONFLICT (idempotency_key) DO UPDATE SET created_at = excluded.created_at
    WHERE rowguard_transfer_keys.transfer_id = excluded.transfer_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
      RAISE EXCEPTION 'duplicate key value violates unique constraint "rowguard_transfer_keys_pkey"'
        USING ERRCODE = 'unique_violation', DETAIL = format('Key (idempotency_key)=(%s) already exists.', NEW.idempotency_key);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER rowguard_transfer_keys_sync AFTER INSERT OR DELETE OR UPDATE OF idempotency_key
  ON rowguard_transfers FOR EACH ROW EXECUTE FUNCTION rowguard_transfer_keys_sync();

-- 4. Monthly partitions from `since` to months_ahead months after the current one (UTC months),
-- named <table>_pYYYY_MM. Idempotent: existing months are skipped. Rows of a new month already in
-- the DEFAULT partition are moved into it. Returns how many partitions it created.
-- Run from cron, e.g. daily: `rowguard ledger partitions --ahead 3`.
CREATE OR REPLACE FUNCTION rowguard_create_partitions(months_ahead integer, since date DEFAULT current_date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  parent text;
  month date;
  last_month date;
  part text;
  lo timestamptz;
  hi timestamptz;
  created integer := 0;
BEGIN
  IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
    RAISE EXCEPTION 'months_ahead must be 0 to 120, got %', months_ahead USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF since IS NULL OR since > current_date THEN
    RAISE EXCEPTION 'since must be a date not after today, got %', since USING ERRCODE = 'invalid_parameter_value';
  END IF;
  last_month := date_trunc('month', current_date + make_interval(months => months_ahead))::date;
  FOREACH parent IN ARRAY ARRAY['rowguard_transfers', 'rowguard_entries'] LOOP
    month := date_trunc('month', since)::date;
    WHILE month <= last_month LOOP
      part := parent || '_p' || to_char(month, 'YYYY_MM');
      IF to_regclass(quote_ident(part)) IS NULL THEN
        lo := month::timestamp AT TIME ZONE 'UTC';
        hi := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE created_at >= $1 AND created_at < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', parent || '_default', part) USING lo, hi;
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, part, lo, hi);
        IF parent = 'rowguard_transfers' THEN
          -- Leaving the DEFAULT partition dropped their keys: put them back.
          EXECUTE format('INSERT INTO rowguard_transfer_keys (idempotency_key, transfer_id, created_at) '
                         'SELECT idempotency_key, id, created_at FROM %I WHERE idempotency_key IS NOT NULL '
                         'ON CONFLICT DO NOTHING', part);
        END IF;
        created := created + 1;
      END IF;
      month := (month + interval '1 month')::date;
    END LOOP;
  END LOOP;
  RETURN created;
END
$$;

-- 5. Partitions for the existing rows' months and three months ahead, then the rows themselves
-- (the trigger fills rowguard_transfer_keys as they arrive).
SELECT rowguard_create_partitions(3, COALESCE(
  (SELECT CAST(min(created_at) AT TIME ZONE 'UTC' AS date) FROM rowguard_transfers_unpartitioned), current_date));
INSERT INTO rowguard_transfers (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome,
                                reverses, created_at, hold_id, global_txid, global_peer, code, reference, metadata,
                                event_at)
  SELECT id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, reverses, created_at,
         hold_id, global_txid, global_peer, code, reference, metadata, event_at FROM rowguard_transfers_unpartitioned;
INSERT INTO rowguard_entries (id, transfer_id, account_id, amount, created_at, balance_after, account_version)
  SELECT id, transfer_id, account_id, amount, created_at, balance_after, account_version
    FROM rowguard_entries_unpartitioned;
DROP TABLE rowguard_entries_unpartitioned;
DROP TABLE rowguard_transfers_unpartitioned;

-- 6. The indexes the library's queries use, on every partition.
CREATE INDEX rowguard_transfers_key ON rowguard_transfers (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX rowguard_transfers_reverses ON rowguard_transfers (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX rowguard_transfers_global_txid ON rowguard_transfers (global_txid) WHERE global_txid IS NOT NULL;
CREATE INDEX rowguard_transfers_id ON rowguard_transfers (id);
CREATE INDEX rowguard_transfers_created_at ON rowguard_transfers (created_at);
CREATE INDEX rowguard_transfers_from ON rowguard_transfers (from_account, id);
CREATE INDEX rowguard_transfers_to ON rowguard_transfers (to_account, id);
CREATE INDEX rowguard_transfers_code ON rowguard_transfers (code, id) WHERE code > 0;
CREATE INDEX rowguard_transfers_reference ON rowguard_transfers (reference, id) WHERE reference IS NOT NULL;
CREATE INDEX rowguard_transfers_metadata ON rowguard_transfers USING gin (metadata jsonb_path_ops)
  WHERE metadata IS NOT NULL;
CREATE INDEX rowguard_entries_account ON rowguard_entries (account_id, id);
CREATE INDEX rowguard_entries_transfer ON rowguard_entries (transfer_id);
ANALYZE rowguard_transfers;
ANALYZE rowguard_entries;

-- rowguard schema, PostgreSQL dialect. Step 001: locks, fences, accounts, transfers, journal, cache.
-- Run by `rowguard migrate` in one transaction, or by hand (psql -1 -f) after 000_schema_version.sql.
-- Times are timestamptz from the database clock. Money is bigint minor units, never floating point.

-- Leases. One row per lock name, never deleted: the row is the fencing-token high-water mark.
-- Heartbeats update rows often: fillfactor 70 leaves room on each page so those updates stay HOT
-- (heap-only: renew changes only unindexed columns, which is why expires_at has no index; listings
-- and sweeps scan this small table instead) and the table does not bloat.
CREATE TABLE rowguard_locks (
  name        text        PRIMARY KEY,
  owner       text,
  token       bigint      NOT NULL DEFAULT 0,
  acquired_at timestamptz,
  expires_at  timestamptz,
  released_at timestamptz,
  renewals    bigint      NOT NULL DEFAULT 0,
  waiters     integer     NOT NULL DEFAULT 0,
  release_reason text
) WITH (fillfactor = 70);
COMMENT ON TABLE rowguard_locks IS
  'rowguard: leases; one row per lock name, never deleted, so token is the fencing-token high-water mark';
COMMENT ON COLUMN rowguard_locks.owner IS 'current or last holder (host:pid:random id); NULL if never held';
COMMENT ON COLUMN rowguard_locks.token IS 'last fencing token issued for this name; only ever grows';
COMMENT ON COLUMN rowguard_locks.expires_at IS 'lease end on the database clock (clock_timestamp()); NULL when released';
COMMENT ON COLUMN rowguard_locks.release_reason IS 'why the last lease was force-released, if it was';
COMMENT ON COLUMN rowguard_locks.waiters IS 'waiting processes, so a release sends NOTIFY only when someone listens';

CREATE TABLE rowguard_fences (
  resource   text        PRIMARY KEY,
  last_token bigint      NOT NULL,
  updated_at timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_fences IS
  'rowguard: highest fencing token seen per external resource; writes with a lower token are rejected';

CREATE TABLE rowguard_accounts (
  id          text        PRIMARY KEY,
  currency    char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  balance     bigint      NOT NULL DEFAULT 0,
  min_balance bigint      NOT NULL DEFAULT 0,
  version     bigint      NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL,
  CHECK (balance >= min_balance)
);
COMMENT ON TABLE rowguard_accounts IS 'rowguard: accounts; balance in integer minor units, version +1 on every change';
COMMENT ON COLUMN rowguard_accounts.min_balance IS 'lowest allowed balance; negative allows an overdraft';

CREATE TABLE rowguard_transfers (
  id              bigserial   PRIMARY KEY,
  idempotency_key text        UNIQUE,
  kind            text        NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'reversal')),
  from_account    text        REFERENCES rowguard_accounts (id),
  to_account      text        REFERENCES rowguard_accounts (id),
  amount          bigint      NOT NULL CHECK (amount > 0),
  currency        char(3)     NOT NULL,
  outcome         text        NOT NULL,
  reverses        bigint      REFERENCES rowguard_transfers (id),
  created_at      timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_transfers IS
  'rowguard: one row per transfer, deposit, withdrawal or rejected keyed request; from/to NULL = outside world';
COMMENT ON COLUMN rowguard_transfers.idempotency_key IS 'the request''s key; NULL once pruned (ledger prune-keys), after which it may be reused';
COMMENT ON COLUMN rowguard_transfers.outcome IS 'ok, or the recorded rejection (e.g. insufficient_funds) a retry replays';
CREATE INDEX rowguard_transfers_reverses ON rowguard_transfers (reverses) WHERE reverses IS NOT NULL;

CREATE TABLE rowguard_entries (
  id          bigserial   PRIMARY KEY,
  transfer_id bigint      NOT NULL REFERENCES rowguard_transfers (id),
  account_id  text        NOT NULL REFERENCES rowguard_accounts (id),
  amount      bigint      NOT NULL CHECK (amount <> 0),
  created_at  timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_entries IS
  'rowguard: the journal; every balance change, signed; balance = SUM(amount) per account';
-- History and the per-account balance check read entries by account; entries by transfer for lookups.
CREATE INDEX rowguard_entries_account ON rowguard_entries (account_id, id);
CREATE INDEX rowguard_entries_transfer ON rowguard_entries (transfer_id);

CREATE TABLE rowguard_cache (
  key        text        PRIMARY KEY,
  value      bytea,
  expires_at timestamptz NOT NULL,
  generation bigint      NOT NULL DEFAULT 0,
  size_bytes bigint      NOT NULL DEFAULT 0,
  load_ms    bigint      NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
COMMENT ON COLUMN rowguard_cache.load_ms IS 'how long the last load took; early refresh (XFetch) scales with it';
COMMENT ON TABLE rowguard_cache IS
  'rowguard: read-through cache; generation is bumped by invalidation so stale loader write-backs are refused';
COMMENT ON COLUMN rowguard_cache.value IS 'NULL with a live row is a cached "absent" (negative caching)';
CREATE INDEX rowguard_cache_expires_at ON rowguard_cache (expires_at);

INSERT INTO rowguard_schema_version (version, name) VALUES (1, '001_init');

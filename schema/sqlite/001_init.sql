-- rowguard schema, SQLite dialect. Step 001: locks, fences, accounts, transfers, journal, cache.
-- Run by `rowguard migrate` in one transaction, or by hand after 000_schema_version.sql.
-- Times are integer milliseconds since the Unix epoch, read from the database clock.
-- Money is integer minor units (cents), never floating point.
-- Every integer column is declared BIGINT (INTEGER affinity, 64 bits): SOCI's sqlite3 backend
-- reads a column declared INTEGER into a 32-bit int and silently truncates larger values. For the
-- same reason ids are BIGINT PRIMARY KEY, not the INTEGER rowid alias; rowguard assigns them as
-- MAX(id) + 1 under the write lock every SQLite write transaction holds.

-- Leases. One row per lock name, never deleted: the row is the fencing-token high-water mark,
-- so a token never goes backwards, even after release, expiry, takeover or a sweep.
CREATE TABLE rowguard_locks (
  name        TEXT    PRIMARY KEY,               -- lock name, 1..255 bytes of UTF-8
  owner       TEXT,                              -- current or last holder (host:pid:random); NULL never held
  token       BIGINT  NOT NULL DEFAULT 0,        -- last fencing token issued for this name; only ever grows
  acquired_at BIGINT,                           -- when the current/last lease was taken
  expires_at  BIGINT,                           -- lease end on the database clock; NULL when released
  released_at BIGINT,                           -- when the last lease was released (NULL while held)
  renewals    BIGINT  NOT NULL DEFAULT 0,        -- renewals of the current lease
  waiters     BIGINT  NOT NULL DEFAULT 0,        -- processes waiting, so a release notifies only when needed
  release_reason TEXT                            -- why the last lease was force-released, if it was
);
-- No index on expires_at: renewals change it, and an index would turn every heartbeat into an
-- index update too (on PostgreSQL it would stop updates being HOT). Listings and sweeps scan.

-- Fences for resources outside the database: the highest token seen per resource.
-- A write carrying a lower token is rejected (UPDATE ... WHERE last_token < :token).
CREATE TABLE rowguard_fences (
  resource   TEXT    PRIMARY KEY,
  last_token BIGINT  NOT NULL,
  updated_at BIGINT  NOT NULL
);

-- Accounts with version-checked balances.
CREATE TABLE rowguard_accounts (
  id          TEXT    PRIMARY KEY,
  currency    TEXT    NOT NULL CHECK (length(currency) = 3 AND currency GLOB '[A-Z][A-Z][A-Z]'),  -- ISO 4217
  balance     BIGINT  NOT NULL DEFAULT 0,        -- minor units
  min_balance BIGINT  NOT NULL DEFAULT 0,        -- a negative minimum allows an overdraft
  version     BIGINT  NOT NULL DEFAULT 0,        -- +1 on every change (optimistic concurrency)
  created_at  BIGINT  NOT NULL,
  updated_at  BIGINT  NOT NULL,
  CHECK (balance >= min_balance)                 -- the last line of defence: never below the minimum
);

-- One row per transfer, deposit, withdrawal, or keyed request that was rejected (its outcome
-- is kept so a retry with the same key returns the same answer). from/to NULL = the outside world.
CREATE TABLE rowguard_transfers (
  id              BIGINT  PRIMARY KEY,
  idempotency_key TEXT    UNIQUE,                 -- NULL once pruned (`rowguard ledger prune-keys`)
  kind            TEXT    NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'reversal')),
  from_account    TEXT    REFERENCES rowguard_accounts (id),
  to_account      TEXT    REFERENCES rowguard_accounts (id),
  amount          BIGINT  NOT NULL CHECK (amount > 0),
  currency        TEXT    NOT NULL,
  outcome         TEXT    NOT NULL,               -- 'ok' or the rejection, e.g. 'insufficient_funds'
  reverses        BIGINT  REFERENCES rowguard_transfers (id),  -- the transfer a reversal refunds
  created_at      BIGINT  NOT NULL
);
CREATE INDEX rowguard_transfers_reverses ON rowguard_transfers (reverses) WHERE reverses IS NOT NULL;

-- The journal: every balance change, signed. For every account, balance = SUM(amount) of its entries.
CREATE TABLE rowguard_entries (
  id          BIGINT  PRIMARY KEY,
  transfer_id BIGINT  NOT NULL REFERENCES rowguard_transfers (id),
  account_id  TEXT    NOT NULL REFERENCES rowguard_accounts (id),
  amount      BIGINT  NOT NULL CHECK (amount <> 0),
  created_at  BIGINT  NOT NULL
);
-- Account history and the per-account balance check read entries by account, newest first.
CREATE INDEX rowguard_entries_account ON rowguard_entries (account_id, id);
CREATE INDEX rowguard_entries_transfer ON rowguard_entries (transfer_id);

-- The read-through cache. generation is bumped by every invalidation, so a slow loader's
-- write-back is conditional on nothing having changed since its load began.
CREATE TABLE rowguard_cache (
  key        TEXT    PRIMARY KEY,
  value      BLOB,                                -- NULL with a live row = a cached "absent"
  expires_at BIGINT  NOT NULL,
  generation BIGINT  NOT NULL DEFAULT 0,
  size_bytes BIGINT  NOT NULL DEFAULT 0,
  load_ms    BIGINT  NOT NULL DEFAULT 0,        -- how long the last load took (early refresh, XFetch)
  created_at BIGINT  NOT NULL,
  updated_at BIGINT  NOT NULL
);
CREATE INDEX rowguard_cache_expires_at ON rowguard_cache (expires_at);

INSERT INTO rowguard_schema_version (version, name) VALUES (1, '001_init');

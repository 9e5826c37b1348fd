-- rowguard schema, SQLite dialect. Step 002: holds (authorise now, capture or void later).
-- available = balance - held; held counts holds in state 'held', expired ones included until the
-- ledger or a sweep closes them. SQLite cannot add a CHECK to an existing table: the ledger keeps
-- balance - held >= min_balance itself and `ledger check` verifies it.

ALTER TABLE rowguard_accounts ADD COLUMN held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0);

CREATE TABLE rowguard_holds (
  id              BIGINT  PRIMARY KEY,
  idempotency_key TEXT    UNIQUE,
  from_account    TEXT    NOT NULL REFERENCES rowguard_accounts (id),
  to_account      TEXT    NOT NULL REFERENCES rowguard_accounts (id),
  amount          BIGINT  NOT NULL CHECK (amount > 0),
  currency        TEXT    NOT NULL,
  state           TEXT    NOT NULL CHECK (state IN ('held', 'captured', 'voided', 'expired', 'rejected')),
  captured        BIGINT  NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
  transfer_id     BIGINT  REFERENCES rowguard_transfers (id),  -- the transfer that captured it
  expires_at      BIGINT  NOT NULL,                              -- database clock, ms
  created_at      BIGINT  NOT NULL,
  closed_at       BIGINT
);
CREATE INDEX rowguard_holds_open ON rowguard_holds (from_account, expires_at) WHERE state = 'held';
CREATE INDEX rowguard_holds_expiry ON rowguard_holds (expires_at) WHERE state = 'held';

ALTER TABLE rowguard_transfers ADD COLUMN hold_id BIGINT REFERENCES rowguard_holds (id);  -- a capture's hold

INSERT INTO rowguard_schema_version (version, name) VALUES (2, '002_holds');

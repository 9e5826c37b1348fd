-- rowguard schema, PostgreSQL dialect. Step 002: holds (authorise now, capture or void later).
-- A hold reserves part of an account's balance: available = balance - held. held counts every hold
-- still in state 'held', including ones past their expiry that no sweep has closed yet; the ledger
-- closes those itself before it refuses a payment for want of funds, so an expired hold stops
-- counting at its expiry on the database clock whether or not a sweep ran.

ALTER TABLE rowguard_accounts ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0);
COMMENT ON COLUMN rowguard_accounts.held IS
  'sum of this account''s holds in state held (expired ones included until closed); available = balance - held';
-- The last line of defence, now on the available amount: holds never push an account below its minimum.
ALTER TABLE rowguard_accounts ADD CONSTRAINT rowguard_accounts_available CHECK (balance - held >= min_balance);

CREATE TABLE rowguard_holds (
  id              bigserial   PRIMARY KEY,
  idempotency_key text        UNIQUE,
  from_account    text        NOT NULL REFERENCES rowguard_accounts (id),
  to_account      text        NOT NULL REFERENCES rowguard_accounts (id),
  amount          bigint      NOT NULL CHECK (amount > 0),
  currency        char(3)     NOT NULL,
  state           text        NOT NULL CHECK (state IN ('held', 'captured', 'voided', 'expired', 'rejected')),
  captured        bigint      NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
  transfer_id     bigint      REFERENCES rowguard_transfers (id),
  expires_at      timestamptz NOT NULL,
  created_at      timestamptz NOT NULL,
  closed_at       timestamptz
);
COMMENT ON TABLE rowguard_holds IS
  'rowguard: holds; amount reserved on from_account until captured (a transfer to to_account), voided or expired';
COMMENT ON COLUMN rowguard_holds.state IS
  'held (counts in accounts.held), captured, voided, expired (closed by the ledger or a sweep), rejected (insufficient funds, recorded under the key)';
COMMENT ON COLUMN rowguard_holds.transfer_id IS 'the transfer that captured the hold';
-- Open holds by account (closing the expired ones of an account) and by expiry (the sweep).
CREATE INDEX rowguard_holds_open ON rowguard_holds (from_account, expires_at) WHERE state = 'held';
CREATE INDEX rowguard_holds_expiry ON rowguard_holds (expires_at) WHERE state = 'held';

ALTER TABLE rowguard_transfers ADD COLUMN hold_id bigint REFERENCES rowguard_holds (id);
COMMENT ON COLUMN rowguard_transfers.hold_id IS 'for a capture: the hold it captured';

INSERT INTO rowguard_schema_version (version, name) VALUES (2, '002_holds');

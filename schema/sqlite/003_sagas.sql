-- rowguard schema, SQLite dialect. Step 003: sagas (steps with compensations, resumable).
-- The coordinator holds the lease 'saga:<id>' in rowguard_locks while it drives a saga.

CREATE TABLE rowguard_sagas (
  id         TEXT    PRIMARY KEY,
  type       TEXT    NOT NULL,
  payload    TEXT    NOT NULL,
  state      TEXT    NOT NULL CHECK (state IN ('running', 'compensating', 'completed', 'compensated')),
  step       BIGINT  NOT NULL DEFAULT 0,   -- the step being run, or being compensated
  error      TEXT,                          -- why it is compensating, or the last compensation error
  owner      TEXT,
  created_at BIGINT  NOT NULL,
  updated_at BIGINT  NOT NULL
);
CREATE INDEX rowguard_sagas_unresolved ON rowguard_sagas (updated_at) WHERE state IN ('running', 'compensating');

CREATE TABLE rowguard_saga_steps (
  saga_id    TEXT    NOT NULL REFERENCES rowguard_sagas (id),
  step       BIGINT  NOT NULL,
  name       TEXT    NOT NULL,
  state      TEXT    NOT NULL CHECK (state IN ('started', 'done', 'failed', 'compensating', 'compensated')),
  result     TEXT,                          -- what the action returned
  error      TEXT,
  attempts   BIGINT  NOT NULL DEFAULT 0,
  started_at BIGINT  NOT NULL,
  updated_at BIGINT  NOT NULL,
  PRIMARY KEY (saga_id, step)
);

INSERT INTO rowguard_schema_version (version, name) VALUES (3, '003_sagas');

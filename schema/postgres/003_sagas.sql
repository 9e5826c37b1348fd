-- rowguard schema, PostgreSQL dialect. Step 003: sagas (steps with compensations, resumable).
-- A saga's progress is written before and after each step; its coordinator holds the lease
-- 'saga:<id>' in rowguard_locks while it drives the saga, so recovery takes over only sagas whose
-- coordinator's lease expired.

CREATE TABLE rowguard_sagas (
  id         text        PRIMARY KEY,
  type       text        NOT NULL,
  payload    text        NOT NULL,
  state      text        NOT NULL CHECK (state IN ('running', 'compensating', 'completed', 'compensated')),
  step       integer     NOT NULL DEFAULT 0,
  error      text,
  owner      text,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
COMMENT ON TABLE rowguard_sagas IS
  'rowguard: sagas; running or compensating = unresolved, completed or compensated = final';
COMMENT ON COLUMN rowguard_sagas.step IS 'the step being run, or being compensated';
COMMENT ON COLUMN rowguard_sagas.error IS 'why it is compensating (the failed step''s error), or the last compensation error';
CREATE INDEX rowguard_sagas_unresolved ON rowguard_sagas (updated_at) WHERE state IN ('running', 'compensating');

CREATE TABLE rowguard_saga_steps (
  saga_id    text        NOT NULL REFERENCES rowguard_sagas (id),
  step       integer     NOT NULL,
  name       text        NOT NULL,
  state      text        NOT NULL CHECK (state IN ('started', 'done', 'failed', 'compensating', 'compensated')),
  result     text,
  error      text,
  attempts   integer     NOT NULL DEFAULT 0,
  started_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (saga_id, step)
);
COMMENT ON TABLE rowguard_saga_steps IS 'rowguard: one row per saga step begun; result is what the action returned';

INSERT INTO rowguard_schema_version (version, name) VALUES (3, '003_sagas');

-- rowguard schema, SQLite dialect. Step 012: fair lock queues (docs/locks.md, "Fair waiting").
-- A waiter in fair mode whose first try found the lock busy takes a ticket (id) here and acquires
-- only when no live ticket of another owner is ahead of its own. Its waiter moves expires_at on
-- at every try, so a dead waiter's ticket runs out within LockOptions::queue_ttl. Ids are assigned
-- as MAX(id) + 1 under the write lock, so a new ticket is behind every ticket still queued (an id
-- may come back once every ticket above it is gone: statements match a ticket by owner too).
CREATE TABLE rowguard_lock_queue (
  id          BIGINT  PRIMARY KEY,               -- the ticket: queue order
  name        TEXT    NOT NULL,                  -- lock name
  owner       TEXT    NOT NULL,                  -- the waiter's owner id
  enqueued_at BIGINT  NOT NULL,                  -- database clock, ms
  expires_at  BIGINT  NOT NULL                   -- the ticket no longer counts from here (ms)
);
CREATE INDEX rowguard_lock_queue_name ON rowguard_lock_queue (name, id);

-- Every live ticket's expires_at is at most its lock row's queued_until: these triggers raise it
-- (max, so it never goes back) in the statement that inserts a ticket or moves its expiry on. So a
-- lock whose queued_until is past has no live ticket, and a non-fair acquire reads the queue only
-- while queued_until is in the future. A ticket for a name never locked gets the row (owner NULL,
-- token 0, as a swept one), so the ticket always has its row.
ALTER TABLE rowguard_locks ADD COLUMN queued_until BIGINT; -- ms; NULL: never queued for
CREATE TRIGGER rowguard_lock_queue_inserted AFTER INSERT ON rowguard_lock_queue BEGIN
  INSERT INTO rowguard_locks (name, queued_until) VALUES (NEW.name, NEW.expires_at)
  ON CONFLICT (name) DO UPDATE SET queued_until = max(COALESCE(queued_until, excluded.queued_until),
                                                      excluded.queued_until);
END;
CREATE TRIGGER rowguard_lock_queue_moved AFTER UPDATE OF expires_at ON rowguard_lock_queue BEGIN
  INSERT INTO rowguard_locks (name, queued_until) VALUES (NEW.name, NEW.expires_at)
  ON CONFLICT (name) DO UPDATE SET queued_until = max(COALESCE(queued_until, excluded.queued_until),
                                                      excluded.queued_until);
END;

INSERT INTO rowguard_schema_version (version, name) VALUES (12, '012_fair_locks');

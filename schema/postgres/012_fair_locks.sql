-- rowguard schema, PostgreSQL dialect. Step 012: fair lock queues (docs/locks.md, "Fair waiting").
--
-- A waiter in fair mode (AcquireOptions::order = WaitOrder::fair, `rowguard lock acquire --fair`)
-- whose first try found the lock busy takes a ticket here, and from then on acquires only when no
-- live ticket of another owner is ahead of its own: waiters get the lock in the order they queued,
-- as with etcd's mutex and Redisson's FairLock. A ticket lives until expires_at on the database
-- clock; its waiter moves that on at every try (at least every LockOptions::queue_ttl / 3), so a
-- waiter that died (crash, kill -9, lost connection) holds up those behind it for at most
-- queue_ttl. A ticket is deleted when its waiter acquires or gives up; one that ran out, by the
-- next ticket taken on the same name and by Locks::sweep. Tokens, expiry and "one holder" stay
-- where they were, in rowguard_locks: the queue only decides who may try.
CREATE TABLE rowguard_lock_queue (
  id          bigserial   PRIMARY KEY,
  name        text        NOT NULL,
  owner       text        NOT NULL,
  enqueued_at timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL
);
CREATE INDEX rowguard_lock_queue_name ON rowguard_lock_queue (name, id);
COMMENT ON TABLE rowguard_lock_queue IS
  'rowguard: fair waiters per lock name, in ticket (id) order; a ticket past expires_at no longer counts';
COMMENT ON COLUMN rowguard_lock_queue.expires_at IS
  'moved on by its waiter at every try (clock_timestamp()); a dead waiter''s ticket runs out here';

-- Every live ticket's expires_at is at most its lock row's queued_until: a ticket's insert and
-- each move of its expiry raise queued_until in the same transaction (GREATEST, so it never goes
-- back), or the move is capped at it. So a lock whose queued_until is past has no live ticket, and a
-- non-fair acquire reads the queue only while queued_until is in the future (a ticket's insert
-- creates its row, owner NULL and token 0, for a name never locked).
ALTER TABLE rowguard_locks ADD COLUMN queued_until timestamptz;
COMMENT ON COLUMN rowguard_locks.queued_until IS
  'no live rowguard_lock_queue ticket for this name expires after this; NULL: never queued for';

-- Acquire, as step 008's, and it does not jump the queue: while a live ticket waits for the name,
-- only its current holder gets an answer (its own token back, as a retried acquire does). The first
-- statement does not mention the queue, so a call that needs no more opens no more than step 008's
-- (a statement that names the queue table locks it and its index on every call): it refuses a row
-- whose queued_until is in the future, and only then, for a free lock or the owner's own live lease,
-- the second statement (step 012's first form) asks the queue itself. Each added condition costs the
-- first statement executor work on every call, hence the one short test (issue 25 measured them).
-- -> (token, expires_at ms, now ms); no row when another owner holds a live lease or fair waiters queue.
CREATE OR REPLACE FUNCTION rowguard_lock_acquire(p_name text, p_owner text, p_ttl_ms bigint)
RETURNS TABLE (r_token bigint, r_expires_ms bigint, r_now_ms bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
BEGIN
  RETURN QUERY
  WITH probe AS (SELECT p.name FROM rowguard_locks p WHERE p.name = p_name FOR NO KEY UPDATE NOWAIT)
  INSERT INTO rowguard_locks AS l (name, owner, token, acquired_at, expires_at, released_at, renewals, waiters,
                                   release_reason)
  SELECT p_name, p_owner, 1, clock_timestamp(), clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond', NULL, 0, 0,
         NULL
    FROM (SELECT 1) AS one LEFT JOIN probe ON true WHERE true
  ON CONFLICT (name) DO UPDATE SET
    token = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                 THEN l.token ELSE l.token + 1 END,
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL
                            AND l.expires_at > clock_timestamp()
                       THEN l.acquired_at ELSE clock_timestamp() END,
    renewals = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                    THEN l.renewals ELSE 0 END,
    owner = excluded.owner, expires_at = excluded.expires_at, released_at = NULL, release_reason = NULL
  WHERE (l.expires_at IS NULL OR l.expires_at <= clock_timestamp() OR l.owner = excluded.owner)
    AND (l.queued_until > clock_timestamp()) IS NOT TRUE
  RETURNING l.token, CAST(floor(EXTRACT(EPOCH FROM l.expires_at) * 1000) AS bigint),
            CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint);
  -- Apart: FOUND alone is a simple expression, one with a subquery runs through the executor.
  IF FOUND THEN
    RETURN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM rowguard_locks h
                  WHERE h.name = p_name AND h.queued_until > clock_timestamp()
                    AND (h.expires_at IS NULL OR h.expires_at <= clock_timestamp() OR h.owner = p_owner)) THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH probe AS (SELECT p.name FROM rowguard_locks p WHERE p.name = p_name FOR NO KEY UPDATE NOWAIT)
  INSERT INTO rowguard_locks AS l (name, owner, token, acquired_at, expires_at, released_at, renewals, waiters,
                                   release_reason)
  SELECT p_name, p_owner, 1, clock_timestamp(), clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond', NULL, 0, 0,
         NULL
    FROM (SELECT 1) AS one LEFT JOIN probe ON true
   WHERE NOT EXISTS (SELECT 1 FROM rowguard_lock_queue q
                      WHERE q.name = p_name AND q.expires_at > clock_timestamp())
      OR EXISTS (SELECT 1 FROM rowguard_locks h
                  WHERE h.name = p_name AND h.owner = p_owner AND h.expires_at > clock_timestamp())
  ON CONFLICT (name) DO UPDATE SET
    token = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                 THEN l.token ELSE l.token + 1 END,
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL
                            AND l.expires_at > clock_timestamp()
                       THEN l.acquired_at ELSE clock_timestamp() END,
    renewals = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                    THEN l.renewals ELSE 0 END,
    owner = excluded.owner, expires_at = excluded.expires_at, released_at = NULL, release_reason = NULL
  WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp() OR l.owner = excluded.owner
  RETURNING l.token, CAST(floor(EXTRACT(EPOCH FROM l.expires_at) * 1000) AS bigint),
            CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint);
END
$fn$;

-- A fair waiter's try, holding ticket p_ticket: the same upsert, allowed only when no live ticket
-- of another owner is ahead of p_ticket. Acquired: the ticket is deleted in the same transaction.
-- Not acquired (held, a guard holds the row, or others are ahead): the ticket's expiry moves on
-- by p_queue_ttl_ms, unless it had run out already (r_queued 0: the waiter takes a new ticket).
-- -> one row: r_token (NULL when not acquired), r_expires_ms (the new lease's expiry; when not
-- acquired, the live holder's, NULL when free), r_now_ms, r_ahead (live tickets of other owners
-- ahead), r_ahead_expires_ms (the earliest of their expiries: the queue can move then at the
-- latest), r_queued (1 while the ticket lives).
CREATE OR REPLACE FUNCTION rowguard_lock_acquire_queued(p_name text, p_owner text, p_ttl_ms bigint, p_ticket bigint,
                                                        p_queue_ttl_ms bigint)
RETURNS TABLE (r_token bigint, r_expires_ms bigint, r_now_ms bigint, r_ahead bigint, r_ahead_expires_ms bigint,
               r_queued integer)
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
  v_token bigint;
  v_expires timestamptz;
  v_queued integer;
  v_busy boolean := false;
BEGIN
  -- A row held by another transaction's guard is busy (55P03), as for lock_acquire; caught here
  -- (a subtransaction, on this waiting path only) so the ticket is still moved on below.
  BEGIN
    WITH probe AS (SELECT p.name FROM rowguard_locks p WHERE p.name = p_name FOR NO KEY UPDATE NOWAIT)
    INSERT INTO rowguard_locks AS l (name, owner, token, acquired_at, expires_at, released_at, renewals, waiters,
                                     release_reason)
    SELECT p_name, p_owner, 1, clock_timestamp(), clock_timestamp() + p_ttl_ms * INTERVAL '1 millisecond', NULL, 0,
           0, NULL
      FROM (SELECT 1) AS one LEFT JOIN probe ON true
     WHERE NOT EXISTS (SELECT 1 FROM rowguard_lock_queue q
                        WHERE q.name = p_name AND q.id < p_ticket AND q.owner <> p_owner
                          AND q.expires_at > clock_timestamp())
    ON CONFLICT (name) DO UPDATE SET
      token = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                   THEN l.token ELSE l.token + 1 END,
      acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL
                              AND l.expires_at > clock_timestamp()
                         THEN l.acquired_at ELSE clock_timestamp() END,
      renewals = CASE WHEN l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > clock_timestamp()
                      THEN l.renewals ELSE 0 END,
      owner = excluded.owner, expires_at = excluded.expires_at, released_at = NULL, release_reason = NULL
    WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp() OR l.owner = excluded.owner
    RETURNING l.token, l.expires_at INTO v_token, v_expires;
  EXCEPTION WHEN lock_not_available THEN
    v_token := NULL;
    v_busy := true;
  END;
  IF v_token IS NOT NULL THEN
    DELETE FROM rowguard_lock_queue q WHERE q.name = p_name AND q.id = p_ticket;
    RETURN QUERY SELECT v_token, CAST(floor(EXTRACT(EPOCH FROM v_expires) * 1000) AS bigint),
                        CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint), CAST(0 AS bigint),
                        CAST(NULL AS bigint), 1;
    RETURN;
  END IF;
  -- The ticket's expiry moves on only as far as the row's queued_until allows. With no exception
  -- above, this transaction holds the row (the probe or the conflict locked it), so queued_until is
  -- raised first, with a queue_ttl to spare: the next tries can move the ticket on even while a
  -- guard (or another waiter's try) holds the row and queued_until cannot move.
  IF NOT v_busy THEN
    UPDATE rowguard_locks h
       SET queued_until = GREATEST(h.queued_until, clock_timestamp() + 2 * p_queue_ttl_ms * INTERVAL '1 millisecond')
     WHERE h.name = p_name;
  END IF;
  UPDATE rowguard_lock_queue q
     SET expires_at = GREATEST(q.expires_at,
                               LEAST(clock_timestamp() + p_queue_ttl_ms * INTERVAL '1 millisecond',
                                     COALESCE((SELECT h.queued_until FROM rowguard_locks h WHERE h.name = p_name),
                                              '-infinity')))
   WHERE q.name = p_name AND q.id = p_ticket AND q.owner = p_owner AND q.expires_at > clock_timestamp();
  GET DIAGNOSTICS v_queued = ROW_COUNT;
  RETURN QUERY
  SELECT CAST(NULL AS bigint),
         (SELECT CAST(floor(EXTRACT(EPOCH FROM h.expires_at) * 1000) AS bigint) FROM rowguard_locks h
           WHERE h.name = p_name AND h.expires_at > clock_timestamp()),
         CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint), count(*),
         CAST(floor(EXTRACT(EPOCH FROM min(q.expires_at)) * 1000) AS bigint), v_queued
    FROM rowguard_lock_queue q
   WHERE q.name = p_name AND q.id < p_ticket AND q.owner <> p_owner AND q.expires_at > clock_timestamp();
END
$fn$;

-- As in step 008: pinned to this schema, EXECUTE only for the roles roles.sql grants it to. CREATE
-- OR REPLACE reset lock_acquire's settings, so it is pinned again. The queue is a new table: an
-- application role that exists already gets its DML here, as roles.sql grants it on the others
-- (its default privileges cover only tables that rowguard_owner creates, and this step may run as
-- another role).
DO $$
DECLARE f text;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
    GRANT SELECT, INSERT, UPDATE, DELETE ON rowguard_lock_queue TO rowguard_app;
    GRANT USAGE, SELECT ON SEQUENCE rowguard_lock_queue_id_seq TO rowguard_app;
  END IF;
  FOREACH f IN ARRAY ARRAY['rowguard_lock_acquire(text, text, bigint)',
                           'rowguard_lock_acquire_queued(text, text, bigint, bigint, bigint)'] LOOP
    EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO rowguard_app', f);
    END IF;
  END LOOP;
END
$$;

INSERT INTO rowguard_schema_version (version, name) VALUES (12, '012_fair_locks');

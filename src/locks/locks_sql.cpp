#include "locks/locks_sql.hpp"

#include <fmt/format.h>

namespace rowguard::detail {

namespace {
// list, counts and active: what `rowguard lock list` and the status page show.
void listing_statements(LockStatements& s, const Dialect& d, const std::string& t, const std::string& q) {
  const std::string now = d.now_timestamp();
  const std::string now_ms = d.now_ms();
  // Fair waiters in line for the row's name: one probe of the queue's (name, id) index.
  const auto queued = [&](const std::string& at) {
    return fmt::format(
        "(SELECT CAST(count(*) AS bigint) FROM {q} AS w WHERE w.name = {t}.name AND w.expires_at > {at})",
        fmt::arg("q", q), fmt::arg("t", t), fmt::arg("at", at));
  };
  s.list = fmt::format(
      "SELECT name, COALESCE(owner, ''), token, CASE WHEN expires_at > {now} THEN 1 ELSE 0 END, "
      "COALESCE({acquired}, 0), CASE WHEN expires_at > {now} THEN {expires} - {now_ms} ELSE 0 END, renewals, "
      "CAST(waiters AS bigint), COALESCE(release_reason, ''), "
      "CASE WHEN expires_at IS NOT NULL AND expires_at <= {now} AND released_at IS NULL THEN 1 ELSE 0 END, {queued} "
      "FROM {t} ORDER BY name",
      fmt::arg("now", now), fmt::arg("acquired", d.timestamp_to_ms("acquired_at")),
      fmt::arg("expires", d.timestamp_to_ms("expires_at")), fmt::arg("now_ms", now_ms), fmt::arg("t", t),
      fmt::arg("queued", queued(now)));

  {
    const std::string at = d.ms_to_timestamp("$1");
    const std::string held = fmt::format("expires_at > {}", at);
    // Ran out unreleased: the end of a release_at_least window is a release, not an expiry.
    const std::string expired = fmt::format("expires_at IS NOT NULL AND expires_at <= {} AND released_at IS NULL", at);
    s.counts = fmt::format(
        "SELECT count(*), CAST(COALESCE(SUM(CASE WHEN {held} THEN 1 ELSE 0 END), 0) AS bigint), "
        "CAST(COALESCE(SUM(CASE WHEN {expired} THEN 1 ELSE 0 END), 0) AS bigint), "
        "CAST(COALESCE(SUM(CASE WHEN {held} AND waiters > 0 THEN 1 ELSE 0 END), 0) AS bigint), "
        "CAST(COALESCE(SUM(waiters), 0) AS bigint) FROM {t}",
        fmt::arg("held", held), fmt::arg("expired", expired), fmt::arg("t", t));
    const std::string acquired = fmt::format("COALESCE({}, 0)", d.timestamp_to_ms("acquired_at"));
    const std::string expires = d.timestamp_to_ms("expires_at");
    s.active = fmt::format(
        "SELECT name, COALESCE(owner, ''), token, CASE WHEN {held} THEN 1 ELSE 0 END, {acquired}, "
        "CASE WHEN {held} THEN {expires} - CAST($1 AS bigint) ELSE 0 END, renewals, CAST(waiters AS bigint), "
        "COALESCE(release_reason, ''), CASE WHEN {expired} THEN 1 ELSE 0 END, {queued} FROM {t} "
        "WHERE {held} OR {expired} OR waiters > 0 "
        "ORDER BY CASE WHEN {held} THEN 0 WHEN {expired} THEN 1 ELSE 2 END, "
        "CASE WHEN {held} THEN {acquired} WHEN {expired} THEN -{expires} ELSE 0 END, name LIMIT $2",
        fmt::arg("held", held), fmt::arg("expired", expired), fmt::arg("acquired", acquired),
        fmt::arg("expires", expires), fmt::arg("t", t), fmt::arg("queued", queued(at)));
  }
}
}  // namespace

LockStatements::LockStatements(const Backend& backend, const std::string& channel) {
  const Dialect& d = backend.dialect();
  const std::string t = backend.table("locks");
  const std::string q = backend.table("lock_queue");
  const std::string now = d.now_timestamp();
  const std::string now_ms = d.now_ms();
  const bool notify = d.has_notify();
  const auto limit = [&d](std::string_view param) {
    const std::string condition = d.lock_wait_limit(param);
    return condition.empty() ? condition : " AND " + condition;
  };
  const std::string mine = fmt::format("name = $1 AND owner = $2 AND token = $3 AND expires_at > {}", now);
  // An engine that bounds a row lock wait by a condition takes the bound as a parameter.
  row_lock_timeout_param = !d.lock_wait_limit("$1").empty();

  if (d.has_server_statements()) {
    // PostgreSQL: the functions of schema step 008 (schema/postgres/008_server_statements.sql),
    // which say why each statement is shaped as it is. Renew and release take the row lock
    // timeout: a guarded transaction left open must not make them wait forever.
    const std::size_t bound = row_lock_timeout_param ? 1 : 0;
    acquire = backend.function_call("lock_acquire", 3);
    acquire_queued = backend.function_call("lock_acquire_queued", 5);  // schema step 012
    queued_in_one_call = true;
    renew = backend.function_call("lock_renew", 4 + bound);
    release = backend.function_call("lock_release", 3 + bound);
  } else {
    // SQLite, in process: the same statements inline. Its write transactions hold the database's
    // write lock, so there is no row lock to probe, and its busy timeout bounds every wait.
    // One conditional upsert. A live lease of another owner makes the WHERE false: no row comes
    // back. The token grows on every new lease and stays for the same owner's live lease, so a
    // retried acquire gets its own token back.
    // The queue (schema step 012) can say no: a live ticket waits for the name (acquire: only the
    // holder's own retry passes), or one is ahead of $4 (acquire_queued: then no row is proposed).
    const std::string same_live =
        fmt::format("(l.owner = excluded.owner AND l.expires_at IS NOT NULL AND l.expires_at > {})", now);
    const auto upsert = [&](const std::string& allowed, const std::string& also) {
      // VALUES where no condition is needed: INSERT ... SELECT costs SQLite about 10,000 more
      // instructions per call, in sqlite3BtreeBeginTrans (docs/locks.md, issue 25's measurement).
      const std::string row = fmt::format("$1, $2, 1, {}, {}, NULL, 0, 0, NULL", now, d.timestamp_plus_ms(now, "$3"));
      const std::string proposed =
          allowed.empty() ? fmt::format("VALUES ({})", row) : fmt::format("SELECT {} WHERE {}", row, allowed);
      return fmt::format(
          "INSERT INTO {t} AS l (name, owner, token, acquired_at, expires_at, released_at, renewals, waiters, "
          "release_reason) {proposed} "
          "ON CONFLICT (name) DO UPDATE SET "
          "token = CASE WHEN {same_live} THEN l.token ELSE l.token + 1 END, "
          "acquired_at = CASE WHEN {same_live} THEN l.acquired_at ELSE excluded.acquired_at END, "
          "renewals = CASE WHEN {same_live} THEN l.renewals ELSE 0 END, "
          "owner = excluded.owner, expires_at = excluded.expires_at, released_at = NULL, release_reason = NULL "
          "WHERE (l.expires_at IS NULL OR l.expires_at <= {now} OR l.owner = excluded.owner){also} "
          "RETURNING token, {expires}, {now_ms}",
          fmt::arg("t", t), fmt::arg("proposed", proposed), fmt::arg("also", also), fmt::arg("same_live", same_live),
          fmt::arg("now", now), fmt::arg("expires", d.timestamp_to_ms("expires_at")), fmt::arg("now_ms", now_ms));
    };
    // A new row has no tickets (a ticket's insert creates or raises its row's queued_until, by a
    // trigger of step 012), so only the conflict asks: the queue is read only while queued_until
    // is in the future and the lease is not the caller's own (SQLite evaluates OR's operands left
    // to right and stops at the first true one; the instruction count shows the probe skipped).
    acquire = upsert("", fmt::format(" AND (l.queued_until IS NULL OR l.queued_until <= {now} OR {same_live} "
                                     "OR NOT EXISTS (SELECT 1 FROM {q} WHERE name = $1 AND expires_at > {now}))",
                                     fmt::arg("now", now), fmt::arg("same_live", same_live), fmt::arg("q", q)));
    acquire_queued = upsert(
        fmt::format("NOT EXISTS (SELECT 1 FROM {} WHERE name = $1 AND id < $4 AND owner <> $2 AND expires_at > {})", q,
                    now),
        "");
    queue_refresh = fmt::format(
        "UPDATE {q} SET expires_at = {until} WHERE name = $1 AND id = $2 AND owner = $3 AND expires_at > {now}",
        fmt::arg("q", q), fmt::arg("until", d.timestamp_plus_ms(now, "$4")), fmt::arg("now", now));
    queue_state = fmt::format(
        "SELECT (SELECT {expires} FROM {t} WHERE name = $1 AND expires_at > {now}), {now_ms}, count(*), "
        "min({ticket_expires}) FROM {q} WHERE name = $1 AND id < $2 AND owner <> $3 AND expires_at > {now}",
        fmt::arg("expires", d.timestamp_to_ms("expires_at")), fmt::arg("t", t), fmt::arg("now", now),
        fmt::arg("now_ms", now_ms), fmt::arg("ticket_expires", d.timestamp_to_ms("expires_at")), fmt::arg("q", q));
    renew = fmt::format("UPDATE {} SET expires_at = {}, renewals = renewals + 1 WHERE {} RETURNING {}", t,
                        d.timestamp_plus_ms(now, "$4"), mine, d.timestamp_to_ms("expires_at"));
    release = fmt::format(
        "UPDATE {} SET expires_at = NULL, released_at = {} WHERE {} RETURNING CAST(waiters AS bigint)", t, now, mine);
  }
  // No server function for this one (a function would need a schema step): the inline statement,
  // with the row lock bound in its WHERE as remove_waiter has it. Whether the window is still open
  // is decided on the database clock in the statement itself; released_at marks the lease released
  // by its owner, so it does not count as expired when it runs out.
  {
    const std::string until = d.timestamp_plus_ms("acquired_at", "$4");
    release_at_least = fmt::format(
        "UPDATE {t} SET expires_at = CASE WHEN {until} > {now} THEN {until} ELSE NULL END, released_at = {now} "
        "WHERE {mine}{limit} RETURNING CAST(waiters AS bigint), {expires}, {now_ms}",
        fmt::arg("t", t), fmt::arg("until", until), fmt::arg("now", now), fmt::arg("mine", mine),
        fmt::arg("limit", limit("$5")), fmt::arg("expires", d.timestamp_to_ms("expires_at")),
        fmt::arg("now_ms", now_ms));
  }
  if (notify) notify_release = fmt::format("SELECT 1 FROM (SELECT pg_notify('{}', $1)) AS sent", channel);

  // Ticket order is id order: bigserial on PostgreSQL; on SQLite MAX(id) + 1 under the write lock,
  // which is behind every ticket still queued.
  prune_queue = fmt::format("DELETE FROM {} WHERE name = $1 AND (expires_at <= {} OR owner = $2)", q, now);
  enqueue = fmt::format(
      "INSERT INTO {q} (id, name, owner, enqueued_at, expires_at) VALUES ({id}, $1, $2, {now}, {until}) RETURNING id",
      fmt::arg("q", q), fmt::arg("id", d.next_id(q)), fmt::arg("now", now),
      fmt::arg("until", d.timestamp_plus_ms(now, "$3")));
  if (d.has_server_statements()) {
    // The ticket's row gets queued_until raised in the same statement, with a queue_ttl to spare as
    // rowguard_lock_acquire_queued raises it (schema step 012). NOWAIT: while a guard holds the row
    // the waiter does not queue yet (nobody can take the row then either) and tries again. On
    // SQLite a trigger of schema step 012 raises it.
    enqueue = fmt::format(
        "WITH probe AS (SELECT name FROM {t} WHERE name = $1 FOR NO KEY UPDATE NOWAIT), "
        "mark AS (INSERT INTO {t} AS l (name, queued_until) SELECT $1, {spare} FROM (SELECT 1) AS one "
        "LEFT JOIN probe ON true ON CONFLICT (name) DO UPDATE SET "
        "queued_until = GREATEST(l.queued_until, excluded.queued_until) RETURNING 1) {insert}",
        fmt::arg("t", t), fmt::arg("spare", d.timestamp_plus_ms(now, "2 * CAST($3 AS bigint)")),
        fmt::arg("insert", enqueue));
  }
  dequeue = fmt::format("DELETE FROM {} WHERE name = $1 AND id = $2 AND owner = $3", q);
  sweep_queue = fmt::format("DELETE FROM {} WHERE expires_at < {}", q, d.timestamp_plus_ms(now, "$1"));

  state = fmt::format(
      "SELECT owner, token, {}, {}, release_reason, CASE WHEN released_at IS NULL THEN 0 ELSE 1 END FROM {} "
      "WHERE name = $1",
      d.timestamp_to_ms("expires_at"), now_ms, t);
  guard = fmt::format("SELECT token FROM {} WHERE {}{}", t, mine, d.share_lock());

  if (notify) {
    // NOWAIT: a waiter that cannot register (the row is held by a guard) just polls.
    add_waiter = fmt::format(
        "WITH probe AS (SELECT name FROM {0} WHERE name = $1 FOR UPDATE NOWAIT) "
        "UPDATE {0} SET waiters = waiters + 1 FROM probe WHERE {0}.name = probe.name",
        t);
    remove_waiter = fmt::format(
        "UPDATE {} SET waiters = CASE WHEN waiters > 0 THEN waiters - 1 ELSE 0 END WHERE name = $1{}", t, limit("$2"));
  }

  listing_statements(*this, d, t, q);

  // Raising the token makes the evicted holder's guard, renew and release fail at once.
  force_release = fmt::format(
      "UPDATE {} SET expires_at = NULL, released_at = {}, token = token + 1, release_reason = $2 WHERE name = $1 "
      "RETURNING token",
      t, now);
  sweep = fmt::format(
      "UPDATE {} SET owner = NULL, acquired_at = NULL, expires_at = NULL, renewals = 0, waiters = 0 "
      "WHERE expires_at IS NOT NULL AND expires_at < {}",
      t, d.timestamp_plus_ms(now, "$1"));  // $1 is the negated age
}

FenceStatements::FenceStatements(const Dialect& d, const std::string& t) {
  admit = fmt::format(
      "INSERT INTO {t} AS f (resource, last_token, updated_at) VALUES ($1, $2, {now}) "
      "ON CONFLICT (resource) DO UPDATE SET last_token = excluded.last_token, updated_at = excluded.updated_at "
      "WHERE f.last_token <= excluded.last_token RETURNING last_token",
      fmt::arg("t", t), fmt::arg("now", d.now_timestamp()));
  highest = fmt::format("SELECT last_token FROM {} WHERE resource = $1", t);
}

}  // namespace rowguard::detail

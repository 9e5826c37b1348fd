#pragma once
// The SQL of every lock operation, built once per Locks from the dialect and the table prefix.
// Each operation is one autocommit statement, so it also works behind a transaction pooler. On
// PostgreSQL acquire, renew and release call the functions of schema step 008, whose plans the
// server keeps per session; on SQLite they are the same statements inline.

#include <string>

#include "backend/backend.hpp"

namespace rowguard::detail {

struct LockStatements {
  // $1 name, $2 owner, $3 ttl ms -> (token, expires_at ms, now ms); no row when held by another.
  std::string acquire;
  // Fair waiting (schema step 012's <prefix>lock_queue; acquire above refuses while a live ticket
  // queues, except for its holder's own retry).
  // $1 name, $2 owner: deletes the name's tickets that ran out, and the owner's own earlier ones.
  std::string prune_queue;
  // $1 name, $2 owner, $3 queue ttl ms -> (ticket)
  std::string enqueue;
  // $1 name, $2 ticket, $3 owner: a waiter that gives up (or acquired, on engines without
  // queued_in_one_call) drops its ticket.
  std::string dequeue;
  // A fair waiter's try: $1 name, $2 owner, $3 ttl ms, $4 ticket [, $5 queue ttl ms].
  // queued_in_one_call (PostgreSQL, schema step 012's lock_acquire_queued): one row, (token or
  // NULL, expires_at ms (the new lease's; else the live holder's, or NULL when free), now ms,
  // tickets ahead, their earliest expiry ms or NULL, 1 while the ticket lives); it drops the
  // ticket when it acquires and else moves its expiry on. Otherwise acquire_queued is acquire's
  // upsert, allowed when no live ticket of another owner is ahead of $4 -> (token, expires_at ms,
  // now ms) or no row, followed by dequeue when it acquired, or by queue_refresh and queue_state.
  std::string acquire_queued;
  bool queued_in_one_call = false;
  // $1 name, $2 ticket, $3 owner, $4 queue ttl ms: moves a live ticket's expiry on (1 row affected) or nothing.
  std::string queue_refresh;
  // $1 name, $2 ticket, $3 owner -> (holder's expires_at ms or NULL, now ms, tickets ahead, their earliest expiry or
  // NULL)
  std::string queue_state;
  // $1 = -(older-than ms): deletes tickets that ran out longer ago.
  std::string sweep_queue;
  // $1 name, $2 owner, $3 token, $4 ttl ms [, $5 row lock timeout ms] -> (expires_at ms); no row when lost.
  std::string renew;
  // $1 name, $2 owner, $3 token [, $4 row lock timeout ms] -> (waiters); no row when lost or already released.
  std::string release;
  // $1 name, $2 owner, $3 token, $4 at-least ms [, $5 row lock timeout ms] -> (waiters, expires_at
  // ms or NULL, now ms): expires_at = acquired_at + $4 while that is still ahead, else a release
  // (NULL); no row when lost or already released. A plain statement on every engine (no schema step).
  std::string release_at_least;
  // $1 name: wakes the waiters of other processes after a release that reported waiters (PostgreSQL only).
  std::string notify_release;
  // $1 name -> (owner, token, expires_at ms or NULL, now ms, release_reason, 1 when released_at is set
  // (released, perhaps still held until the end of a release_at_least window) else 0).
  std::string state;
  // $1 name, $2 owner, $3 token -> one row while held (and locks it FOR SHARE on PostgreSQL).
  std::string guard;
  // $1 name [, $2 row lock timeout ms for remove_waiter]: register / unregister a waiter so a
  // release sends NOTIFY (PostgreSQL only).
  std::string add_waiter;
  std::string remove_waiter;
  // Whether renew, release, release_at_least and remove_waiter take the row lock timeout as their last parameter:
  // a guarded transaction left open must not make them wait forever (SQLite's busy timeout
  // bounds the same wait there, without a parameter).
  bool row_lock_timeout_param = false;
  // -> (name, owner, token, held, acquired ms, expires in ms, renewals, waiters, reason, expired, queued)
  std::string list;
  // $1 at ms -> (rows, held, expired, held with waiters, waiters): one aggregate.
  std::string counts;
  // $1 at ms, $2 limit -> the columns of list, for held, expired and waited-on locks (Locks::active's order).
  std::string active;
  // $1 name, $2 reason -> (token)
  std::string force_release;
  // $1 = -(older-than ms) -> rows cleared
  std::string sweep;

  LockStatements(const Backend& backend, const std::string& channel);
};

// The statements of a Fence, on its own table.
struct FenceStatements {
  // $1 resource, $2 token -> (last_token) when the token is at least the highest seen; no row otherwise.
  std::string admit;
  // $1 resource -> (last_token); no row when the resource was never fenced.
  std::string highest;

  FenceStatements(const Dialect& dialect, const std::string& table);
};

}  // namespace rowguard::detail

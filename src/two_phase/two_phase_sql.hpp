#pragma once
// The SQL of two-phase commit, built once per TwoPhase: the decision log's statements from the log
// database, and each participant's from its own database (dialect and table prefix). One place for
// a DBA to read what 2PC asks of the log table, the participants' transfers and pg_prepared_xacts.

#include <string>

#include "backend/backend.hpp"

namespace rowguard::detail {

struct DecisionLogStatements {
  // -> (the log database's clock, epoch ms).
  std::string clock;
  // $1 gid, $2 decision, $3 participants, $4 deadline ms on the log's clock -> (decision,
  // participants) that stands: the decision is written as asked only before the deadline, else as
  // 'abort', and only if no decision is there; then read back. One statement.
  std::string decide;
  // $1 gid -> (decision, participants).
  std::string decision_of;
  // $1 gid: every participant's leg is known finished.
  std::string mark_finished;
  // $1 gid prefix -> (gid, decision, participants) of the unfinished decisions.
  std::string unfinished;
  // $1 -(age ms), $2 gid prefix: deletes the finished decisions older than the age.
  std::string prune;

  explicit DecisionLogStatements(const Backend& log);
};

struct ParticipantStatements {
  // $1 idempotency key -> (id, kind, from_account, amount, outcome, global_txid, global_peer).
  std::string key_record;
  // $1 gid, $2 key -> (id, to_account, amount) of the deposit leg of gid (its key, or none when
  // pruned since), in the live transfers and in the archive.
  std::string deposit_leg;
  std::string archived_deposit_leg;
  // $1 transfer id, $2 peer ("<participant>:<account>").
  std::string set_peer;
  // $1 account id -> (currency), the row locked for the transaction.
  std::string lock_account;
  // $1 gid prefix, $2 ":<participant>" -> (gid, age ms) of this database's prepared legs.
  std::string prepared_legs;

  explicit ParticipantStatements(const Backend& participant);
};

}  // namespace rowguard::detail

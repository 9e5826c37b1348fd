#include "two_phase/two_phase_sql.hpp"

#include <fmt/format.h>

namespace rowguard::detail {

DecisionLogStatements::DecisionLogStatements(const Backend& log) {
  const auto& d = log.dialect();
  const std::string t = log.table("global_transactions");
  clock = fmt::format("SELECT {}", d.now_ms());
  decide = fmt::format(
      "WITH ins AS (INSERT INTO {t} (gid, decision, participants, decided_at) "
      "SELECT $1, CASE WHEN {now_ms} < CAST($4 AS bigint) THEN CAST($2 AS text) ELSE 'abort' END, $3, "
      "clock_timestamp() ON CONFLICT (gid) DO NOTHING RETURNING decision, participants) "
      "SELECT decision, participants FROM ins UNION ALL SELECT decision, participants FROM {t} WHERE gid = $1",
      fmt::arg("t", t), fmt::arg("now_ms", d.now_ms()));
  decision_of = fmt::format("SELECT decision, participants FROM {} WHERE gid = $1", t);
  mark_finished =
      fmt::format("UPDATE {} SET finished_at = clock_timestamp() WHERE gid = $1 AND finished_at IS NULL", t);
  unfinished = fmt::format(
      "SELECT gid, decision, participants FROM {} WHERE finished_at IS NULL AND left(gid, length($1)) = $1", t);
  prune =
      fmt::format("DELETE FROM {} WHERE finished_at IS NOT NULL AND finished_at < {} AND left(gid, length($2)) = $2", t,
                  d.timestamp_plus_ms(d.now_timestamp(), "$1"));
}

ParticipantStatements::ParticipantStatements(const Backend& participant) {
  const std::string transfers = participant.table("transfers");
  key_record = fmt::format(
      "SELECT id, kind, from_account, amount, outcome, global_txid, global_peer FROM {} WHERE idempotency_key = $1",
      transfers);
  const std::string deposit =
      "SELECT id, to_account, amount FROM {} WHERE global_txid = $1 AND kind = 'deposit' AND "
      "(idempotency_key = $2 OR idempotency_key IS NULL) ORDER BY id LIMIT 1";
  deposit_leg = fmt::format(fmt::runtime(deposit), transfers);
  archived_deposit_leg = fmt::format(fmt::runtime(deposit), participant.table("transfers_archive"));
  set_peer = fmt::format("UPDATE {} SET global_peer = $2 WHERE id = $1", transfers);
  lock_account = fmt::format("SELECT currency FROM {} WHERE id = $1{}", participant.table("accounts"),
                             participant.dialect().for_update());
  prepared_legs =
      "SELECT gid, CAST(floor(EXTRACT(EPOCH FROM (clock_timestamp() - prepared)) * 1000) AS bigint) "
      "FROM pg_prepared_xacts WHERE database = current_database() AND left(gid, length($1)) = $1 "
      "AND right(gid, length($2)) = $2 ORDER BY gid";
}

}  // namespace rowguard::detail

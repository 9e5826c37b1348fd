// Ledger::archive: moves old transfers and their entries out of the live tables, carrying what
// they add up to forward into opening balances and archived totals, in one transaction.

#include <fmt/format.h>

#include "core/database_gate.hpp"

#include "ledger/ledger_impl.hpp"

namespace rowguard {

namespace {

// The statements of one archive run. $1 is the cutoff in epoch milliseconds throughout.
struct ArchiveSql {
  std::string now, copy_transfers, copy_entries, add_openings, add_totals, delete_entries, delete_transfers, record_run,
      high_water, kept;
};

ArchiveSql archive_sql(const detail::Backend& backend) {
  const auto& d = backend.dialect();
  const std::string tr = backend.table("transfers");
  const std::string cut = d.ms_to_timestamp("$1");
  ArchiveSql s;
  s.now = fmt::format("SELECT {}", d.now_ms());
  // A transfer that must stay live: created at or after the cutoff, the capture of a hold (holds
  // are never archived and point at it), or a leg of a two-phase transaction not yet finished.
  // (The decision log exists only where two-phase commit does: PostgreSQL.)
  const std::string unfinished_leg =
      d.has_prepared_transactions()
          ? fmt::format(
                " OR (m.global_txid IS NOT NULL AND EXISTS (SELECT 1 FROM {} g WHERE g.gid = m.global_txid "
                "AND g.finished_at IS NULL))",
                backend.table("global_transactions"))
          : std::string();
  const std::string stays =
      fmt::format("(m.created_at >= {} OR EXISTS (SELECT 1 FROM {} h WHERE h.transfer_id = m.id){})", cut,
                  backend.table("holds"), unfinished_leg);
  // A transfer and its reversals move together or not at all: a reversal points at its original
  // (a foreign key), and reverse() sums the live refunds of an original, which must all be there.
  const std::string movable = fmt::format(
      "t.created_at < {cut} "
      "AND NOT EXISTS (SELECT 1 FROM {tr} m WHERE m.id = COALESCE(t.reverses, t.id) AND {stays}) "
      "AND NOT EXISTS (SELECT 1 FROM {tr} m WHERE m.reverses = COALESCE(t.reverses, t.id) AND {stays})",
      fmt::arg("cut", cut), fmt::arg("tr", tr), fmt::arg("stays", stays));
  const std::string ta = backend.table("transfers_archive");
  const std::string columns =
      "id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, reverses, created_at, "
      "hold_id, global_txid";
  s.copy_transfers = fmt::format("INSERT INTO {ta} ({c}) SELECT {c} FROM {tr} t WHERE {movable}", fmt::arg("ta", ta),
                                 fmt::arg("c", columns), fmt::arg("tr", tr), fmt::arg("movable", movable));
  // From here on the run's transfers are the live ones already copied: the archive table is the
  // set, so every later statement sees exactly the rows the copy chose.
  const std::string moved = fmt::format("t.created_at < {} AND EXISTS (SELECT 1 FROM {} a WHERE a.id = t.id)", cut, ta);
  const std::string en = backend.table("entries");
  s.copy_entries = fmt::format(
      "INSERT INTO {} (id, transfer_id, account_id, amount, created_at) "
      "SELECT e.id, e.transfer_id, e.account_id, e.amount, e.created_at FROM {} e JOIN {} t ON t.id = e.transfer_id "
      "WHERE {}",
      backend.table("entries_archive"), en, tr, moved);
  const std::string ob = backend.table("opening_balances");
  s.add_openings = fmt::format(
      "INSERT INTO {ob} (account_id, balance, entries, as_of) "
      "SELECT e.account_id, CAST(SUM(e.amount) AS bigint), count(*), {cut} FROM {en} e JOIN {tr} t "
      "ON t.id = e.transfer_id WHERE {moved} GROUP BY e.account_id "
      "ON CONFLICT (account_id) DO UPDATE SET balance = {ob}.balance + excluded.balance, "
      "entries = {ob}.entries + excluded.entries, "
      "as_of = CASE WHEN excluded.as_of > {ob}.as_of THEN excluded.as_of ELSE {ob}.as_of END",
      fmt::arg("ob", ob), fmt::arg("cut", cut), fmt::arg("en", en), fmt::arg("tr", tr), fmt::arg("moved", moved));
  const std::string at = backend.table("archived_totals");
  s.add_totals = fmt::format(
      "INSERT INTO {at} (currency, deposits, withdrawals) "
      "SELECT t.currency, CAST(COALESCE(SUM(CASE WHEN t.kind = 'deposit' THEN t.amount END), 0) AS bigint), "
      "CAST(COALESCE(SUM(CASE WHEN t.kind = 'withdrawal' THEN t.amount END), 0) AS bigint) FROM {tr} t "
      "WHERE {moved} AND t.outcome = 'ok' AND t.kind IN ('deposit', 'withdrawal') GROUP BY t.currency "
      "ON CONFLICT (currency) DO UPDATE SET deposits = {at}.deposits + excluded.deposits, "
      "withdrawals = {at}.withdrawals + excluded.withdrawals",
      fmt::arg("at", at), fmt::arg("tr", tr), fmt::arg("moved", moved));
  s.delete_entries = fmt::format("DELETE FROM {} WHERE transfer_id IN (SELECT t.id FROM {} t WHERE {})", en, tr, moved);
  // Reversals and their originals go in one statement: the foreign key is checked at its end.
  s.delete_transfers = fmt::format("DELETE FROM {tr} WHERE id IN (SELECT t.id FROM {tr} t WHERE {moved})",
                                   fmt::arg("tr", tr), fmt::arg("moved", moved));
  const std::string ar = backend.table("archives");
  s.record_run = fmt::format(
      "INSERT INTO {ar} (cutoff, transfers, entries, archived_at) VALUES ({cut}, $2, $3, {now}) "
      "ON CONFLICT (cutoff) DO UPDATE SET transfers = {ar}.transfers + excluded.transfers, "
      "entries = {ar}.entries + excluded.entries, archived_at = excluded.archived_at",
      fmt::arg("ar", ar), fmt::arg("cut", cut), fmt::arg("now", d.now_timestamp()));
  // The largest ids ever archived, kept apart from the archive tables (which a DBA may empty): new
  // ids stay above them (next_id_above_high_water).
  const std::string hw = backend.table("id_high_water");
  s.high_water = fmt::format(
      "INSERT INTO {hw} (name, last_id) SELECT n, m FROM (SELECT 'transfers' AS n, (SELECT MAX(id) FROM {ta}) AS m "
      "UNION ALL SELECT 'entries', (SELECT MAX(id) FROM {ea})) x WHERE m IS NOT NULL "
      "ON CONFLICT (name) DO UPDATE SET last_id = CASE WHEN excluded.last_id > {hw}.last_id THEN excluded.last_id "
      "ELSE {hw}.last_id END",
      fmt::arg("hw", hw), fmt::arg("ta", ta), fmt::arg("ea", backend.table("entries_archive")));
  s.kept = fmt::format("SELECT count(*) FROM {} WHERE created_at < {}", tr, cut);
  return s;
}

}  // namespace

ArchiveReport Ledger::archive(std::int64_t cutoff_ms, const ArchiveOptions& options) {
  // Archiving forgets the keys of what it moves, as prune_keys() does: the same floor.
  if (options.min_age < min_key_age)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("archive min_age must be at least {}h: it forgets the idempotency keys of what it moves, "
                            "and a client may retry a key for that long (got {}ms)",
                            min_key_age.count(), options.min_age.count()));
  auto& impl = *impl_;
  const ArchiveSql sql = archive_sql(*impl.backend);
  return detail::with_retries(
      impl.options.retry, detail::RetryIn::conflicts,
      [&] {
        // One snapshot for every statement (REPEATABLE READ on PostgreSQL; SQLite's write
        // transaction excludes every other writer): a concurrent reversal or capture of a row
        // being moved makes the run fail with a conflict and retry, never split a family.
        Transaction tx =
            detail::DatabaseGate::begin(*impl.backend, TxOptions{Isolation::repeatable_read, TxAccess::read_write});
        const std::int64_t now_ms = tx.exec(sql.now, {}).one().i64(0);
        if (cutoff_ms > now_ms - options.min_age.count())
          throw Error(ErrorKind::invalid_argument,
                      fmt::format("archive cutoff {} (epoch ms) is later than the database clock {} minus min_age "
                                  "{}ms: recent transfers are still needed for replays and reconciliation",
                                  cutoff_ms, now_ms, options.min_age.count()));
        ArchiveReport report;
        report.cutoff_ms = cutoff_ms;
        report.dry_run = options.dry_run;
        try {
          report.transfers = tx.exec(sql.copy_transfers, {cutoff_ms}).affected;
          if (report.transfers > 0) {
            report.entries = tx.exec(sql.copy_entries, {cutoff_ms}).affected;
            report.accounts = tx.exec(sql.add_openings, {cutoff_ms}).affected;
            tx.exec(sql.add_totals, {cutoff_ms});
            tx.exec(sql.delete_entries, {cutoff_ms});
            const std::int64_t deleted = tx.exec(sql.delete_transfers, {cutoff_ms}).affected;
            if (deleted != report.transfers)
              throw Error(ErrorKind::conflict,
                          fmt::format("archive copied {} transfers but deleted {}", report.transfers, deleted));
            tx.exec(sql.high_water, {});
            tx.exec(sql.record_run, {cutoff_ms, report.transfers, report.entries});
          }
          report.kept = tx.exec(sql.kept, {cutoff_ms}).one().i64(0);
        } catch (const Error& e) {
          // A row that came to refer to a transfer being moved (a reversal, a capture) since the
          // snapshot: the foreign key refused the delete. Or another archive run moved the same
          // rows first and committed since this run's snapshot (REPEATABLE READ on PostgreSQL):
          // its copies are in the archive tables. Nothing was written; run again, with a new
          // snapshot that finds the rows gone.
          if (e.sqlstate() == "23503" || e.sqlstate() == "23505")
            throw Error(ErrorKind::conflict, e.what(), e.sqlstate());
          throw;
        }
        if (options.dry_run)
          tx.rollback();
        else
          tx.commit();
        return report;
      },
      [&](const Error&) { impl.count([](LedgerStats& st) { ++st.conflicts, ++st.retries; }); });
}

}  // namespace rowguard

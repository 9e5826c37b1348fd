// Ledger::archive: moves old transfers and their entries out of the live tables, carrying what
// they add up to forward into opening balances and archived totals, in one transaction.

#include <chrono>

#include <fmt/format.h>

#include "rowguard/time_text.hpp"

#include "core/database_gate.hpp"

#include "ledger/ledger_impl.hpp"

namespace rowguard {

namespace {
// A minimum age as people write it: "30d", "36h", else milliseconds.
std::string age(std::chrono::milliseconds a) {
  constexpr std::int64_t hour = 3'600'000, day = 24 * hour;
  if (a.count() % day == 0) return fmt::format("{}d", a.count() / day);
  if (a.count() % hour == 0) return fmt::format("{}h", a.count() / hour);
  return fmt::format("{}ms", a.count());
}
}  // namespace

ArchiveReport Ledger::archive(std::int64_t cutoff_ms, const ArchiveOptions& options) {
  // Archiving forgets the keys of what it moves, as prune_keys() does: the same floor.
  if (options.min_age < min_key_age)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("archive min_age must be at least {}h: it forgets the idempotency keys of what it moves, "
                            "and a client may retry a key for that long (got {})",
                            min_key_age.count(), age(options.min_age)));
  auto& impl = *impl_;
  const detail::ArchiveStatements& sql = impl.archive_sql;
  return detail::with_retries(
      impl.options.retry, detail::RetryIn::conflicts,
      [&] {
        // One snapshot for every statement (REPEATABLE READ on PostgreSQL; SQLite's write
        // transaction excludes every other writer): a concurrent reversal or capture of a row
        // being moved makes the run fail with a conflict and retry, never split a family.
        Transaction tx =
            detail::DatabaseGate::begin(*impl.backend, TxOptions{Isolation::repeatable_read, TxAccess::read_write});
        const std::int64_t now_ms = tx.exec(sql.clock, {}).one().i64(0);
        if (cutoff_ms > now_ms - options.min_age.count())
          throw Error(ErrorKind::invalid_argument,
                      fmt::format("archive cutoff {} is later than {}, the database clock {} minus min_age {}: "
                                  "recent transfers are still needed for replays and reconciliation",
                                  format_time(cutoff_ms), format_time(now_ms - options.min_age.count()),
                                  format_time(now_ms), age(options.min_age)));
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

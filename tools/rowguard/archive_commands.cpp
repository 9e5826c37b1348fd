// rowguard ledger archive, ledger partitions: growth of the journal (docs/operations.md, "Growth").
#include <iostream>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct ArchiveArgs {
  std::string before;
  std::string min_age = "30d";
  bool dry_run = false;
  int ahead = 3;
};

bool on_postgres(Database& db) { return db.backend_name().find("postgres") != std::string_view::npos; }
}  // namespace

void add_archive_commands(CLI::App& app, Globals& globals) {
  static ArchiveArgs a;
  auto* ledger = app.get_subcommand("ledger");

  auto* archive = ledger->add_subcommand(
      "archive", "Move transfers created before TIME, and their entries, to the archive tables (docs/operations.md)");
  archive->add_option("--before", a.before, "The cutoff: 2026-01-31, 2026-01-31T12:30:00Z or @EPOCH_MS")->required();
  archive->add_option("--min-age", a.min_age,
                      "Refuse a cutoff later than the database clock minus this, e.g. 30d, 48h (default 30d; at "
                      "least 24h, else exit 2: archiving forgets the keys of what it moves)");
  archive->add_flag("--dry-run", a.dry_run, "Count what would move and change nothing");
  archive->callback([&globals] {
    const std::int64_t cutoff = parse_time(a.before);
    ArchiveOptions options;
    options.min_age = parse_duration(a.min_age);
    options.dry_run = a.dry_run;
    auto db = open_database(globals);
    const ArchiveReport r = Ledger(db).archive(cutoff, options);
    emit(globals,
         {{"cutoff", format_time(r.cutoff_ms)},
          {"cutoff_ms", r.cutoff_ms},
          {"transfers", r.transfers},
          {"entries", r.entries},
          {"accounts", r.accounts},
          {"kept", r.kept},
          {"dry_run", r.dry_run}},
         fmt::format("{}{} transfer(s) and {} entr{} created before {}, {} account(s)' opening balances; {} kept "
                     "live (still referenced)",
                     r.dry_run ? "dry run: would archive " : "archived ", r.transfers, r.entries,
                     r.entries == 1 ? "y" : "ies", format_time(r.cutoff_ms), r.accounts, r.kept));
  });

  auto* partitions = ledger->add_subcommand(
      "partitions",
      "PostgreSQL with schema/postgres/partitioning.sql applied: create the monthly partitions of transfers and "
      "entries from this month to N months ahead (idempotent; run it from cron)");
  partitions->add_option("--ahead", a.ahead, "Months ahead of the current one (0 to 120, default 3)")
      ->check(CLI::Range(0, 120));
  partitions->callback([&globals] {
    auto db = open_database(globals);
    if (!on_postgres(db))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("ledger partitions needs PostgreSQL: {} has no partitioned tables", db.backend_name()));
    const std::string fn = db.table_prefix() + "create_partitions";
    if (db.exec("SELECT CASE WHEN to_regproc(CAST($1 AS text)) IS NULL THEN 0 ELSE 1 END", {fn}).one().i64(0) == 0)
      throw Error(ErrorKind::not_found,
                  fmt::format("{}() does not exist: apply the partitioning script first "
                              "(rowguard schema --dialect postgres --partitioning | psql -1 -v ON_ERROR_STOP=1)",
                              fn));
    // fn is the validated prefix plus a constant: an identifier, not a value.
    const auto created = db.exec(fmt::format("SELECT {}(CAST($1 AS integer), CAST(current_date AS date))", fn),
                                 {static_cast<std::int64_t>(a.ahead)})
                             .one()
                             .i64(0);
    emit(globals, {{"created", created}, {"ahead", a.ahead}},
         fmt::format("created {} partition(s); transfers and entries have partitions to {} month(s) ahead", created,
                     a.ahead));
  });
}

}  // namespace rowguard::cli

// Archival of old journal rows (Ledger::archive) and the PostgreSQL partitioned layout
// (schema/postgres/partitioning.sql).
#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/schema_scripts.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::backend_of;
using rowguard::test::dialect_of;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::rows_in;
using rowguard::test::TestDb;

namespace {
constexpr std::int64_t day_ms = 86'400'000;

struct Bank {
  TestDb t;
  Ledger ledger;
  Bank() : ledger((t.db().migrate(), t.db())) {}
  Database& db() { return t.db(); }
  std::string table(const char* name) { return t.db().table_prefix() + name; }

  std::int64_t now_ms() { return db().exec("SELECT " + dialect_of(db()).now_ms()).one().i64(0); }

  // Tests only: moves a transfer, and its entries, `days` into the past.
  void age(std::int64_t transfer_id, std::int64_t days) {
    const std::string shift = rowguard::test::can().timestamptz
                                  ? "created_at - CAST($1 AS bigint) * INTERVAL '1 millisecond'"
                                  : "created_at - $1";
    db().exec(fmt::format("UPDATE {} SET created_at = {} WHERE id = $2", table("transfers"), shift),
              {days * day_ms, transfer_id});
    db().exec(fmt::format("UPDATE {} SET created_at = {} WHERE transfer_id = $2", table("entries"), shift),
              {days * day_ms, transfer_id});
  }

  std::map<std::string, std::int64_t> balances() {
    std::map<std::string, std::int64_t> out;
    for (const auto& a : ledger.list()) out[a.id] = a.balance;
    return out;
  }

  // Per account: live entries plus archived entries (all the money that ever moved).
  std::map<std::string, std::int64_t> journal_sums() {
    std::map<std::string, std::int64_t> out;
    for (const char* t : {"entries", "entries_archive"})
      for (const auto& r : db().exec(fmt::format("SELECT account_id, CAST(SUM(amount) AS bigint) FROM {} GROUP BY "
                                                 "account_id",
                                                 table(t)))
                               .rows)
        out[r.text(0)] += r.i64(1);
    return out;
  }

  std::int64_t count(const std::string& sql) { return db().exec(sql).one().i64(0); }

  // Accounts a and b, a deposit to a and n transfers a -> b keyed o-0.. all 60 days old; returns a
  // cutoff 45 days back, before which every one of them lies.
  std::int64_t old_transfers(int n) {
    ledger.open("a", "EUR");
    ledger.open("b", "EUR");
    age(ledger.deposit("a", 100'000, "dep").transfer_id, 60);
    for (int i = 0; i < n; ++i) age(ledger.transfer("a", "b", 100, fmt::format("o-{}", i)).transfer_id, 60);
    return now_ms() - 45 * day_ms;
  }
};

void require_clean(Ledger& l) {
  const CheckReport r = l.check();
  std::string found;
  for (const auto& v : r.violations) found += fmt::format("{} {}: {}\n", v.what, v.account, v.detail);
  INFO(found);
  REQUIRE(r.ok());
}
}  // namespace

TEST_CASE("archive: moves exactly the old transfers, keeps referenced ones, and check() and balances stay valid",
          "[backend][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  l.open("c", "EUR", -1'000);
  // Old: deposits, transfers, a rejection, a withdrawal, a transfer reversed in full (old too).
  std::vector<std::int64_t> old_ids;
  old_ids.push_back(l.deposit("a", 10'000, "dep-a").transfer_id);
  old_ids.push_back(l.deposit("b", 5'000, "dep-b").transfer_id);
  old_ids.push_back(l.transfer("a", "b", 1'500, "t-1").transfer_id);
  old_ids.push_back(l.transfer("b", "c", 700, "t-2").transfer_id);
  const TransferResult rejected = l.transfer("c", "a", 100'000, "t-short");
  REQUIRE_FALSE(rejected.ok());
  old_ids.push_back(rejected.transfer_id);
  old_ids.push_back(l.withdraw("a", 300, "wd-1").transfer_id);
  old_ids.push_back(l.transfer("a", "c", 400, "t-refunded").transfer_id);
  old_ids.push_back(l.reverse("t-refunded", 400, "r-1").transfer_id);
  // Old, but still referenced: a transfer refunded after the cutoff, and a hold's capture.
  const std::int64_t refunded_late = l.transfer("a", "b", 200, "t-refunded-late").transfer_id;
  const HoldResult hold = l.hold("b", "a", 250, "h-1", 60s);
  REQUIRE(hold.ok());
  const std::int64_t capture = l.capture(hold.hold_id).transfer_id;
  for (const std::int64_t id : old_ids) b.age(id, 60);
  b.age(refunded_late, 60);
  b.age(capture, 60);
  // Recent: stays live.
  l.reverse("t-refunded-late", 50, "r-late");
  l.transfer("b", "a", 100, "t-new");

  require_clean(l);
  const auto balances = b.balances();
  const std::int64_t transfers_before = rows_in(b.db(), "transfers");
  const std::int64_t entries_before = rows_in(b.db(), "entries");
  const std::int64_t cutoff = b.now_ms() - 45 * day_ms;
  std::int64_t old_entries = 0;
  for (const std::int64_t id : old_ids)
    old_entries += b.count(fmt::format("SELECT count(*) FROM {} WHERE transfer_id = {}", b.table("entries"), id));

  SECTION("a dry run reports what would move and changes nothing") {
    ArchiveOptions dry;
    dry.dry_run = true;
    const ArchiveReport r = l.archive(cutoff, dry);
    CHECK(r.dry_run);
    CHECK(r.transfers == static_cast<std::int64_t>(old_ids.size()));
    CHECK(r.entries == old_entries);
    CHECK(r.kept == 2);
    CHECK(rows_in(b.db(), "transfers") == transfers_before);
    CHECK(rows_in(b.db(), "entries") == entries_before);
    CHECK(rows_in(b.db(), "transfers_archive") == 0);
    CHECK(rows_in(b.db(), "opening_balances") == 0);
    CHECK(rows_in(b.db(), "archives") == 0);
    CHECK(b.balances() == balances);
  }

  SECTION("archive moves the old rows, carries their sums forward, and a second run moves nothing") {
    const ArchiveReport r = l.archive(cutoff);
    CHECK_FALSE(r.dry_run);
    CHECK(r.transfers == static_cast<std::int64_t>(old_ids.size()));
    CHECK(r.entries == old_entries);
    CHECK(r.accounts == 3);
    CHECK(r.kept == 2);
    CHECK(rows_in(b.db(), "transfers") == transfers_before - r.transfers);
    CHECK(rows_in(b.db(), "entries") == entries_before - r.entries);
    CHECK(rows_in(b.db(), "transfers_archive") == r.transfers);
    CHECK(rows_in(b.db(), "entries_archive") == r.entries);
    CHECK(rows_in(b.db(), "archives") == 1);
    // Exactly the old ids left the live table; the referenced ones stayed.
    for (const std::int64_t id : old_ids)
      CHECK(b.count(fmt::format("SELECT count(*) FROM {} WHERE id = {}", b.table("transfers_archive"), id)) == 1);
    for (const std::int64_t id : {refunded_late, capture})
      CHECK(b.count(fmt::format("SELECT count(*) FROM {} WHERE id = {}", b.table("transfers"), id)) == 1);
    require_clean(l);
    CHECK(b.balances() == balances);
    // Money is conserved: live plus archived entries still add up to every balance.
    CHECK(b.journal_sums() == balances);
    // The refund bookkeeping of the kept transfer still sees its live refund.
    CHECK(kind_of([&] { l.reverse("t-refunded-late", 151, "r-too-much"); }) == ErrorKind::invalid_argument);

    const ArchiveReport again = l.archive(cutoff);
    CHECK(again.transfers == 0);
    CHECK(again.entries == 0);
    CHECK(rows_in(b.db(), "archives") == 1);
    require_clean(l);
    CHECK(b.balances() == balances);

    // An archived key is no longer recognised: a retry with it is a new request (as after prune_keys).
    const TransferResult retried = l.deposit("a", 10'000, "dep-a");
    CHECK_FALSE(retried.replayed);
    CHECK(retried.transfer_id > *std::max_element(old_ids.begin(), old_ids.end()));
    require_clean(l);
  }

  SECTION("a cutoff newer than the database clock minus min_age is refused and changes nothing") {
    std::string message;
    CHECK(kind_of([&] { l.archive(b.now_ms() - 29 * day_ms); }, &message) == ErrorKind::invalid_argument);
    CHECK_THAT(message, Catch::Contains("min_age"));
    ArchiveOptions none;
    none.min_age = 0ms;
    CHECK(kind_of([&] { l.archive(b.now_ms() + day_ms, none); }) == ErrorKind::invalid_argument);
    none.min_age = -1ms;
    CHECK(kind_of([&] { l.archive(cutoff, none); }) == ErrorKind::invalid_argument);
    CHECK(rows_in(b.db(), "transfers") == transfers_before);
    CHECK(rows_in(b.db(), "transfers_archive") == 0);
  }
}

TEST_CASE("archive: check() reports an opening balance that differs from its archived entries", "[backend][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  b.age(l.deposit("a", 1'000, "dep-1").transfer_id, 40);
  REQUIRE(l.archive(b.now_ms() - 35 * day_ms).transfers == 1);
  require_clean(l);
  b.db().exec(fmt::format("UPDATE {} SET balance = balance + 1", b.table("opening_balances")));
  const CheckReport r = l.check();
  std::vector<std::string> kinds;
  for (const auto& v : r.violations) kinds.push_back(v.what);
  CHECK(std::count(kinds.begin(), kinds.end(), "opening_mismatch") == 1);
  CHECK(std::count(kinds.begin(), kinds.end(), "balance_mismatch") == 1);
}

TEST_CASE("archive: check() stays clean when the archive tables are exported and emptied and archive runs again",
          "[backend][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  b.age(l.deposit("a", 1'000, "dep-1").transfer_id, 40);
  REQUIRE(l.archive(b.now_ms() - 35 * day_ms).transfers == 1);
  for (const char* table : {"entries_archive", "transfers_archive"})
    b.db().exec(fmt::format("DELETE FROM {}", b.table(table)));
  b.age(l.deposit("a", 250, "dep-2").transfer_id, 40);
  REQUIRE(l.archive(b.now_ms() - 35 * day_ms).transfers == 1);
  require_clean(l);  // the opening balance counts 2 entries, the archive holds 1: exported, not checked
  // A forged archived entry (more entries than the opening balance counts) is still found.
  b.db().exec(
      fmt::format("INSERT INTO {} (id, transfer_id, account_id, amount, created_at) SELECT id + 1000, "
                  "transfer_id, account_id, amount, created_at FROM {}",
                  b.table("entries_archive"), b.table("entries_archive")));
  b.db().exec(
      fmt::format("INSERT INTO {} (id, transfer_id, account_id, amount, created_at) SELECT id + 2000, "
                  "transfer_id, account_id, amount, created_at FROM {}",
                  b.table("entries_archive"), b.table("entries_archive")));
  const CheckReport r = l.check();
  REQUIRE(r.violations.size() == 1);
  CHECK(r.violations[0].what == "opening_mismatch");
}

TEST_CASE("archive: archiving every transfer keeps ids unique and later transfers valid", "[backend][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  const std::int64_t first = l.deposit("a", 1'000, "dep-1").transfer_id;
  const std::int64_t last = l.transfer("a", "b", 300, "t-1").transfer_id;
  b.age(first, 40);
  b.age(last, 40);
  const ArchiveReport r = l.archive(b.now_ms() - 31 * day_ms);
  CHECK(r.transfers == 2);
  CHECK(rows_in(b.db(), "transfers") == 0);
  CHECK(l.get("a").balance == 700);
  // New ids stay above the archived ones (SQLite assigns MAX(id) + 1 over live and archive).
  const std::int64_t next = l.transfer("a", "b", 100, "t-2").transfer_id;
  CHECK(next > last);
  CHECK(b.count(fmt::format("SELECT max(id) FROM {}", b.table("entries"))) >
        b.count(fmt::format("SELECT max(id) FROM {}", b.table("entries_archive"))));
  require_clean(l);
  CHECK(b.journal_sums() == b.balances());
}

TEST_CASE("archive: the CLI archives with --before and --dry-run and refuses partitions on SQLite",
          "[backend][archive][cli][shared-db][threads]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  b.age(l.deposit("a", 1'000, "dep-1").transfer_id, 40);
  const std::string prefix = b.db().table_prefix();
  const std::string before = fmt::format("@{}", b.now_ms() - 35 * day_ms);
  std::string out;
  REQUIRE(rowguard::test::run_cli(
              {"--db", b.t.url(), "--prefix", prefix, "--json", "ledger", "archive", "--before", before, "--dry-run"},
              &out) == 0);
  auto j = nlohmann::json::parse(out);
  CHECK(j["transfers"] == 1);
  CHECK(j["dry_run"] == true);
  CHECK(rows_in(b.db(), "transfers") == 1);
  // 30d by default: a cutoff 20 days back is refused (exit 2), unless --min-age allows it.
  const std::string recent = fmt::format("@{}", b.now_ms() - 20 * day_ms);
  CHECK(rowguard::test::run_cli({"--db", b.t.url(), "--prefix", prefix, "ledger", "archive", "--before", recent}) == 2);
  REQUIRE(rowguard::test::run_cli({"--db", b.t.url(), "--prefix", prefix, "--json", "ledger", "archive", "--before",
                                   recent, "--min-age", "10d"},
                                  &out) == 0);
  j = nlohmann::json::parse(out);
  CHECK(j["transfers"] == 1);
  CHECK(rows_in(b.db(), "transfers") == 0);
  CHECK(rowguard::test::run_cli(
            {"--db", b.t.url(), "--prefix", prefix, "ledger", "archive", "--before", "yesterday"}) == 2);
  if (!rowguard::test::can().partitioning)
    CHECK(rowguard::test::run_cli({"--db", b.t.url(), "--prefix", prefix, "ledger", "partitions", "--ahead", "2"}) ==
          2);
}

namespace {
// Applies schema/postgres/partitioning.sql with the test's prefix.
void partition(Database& db) {
  auto session = backend_of(db).borrow();
  (*session)->exec_script(schema_sql("postgres", SchemaPart::partitioning, db.table_prefix()));
}
}  // namespace

TEST_CASE("partitioning: the library works unchanged on monthly partitions, and archives from them", "[pg][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  // Rows from before the conversion, some of them three months old.
  const std::int64_t old_dep = l.deposit("a", 10'000, "dep-old").transfer_id;
  const std::int64_t old_t = l.transfer("a", "b", 1'000, "t-old").transfer_id;
  b.age(old_dep, 95);
  b.age(old_t, 95);
  l.transfer("a", "b", 500, "t-before");
  const auto balances_before = b.balances();
  partition(b.db());
  CHECK(b.count(fmt::format("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = to_regclass('{}')",
                            b.table("transfers"))) == 1);
  CHECK(b.balances() == balances_before);
  require_clean(l);

  // Every row sits in the partition of its UTC month.
  auto misplaced = [&](const char* table) {
    return b.count(
        fmt::format("SELECT count(*) FROM {t} WHERE CAST(tableoid::regclass AS text) <> '{t}_p' || "
                    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY_MM')",
                    fmt::arg("t", b.table(table))));
  };
  CHECK(misplaced("transfers") == 0);
  CHECK(misplaced("entries") == 0);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfer_keys"))) == 3);

  // Transfers, replays, holds and reversals run as before.
  CHECK(l.transfer("b", "a", 200, "t-after").ok());
  CHECK(l.transfer("b", "a", 200, "t-after").replayed);
  CHECK(kind_of([&] { l.transfer("b", "a", 201, "t-after"); }) == ErrorKind::idempotency_mismatch);
  const HoldResult h = l.hold("a", "b", 100, "h-1", 60s);
  REQUIRE(h.ok());
  CHECK(l.capture(h.hold_id).ok());
  CHECK(l.reverse("t-before", 100, "r-1").ok());
  std::vector<BatchItem> batch{{"a", "b", 10, "batch-1", false}, {"b", "a", 5, "batch-2", false}};
  for (const auto& r : l.transfer_batch(batch)) CHECK(r.ok());
  CHECK(misplaced("transfers") == 0);
  require_clean(l);

  // Key uniqueness is enforced by the trigger-kept table, even for a row written by hand.
  std::string message;
  const ErrorKind dup = kind_of(
      [&] {
        b.db().exec(
            fmt::format("INSERT INTO {} (idempotency_key, kind, to_account, amount, currency, outcome, "
                        "created_at) VALUES ('t-after', 'deposit', 'a', 1, 'EUR', 'ok', clock_timestamp())",
                        b.table("transfers")));
      },
      &message);
  CHECK(dup == ErrorKind::permanent);
  CHECK_THAT(message, Catch::Contains("duplicate key"));
  // A row moved to another month's partition keeps its key, still unique.
  b.age(l.transfer("a", "b", 1, "t-moved").transfer_id, 40);
  CHECK(misplaced("transfers") == 0);
  CHECK(l.transfer("a", "b", 1, "t-moved").replayed);
  const std::string keyed =
      fmt::format("SELECT count(*) FROM {} WHERE idempotency_key IS NOT NULL", b.table("transfers"));
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfer_keys"))) == b.count(keyed));

  // Archive from the partitioned tables: the two old transfers and the moved one.
  const auto balances = b.balances();
  const ArchiveReport r = l.archive(b.now_ms() - 35 * day_ms);
  CHECK(r.transfers == 3);
  CHECK(r.entries == 5);
  require_clean(l);
  CHECK(b.balances() == balances);
  CHECK(b.journal_sums() == balances);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfer_keys"))) == b.count(keyed));
  // An archived key is free again.
  CHECK_FALSE(l.deposit("a", 10'000, "dep-old").replayed);
  // Keys pruned by prune_keys leave the key table too (keys past the floor: older than a day).
  b.age(l.find_transfer_by_key("t-after").id, 2);
  CHECK(l.prune_keys(24h) == 1);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfer_keys"))) == b.count(keyed));
  require_clean(l);
}

TEST_CASE("partitioning: create_partitions is idempotent and moves rows out of the DEFAULT partition",
          "[pg][archive][threads][cli]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  partition(b.db());
  const std::string fn = b.table("create_partitions");
  // The script made this month and three ahead; asking again creates nothing.
  CHECK(b.count(fmt::format("SELECT {}(3, current_date)", fn)) == 0);
  CHECK(b.count(fmt::format("SELECT {}(5, current_date)", fn)) == 4);  // two more months, two tables
  CHECK(b.count(fmt::format("SELECT {}(5, current_date)", fn)) == 0);
  // A row two years old has no month of its own: it lands in DEFAULT, until its month is created.
  const std::int64_t id = l.deposit("a", 100, "dep-1").transfer_id;
  b.age(id, 730);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfers_default"))) == 1);
  CHECK(b.count(fmt::format("SELECT {}(0, CAST(current_date - 730 AS date))", fn)) > 0);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("transfers_default"))) == 0);
  CHECK(b.count(fmt::format("SELECT count(*) FROM {}", b.table("entries_default"))) == 0);
  CHECK(l.deposit("a", 100, "dep-1").replayed);  // its key survived the move
  CHECK(b.count(fmt::format("SELECT {}(0, CAST(current_date - 730 AS date))", fn)) == 0);
  std::string message;
  CHECK(kind_of([&] { b.db().exec(fmt::format("SELECT {}(-1, current_date)", fn)); }, &message) ==
        ErrorKind::permanent);
  CHECK_THAT(message, Catch::Contains("months_ahead"));
  require_clean(l);
  // The CLI's partitions command calls it.
  std::string out;
  REQUIRE(rowguard::test::run_cli(
              {"--db", b.t.url(), "--prefix", b.db().table_prefix(), "--json", "ledger", "partitions", "--ahead", "6"},
              &out) == 0);
  CHECK(nlohmann::json::parse(out)["created"] == 2);
}

TEST_CASE("archive: concurrent refunds of old transfers never split a transfer from its refunds",
          "[backend][archive][threads]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int n = 20;
  const std::int64_t cutoff = b.old_transfers(n);
  // One thread refunds every old transfer while another archives them; each refund either finds
  // its original live (and keeps it live) or finds it archived (not_found).
  std::vector<ErrorKind> refund_errors(n, ErrorKind::permanent);
  std::vector<bool> refunded(n, false);
  std::optional<ArchiveReport> report;
  std::optional<ErrorKind> archive_error;
  auto refunds = [&] {
    for (int i = 0; i < n; ++i) {
      try {
        refunded[i] = l.reverse(fmt::format("o-{}", i), 100, fmt::format("r-{}", i)).ok();
      } catch (const Error& e) {
        refund_errors[i] = e.kind();
      }
    }
  };
  auto archiver = [&] {
    try {
      report = l.archive(cutoff);
    } catch (const Error& e) {
      archive_error = e.kind();
    }
  };
  // The first refund waits behind a lock on account a, the archive run behind its currency's
  // archived totals (on SQLite both behind the gate's write lock): both are in flight at once.
  Transaction gate = b.db().begin();
  gate.exec(fmt::format("UPDATE {} SET version = version WHERE id = 'a'", b.table("accounts")));
  gate.exec(
      fmt::format("INSERT INTO {} (currency, deposits, withdrawals) VALUES ('EUR', 0, 0)", b.table("archived_totals")));
  CHECK(rowguard::test::race_through_gate(std::move(gate), {refunds, archiver}) == 0);
  if (archive_error) CHECK(*archive_error == ErrorKind::conflict);  // retries exhausted: nothing moved
  for (int i = 0; i < n; ++i) {
    INFO("transfer o-" << i);
    const std::int64_t archived =
        b.count(fmt::format("SELECT count(*) FROM {} WHERE idempotency_key = 'o-{}'", b.table("transfers_archive"), i));
    if (refunded[i]) {
      CHECK(archived == 0);  // refunded after the cutoff: it stays live with its refund
    } else {
      CHECK(refund_errors[i] == ErrorKind::not_found);
      CHECK(archived == 1);
    }
  }
  require_clean(l);
  CHECK(b.journal_sums() == b.balances());
  CHECK(l.archive(cutoff).transfers == 0);  // what stayed is still referenced by a live refund
}

TEST_CASE("archive: two concurrent archive runs: one moves the rows, the other nothing, and neither fails",
          "[backend][archive][threads]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int n = 30;
  const std::int64_t cutoff = b.old_transfers(n);
  const auto balances = b.balances();
  std::optional<ArchiveReport> reports[2];
  std::string errors[2];
  auto run = [&](int i) {
    return [&, i] {
      try {
        reports[i] = l.archive(cutoff);
      } catch (const Error& e) {
        errors[i] = e.what();
      }
    };
  };
  // Both runs wait behind the gate's uncommitted archived totals for EUR (on SQLite, behind its
  // write lock), so both take their snapshots before either commits.
  Transaction gate = b.db().begin();
  gate.exec(
      fmt::format("INSERT INTO {} (currency, deposits, withdrawals) VALUES ('EUR', 0, 0)", b.table("archived_totals")));
  CHECK(rowguard::test::race_through_gate(std::move(gate), {run(0), run(1)}) == 0);
  CHECK(errors[0] == "");
  CHECK(errors[1] == "");
  REQUIRE(reports[0]);
  REQUIRE(reports[1]);
  CHECK(reports[0]->transfers + reports[1]->transfers == n + 1);
  CHECK(std::min(reports[0]->transfers, reports[1]->transfers) == 0);
  CHECK(rows_in(b.db(), "transfers_archive") == n + 1);
  CHECK(rows_in(b.db(), "transfers") == 0);
  CHECK(rows_in(b.db(), "archives") == 1);
  require_clean(l);
  CHECK(b.balances() == balances);
  CHECK(b.journal_sums() == balances);
}

TEST_CASE("archive: ids never go back, even once the archive tables are emptied", "[backend][archive]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  std::int64_t last_transfer = 0, last_entry = 0;
  auto max_id = [&](const char* table) {
    return b.count(fmt::format("SELECT COALESCE(MAX(id), 0) FROM {}", b.table(table)));
  };
  for (int round = 0; round < 2; ++round) {
    INFO("round " << round);
    const std::int64_t d = l.deposit("a", 1'000, fmt::format("dep-{}", round)).transfer_id;
    const std::int64_t t = l.transfer("a", "b", 300, fmt::format("t-{}", round)).transfer_id;
    CHECK(d > last_transfer);
    CHECK(max_id("entries") > last_entry);
    b.age(d, 40);
    b.age(t, 40);
    REQUIRE(l.archive(b.now_ms() - 31 * day_ms).transfers == 2);
    last_transfer = std::max(last_transfer, max_id("transfers_archive"));
    last_entry = std::max(last_entry, max_id("entries_archive"));
    // Exported and emptied, as docs/operations.md says a DBA may.
    b.db().exec(fmt::format("DELETE FROM {}", b.table("entries_archive")));
    b.db().exec(fmt::format("DELETE FROM {}", b.table("transfers_archive")));
    REQUIRE(rows_in(b.db(), "transfers") == 0);
    REQUIRE(rows_in(b.db(), "entries") == 0);
  }
  // A new transfer, batch item, capture and refund all get ids above every id ever issued.
  const std::int64_t next = l.transfer("a", "b", 100, "t-next").transfer_id;
  CHECK(next > last_transfer);
  CHECK(max_id("entries") > last_entry);
  const auto batch = l.transfer_batch({{"a", "b", 10, "batch-1", false}});
  CHECK(batch[0].result.transfer_id > next);
  const HoldResult h = l.hold("a", "b", 10, "h-1", 60s);
  const std::int64_t capture = l.capture(h.hold_id).transfer_id;
  CHECK(capture > batch[0].result.transfer_id);
  CHECK(l.reverse("t-next", 10, "r-1").transfer_id > capture);
  CHECK(l.find_transfer_by_key("t-next").id == next);
  require_clean(l);
}

TEST_CASE("archive: migration steps 004 and 005 keep indexes a DBA built beforehand", "[backend][archive]") {
  TestDb t;
  Database& db = t.db();
  const std::string dialect(dialect_of(db).name());
  {
    auto session = backend_of(db).borrow();
    for (const char* step : {"000_schema_version", "001_init", "002_holds", "003_sagas"})
      (*session)->exec_script(detail::with_prefix(detail::find_script(dialect, step)->sql, db.table_prefix()));
  }
  REQUIRE(db.schema_version() == 3);
  // Built by hand ahead of the migration (on PostgreSQL a DBA would add CONCURRENTLY), under the
  // names the steps use.
  const std::string p = db.table_prefix();
  db.exec(fmt::format("CREATE INDEX {0}transfers_created_at ON {0}transfers (created_at)", p));
  db.exec(fmt::format("CREATE INDEX {0}holds_transfer ON {0}holds (transfer_id) WHERE transfer_id IS NOT NULL", p));
  CHECK(db.migrate() == static_cast<int>(detail::migrations(dialect).size()) - 3);
  CHECK(db.schema_version() == Database::library_schema_version());
  Ledger l(db);
  l.open("a", "EUR");
  CHECK(l.deposit("a", 1, "d").ok());
  require_clean(l);
}

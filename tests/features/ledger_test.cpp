// The ledger: accounts, transfers with idempotency keys, and a journal that always adds up.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <fcntl.h>
#include <functional>
#include <latch>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "ledger/ledger_sql.hpp"
#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::dialect_of;
using rowguard::test::kind_of;
using rowguard::test::require_mismatches;
using rowguard::test::rows_in;
using rowguard::test::TestDb;
using namespace std::chrono_literals;

namespace {
struct Bank {
  TestDb t;
  Ledger ledger;
  Bank() : ledger((t.db().migrate(), t.db())) {}
};

// Moves every row of the transfers recorded under keys into the past by `ms` (tests only).
void backdate(Database& db, const std::vector<std::string>& keys, std::int64_t ms) {
  const auto& d = dialect_of(db);
  for (const auto& key : keys) {
    db.exec(fmt::format("UPDATE {}entries SET created_at = {} WHERE transfer_id IN (SELECT id FROM {}transfers WHERE "
                        "idempotency_key = $2)",
                        db.table_prefix(), d.timestamp_plus_ms("created_at", "$1"), db.table_prefix()),
            {-ms, key});
    db.exec(fmt::format("UPDATE {}transfers SET created_at = {} WHERE idempotency_key = $2", db.table_prefix(),
                        d.timestamp_plus_ms("created_at", "$1")),
            {-ms, key});
  }
}
}  // namespace

TEST_CASE("ledger: open, deposit, withdraw and transfer keep balances, versions and the journal", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("alice", "EUR");
  l.open("bob", "EUR", -5'000);  // may overdraw by 50.00
  CHECK(l.get("alice").balance == 0);
  CHECK(l.get("bob").min_balance == -5'000);
  CHECK(l.deposit("alice", 10'000, "dep-1").ok());
  CHECK(l.transfer("alice", "bob", 2'500, "t-1").ok());
  CHECK(l.withdraw("bob", 1'000, "wd-1").ok());
  CHECK(l.transfer("bob", "alice", 5'000, "t-2").ok());  // bob overdraws to -3500
  const Account alice = l.get("alice");
  const Account bob = l.get("bob");
  CHECK(alice.balance == 12'500);
  CHECK(bob.balance == -3'500);
  CHECK(alice.version == 3);
  CHECK(bob.version == 3);
  CHECK(l.list().size() == 2);
  const CheckReport report = l.check();
  CHECK(report.ok());
  CHECK(report.total_balance == 9'000);  // deposits 10000 - withdrawals 1000
  CHECK(report.entries == 6);
  CHECK(l.stats().transfers_ok == 4);
}

TEST_CASE("ledger: currencies sum per code, largest_accounts ranks balances and is bounded", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  for (const char* id : {"eur-a", "eur-b", "eur-c"}) l.open(id, "EUR");
  l.open("usd-a", "USD");
  CHECK(l.deposit("eur-a", 300, "d1").ok());
  CHECK(l.deposit("eur-b", 700, "d2").ok());
  CHECK(l.deposit("eur-c", 700, "d3").ok());
  CHECK(l.deposit("usd-a", 50, "d4").ok());
  REQUIRE(l.hold("eur-b", "eur-a", 200, "h1", 60s).ok());
  const auto currencies = l.currencies();
  REQUIRE(currencies.size() == 2);
  CHECK(currencies[0].currency == "EUR");
  CHECK(currencies[0].accounts == 3);
  CHECK(currencies[0].balance == 1'700);
  CHECK(currencies[0].held == 200);
  CHECK(currencies[1].currency == "USD");
  CHECK(currencies[1].balance == 50);
  // Largest first, ties by id; every currency competes on its number (a dashboard's view).
  const auto largest = l.largest_accounts(3);
  REQUIRE(largest.size() == 3);
  CHECK(largest[0].id == "eur-b");
  CHECK(largest[0].held == 200);
  CHECK(largest[1].id == "eur-c");
  CHECK(largest[2].id == "eur-a");
  CHECK(l.largest_accounts(10).size() == 4);
  std::string message;
  CHECK(kind_of([&] { (void)l.largest_accounts(0); }, &message) == ErrorKind::invalid_argument);
  CHECK_THAT(message, Catch::Contains("1 to 10000"));
  CHECK(kind_of([&] { (void)l.largest_accounts(10'001); }) == ErrorKind::invalid_argument);
}

TEST_CASE("ledger: insufficient funds are rejected, recorded under the key, and replayed", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "USD");
  l.open("b", "USD");
  l.deposit("a", 100, "d");
  const TransferResult rejected = l.transfer("a", "b", 101, "too-much");
  CHECK(rejected.status == TransferStatus::insufficient_funds);
  CHECK_FALSE(rejected.replayed);
  CHECK(l.get("a").balance == 100);
  CHECK(l.get("a").version == 1);
  l.deposit("a", 1'000, "d2");
  // The same key replays the original rejection even though the account could pay now.
  const TransferResult again = l.transfer("a", "b", 101, "too-much");
  CHECK(again.status == TransferStatus::insufficient_funds);
  CHECK(again.replayed);
  CHECK(again.transfer_id == rejected.transfer_id);
  CHECK(l.get("b").balance == 0);
  CHECK(kind_of([&] { l.transfer_or_throw("a", "b", 5'000, "k3"); }) == ErrorKind::insufficient_funds);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a repeated key changes nothing, other parameters are idempotency_mismatch", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  l.open("c", "EUR");
  l.deposit("a", 1'000, "d");
  const auto first = l.transfer("a", "b", 300, "order-1");
  const auto second = l.transfer("a", "b", 300, "order-1");
  CHECK(second.replayed);
  CHECK(second.transfer_id == first.transfer_id);
  CHECK(l.get("a").balance == 700);
  std::string message;
  CHECK(kind_of([&] { l.transfer("a", "b", 301, "order-1"); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK_THAT(message, Catch::Contains("amount"));
  CHECK(kind_of([&] { l.transfer("a", "c", 300, "order-1"); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK_THAT(message, Catch::Contains("to"));
  CHECK(kind_of([&] { l.deposit("a", 300, "order-1"); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK_THAT(message, Catch::Contains("operation"));
  CHECK(l.get("a").balance == 700);
  CHECK(l.stats().replays == 1);
}

TEST_CASE("ledger: bad input is rejected with its kind and writes nothing", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("eur", "EUR");
  l.open("usd", "USD");
  l.deposit("eur", 500, "d");
  const std::int64_t transfers = rows_in(b.t.db(), "transfers");
  CHECK(kind_of([&] { l.transfer("eur", "nobody", 1, "k1"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.transfer("nobody", "eur", 1, "k2"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.transfer("eur", "usd", 1, "k3"); }) == ErrorKind::currency_mismatch);
  CHECK(kind_of([&] { l.transfer("eur", "eur", 1, "k4"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.transfer("eur", "usd", 0, "k5"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.deposit("eur", -1, "k6"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.transfer("eur", "usd", 1, ""); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.transfer("eur", "usd", 1, std::string(256, 'k')); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.get("nobody"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.get(""); }) == ErrorKind::invalid_argument);
  for (const char* currency : {"eur", "EURO", "", "E1R"})
    CHECK(kind_of([&] { l.open("x", currency); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.open("x", "EUR", 1); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.open("eur", "USD"); }) == ErrorKind::idempotency_mismatch);  // open with EUR
  // A balance that would overflow int64 is refused before anything is written.
  l.open("rich", "EUR");
  l.deposit("rich", std::numeric_limits<std::int64_t>::max(), "max");
  CHECK(kind_of([&] { l.deposit("rich", 1, "one-more"); }) == ErrorKind::invalid_argument);
  CHECK(l.get("rich").balance == std::numeric_limits<std::int64_t>::max());
  CHECK(rows_in(b.t.db(), "transfers") == transfers + 1);  // only the "max" deposit
  CHECK(rows_in(b.t.db(), "accounts") == 3);
}

TEST_CASE("ledger: opening an open account again is fine with its currency and minimum, a mismatch with others",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  CHECK(l.open("a", "EUR", -100));
  l.deposit("a", 500, "d");
  CHECK_FALSE(l.open("a", "EUR", -100));  // already open: nothing changes
  std::string message;
  CHECK(kind_of([&] { l.open("a", "USD", -100); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK(message == "account 'a' is open with currency EUR, not USD");
  CHECK(kind_of([&] { l.open("a", "EUR"); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK(message == "account 'a' is open with min_balance -100, not 0");
  CHECK(kind_of([&] { l.open("a", "JPY", 0); }, &message) == ErrorKind::idempotency_mismatch);
  CHECK(message == "account 'a' is open with currency EUR, not JPY and min_balance -100, not 0");
  const Account a = l.get("a");
  CHECK(a.balance == 500);
  CHECK(a.version == 1);
  CHECK(a.currency == "EUR");
  CHECK(rows_in(b.t.db(), "accounts") == 1);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: concurrent opens of a new account open it once and the others find it open", "[backend][threads]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int n = 6;              // and the gate's session: within the pool of 8
  std::vector<int> outcome(n, -1);  // 1 opened, 0 found open, -1 failed
  std::vector<std::function<void()>> calls;
  for (int i = 0; i < n; ++i) calls.emplace_back([&, i] { outcome[i] = l.open("new", "EUR") ? 1 : 0; });
  // The gate inserts the same id and rolls back: every open waits on its row (PostgreSQL) or its
  // write lock (SQLite), then they race for the id.
  Transaction gate = b.t.db().begin();
  gate.exec(
      fmt::format("INSERT INTO {}accounts (id, currency, balance, min_balance, version, created_at, updated_at) "
                  "VALUES ('new', 'EUR', 0, 0, 0, {}, {})",
                  b.t.db().table_prefix(), dialect_of(b.t.db()).now_timestamp(), dialect_of(b.t.db()).now_timestamp()));
  CHECK(rowguard::test::race_through_gate(std::move(gate), calls) == 0);  // they overlapped
  CHECK(std::count(outcome.begin(), outcome.end(), 1) == 1);
  CHECK(std::count(outcome.begin(), outcome.end(), 0) == n - 1);
  CHECK(rows_in(b.t.db(), "accounts") == 1);
}

TEST_CASE("ledger: concurrent requests with one key apply once and agree", "[backend][threads]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  l.deposit("a", 1'000, "d");
  constexpr int n = 6;  // and the gate's session: within the pool of 8
  std::vector<std::int64_t> ids(n, 0);
  std::atomic<int> failures{0};
  std::vector<std::function<void()>> calls;
  for (int i = 0; i < n; ++i)
    calls.emplace_back([&, i] {
      try {
        ids[i] = l.transfer("a", "b", 10, "same-key").transfer_id;
      } catch (const Error&) {
        ++failures;
      }
    });
  // Every request waits behind a lock on the source account, so all of them are in flight at once.
  Transaction gate = b.t.db().begin();
  gate.exec(fmt::format("UPDATE {}accounts SET version = version WHERE id = 'a'", b.t.db().table_prefix()));
  CHECK(rowguard::test::race_through_gate(std::move(gate), calls) == 0);  // they overlapped
  CHECK(failures == 0);
  CHECK(std::set<std::int64_t>(ids.begin(), ids.end()).size() == 1);
  CHECK(l.stats().replays == n - 1);
  CHECK(l.stats().transfers_ok == 1 + 1);  // the seed deposit and the transfer
  CHECK(l.get("b").balance == 10);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a bank under concurrent random transfers conserves money at every snapshot", "[backend][threads]") {
  Options options;
  options.pool_size = 8;
  TestDb t(options);
  t.db().migrate();
  LedgerOptions lo;
  lo.retry.attempts = 200;
  lo.retry.deadline = std::chrono::seconds(60);
  Ledger l(t.db(), lo);
  const int accounts = 4;
  for (int a = 0; a < accounts; ++a) {
    l.open(fmt::format("acct-{}", a), "EUR", a == 0 ? -1'000 : 0);
    l.deposit(fmt::format("acct-{}", a), 1'000, fmt::format("seed-{}", a));
  }
  const std::int64_t total = 4'000;
  std::atomic<bool> done{false};
  std::atomic<int> snapshots{0};
  std::atomic<int> bad_snapshots{0};
  std::thread reader([&] {
    while (!done) {
      const CheckReport r = l.check();
      ++snapshots;
      if (!r.ok() || r.total_balance != total) ++bad_snapshots;
    }
  });
  std::mutex acked_mutex;
  std::set<std::int64_t> ok_ids, rejected_ids;
  std::vector<std::thread> workers;
  std::atomic<int> errors{0};
  for (int w = 0; w < 6; ++w)
    workers.emplace_back([&, w] {
      std::mt19937 rng(1234 + w);  // seeded: a failure can be replayed
      for (int i = 0; i < 40; ++i) {
        const int from = rng() % accounts;
        const int to = (from + 1 + rng() % (accounts - 1)) % accounts;
        const std::int64_t amount = 1 + rng() % 700;  // sometimes more than the source has
        try {
          const auto r =
              l.transfer(fmt::format("acct-{}", from), fmt::format("acct-{}", to), amount, fmt::format("w{}-{}", w, i));
          std::lock_guard lock(acked_mutex);
          (r.ok() ? ok_ids : rejected_ids).insert(r.transfer_id);
        } catch (const Error& e) {
          ++errors;
          UNSCOPED_INFO(e.what());
        }
      }
    });
  for (auto& w : workers) w.join();
  done = true;
  reader.join();
  CHECK(errors == 0);
  CHECK(bad_snapshots == 0);
  CHECK(snapshots > 0);
  const CheckReport final_report = l.check();
  CHECK(final_report.ok());
  CHECK(final_report.total_balance == total);
  CHECK(ok_ids.size() + rejected_ids.size() == 240);
  // Every acknowledged transfer is in the journal exactly once; every rejected one not at all.
  const std::string en = t.db().table_prefix() + "entries";
  for (const auto id : ok_ids)
    CHECK(t.db().exec(fmt::format("SELECT count(*) FROM {} WHERE transfer_id = $1", en), {id}).one().i64(0) == 2);
  for (const auto id : rejected_ids)
    CHECK(t.db().exec(fmt::format("SELECT count(*) FROM {} WHERE transfer_id = $1", en), {id}).one().i64(0) == 0);
  for (const auto& a : l.list()) CHECK(a.balance >= a.min_balance);
  WARN(fmt::format("{}: {} ok, {} rejected, {} retries, {} snapshots", rowguard::test::backend(), ok_ids.size(),
                   rejected_ids.size(), l.stats().retries, snapshots.load()));
}

TEST_CASE("ledger: a batch applies items independently and linked chains as a whole", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  for (const char* id : {"a", "b", "c"}) l.open(id, "EUR");
  l.deposit("a", 1'000, "d");
  const auto results = l.transfer_batch({
      {"a", "b", 100, "k1", false},    // alone: ok
      {"a", "c", 5'000, "k2", false},  // alone: rejected, recorded
      {"a", "b", 200, "k3", true},     // chain k3+k4: k4 fails, so k3 is undone
      {"b", "zzz", 50, "k4", false},
      {"a", "c", 300, "k5", true},  // chain k5+k6: both ok
      {"c", "b", 100, "k6", false},
  });
  REQUIRE(results.size() == 6);
  CHECK(results[0].ok());
  CHECK(results[1].result.status == TransferStatus::insufficient_funds);
  CHECK_FALSE(results[1].error);
  CHECK(results[2].error == ErrorKind::not_found);
  CHECK(results[3].error == ErrorKind::not_found);
  CHECK(results[4].ok());
  CHECK(results[5].ok());
  CHECK(l.get("a").balance == 600);
  CHECK(l.get("b").balance == 200);
  CHECK(l.get("c").balance == 200);
  // The failed chain recorded nothing: its keys are free for a corrected retry.
  CHECK_FALSE(l.transfer("a", "b", 200, "k3").replayed);
  CHECK(l.check().ok());
  CHECK(kind_of([&] { l.transfer_batch({}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.transfer_batch({{"a", "b", 1, "x", true}}); }) == ErrorKind::invalid_argument);
}

TEST_CASE("ledger: a batch item gets the outcome or error a transfer of its own would, and a chain fails whole",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  // Ids and keys with the characters an array literal must escape (PostgreSQL sends the batch as arrays).
  const std::string odd = "q\"uo\\te,{x} ";
  for (const std::string id : {"a", "b", "c", "h", "NULL", odd.c_str()}) l.open(id, "EUR");
  l.open("u", "USD");
  l.deposit("a", 1'000, "d-a");
  l.deposit("h", 100, "d-h");
  l.deposit(odd, 50, "d-odd");
  REQUIRE(l.transfer("a", "b", 10, "seen").ok());
  REQUIRE_FALSE(l.transfer("a", "c", 1'000'000, "seen-rejected").ok());
  // h's whole balance is held by a hold that expires: a payment from h must close it first.
  REQUIRE(l.hold("h", "c", 100, "h-hold", 200ms).ok());
  std::this_thread::sleep_for(400ms);

  const auto r = l.transfer_batch({
      {"a", "b", 10, "seen", false},                  // 0: a replay of an applied transfer
      {"a", "c", 11, "seen", false},                  // 1: the key of another request
      {"a", "c", 1'000'000, "seen-rejected", false},  // 2: a replay of a rejection: its outcome
      {"a", "b", 5, "c1", true},                      // 3-4: a chain whose replayed rejection fails it
      {"a", "c", 1'000'000, "seen-rejected", false},
      {"a", "b", 1, "c2", true},  // 5-7: a chain with an item refused before sending
      {"a", "a", 1, "c3", true},
      {"b", "a", 1, "c4", false},
      {"a", "u", 1, "x1", false},               // 8: currencies differ
      {"a", "b", 0, "x2", false},               // 9: refused before sending
      {odd, "NULL", 7, "k\"\\,{NULL}", false},  // 10: escaped ids and key
      {"h", "b", 60, "h1", true},               // 11-12: a chain the client decides (h's expired hold)
      {"b", "a", 1, "h2", false},
      {"a", "b", 1, "after", false},  // 13: on the server again
      {"h", "b", 30, "h3", false},    // 14: h's hold is closed now
      {"a", "zzz", 1, "c5", true},    // 15-16: a chain failing at its first item
      {"a", "b", 1, "c6", false},
  });
  REQUIRE(r.size() == 17);
  CHECK((r[0].ok() && r[0].result.replayed));
  CHECK(r[1].error == ErrorKind::idempotency_mismatch);
  CHECK_THAT(r[1].message, Catch::Contains("differs"));
  CHECK((!r[2].error && r[2].result.replayed && r[2].result.status == TransferStatus::insufficient_funds));
  CHECK(r[3].error == ErrorKind::insufficient_funds);
  CHECK_THAT(r[3].message, Catch::Contains("item 4 of its linked chain"));
  CHECK(r[4].error == ErrorKind::insufficient_funds);
  for (int i : {5, 6, 7}) CHECK(r[i].error == ErrorKind::invalid_argument);
  CHECK_THAT(r[6].message, Catch::Contains("itself"));
  CHECK_THAT(r[7].message, Catch::Contains("item 6 of its linked chain"));
  CHECK(r[8].error == ErrorKind::currency_mismatch);
  CHECK(r[9].error == ErrorKind::invalid_argument);
  CHECK_THAT(r[9].message, Catch::Contains("positive"));
  for (int i : {0, 10, 11, 12, 13, 14}) {
    INFO("item " << i << ": " << r[i].message);
    CHECK(r[i].ok());
  }
  CHECK(r[15].error == ErrorKind::not_found);
  CHECK(r[16].error == ErrorKind::not_found);
  CHECK(l.get("a").balance == 1'000 - 10 + 1 - 1);
  CHECK(l.get("b").balance == 10 + 60 - 1 + 1 + 30);
  CHECK(l.get("h").balance == 10);
  CHECK(l.get(odd).balance == 43);
  CHECK(l.get("NULL").balance == 7);
  CHECK(l.get("c").balance == 0);
  CHECK(l.transfer(odd, "NULL", 7, "k\"\\,{NULL}").replayed);
  // Nothing of a failed chain was recorded: its keys are free.
  for (const char* key : {"c1", "c2", "c4", "c6"}) CHECK_FALSE(l.transfer("c", "b", 1, key).replayed);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a batch whose items all apply writes what the same items write one at a time", "[backend]") {
  // Two databases, the same items; the second batch ends with an item refused before sending,
  // which on PostgreSQL sends every item through the item-by-item path.
  std::vector<BatchItem> items;
  for (int i = 0; i < 60; ++i)
    items.push_back({fmt::format("acct-{}", i % 5),
                     fmt::format("acct-{}", (i * 3 + 1) % 5 == i % 5 ? (i + 1) % 5 : (i * 3 + 1) % 5), 1 + i % 7,
                     fmt::format("same-{}", i), i % 4 == 1});
  struct Seen {
    std::vector<std::int64_t> balances, versions;
    std::int64_t entries = 0;
  };
  auto run = [&](const std::vector<BatchItem>& batch) {
    Bank b;
    auto& l = b.ledger;
    for (int i = 0; i < 5; ++i) {
      l.open(fmt::format("acct-{}", i), "EUR");
      l.deposit(fmt::format("acct-{}", i), 1'000, fmt::format("seed-{}", i));
    }
    const auto results = l.transfer_batch(batch);
    std::int64_t last = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      INFO("item " << i << ": " << results[i].message);
      CHECK((results[i].ok() && !results[i].result.replayed));
      CHECK(results[i].result.transfer_id > last);  // ids in item order
      last = results[i].result.transfer_id;
    }
    Seen seen;
    for (int i = 0; i < 5; ++i) {
      const Account a = l.get(fmt::format("acct-{}", i));
      seen.balances.push_back(a.balance);
      seen.versions.push_back(a.version);
    }
    seen.entries = rows_in(b.t.db(), "entries");
    // The same items again are replays with the same ids.
    const auto again = l.transfer_batch(batch);
    for (std::size_t i = 0; i < items.size(); ++i)
      CHECK((again[i].result.replayed && again[i].result.transfer_id == results[i].result.transfer_id));
    CHECK(l.check().ok());
    return seen;
  };
  const Seen all_apply = run(items);
  std::vector<BatchItem> with_refused = items;
  with_refused.push_back({"acct-0", "acct-1", 0, "refused"});
  const Seen one_by_one = run(with_refused);
  CHECK(all_apply.balances == one_by_one.balances);
  CHECK(all_apply.versions == one_by_one.versions);
  CHECK(all_apply.entries == one_by_one.entries);
  CHECK(all_apply.entries == 5 + 2 * 60);
}

TEST_CASE("ledger: a batch item whose credit would overflow is refused, alone or failing its chain", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("big", "EUR");
  l.open("a", "EUR");
  l.deposit("a", 100, "d-a");
  l.deposit("big", std::numeric_limits<std::int64_t>::max() - 10, "d-big");
  const auto r = l.transfer_batch({{"a", "big", 50, "alone", false},
                                   {"a", "big", 5, "first", true},
                                   {"a", "big", 50, "second", false},
                                   {"a", "big", 5, "fits", false}});
  CHECK(r[0].error == ErrorKind::invalid_argument);
  CHECK_THAT(r[0].message, Catch::Contains("overflow"));
  CHECK(r[1].error == ErrorKind::invalid_argument);
  CHECK(r[2].error == ErrorKind::invalid_argument);
  CHECK(r[3].ok());
  CHECK(l.get("a").balance == 95);
  CHECK(l.get("big").balance == std::numeric_limits<std::int64_t>::max() - 5);
}

TEST_CASE("ledger: a server error inside a batch's chain fails that chain alone, outside one the whole batch", "[pg]") {
  Bank b;
  auto& l = b.ledger;
  for (const char* id : {"a", "b", "poison"}) l.open(id, "EUR");
  l.deposit("a", 100, "d-a");
  // A trigger stands for any error the server raises that a retry cannot cure.
  Database& db = b.t.db();
  db.exec(
      fmt::format("CREATE FUNCTION {0}poisoned() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.account_id = 'poison' THEN RAISE EXCEPTION 'poisoned entry' USING ERRCODE = 'P0001'; "
                  "END IF; RETURN NEW; END $$",
                  db.table_prefix()));
  db.exec(
      fmt::format("CREATE TRIGGER {0}poisoned BEFORE INSERT ON {0}entries FOR EACH ROW EXECUTE FUNCTION "
                  "{0}poisoned()",
                  db.table_prefix()));
  const auto r = l.transfer_batch({{"a", "b", 1, "c1", true}, {"a", "poison", 1, "c2", false}, {"a", "b", 2, "alone"}});
  CHECK(r[1].error == ErrorKind::permanent);
  CHECK_THAT(r[1].message, Catch::Contains("poisoned entry"));
  CHECK(r[0].error == ErrorKind::permanent);
  CHECK(r[2].ok());
  CHECK(l.get("a").balance == 98);
  std::string message;
  CHECK(kind_of(
            [&] {
              l.transfer_batch({{"a", "b", 3, "first"}, {"a", "poison", 1, "standalone"}});
            },
            &message) == ErrorKind::permanent);
  CHECK_THAT(message, Catch::Contains("poisoned entry"));
  CHECK(l.get("a").balance == 98);  // nothing of that batch committed
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a batch of thousands of items and chains writes exactly what its results say", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int accounts = 12;
  std::map<std::string, std::int64_t> expected;
  for (int i = 0; i < accounts; ++i) {
    const std::string id = fmt::format("acct-{}", i);
    l.open(id, "EUR");
    l.deposit(id, 500, "seed-" + id);
    expected[id] = 500;
  }
  std::mt19937 rng(20261205);
  std::vector<BatchItem> items;
  for (int i = 0; i < 3'000; ++i) {
    const int from = static_cast<int>(rng() % accounts);
    const int to = (from + 1 + static_cast<int>(rng() % (accounts - 1))) % accounts;
    // About one item in four is linked to the next; amounts make some items short.
    items.push_back({fmt::format("acct-{}", from), fmt::format("acct-{}", to),
                     1 + static_cast<std::int64_t>(rng() % 120), fmt::format("bulk-{}", i),
                     i + 1 < 3'000 && rng() % 4 == 0});
  }
  const auto results = l.transfer_batch(items);
  REQUIRE(results.size() == items.size());
  std::size_t applied = 0, rejected = 0, failed = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (results[i].error) {
      ++failed;
    } else if (results[i].result.ok()) {
      ++applied;
      expected[items[i].from] -= items[i].amount;
      expected[items[i].to] += items[i].amount;
    } else {
      ++rejected;
    }
  }
  WARN(fmt::format("{}: {} applied, {} rejected, {} in failed chains", rowguard::test::backend(), applied, rejected,
                   failed));
  CHECK(applied > 1'000);
  CHECK(failed > 0);
  for (const auto& [id, balance] : expected) {
    INFO(id);
    CHECK(l.get(id).balance == balance);
  }
  // The same batch again replays every item that was recorded, and applies nothing twice.
  const auto again = l.transfer_batch(items);
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (!results[i].error) {
      CHECK((again[i].result.replayed && again[i].result.transfer_id == results[i].result.transfer_id));
    } else if (!again[i].error && again[i].result.ok()) {  // a chain that failed may pass now
      expected[items[i].from] -= items[i].amount;
      expected[items[i].to] += items[i].amount;
    }
  }
  for (const auto& [id, balance] : expected) CHECK(l.get(id).balance == balance);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: concurrent batches over the same accounts, with holds expiring and swept, apply what they report",
          "[backend][threads]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int accounts = 6, workers = 3, batches = 8, size = 40;
  std::vector<std::string> seeds;
  for (int i = 0; i < accounts; ++i) {
    l.open(fmt::format("acct-{}", i), "EUR");
    l.deposit(fmt::format("acct-{}", i), 1'000, seeds.emplace_back(fmt::format("seed-{}", i)));
  }
  // Old enough to be archived while the batches run: the running balances go on from the opening ones.
  backdate(b.t.db(), seeds, 40 * 86'400'000LL);
  std::vector<std::map<std::string, std::int64_t>> moved(workers);  // each worker's applied deltas
  std::atomic<int> running{workers};
  std::atomic<int> without_balances{0};
  std::mutex maintenance_errors_mutex;
  std::vector<std::string> maintenance_errors;
  std::barrier start(workers + 1);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w) * 7919u + 1u);
      start.arrive_and_wait();
      for (int n = 0; n < batches; ++n) {
        std::vector<BatchItem> items;
        for (int i = 0; i < size; ++i) {
          const int from = static_cast<int>(rng() % accounts);
          const int to = (from + 1 + static_cast<int>(rng() % (accounts - 1))) % accounts;
          // Workers visit the accounts in different orders: without ordered locking they would deadlock.
          items.push_back({fmt::format("acct-{}", from), fmt::format("acct-{}", to),
                           1 + static_cast<std::int64_t>(rng() % 60), fmt::format("w{}-b{}-{}", w, n, i),
                           i + 1 < size && rng() % 3 == 0});
        }
        const auto results = l.transfer_batch(items);
        for (std::size_t i = 0; i < items.size(); ++i)
          if (!results[i].error && results[i].result.ok()) {
            // Counted here, asserted after the join: Catch's assertions are not thread-safe.
            if (!results[i].result.from_balance || !results[i].result.to_balance) ++without_balances;
            moved[w][items[i].from] -= items[i].amount;
            moved[w][items[i].to] += items[i].amount;
          }
      }
      --running;
    });
  // Holds that expire while the batches run, standing in their sources' way, the sweep closing
  // them, and archive and prune runs: the journal's running balances must stay a chain throughout.
  std::atomic<std::int64_t> archived{0};
  std::thread maintenance([&] {
    start.arrive_and_wait();
    for (int n = 0; running > 0; ++n) {
      try {
        (void)l.hold(fmt::format("acct-{}", n % accounts), fmt::format("acct-{}", (n + 1) % accounts), 30,
                     fmt::format("hold-{}", n), 20ms);
        l.sweep_holds();
        archived += l.archive(b.t.db().now_ms() - 31 * 86'400'000LL).transfers;
        (void)l.prune_keys(24h);
      } catch (const Error& e) {
        const std::lock_guard<std::mutex> hold(maintenance_errors_mutex);
        maintenance_errors.emplace_back(e.what());
      }
      std::this_thread::sleep_for(5ms);
    }
  });
  for (auto& t : threads) t.join();
  maintenance.join();
  CHECK(without_balances == 0);
  for (const auto& e : maintenance_errors) FAIL_CHECK(e);
  std::this_thread::sleep_for(50ms);  // every hold expired
  l.sweep_holds();
  std::map<std::string, std::int64_t> expected;
  for (int i = 0; i < accounts; ++i) expected[fmt::format("acct-{}", i)] = 1'000;
  for (const auto& m : moved)
    for (const auto& [id, delta] : m) expected[id] += delta;
  std::int64_t total = 0;
  for (const auto& [id, balance] : expected) {
    INFO(id);
    CHECK(l.get(id).balance == balance);
    total += l.get(id).balance;
  }
  CHECK(total == accounts * 1'000);
  CHECK(archived == accounts);
  const CheckReport report = l.check();
  for (const auto& v : report.violations) FAIL_CHECK(v.what << " " << v.account << ": " << v.detail);
  CHECK(report.ok());
  // With row locks, every batch locks its accounts in id order first: no deadlock to retry.
  if (rowguard::test::can().row_locks) CHECK(l.stats().conflicts == 0);
}

TEST_CASE("ledger: a standalone batch item that is refused writes nothing, and the items around it commit",
          "[backend]") {
  // No savepoint guards a standalone item: every refusal must come before the item's first write.
  Bank b;
  auto& l = b.ledger;
  for (const char* id : {"a", "b"}) l.open(id, "EUR");
  l.open("u", "USD");
  l.deposit("a", 1'000, "d");
  REQUIRE(l.hold("a", "b", 10, "held", 60s).ok());
  const auto results = l.transfer_batch({
      {"a", "b", 100, "k1", false},
      {"a", "nobody", 100, "k2", false},  // not_found
      {"a", "u", 100, "k3", false},       // currency_mismatch
      {"a", "b", 100, "held", false},     // the key of a hold: idempotency_mismatch
      {"b", "a", 40, "k5", false},
      {"b", "a", 1'000, "k6", false},  // insufficient_funds, recorded
  });
  REQUIRE(results.size() == 6);
  CHECK(results[0].ok());
  CHECK(results[1].error == ErrorKind::not_found);
  CHECK(results[2].error == ErrorKind::currency_mismatch);
  CHECK(results[3].error == ErrorKind::idempotency_mismatch);
  CHECK(results[4].ok());
  CHECK(results[5].result.status == TransferStatus::insufficient_funds);
  CHECK(results[4].result.transfer_id > results[0].result.transfer_id);
  CHECK(results[5].result.transfer_id > results[4].result.transfer_id);
  CHECK(l.get("a").balance == 940);
  CHECK(l.get("b").balance == 60);
  CHECK(l.get("u").balance == 0);
  // The refused items recorded nothing: their keys are free.
  CHECK_FALSE(l.transfer("a", "b", 1, "k2").replayed);
  CHECK_FALSE(l.transfer("a", "b", 1, "k3").replayed);
  CHECK(l.transfer_batch({{"b", "a", 1'000, "k6", false}})[0].result.replayed);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: results carry both balances after the transfer, replays the original's, entries the running balance",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  for (const char* id : {"a", "b"}) l.open(id, "EUR");
  const TransferResult dep = l.deposit("a", 1'000, "d");
  CHECK_FALSE(dep.from_balance);  // the outside world has no balance
  CHECK(dep.to_balance == 1'000);
  const TransferResult t1 = l.transfer("a", "b", 300, "t1");
  CHECK(t1.from_balance == l.get("a").balance);
  CHECK(t1.to_balance == l.get("b").balance);
  CHECK(t1.from_balance == 700);
  CHECK(t1.to_balance == 300);
  const TransferResult t2 = l.transfer("b", "a", 100, "t2");
  CHECK(t2.from_balance == 200);
  CHECK(t2.to_balance == 800);
  // A replay returns what the original left, not today's balances.
  const TransferResult again = l.transfer("a", "b", 300, "t1");
  REQUIRE(again.replayed);
  CHECK(again.from_balance == 700);
  CHECK(again.to_balance == 300);
  const TransferResult dep_again = l.deposit("a", 1'000, "d");
  CHECK(dep_again.replayed);
  CHECK_FALSE(dep_again.from_balance);
  CHECK(dep_again.to_balance == 1'000);
  const TransferResult w = l.withdraw("a", 50, "w");
  CHECK(w.from_balance == 750);
  CHECK_FALSE(w.to_balance);
  // A rejection moved nothing: no balances.
  const TransferResult short_of = l.transfer("b", "a", 5'000, "too-much");
  CHECK_FALSE(short_of.ok());
  CHECK_FALSE(short_of.from_balance);
  CHECK_FALSE(short_of.to_balance);
  const auto items = l.transfer_batch({{"a", "b", 10, "bt1", false},
                                       {"a", "b", 20, "bt2", false},
                                       {"b", "a", 5, "bt3", false},
                                       {"a", "b", 300, "t1", false}});
  REQUIRE(items.size() == 4);
  CHECK(items[0].result.from_balance == 740);
  CHECK(items[0].result.to_balance == 210);
  CHECK(items[1].result.from_balance == 720);
  CHECK(items[1].result.to_balance == 230);
  CHECK(items[2].result.from_balance == 225);
  CHECK(items[2].result.to_balance == 725);
  CHECK(items[3].result.replayed);
  CHECK(items[3].result.from_balance == 700);
  const TransferResult refund = l.reverse("t1", 100, "r1");
  CHECK(refund.from_balance == 125);  // b pays the refund back to a
  CHECK(refund.to_balance == 825);
  CHECK(l.get("a").balance == 825);
  // History shows the running balance, and every entry records it with the account's version.
  HistoryQuery oldest;
  oldest.order = HistoryOrder::oldest_first;
  const HistoryPage page = l.history("a", oldest);
  std::int64_t running = 0;
  for (const auto& item : page.items) {
    running += item.change;
    CHECK(item.balance_after == running);
    for (const auto& e : item.transfer.entries) {
      CHECK(e.balance_after.has_value());
      CHECK(e.account_version.has_value());
    }
  }
  CHECK(running == 825);
  for (const auto& e : page.items.back().transfer.entries)
    if (e.account == "a") CHECK(e.account_version == l.get("a").version);
  REQUIRE(l.check().ok());
  // A forged running balance is found, naming its entry.
  const std::int64_t forged =
      b.t.db()
          .exec(fmt::format("SELECT MIN(id) FROM {}entries WHERE account_id = 'b'", b.t.db().table_prefix()))
          .one()
          .i64(0);
  b.t.db().exec(
      fmt::format("UPDATE {}entries SET balance_after = balance_after + 1 WHERE id = $1", b.t.db().table_prefix()),
      {forged});
  const CheckReport r = l.check();
  REQUIRE(r.violations.size() == 1);
  CHECK(r.violations[0].what == "balance_after_mismatch");
  CHECK(r.violations[0].account == "b");
  CHECK(r.violations[0].detail.find(fmt::format("entry {} ", forged)) != std::string::npos);
}

TEST_CASE("ledger: reversals refund at most the original, once per key", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("customer", "EUR");
  l.open("shop", "EUR");
  l.deposit("customer", 1'000, "d");
  l.transfer("customer", "shop", 800, "order-9");
  CHECK(l.reverse("order-9", 300, "refund-1").ok());
  CHECK(l.reverse("order-9", 300, "refund-1").replayed);
  CHECK(l.reverse("order-9", 500, "refund-2").ok());
  CHECK(kind_of([&] { l.reverse("order-9", 1, "refund-3"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.reverse("no-such-order", 1, "refund-4"); }) == ErrorKind::not_found);
  CHECK(l.get("customer").balance == 1'000);
  CHECK(l.get("shop").balance == 0);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: update() from concurrent threads is a version-checked read-modify-write that retries conflicts",
          "[backend][threads]") {
  Bank b;
  auto& l = b.ledger;
  l.open("acct", "EUR");
  std::atomic<int> calls{0};
  // Every thread's first call waits here until all four have read version 0: exactly one of the
  // four writes then wins and three conflict, whatever the scheduling.
  std::barrier all_read(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      bool first = true;
      l.update("acct", [&, i](Account& a) {
        ++calls;
        if (std::exchange(first, false)) all_read.arrive_and_wait();
        a.min_balance = -100 * (i + 1);
      });
    });
  for (auto& th : threads) th.join();
  const Account a = l.get("acct");
  CHECK(a.version == 4);                                    // each update applied exactly once
  CHECK(l.stats().retries >= 3);                            // the three that lost the first round at least
  CHECK(calls == 4 + static_cast<int>(l.stats().retries));  // fn ran once per attempt, no more
  CHECK(kind_of([&] { l.update("acct", [](Account& x) { x.balance = 1'000'000; }); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.update("acct", [](Account& x) { x.min_balance = 5; }); }) == ErrorKind::invalid_argument);
  CHECK(l.get("acct").balance == 0);
}

TEST_CASE("ledger: pruned keys keep their transfers and become reusable, and ages below the floor are refused",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.deposit("a", 10, "old-key");
  l.deposit("a", 10, "young-key");
  // A key younger than the floor may still be retried by its client: pruning it would let that
  // retry apply twice, so such an age is refused rather than honoured.
  for (const std::chrono::milliseconds age : {-1ms, 0ms, 1000ms, 86'400'000ms - 1ms}) {
    INFO(age.count() << " ms");
    std::string message;
    CHECK(kind_of([&] { l.prune_keys(age); }, &message) == ErrorKind::invalid_argument);
    CHECK_THAT(message, Catch::Contains("24h"));
  }
  CHECK(l.prune_keys(24h) == 0);  // every key is younger
  backdate(b.t.db(), {"old-key"}, 2 * 86'400'000);
  CHECK(l.prune_keys(24h) == 1);
  CHECK_FALSE(l.deposit("a", 10, "old-key").replayed);
  CHECK(l.deposit("a", 10, "young-key").replayed);
  CHECK(l.get("a").balance == 30);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: the CLI refuses prune-keys below its floor and accepts days", "[backend][shared-db][threads][cli]") {
  Bank b;
  const std::vector<std::string> base = {"--db", b.t.url(), "--prefix", b.t.db().table_prefix()};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), base.begin(), base.end());
    return rowguard::test::run_cli(args, out);
  };
  CHECK(cli({"ledger", "prune-keys", "--older-than", "0s"}) == 2);
  CHECK(cli({"ledger", "prune-keys", "--older-than", "23h"}) == 2);
  CHECK(cli({"ledger", "prune-keys", "--older-than", "90d"}) == 0);
  std::string help;
  CHECK(cli({"ledger", "prune-keys", "--help"}, &help) == 0);
  CHECK_THAT(help, Catch::Contains("24h"));
  CHECK_THAT(help, !Catch::Contains("not accepted"));
}

namespace {

// One run of the rowguard CLI, started with fork/exec (no shell between), its stdout captured;
// SIGKILLed after kill_after when given. No Catch2 assertion inside: called from worker threads.
struct CliRun {
  int status = 0;       // from waitpid
  bool killed = false;  // SIGKILL ended it (it was still running when the kill came)
  std::string out;
  std::chrono::steady_clock::duration took{};
};

CliRun run_cli_process(std::vector<std::string> args, std::optional<std::chrono::microseconds> kill_after) {
  args.insert(args.begin(), ROWGUARD_CLI);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2];
  // O_CLOEXEC: CLI processes forked by other threads meanwhile must not hold this pipe open.
  if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  const auto started = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (kill_after) {
    std::this_thread::sleep_for(*kill_after);
    ::kill(pid, SIGKILL);  // not reaped yet: if it has exited already, this reaches a zombie and does nothing
  }
  CliRun r;
  char buffer[4096];
  for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) != 0;)
    if (n > 0)
      r.out.append(buffer, static_cast<std::size_t>(n));
    else if (errno != EINTR)
      break;
  ::close(out[0]);
  while (::waitpid(pid, &r.status, 0) < 0 && errno == EINTR) {
  }
  r.took = std::chrono::steady_clock::now() - started;
  r.killed = WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGKILL;
  return r;
}

}  // namespace

TEST_CASE("ledger: rowguard CLI processes killed mid-transfer and retried with their keys apply each transfer once",
          "[backend][shared-db][threads][cli]") {
  Bank b;
  auto& l = b.ledger;
  constexpr int accounts = 3, workers = 3, per_worker = 12;
  constexpr std::int64_t seed = 1'000;
  for (int a = 0; a < accounts; ++a) {
    l.open(fmt::format("p{}", a), "EUR");
    l.deposit(fmt::format("p{}", a), seed, fmt::format("seed{}", a));
  }
  const std::string prefix = b.t.db().table_prefix();
  const auto test_seed = std::random_device{}();
  INFO("seed " << test_seed);

  // What each key asked for, and what the CLI finally acknowledged for it.
  struct Key {
    std::string key, from, to;
    std::int64_t amount = 0;
    bool kill_planned = false;
    int killed = 0;         // attempts SIGKILL ended while running: outcome unknown, retried with the key
    int failed = 0;         // attempts that exited with another error (retried with the key)
    int exit_code = -1;     // of the acknowledged attempt: 0 ok, 4 insufficient funds
    std::string status;     // its "status"
    bool replayed = false;  // its "replayed"
    std::int64_t transfer_id = 0;
  };
  std::vector<std::vector<Key>> done(workers);
  std::atomic<int> running{0}, most_running{0};
  std::latch start(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      std::mt19937 rng(test_seed + static_cast<unsigned>(w));
      std::vector<double> durations_us;  // of runs that ended by themselves: where to aim the kills
      start.arrive_and_wait();
      for (int i = 0; i < per_worker; ++i) {
        Key k;
        k.key = fmt::format("kill-{}-{}", w, i);
        const int from = static_cast<int>(rng() % accounts);
        k.from = fmt::format("p{}", from);
        k.to = fmt::format("p{}", (from + 1 + static_cast<int>(rng() % (accounts - 1))) % accounts);
        k.amount = 1 + static_cast<std::int64_t>(rng() % 400);
        k.kill_planned = i % 2 == 0;
        const std::vector<std::string> args{
            "--db",  b.t.url(), "--prefix", prefix, "--json", "transfer", k.from, k.to, std::to_string(k.amount),
            "--key", k.key};
        for (int attempt = 0; attempt < 10 && k.exit_code < 0; ++attempt) {
          std::optional<std::chrono::microseconds> kill_after;
          if (k.kill_planned && attempt == 0) {
            // Uniform over a typical run: before the connection, inside the transaction, after the commit.
            std::vector<double> sorted = durations_us;
            std::sort(sorted.begin(), sorted.end());
            const double typical = sorted.empty() ? 150'000 : sorted[sorted.size() / 2];
            kill_after = std::chrono::microseconds(
                static_cast<std::int64_t>(std::uniform_real_distribution<double>(0.2, 1.1)(rng) * typical));
          }
          const int now_running = ++running;
          for (int m = most_running; now_running > m && !most_running.compare_exchange_weak(m, now_running);) {
          }
          const CliRun r = run_cli_process(args, kill_after);
          --running;
          if (r.killed) {
            ++k.killed;
            continue;
          }
          durations_us.push_back(std::chrono::duration<double, std::micro>(r.took).count());
          const int code = WIFEXITED(r.status) ? WEXITSTATUS(r.status) : 128 + WTERMSIG(r.status);
          if (code != 0 && code != 4) {
            ++k.failed;
            continue;
          }
          try {
            const auto j = nlohmann::json::parse(r.out);
            k.status = j.at("status");
            k.replayed = j.at("replayed");
            k.transfer_id = j.at("transfer_id");
            k.exit_code = code;
          } catch (const std::exception&) {
            ++k.failed;  // an answer that is not one JSON object counts as no answer
          }
        }
        done[w].push_back(k);
      }
    });
  for (auto& t : threads) t.join();
  CHECK(most_running >= 2);  // the CLI processes overlapped

  std::map<std::string, std::int64_t> model;
  for (int a = 0; a < accounts; ++a) model[fmt::format("p{}", a)] = seed;
  int keys = 0, acknowledged_ok = 0, kills = 0, killed_then_replayed = 0, failures = 0;
  for (const auto& worker : done)
    for (const auto& k : worker) {
      INFO(k.key << ": " << k.from << " -> " << k.to << " " << k.amount << ", killed " << k.killed << ", failed "
                 << k.failed << ", status " << k.status << ", replayed " << k.replayed);
      ++keys;
      kills += k.killed;
      failures += k.failed;
      // Every key ends acknowledged: ok, or rejected for insufficient funds.
      REQUIRE(k.exit_code >= 0);
      CHECK(((k.exit_code == 0 && k.status == "ok") || (k.exit_code == 4 && k.status == "insufficient_funds")));
      // A first answer is a replay only when an earlier attempt, cut off or failed, had applied it.
      if (k.killed == 0 && k.failed == 0) CHECK_FALSE(k.replayed);
      if (k.killed > 0 && k.replayed) ++killed_then_replayed;
      if (k.status == "ok") {
        ++acknowledged_ok;
        model[k.from] -= k.amount;
        model[k.to] += k.amount;
      }
      // Exactly one transfer row for the key, the one acknowledged, for what was asked.
      const Result rows = b.t.db().exec(
          fmt::format(
              "SELECT id, from_account, to_account, amount, outcome FROM {}transfers WHERE idempotency_key = $1",
              prefix),
          {k.key});
      REQUIRE(rows.rows.size() == 1);
      const Row& row = rows.rows[0];
      CHECK(row.i64(0) == k.transfer_id);
      CHECK(row.text(1) == k.from);
      CHECK(row.text(2) == k.to);
      CHECK(row.i64(3) == k.amount);
      CHECK(row.text(4) == k.status);
      // Asked once more, the key replays that outcome and applies nothing again.
      if (k.killed > 0) {
        const CliRun again = run_cli_process({"--db", b.t.url(), "--prefix", prefix, "--json", "transfer", k.from, k.to,
                                              std::to_string(k.amount), "--key", k.key},
                                             std::nullopt);
        REQUIRE(WIFEXITED(again.status));
        CHECK(WEXITSTATUS(again.status) == k.exit_code);
        const auto j = nlohmann::json::parse(again.out);
        CHECK(j.at("replayed") == true);
        CHECK(j.at("transfer_id") == k.transfer_id);
      }
    }
  WARN(
      fmt::format("{}: {} keys, {} acknowledged ok, {} attempts killed mid-run ({} of whose keys had applied before "
                  "the kill and replayed on retry), {} other failed attempts",
                  rowguard::test::backend(), keys, acknowledged_ok, kills, killed_then_replayed, failures));
  // The kills hit running CLI processes, and most transfers went through.
  CHECK(kills >= workers * per_worker / 2 / 4);
  CHECK(acknowledged_ok >= keys / 2);
  // Balances are exactly the seeds plus the acknowledged transfers: nothing applied twice or
  // unacknowledged; money is conserved and every invariant holds.
  std::int64_t total = 0;
  for (const auto& [id, balance] : model) {
    INFO(id);
    CHECK(l.get(id).balance == balance);
    total += l.get(id).balance;
  }
  CHECK(total == accounts * seed);
  const CheckReport r = l.check();
  for (const auto& v : r.violations) UNSCOPED_INFO(v.what << " " << v.account << ": " << v.detail);
  CHECK(r.ok());
  CHECK(rows_in(b.t.db(), "transfers") == accounts + keys);
}

TEST_CASE("ledger: sessions killed mid-transfer with pg_terminate_backend: retried keys apply once", "[pg][threads]") {
  Options options;
  options.pool_size = 4;
  // Its own application_name, so the killer never touches the sessions of tests running beside it.
  options.application_name = fmt::format("rowguard-kill-{}", ::getpid());
  // Behind PgBouncer a server connection serves whichever client comes next: a database of its own
  // keeps the killed ones away from the tests running beside this one.
  TestDb t(options, [](const std::string& url) {
    return rowguard::test::can().transaction_pooler ? rowguard::test::own_database(url, "rowguard_kill_ledger") : url;
  });
  t.db().migrate();
  LedgerOptions lo;
  lo.retry.attempts = 100;
  lo.retry.deadline = std::chrono::seconds(60);
  Ledger l(t.db(), lo);
  for (int a = 0; a < 3; ++a) {
    l.open(fmt::format("k{}", a), "EUR");
    l.deposit(fmt::format("k{}", a), 10'000, fmt::format("seed{}", a));
  }
  auto admin = t.another(Options{});
  std::atomic<bool> done{false};
  std::atomic<int> kills{0};
  // At most kill_budget kills: on a loaded machine a killer that never stops can terminate every
  // session before its transfer commits, and the test never ends (seen with load 12 on 2 cores).
  constexpr int kill_budget = 80;
  std::thread killer([&] {
    while (!done && kills < kill_budget) {
      // Terminate every session of this test's application_name except the admin's own.
      try {
        kills += static_cast<int>(admin
                                      ->exec("SELECT CAST(count(pg_terminate_backend(pid)) AS bigint) FROM "
                                             "pg_stat_activity WHERE application_name = $1 AND state = 'active'",
                                             {options.application_name})
                                      .one()
                                      .i64(0));
      } catch (const Error&) {
        // Behind PgBouncer the admin's own server connection can be the victim: go on.
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(7));
    }
  });
  std::vector<std::thread> workers;
  std::atomic<int> failed{0};
  for (int w = 0; w < 3; ++w)
    workers.emplace_back([&, w] {
      for (int i = 0; i < 40; ++i) {
        const std::string key = fmt::format("tk{}-{}", w, i);
        // A caller that gets an error retries with the same key, as the docs say.
        for (int attempt = 0; attempt < 20; ++attempt) {
          try {
            l.transfer(fmt::format("k{}", w), fmt::format("k{}", (w + 1) % 3), 1 + i, key);
            break;
          } catch (const Error& e) {
            if (attempt == 19) ++failed;
          }
        }
      }
    });
  for (auto& th : workers) th.join();
  done = true;
  killer.join();
  WARN(fmt::format("{}: {} sessions terminated mid-run, {} transfers given up", rowguard::test::backend(), kills.load(),
                   failed.load()));
  CHECK(kills > 0);
  const CheckReport r = l.check();
  CHECK(r.ok());
  CHECK(r.total_balance == 30'000);
  const std::string tr = t.db().table_prefix() + "transfers";
  CHECK(t.db().exec(fmt::format("SELECT count(*) FROM {} WHERE kind = 'transfer'", tr)).one().i64(0) == 120 - failed);
}

// ---- Idempotency keys: every field of every keyed operation is compared with its record ----

namespace {
// Three EUR accounts; a holds 10,000.
void open_abc(Ledger& l) {
  for (const char* id : {"a", "b", "c"}) l.open(id, "EUR");
  l.deposit("a", 10'000, "seed");
}

// A leg of a two-phase transfer, in a transaction of its own.
TransferResult leg(Bank& b, bool deposit, const std::string& account, std::int64_t amount, const std::string& key,
                   const std::string& gid) {
  Transaction tx = b.t.db().begin();
  const TransferResult r =
      deposit ? b.ledger.deposit(tx, account, amount, key, gid) : b.ledger.withdraw(tx, account, amount, key, gid);
  tx.commit();
  return r;
}
}  // namespace

TEST_CASE("ledger: a transfer's key reused with any field or operation changed is idempotency_mismatch", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  REQUIRE(l.transfer("a", "b", 100, "k").ok());
  l.transfer("b", "a", 100, "order");                    // its refund moves a -> b 100, as k did
  const HoldResult h = l.hold("a", "b", 100, "h", 60s);  // its capture too
  CHECK(l.transfer("a", "b", 100, "k").replayed);
  require_mismatches(b.t.db(), l,
                     {
                         {"from", [&] { l.transfer("c", "b", 100, "k"); }},
                         {"to", [&] { l.transfer("a", "c", 100, "k"); }},
                         {"amount", [&] { l.transfer("a", "b", 101, "k"); }},
                         {"operation", [&] { l.deposit("b", 100, "k"); }},
                         {"operation", [&] { l.withdraw("a", 100, "k"); }},
                         {"operation", [&] { l.reverse("order", 100, "k"); }},
                         {"operation", [&] { l.hold("a", "b", 100, "k", 60s); }},
                         {"operation", [&] { l.capture(h.hold_id, 100, "k"); }},
                         {"operation", [&] { leg(b, false, "a", 100, "k", "gid-1"); }},
                     });
}

TEST_CASE("ledger: a deposit's key reused with any field or operation changed is idempotency_mismatch", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  REQUIRE(l.deposit("b", 500, "k").ok());
  CHECK(l.deposit("b", 500, "k").replayed);
  require_mismatches(b.t.db(), l,
                     {
                         {"to", [&] { l.deposit("c", 500, "k"); }},
                         {"amount", [&] { l.deposit("b", 501, "k"); }},
                         {"operation", [&] { l.withdraw("b", 500, "k"); }},
                         {"operation", [&] { l.transfer("a", "b", 500, "k"); }},
                         {"operation", [&] { l.hold("a", "b", 500, "k", 60s); }},
                         // A plain deposit's key reused as a two-phase leg with the same account and amount.
                         {"operation", [&] { leg(b, true, "b", 500, "k", "gid-1"); }},
                     });
}

TEST_CASE("ledger: a withdrawal's key reused with any field or operation changed is idempotency_mismatch",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  REQUIRE(l.withdraw("a", 300, "k").ok());
  CHECK(l.withdraw("a", 300, "k").replayed);
  require_mismatches(b.t.db(), l,
                     {
                         {"from", [&] { l.withdraw("b", 300, "k"); }},
                         {"amount", [&] { l.withdraw("a", 301, "k"); }},
                         {"operation", [&] { l.deposit("a", 300, "k"); }},
                         {"operation", [&] { l.transfer("a", "c", 300, "k"); }},
                         {"operation", [&] { leg(b, false, "a", 300, "k", "gid-1"); }},
                     });
}

TEST_CASE("ledger: a two-phase leg's key reused with any field or operation changed is idempotency_mismatch",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  REQUIRE(leg(b, false, "a", 300, "k", "gid-1").ok());
  // A coordinator retries one transfer under a fresh global transaction id: the same request.
  CHECK(leg(b, false, "a", 300, "k", "gid-2").replayed);
  require_mismatches(b.t.db(), l,
                     {
                         {"from", [&] { leg(b, false, "b", 300, "k", "gid-1"); }},
                         {"amount", [&] { leg(b, false, "a", 301, "k", "gid-1"); }},
                         {"operation", [&] { leg(b, true, "a", 300, "k", "gid-1"); }},
                         // A two-phase leg's key reused for a plain withdrawal of the same amount.
                         {"operation", [&] { l.withdraw("a", 300, "k"); }},
                     });
}

TEST_CASE("ledger: a batch item's key reused with any field or operation changed is idempotency_mismatch",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  REQUIRE(l.transfer_batch({{"a", "b", 100, "k", false}})[0].ok());
  l.deposit("c", 100, "dep");
  REQUIRE(l.hold("a", "b", 100, "h", 60s).ok());
  CHECK(l.transfer_batch({{"a", "b", 100, "k", false}})[0].result.replayed);
  CHECK(l.transfer("a", "b", 100, "k").replayed);  // a batch item is a transfer
  auto item = [&](BatchItem i) {
    return [&l, i] {
      const auto r = l.transfer_batch({i});
      if (r[0].error) throw Error(*r[0].error, r[0].message);
    };
  };
  require_mismatches(b.t.db(), l,
                     {
                         {"from", item({"c", "b", 100, "k", false})},
                         {"to", item({"a", "c", 100, "k", false})},
                         {"amount", item({"a", "b", 101, "k", false})},
                         {"operation", item({"a", "c", 100, "dep", false})},
                         {"operation", item({"a", "b", 100, "h", false})},
                         {"operation", [&] { l.deposit("b", 100, "k"); }},
                     });
}

TEST_CASE("ledger: a refund's key reused for another transfer's refund, amount or operation is idempotency_mismatch",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  l.transfer("a", "b", 1'000, "order-a");
  l.transfer("a", "b", 1'000, "order-b");
  REQUIRE(l.reverse("order-a", 300, "refund").ok());
  CHECK(l.reverse("order-a", 300, "refund").replayed);
  require_mismatches(b.t.db(), l,
                     {
                         // Refunding order B under the key of order A's refund must not answer A's refund.
                         {"refunded transfer", [&] { l.reverse("order-b", 300, "refund"); }},
                         {"amount", [&] { l.reverse("order-a", 301, "refund"); }},
                         {"operation", [&] { l.transfer("b", "a", 300, "refund"); }},
                         {"operation", [&] { l.deposit("a", 300, "refund"); }},
                     });
  // A refund's original is compared by which transfer it is, so a key of a transfer is no original.
  CHECK(kind_of([&] { l.reverse("refund", 1, "refund-of-a-refund"); }) == ErrorKind::not_found);
}

// ---- Totals per currency ----

TEST_CASE("ledger: check() never adds balances of different currencies together", "[backend][cli]") {
  Bank b;
  auto& l = b.ledger;
  l.open("eur", "EUR");
  l.open("usd", "USD");
  l.open("usd2", "USD");
  l.deposit("eur", 10'000, "d-eur");
  l.deposit("usd", 700, "d-usd");
  l.withdraw("usd", 200, "w-usd");
  l.transfer("usd", "usd2", 100, "t-usd");
  CheckReport r = l.check();
  CHECK(r.ok());
  REQUIRE(r.totals.size() == 2);
  CHECK(r.totals[0].currency == "EUR");
  CHECK(r.totals[0].balance == 10'000);
  CHECK(r.totals[1].currency == "USD");
  CHECK(r.totals[1].balance == 500);
  CHECK(r.total("USD").deposits == 700);
  CHECK(r.total("USD").withdrawals == 200);
  CHECK(r.total("JPY").balance == 0);
  CHECK(r.total_balance == 0);  // only filled for a single currency: never 10500
  // The zero-sum invariant is per currency too: a dollar from nowhere is a USD violation only.
  b.t.db().exec(fmt::format("UPDATE {}accounts SET balance = balance + 1 WHERE id = 'usd2'", b.t.db().table_prefix()));
  r = l.check();
  std::vector<std::string> totals_broken;
  for (const auto& v : r.violations)
    if (v.what == "total_mismatch") totals_broken.push_back(v.detail.substr(0, 4));
  CHECK(totals_broken == std::vector<std::string>{"USD:"});
  CHECK(r.total("USD").balance == 501);
  CHECK(r.total("EUR").balance == 10'000);
  b.t.db().exec(fmt::format("UPDATE {}accounts SET balance = balance - 1 WHERE id = 'usd2'", b.t.db().table_prefix()));
  if (!rowguard::test::can().shared_database) return;  // the CLI below is another process
  const std::vector<std::string> base = {"--db", b.t.url(), "--prefix", b.t.db().table_prefix()};
  std::string out;
  std::vector<std::string> args = base;
  args.insert(args.end(), {"ledger", "check"});
  REQUIRE(rowguard::test::run_cli(args, &out) == 0);
  CHECK_THAT(out, Catch::Contains("totals 100.00 EUR, 5.00 USD") && !Catch::Contains("105"));  // major units
  args.insert(args.begin(), "--json");
  REQUIRE(rowguard::test::run_cli(args, &out) == 0);
  const auto j = nlohmann::json::parse(out);
  CHECK(j.at("ok") == true);
  CHECK_FALSE(j.contains("total_balance"));
  CHECK(j.at("totals").at("EUR") == nlohmann::json({{"balance", 10'000}, {"deposits", 10'000}, {"withdrawals", 0}}));
  CHECK(j.at("totals").at("USD") == nlohmann::json({{"balance", 500}, {"deposits", 700}, {"withdrawals", 200}}));
}

// ---- The last line of defence in the database itself ----

TEST_CASE("ledger: the database refuses an update leaving balance - held below the minimum, on every backend",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR", -100);
  l.open("b", "EUR");
  l.deposit("a", 1'000, "d");
  REQUIRE(l.hold("a", "b", 600, "h", 60s).ok());
  Database& db = b.t.db();
  const std::string acc = db.table_prefix() + "accounts";
  for (const std::string& raw : {fmt::format("UPDATE {} SET balance = 499 WHERE id = 'a'", acc),  // 499 - 600 < -100
                                 fmt::format("UPDATE {} SET held = 1101 WHERE id = 'a'", acc),
                                 fmt::format("UPDATE {} SET min_balance = 401 WHERE id = 'a'", acc)}) {
    INFO(raw);
    std::string message;
    const Error e = [&] {
      try {
        db.exec(raw);
      } catch (const Error& error) {
        return error;
      }
      return Error(ErrorKind::invalid_argument, "the database accepted it");
    }();
    CHECK(e.kind() == ErrorKind::permanent);
    CHECK(e.sqlstate().substr(0, 2) == "23");
    CHECK_THAT(std::string(e.what()), Catch::Contains(db.table_prefix() + "accounts_available"));
  }
  CHECK(db.exec(fmt::format("UPDATE {} SET balance = 500 WHERE id = 'a'", acc)).affected == 1);  // exactly at it
  db.exec(fmt::format("UPDATE {} SET balance = 1000 WHERE id = 'a'", acc));
  CHECK(l.get("a").available() == 400);
  CHECK(l.check().ok());
}

// ---- Codes, references, metadata and event times (TransferDetails) ----

namespace {
TransferDetails details(int code, std::string reference, std::string metadata,
                        std::optional<std::int64_t> event_at_ms = std::nullopt) {
  return TransferDetails{code, std::move(reference), std::move(metadata), event_at_ms};
}

// Metadata as a JSON value: PostgreSQL returns jsonb's spelling, SQLite the text as given.
nlohmann::json json_of(const std::string& text) { return nlohmann::json::parse(text); }
}  // namespace

TEST_CASE("ledger: transfers, deposits, withdrawals, holds, captures, refunds and batch items record their details",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  const auto dep = details(1, "dep-ref", R"({"source": "bank", "n": 1})", 1'700'000'000'123);
  REQUIRE(l.deposit("a", 500, "dep", dep).ok());
  REQUIRE(l.withdraw("a", 100, "wd", details(2, "wd-ref", "", std::nullopt)).ok());
  REQUIRE(l.transfer("a", "b", 300, "tr", details(65'535, "order-42", R"({"order":42,"tags":["x","y"]})")).ok());
  REQUIRE(l.reverse("tr", 50, "rf", details(4, "refund-42", R"({"why":"damaged"})", -1'000)).ok());
  const HoldResult h = l.hold("a", "c", 200, "hd", 60s, details(5, "auth-7", R"({"card":"visa"})", 42));
  REQUIRE(h.ok());
  const auto batch = l.transfer_batch(
      {{"a", "b", 10, "bt-1", false, details(6, "bt-ref", R"({"i":1})")}, {"a", "b", 11, "bt-2", false, {}}});
  REQUIRE(batch[0].ok());
  REQUIRE(batch[1].ok());
  const TransferResult cap = l.capture(h.hold_id, 150);
  REQUIRE(cap.ok());

  const TransferRecord d = l.find_transfer_by_key("dep");
  CHECK(d.details.code == 1);
  CHECK(d.details.reference == "dep-ref");
  CHECK(json_of(d.details.metadata) == json_of(dep.metadata));
  CHECK(d.details.event_at_ms == 1'700'000'000'123);
  CHECK(d.created_at_ms != 1'700'000'000'123);  // the journal's own time stays the database clock
  const TransferRecord w = l.find_transfer_by_key("wd");
  CHECK(w.details == details(2, "wd-ref", "", std::nullopt));
  const TransferRecord t = l.find_transfer_by_key("tr");
  CHECK(t.details.code == 65'535);
  CHECK(json_of(t.details.metadata) == json_of(R"({"order":42,"tags":["x","y"]})"));
  CHECK_FALSE(t.details.event_at_ms);
  const TransferRecord r = l.find_transfer_by_key("rf");
  CHECK(r.details.reference == "refund-42");
  CHECK(r.details.event_at_ms == -1'000);
  const Hold held = l.get_hold(h.hold_id);
  CHECK(held.details.code == 5);
  CHECK(held.details.reference == "auth-7");
  CHECK(json_of(held.details.metadata) == json_of(R"({"card":"visa"})"));
  CHECK(held.details.event_at_ms == 42);
  // The capture's transfer carries the hold's details.
  const TransferRecord c = l.find_transfer(cap.transfer_id);
  CHECK(c.details.code == 5);
  CHECK(c.details.reference == "auth-7");
  CHECK(json_of(c.details.metadata) == json_of(R"({"card":"visa"})"));
  CHECK(c.details.event_at_ms == 42);
  CHECK(l.find_transfer_by_key("bt-1").details.reference == "bt-ref");
  CHECK(l.find_transfer_by_key("bt-2").details == TransferDetails{});
  CHECK(l.find_transfer_by_key("seed").details == TransferDetails{});
  // History and the transfers list show them too.
  const HistoryPage page = l.history("b");
  REQUIRE_FALSE(page.items.empty());
  bool seen = false;
  for (const auto& item : page.items)
    if (item.transfer.key == "tr") seen = item.transfer.details.reference == "order-42";
  CHECK(seen);
  const TransferPage all = l.transfers();
  REQUIRE(all.items.size() == 8);
  CHECK(all.items.front().details.code == 5);  // the capture, newest
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a key reused with another code, reference, metadata or event time is idempotency_mismatch",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  const auto base = details(7, "order-1", R"({"a":1,"b":{"c":[1,2]}})", 1'000);
  REQUIRE(l.transfer("a", "b", 100, "t", base).ok());
  REQUIRE(l.deposit("b", 100, "d", base).ok());
  REQUIRE(l.withdraw("a", 100, "w", base).ok());
  REQUIRE(l.hold("a", "b", 100, "h", 60s, base).ok());
  REQUIRE(l.reverse("t", 10, "r", base).ok());
  REQUIRE(l.transfer_batch({{"a", "b", 100, "bt", false, base}})[0].ok());
  // Metadata compares as a JSON value: other key order, whitespace, escapes and number spelling replay.
  const auto same = details(7, "order-1", " { \"b\" : {\"c\":[1, 2.0]}, \"\\u0061\" : 1e0 } ", 1'000);
  CHECK(l.transfer("a", "b", 100, "t", same).replayed);
  CHECK(l.deposit("b", 100, "d", same).replayed);
  CHECK(l.withdraw("a", 100, "w", same).replayed);
  CHECK(l.hold("a", "b", 100, "h", 60s, same).replayed);
  CHECK(l.reverse("t", 10, "r", same).replayed);
  CHECK(l.transfer_batch({{"a", "b", 100, "bt", false, same}})[0].result.replayed);
  CHECK(l.transfer("a", "b", 100, "bt", same).replayed);
  // A key recorded without details replays only without them.
  REQUIRE(l.transfer("a", "b", 100, "plain").ok());
  CHECK(l.transfer("a", "b", 100, "plain").replayed);

  auto with = [&](int code, std::string reference, std::string metadata, std::optional<std::int64_t> at) {
    return details(code, std::move(reference), std::move(metadata), at);
  };
  const auto code = with(8, "order-1", base.metadata, 1'000);
  const auto reference = with(7, "order-2", base.metadata, 1'000);
  const auto metadata = with(7, "order-1", R"({"a":1,"b":{"c":[2,1]}})", 1'000);
  const auto event = with(7, "order-1", base.metadata, 1'001);
  const auto none = TransferDetails{};
  auto item = [&](BatchItem i) {
    return [&l, i] {
      const auto r = l.transfer_batch({i});
      if (r[0].error) throw Error(*r[0].error, r[0].message);
    };
  };
  require_mismatches(b.t.db(), l,
                     {
                         {"code", [&] { l.transfer("a", "b", 100, "t", code); }},
                         {"reference", [&] { l.transfer("a", "b", 100, "t", reference); }},
                         {"metadata", [&] { l.transfer("a", "b", 100, "t", metadata); }},
                         {"event time", [&] { l.transfer("a", "b", 100, "t", event); }},
                         {"code", [&] { l.transfer("a", "b", 100, "t", none); }},
                         {"code", [&] { l.transfer("a", "b", 100, "plain", base); }},
                         {"reference", [&] { l.transfer("a", "b", 100, "plain", with(0, "x", "", {})); }},
                         {"metadata", [&] { l.transfer("a", "b", 100, "plain", with(0, "", "{}", {})); }},
                         {"event time", [&] { l.transfer("a", "b", 100, "plain", with(0, "", "", 0)); }},
                         {"code", [&] { l.transfer_or_throw("a", "b", 100, "t", code); }},
                         {"code", [&] { l.deposit("b", 100, "d", code); }},
                         {"reference", [&] { l.deposit("b", 100, "d", reference); }},
                         {"metadata", [&] { l.withdraw("a", 100, "w", metadata); }},
                         {"event time", [&] { l.withdraw("a", 100, "w", event); }},
                         {"code", [&] { l.hold("a", "b", 100, "h", 60s, code); }},
                         {"reference", [&] { l.hold("a", "b", 100, "h", 60s, reference); }},
                         {"metadata", [&] { l.hold("a", "b", 100, "h", 60s, metadata); }},
                         {"event time", [&] { l.hold("a", "b", 100, "h", 60s, event); }},
                         {"metadata", [&] { l.reverse("t", 10, "r", metadata); }},
                         {"event time", [&] { l.reverse("t", 10, "r", event); }},
                         {"code", item({"a", "b", 100, "bt", false, code})},
                         {"reference", item({"a", "b", 100, "bt", false, reference})},
                         {"metadata", item({"a", "b", 100, "bt", false, metadata})},
                         {"event time", item({"a", "b", 100, "bt", false, event})},
                     });
  // In a linked chain, the mismatch fails the chain and writes nothing of it.
  const auto chain = l.transfer_batch({{"a", "c", 5, "chain-1", true}, {"a", "b", 100, "bt", false, code}});
  CHECK(chain[1].error == ErrorKind::idempotency_mismatch);
  CHECK(chain[0].error == ErrorKind::idempotency_mismatch);
  CHECK_THROWS(l.find_transfer_by_key("chain-1"));
}

TEST_CASE("ledger: bad details are invalid_argument on every operation and write nothing", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  const HoldResult h = l.hold("a", "b", 100, "h", 60s);
  l.transfer("a", "b", 100, "orig");
  const std::int64_t transfers = rows_in(b.t.db(), "transfers"), holds = rows_in(b.t.db(), "holds");
  const std::vector<std::pair<std::string, TransferDetails>> bad{
      {"code", details(-1, "", "")},
      {"code", details(65'536, "", "")},
      {"reference", details(0, std::string(129, 'r'), "")},
      {"reference", details(0, "tab\there", "")},
      {"reference", details(0, std::string("nul\0x", 5), "")},
      {"reference", details(0, "\xff\xfe", "")},
      {"JSON", details(0, "", "{")},
      {"JSON", details(0, "", R"({"a":1,})")},
      {"JSON", details(0, "", R"({"a":1,"a":2})")},
      {"JSON", details(0, "", R"({"a":"\u0000"})")},
      {"JSON", details(0, "", R"({"a":"\ud800"})")},
      {"numeric", details(0, "", R"({"a":1e131072})")},  // PostgreSQL's numeric holds 131072 digits before the point
      {"numeric", details(0, "", R"({"a":1e-16384})")},  // and 16383 after
      {"numeric", details(0, "", R"({"a":[1e200000]})")},
      {"JSON object", details(0, "", "[1,2]")},
      {"JSON object", details(0, "", "\"text\"")},
      {"bytes", details(0, "", "{\"a\":\"" + std::string(max_metadata_bytes, 'x') + "\"}")},
      {"event time", details(0, "", "", -62'135'596'800'001)},
      {"event time", details(0, "", "", 253'402'300'800'000)},
  };
  for (const auto& [what, d] : bad) {
    INFO(what << ": " << d.reference << " " << d.metadata);
    std::string message;
    CHECK(kind_of([&] { l.transfer("a", "b", 1, "x", d); }, &message) == ErrorKind::invalid_argument);
    CHECK_THAT(message, Catch::Contains(what));
    CHECK(kind_of([&] { l.deposit("a", 1, "x", d); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { l.withdraw("a", 1, "x", d); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { l.hold("a", "b", 1, "x", 60s, d); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { l.reverse("orig", 1, "x", d); }) == ErrorKind::invalid_argument);
    const auto r = l.transfer_batch({{"a", "b", 1, "x", false, d}});
    CHECK(r[0].error == ErrorKind::invalid_argument);
  }
  CHECK(rows_in(b.t.db(), "transfers") == transfers);
  CHECK(rows_in(b.t.db(), "holds") == holds);
  // The bounds themselves are fine.
  CHECK(l.transfer("a", "b", 1, "edge-1", details(65'535, std::string(128, 'r'), "{}", -62'135'596'800'000)).ok());
  CHECK(l.transfer(
             "a", "b", 1, "edge-2",
             details(1, "ü-ref", "{\"k\":\"" + std::string(max_metadata_bytes - 10, 'x') + "\"}", 253'402'300'799'999))
            .ok());
  CHECK(l.transfer("a", "b", 1, "edge-3", details(0, "", R"({"a":1e131071,"b":1e-16383,"c":-0.5e-16382})")).ok());
  CHECK(l.find_transfer_by_key("edge-1").details.event_at_ms == -62'135'596'800'000);
  CHECK(l.find_transfer_by_key("edge-2").details.event_at_ms == 253'402'300'799'999);
  CHECK(l.find_transfer_by_key("edge-2").details.reference == "ü-ref");
  CHECK(l.transfer(
             "a", "b", 1, "edge-2",
             details(1, "ü-ref", "{\"k\":\"" + std::string(max_metadata_bytes - 10, 'x') + "\"}", 253'402'300'799'999))
            .replayed);
  CHECK(h.ok());
}

TEST_CASE("ledger: transfers() filters by code, reference and metadata, with the account, the window and paging",
          "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  // 30 transfers: code i % 3 + 1, reference "order-<i % 5>", metadata {"shop":"s<i % 2>","n":i,"vip":i%4==0}.
  for (int i = 0; i < 30; ++i) {
    const std::string from = i % 2 ? "a" : "b";
    if (i == 0) l.transfer("a", "b", 1'000, "fund-b");
    nlohmann::json m{{"shop", fmt::format("s{}", i % 2)}, {"n", i}, {"vip", i % 4 == 0}, {"nested", {{"x", 1}}}};
    REQUIRE(
        l.transfer(from, "c", 10, fmt::format("q-{}", i), details(i % 3 + 1, fmt::format("order-{}", i % 5), m.dump()))
            .ok());
  }
  auto keys = [&](TransferQuery q) {
    std::vector<std::string> out;
    while (true) {
      const TransferPage page = l.transfers(q);
      for (const auto& t : page.items) out.push_back(t.key.value_or("?"));
      if (!page.next) break;
      q.before = page.next;
    }
    return out;
  };
  auto expect = [](const std::function<bool(int)>& pick) {
    std::vector<std::string> out;
    for (int i = 29; i >= 0; --i)
      if (pick(i)) out.push_back(fmt::format("q-{}", i));
    return out;
  };
  TransferQuery q;
  q.limit = 4;
  q.code = 2;
  CHECK(keys(q) == expect([](int i) { return i % 3 + 1 == 2; }));
  q = {};
  q.limit = 3;
  q.reference = "order-3";
  CHECK(keys(q) == expect([](int i) { return i % 5 == 3; }));
  q.code = 1;  // both
  CHECK(keys(q) == expect([](int i) { return i % 5 == 3 && i % 3 == 0; }));
  q = {};
  q.limit = 5;
  q.metadata = R"({"shop":"s1"})";
  CHECK(keys(q) == expect([](int i) { return i % 2 == 1; }));
  q.metadata = R"({"shop":"s0","vip":true})";
  CHECK(keys(q) == expect([](int i) { return i % 4 == 0; }));
  q.metadata = R"({"n":7.0})";  // numbers compare by value
  CHECK(keys(q) == expect([](int i) { return i == 7; }));
  q.metadata = R"({"n":"7"})";  // a string is not a number
  CHECK(keys(q).empty());
  q.metadata = R"({"vip":1})";  // nor is a number true, as jsonb says
  CHECK(keys(q).empty());
  q.metadata = R"({"x":1})";  // a key no transfer has
  CHECK(keys(q).empty());
  q.metadata = R"({"shop":"s1"})";
  q.account = "a";  // a pays the odd ones
  q.code = 3;
  CHECK(keys(q) == expect([](int i) { return i % 2 == 1 && i % 3 == 2; }));
  q.account = "b";
  CHECK(keys(q).empty());
  // With the time window: everything so far is before until, nothing at or after since = until.
  q = {};
  q.code = 1;
  const std::int64_t newest = l.transfers().items.front().created_at_ms;
  q.until_ms = newest + 1;
  CHECK(keys(q) == expect([](int i) { return i % 3 == 0; }));
  q.since_ms = newest + 1;
  q.until_ms = newest + 2;
  CHECK(keys(q).empty());
  // Entries come along when asked.
  q = {};
  q.reference = "order-0";
  q.include_entries = true;
  const TransferPage with_entries = l.transfers(q);
  REQUIRE_FALSE(with_entries.items.empty());
  CHECK(with_entries.items[0].entries.size() == 2);
  CHECK(with_entries.items[0].details.reference == "order-0");
  // Nothing matches: an empty page.
  q = {};
  q.reference = "order-99";
  CHECK(l.transfers(q).items.empty());
  q = {};
  q.metadata = R"({"shop":"s9"})";
  CHECK(l.transfers(q).items.empty());
  // The same answers on every engine: an integer beyond a double's precision (a snowflake id) is
  // found by its own spelling, and a string never matches an array or object that reads the same.
  REQUIRE(l.transfer("a", "c", 1, "q-big", details(0, "", R"({"id":1234567890123456780,"arr":[1,2]})")).ok());
  q.metadata = R"({"id":1234567890123456780})";
  CHECK(keys(q) == std::vector<std::string>{"q-big"});
  q.metadata = R"({"id":1234567890123456781})";
  CHECK(keys(q).empty());
  q.metadata = R"({"arr":"[1,2]"})";
  CHECK(keys(q).empty());
}

TEST_CASE("ledger: a transfers() filter outside its rules is invalid_argument", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  open_abc(l);
  auto refused = [&](const std::function<void(TransferQuery&)>& set) {
    TransferQuery q;
    set(q);
    return kind_of([&] { l.transfers(q); }) == ErrorKind::invalid_argument;
  };
  CHECK(refused([](TransferQuery& q) { q.code = 0; }));
  CHECK(refused([](TransferQuery& q) { q.code = 65'536; }));
  CHECK(refused([](TransferQuery& q) { q.reference = ""; }));
  CHECK(refused([](TransferQuery& q) { q.reference = std::string(129, 'r'); }));
  for (const char* m : {"", "{}", "[1]", "{\"a\":null}", "{\"a\":[1]}", "{\"a\":{\"b\":1}}", "{\"a b\":1}",
                        "{\"a\\\"\":1}", "{\"a\":1", "{\"a\":1,\"a\":2}"}) {
    INFO(m);
    CHECK(refused([&](TransferQuery& q) { q.metadata = m; }));
  }
  TransferQuery fine;
  fine.metadata = R"({"a-b_C9":"x","n":-1.5e3,"t":false})";
  CHECK(l.transfers(fine).items.empty());
}

// Not run by default: `rowguard_tests "[details-plan]" --backend sqlite-file` and, under
// scripts/pg-throwaway.sh, `--backend postgres`. 200k transfers written by one bulk insert (no
// entries: the queries read the transfers only): a code on three in four (50 codes), a reference
// shared by four transfers, metadata {"shop":"s<g % 20>","n":g} on every other one; then each
// transfers() filter's plan (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite) and its
// time over repeated runs. The figures are in docs/ledger.md, "Codes, references and metadata".
TEST_CASE("ledger: transfers() filter plans and costs on 200k transfers", "[.][details-plan]") {
  TestDb t;
  t.db().migrate();
  Database& db = t.db();
  const std::string p = db.table_prefix();
  const auto& d = dialect_of(db);
  const bool pg = d.has_json_containment();
  constexpr int n = 200'000;
  const std::int64_t now_ms = db.exec("SELECT " + d.now_ms()).one().i64(0);
  const std::string series = pg ? fmt::format("generate_series(1, {}) g", n)
                                : fmt::format(
                                      "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
                                      "WHERE g < {}) SELECT g FROM s) q",
                                      n);
  const std::string metadata = "CASE WHEN g % 2 = 0 THEN '{\"shop\":\"s' || (g % 20) || '\",\"n\":' || g || '}' END";
  const auto started = std::chrono::steady_clock::now();
  db.exec(
      fmt::format("INSERT INTO {p}accounts (id, currency, balance, min_balance, version, created_at, updated_at) "
                  "SELECT 'acc' || g, 'EUR', 0, -9000000000000, 0, {now}, {now} FROM {s} WHERE g <= 1000",
                  fmt::arg("p", p), fmt::arg("now", d.now_timestamp()), fmt::arg("s", series)));
  db.exec(fmt::format(
              "INSERT INTO {p}transfers (id, idempotency_key, kind, from_account, to_account, amount, currency, "
              "outcome, created_at, code, reference, metadata) SELECT g, 'k' || g, 'transfer', 'acc' || (1 + g % "
              "1000), 'acc' || (1 + (g * 7) % 1000), 1 + g % 100, 'EUR', 'ok', {at}, CASE WHEN g % 4 = 0 THEN 0 "
              "ELSE 1 + g % 50 END, 'order-' || (g / 4), {m} FROM {s}",
              fmt::arg("p", p), fmt::arg("at", d.ms_to_timestamp(fmt::format("CAST($1 AS bigint) - ({} - g) * 10", n))),
              fmt::arg("m", pg ? "CAST(" + metadata + " AS jsonb)" : metadata), fmt::arg("s", series)),
          {now_ms});
  if (pg) {
    db.exec(fmt::format("SELECT setval(pg_get_serial_sequence('{}transfers', 'id'), {})", p, n));
    db.exec(fmt::format("ANALYZE {}transfers", p));
  } else {
    db.exec("ANALYZE");
  }
  WARN(fmt::format(
      "setup: {} transfers on {}; bulk load took {} ms", n, d.name(),
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count()));
  Ledger l(db);
  const detail::HistoryStatements statements(rowguard::test::backend_of(db));
  struct Case {
    const char* what;
    TransferQuery query;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, const std::function<void(TransferQuery&)>& set) {
    TransferQuery q;
    set(q);
    cases.push_back({what, q});
  };
  add("code 7 (3000 of 200k), first page of 100", [](TransferQuery& q) { q.code = 7; });
  add("code 7, page before id 100000", [](TransferQuery& q) {
    q.code = 7;
    q.before = 100'000;
  });
  add("reference order-12345 (4 transfers)", [](TransferQuery& q) { q.reference = "order-12345"; });
  add("metadata {shop: s4} (5000), first page of 100", [](TransferQuery& q) { q.metadata = R"({"shop":"s4"})"; });
  add("metadata {n: 123456} (1 transfer)", [](TransferQuery& q) { q.metadata = R"({"n":123456})"; });
  add("account acc8 + code 7", [](TransferQuery& q) {
    q.account = "acc8";
    q.code = 7;
  });
  add("code 7 + window of the last 100 s", [&](TransferQuery& q) {
    q.code = 7;
    q.since_ms = now_ms - 100'000;
    q.until_ms = now_ms + 1;
  });
  for (const auto& c : cases) {
    // The statement and parameters transfers() sends (history.cpp builds them the same way).
    const TransferQuery& q = c.query;
    detail::TransferFilter f;
    f.by_account = q.account.has_value();
    f.window = q.since_ms.has_value();
    f.code = q.code.has_value();
    f.reference = q.reference.has_value();
    std::vector<Value> params{q.before.value_or(std::numeric_limits<std::int64_t>::max()), std::int64_t{q.limit + 1}};
    if (q.account) params.emplace_back(*q.account);
    if (f.window) params.insert(params.end(), {*q.since_ms, *q.until_ms});
    if (q.code) params.emplace_back(std::int64_t{*q.code});
    if (q.reference) params.emplace_back(*q.reference);
    if (q.metadata) {
      const auto json = nlohmann::json::parse(*q.metadata);
      if (pg) {
        f.metadata_keys = 1;
        params.emplace_back(*q.metadata);
      } else {
        for (const auto& [k, v] : json.items()) {
          ++f.metadata_keys;
          params.insert(params.end(), {fmt::format("$.\"{}\"", k), v.dump()});
        }
      }
    }
    const std::string sql = statements.transfers(f);
    std::string plan;
    for (const auto& row : db.exec((pg ? "EXPLAIN (ANALYZE, BUFFERS) " : "EXPLAIN QUERY PLAN ") + sql, params).rows)
      plan += "\n    " + (pg ? row.text(0) : row.text(row.size() - 1));
    constexpr int runs = 50;
    std::size_t found = l.transfers(q).items.size();  // prepared and cached
    std::vector<double> us;
    for (int i = 0; i < runs; ++i) {
      const auto s = std::chrono::steady_clock::now();
      found = l.transfers(q).items.size();
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s).count());
    }
    std::sort(us.begin(), us.end());
    WARN(fmt::format("{}: {} item(s), median {:.0f} us, p90 {:.0f} us; plan:{}", c.what, found, us[runs / 2],
                     us[runs * 9 / 10], plan));
  }
}

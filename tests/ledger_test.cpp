// The ledger: accounts, transfers with idempotency keys, and a journal that always adds up.
#include <atomic>
#include <random>
#include <set>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support.hpp"

using namespace rowguard;
using rowguard::test::TestDb;

namespace {
ErrorKind kind_of(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.kind();
  }
  FAIL("no rowguard::Error was thrown");
  return ErrorKind::permanent;
}

std::int64_t rows_in(Database& db, const char* table) {
  return db.exec(fmt::format("SELECT count(*) FROM {}{}", db.table_prefix(), table)).one().i64(0);
}

struct Bank {
  TestDb t;
  Ledger ledger;
  Bank() : ledger((t.db().migrate(), t.db())) {}
};
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

TEST_CASE("ledger: a repeated key changes nothing; other parameters are idempotency_mismatch", "[backend]") {
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
  CHECK_THAT(message, Catch::Contains("from"));
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
  const Error duplicate = [&] {
    try {
      l.open("eur", "EUR");
    } catch (const Error& e) {
      return e;
    }
    return Error(ErrorKind::permanent, "none");
  }();
  CHECK(duplicate.sqlstate() == "23505");
  // A balance that would overflow int64 is refused before anything is written.
  l.open("rich", "EUR");
  l.deposit("rich", std::numeric_limits<std::int64_t>::max(), "max");
  CHECK(kind_of([&] { l.deposit("rich", 1, "one-more"); }) == ErrorKind::invalid_argument);
  CHECK(l.get("rich").balance == std::numeric_limits<std::int64_t>::max());
  CHECK(rows_in(b.t.db(), "transfers") == transfers + 1);  // only the "max" deposit
  CHECK(rows_in(b.t.db(), "accounts") == 3);
}

TEST_CASE("ledger: concurrent requests with one key apply once and agree", "[backend]") {
  Bank b;
  auto& l = b.ledger;
  l.open("a", "EUR");
  l.open("b", "EUR");
  l.deposit("a", 1'000, "d");
  std::vector<std::thread> threads;
  std::vector<std::int64_t> ids(8, 0);
  std::atomic<int> failures{0};
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      try {
        ids[i] = l.transfer("a", "b", 10, "same-key").transfer_id;
      } catch (const Error&) {
        ++failures;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(std::set<std::int64_t>(ids.begin(), ids.end()).size() == 1);
  CHECK(l.get("b").balance == 10);
  CHECK(l.check().ok());
}

TEST_CASE("ledger: a bank under concurrent random transfers conserves money at every snapshot", "[backend]") {
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
          const auto r = l.transfer(fmt::format("acct-{}", from), fmt::format("acct-{}", to), amount,
                                    fmt::format("w{}-{}", w, i));
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

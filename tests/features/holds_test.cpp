// Holds: authorise (reserve the available amount), then capture or void; expiry on the database clock.
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/fault_proxy.hpp"
#include "support/support.hpp"

using namespace rowguard;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::require_mismatches;
using rowguard::test::TestDb;

namespace {
struct Shop {
  TestDb t;
  Ledger ledger;
  Shop() : ledger((t.db().migrate(), t.db())) {
    ledger.open("card", "EUR");
    ledger.open("shop", "EUR");
    ledger.deposit("card", 10'000, "salary");
  }
};
}  // namespace

TEST_CASE("holds: a hold reserves the available amount, a partial capture moves it and releases the rest",
          "[backend][holds]") {
  Shop s;
  auto& l = s.ledger;
  const HoldResult h = l.hold("card", "shop", 6'000, "auth-1", 60s);
  REQUIRE(h.ok());
  CHECK_FALSE(h.replayed);
  Account card = l.get("card");
  CHECK(card.balance == 10'000);
  CHECK(card.held == 6'000);
  CHECK(card.available() == 4'000);
  CHECK(l.get_hold(h.hold_id).state == HoldState::held);
  CHECK(l.get_hold(h.hold_id).expires_in_ms > 50'000);

  // What is held cannot be paid twice: a transfer or a hold past the available amount is refused.
  CHECK(l.transfer("card", "shop", 4'001, "too-much").status == TransferStatus::insufficient_funds);
  CHECK(l.hold("card", "shop", 4'001, "auth-too-much", 60s).status == TransferStatus::insufficient_funds);
  CHECK(l.transfer("card", "shop", 1'000, "coffee").ok());

  const TransferResult captured = l.capture(h.hold_id, 5'000);
  REQUIRE(captured.ok());
  card = l.get("card");
  CHECK(card.balance == 4'000);  // 10000 - 1000 - 5000
  CHECK(card.held == 0);         // the unused 1000 of the hold is released
  CHECK(l.get("shop").balance == 6'000);
  const Hold closed = l.get_hold(h.hold_id);
  CHECK(closed.state == HoldState::captured);
  CHECK(closed.captured == 5'000);
  CHECK(closed.transfer_id == captured.transfer_id);
  const CheckReport report = l.check();
  CHECK(report.ok());
  CHECK(report.total_balance == 10'000);
  CHECK(l.stats().holds_ok == 1);
  CHECK(l.stats().holds_rejected == 1);
}

TEST_CASE("holds: keys replay holds and captures while closed holds and bad input change nothing", "[backend][holds]") {
  Shop s;
  auto& l = s.ledger;
  const HoldResult h = l.hold("card", "shop", 3'000, "auth", 60s);
  const HoldResult again = l.hold("card", "shop", 3'000, "auth", 60s);
  CHECK(again.replayed);
  CHECK(again.hold_id == h.hold_id);
  CHECK(l.get("card").held == 3'000);
  CHECK(kind_of([&] { l.hold("card", "shop", 3'001, "auth", 60s); }) == ErrorKind::idempotency_mismatch);
  CHECK(kind_of([&] { l.hold("shop", "card", 3'000, "auth", 60s); }) == ErrorKind::idempotency_mismatch);

  // A rejected hold is recorded under its key and replayed, like a rejected transfer.
  const HoldResult rejected = l.hold("card", "shop", 9'000, "big", 60s);
  CHECK(rejected.status == TransferStatus::insufficient_funds);
  l.deposit("card", 100'000, "bonus");
  CHECK(l.hold("card", "shop", 9'000, "big", 60s).status == TransferStatus::insufficient_funds);
  CHECK(kind_of([&] { l.capture(rejected.hold_id); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.void_hold(rejected.hold_id); }) == ErrorKind::not_found);

  CHECK(kind_of([&] { l.capture(h.hold_id, 3'001); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.capture(h.hold_id, 0); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.capture(123'456); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.capture(-1); }) == ErrorKind::invalid_argument);
  l.transfer("card", "shop", 1, "taken-key");
  CHECK(kind_of([&] { l.capture(h.hold_id, std::nullopt, "taken-key"); }) == ErrorKind::idempotency_mismatch);

  const TransferResult first = l.capture(h.hold_id);  // the whole hold, under hold:<id>:capture
  const TransferResult replay = l.capture(h.hold_id);
  CHECK(replay.replayed);
  CHECK(replay.transfer_id == first.transfer_id);
  CHECK(kind_of([&] { l.capture(h.hold_id, 2'000); }) == ErrorKind::idempotency_mismatch);
  CHECK(kind_of([&] { l.capture(h.hold_id, std::nullopt, "other-key"); }) == ErrorKind::idempotency_mismatch);
  CHECK(kind_of([&] { l.void_hold(h.hold_id); }) == ErrorKind::hold_closed);
  CHECK(l.get("shop").balance == 3'001);

  const HoldResult v = l.hold("card", "shop", 500, "auth-2", 60s);
  CHECK(l.void_hold(v.hold_id).state == HoldState::voided);
  CHECK(l.void_hold(v.hold_id).state == HoldState::voided);  // idempotent
  CHECK(kind_of([&] { l.capture(v.hold_id); }) == ErrorKind::hold_closed);
  CHECK(l.get("card").held == 0);

  const auto before = l.check();
  CHECK(kind_of([&] { l.hold("card", "card", 1, "self", 60s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.hold("card", "shop", 0, "zero", 60s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.hold("card", "shop", 1, "no-time", 0s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.hold("card", "shop", 1, "forever", std::chrono::hours(24 * 367)); }) ==
        ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.hold("card", "nobody", 1, "lost", 60s); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.hold("nobody", "shop", 1, "lost", 60s); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.hold("card", "shop", 1, std::string("nul\0key", 7), 60s); }) == ErrorKind::invalid_argument);
  l.open("usd", "USD");
  CHECK(kind_of([&] { l.hold("card", "usd", 1, "fx", 60s); }) == ErrorKind::currency_mismatch);
  CHECK(l.check().entries == before.entries);
  CHECK(l.check().ok());
}

TEST_CASE("holds: an expired hold stops counting at its timeout, before any sweep", "[backend][holds]") {
  Shop s;
  auto& l = s.ledger;
  const HoldResult h = l.hold("card", "shop", 8'000, "short", 300ms);
  const HoldResult longer = l.hold("card", "shop", 1'000, "long", 60s);
  CHECK(l.get("card").available() == 1'000);
  std::this_thread::sleep_for(500ms);
  // Readers leave it out at once; the ledger closes it only when it stands in a payment's way.
  CHECK(l.get("card").held == 1'000);
  CHECK(l.get_hold(h.hold_id).state == HoldState::expired);
  CHECK(l.transfer("card", "shop", 9'000, "all-but-the-long-hold").ok());
  CHECK(l.get("card").balance == 1'000);
  CHECK(kind_of([&] { l.capture(h.hold_id); }) == ErrorKind::hold_closed);
  CHECK(l.void_hold(h.hold_id).state == HoldState::expired);
  CHECK(l.capture(longer.hold_id).ok());
  CHECK(l.get("card").balance == 0);
  CHECK(l.check().ok());

  // A hold also makes room for another hold, and the sweep tidies what nobody needed.
  l.deposit("card", 1'000, "top-up");
  const HoldResult a = l.hold("card", "shop", 1'000, "a", 200ms);
  std::this_thread::sleep_for(300ms);
  CHECK(l.hold("card", "shop", 1'000, "b", 200ms).ok());
  CHECK(l.get_hold(a.hold_id).state == HoldState::expired);
  std::this_thread::sleep_for(300ms);
  CHECK(l.sweep_holds() == 1);
  CHECK(l.sweep_holds() == 0);
  CHECK(l.get("card").held == 0);
  CHECK(l.check().ok());
}

TEST_CASE("holds: a cached account shows holds as they are placed and released", "[backend][holds]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  LedgerOptions options;
  options.cache = &cache;
  Ledger l(t.db(), options);
  l.open("card", "EUR");
  l.open("shop", "EUR");
  l.deposit("card", 1'000, "d");
  CHECK(l.get("card").available() == 1'000);  // now cached
  const HoldResult h = l.hold("card", "shop", 400, "h", 60s);
  CHECK(l.get("card").available() == 600);
  l.void_hold(h.hold_id);
  CHECK(l.get("card").available() == 1'000);
}

TEST_CASE(
    "holds: placing, capturing and voiding drop the cached copies of the accounts they change, here and in "
    "the table",
    "[backend][holds]") {
  TestDb t;
  t.db().migrate();
  CacheOptions local;  // this process's tier: dropped by the ledger's own calls
  local.local_max_bytes = 1 << 20;
  local.local_ttl = 60s;
  Cache cache(t.db(), local);
  Cache table_only(t.db());  // another Cache, as another process: sees only the table's tombstones
  LedgerOptions options;
  options.cache = &cache;
  options.cache_ttl = 60s;
  Ledger l(t.db(), options);
  LedgerOptions other_options;
  other_options.cache = &table_only;
  other_options.cache_ttl = 60s;
  Ledger other(t.db(), other_options);
  l.open("card", "EUR");
  l.open("shop", "EUR");
  l.deposit("card", 1'000, "d");
  auto seen = [&](const std::string& id) {
    const Account mine = l.get(id), theirs = other.get(id);
    CHECK(mine.balance == theirs.balance);
    CHECK(mine.held == theirs.held);
    return mine;
  };
  CHECK(seen("card").available() == 1'000);  // now cached in both
  CHECK(seen("shop").balance == 0);
  const HoldResult h = l.hold("card", "shop", 400, "h", 60s);
  CHECK(seen("card").held == 400);
  REQUIRE(l.capture(h.hold_id, 300).ok());
  CHECK(seen("card").balance == 700);
  CHECK(seen("card").held == 0);
  CHECK(seen("shop").balance == 300);
  const HoldResult v = l.hold("card", "shop", 200, "v", 60s);
  CHECK(seen("card").available() == 500);
  l.void_hold(v.hold_id);
  CHECK(seen("card").available() == 700);
  CHECK(l.check().ok());
}

TEST_CASE("holds: on PostgreSQL a hold, a capture and a void each take as many round trips as a transfer, one",
          "[pg][holds]") {
  std::unique_ptr<rowguard::test::FaultProxy> proxy;  // counts what the client sends
  TestDb t(Options{}, [&](const std::string& url) {
    proxy = std::make_unique<rowguard::test::FaultProxy>(rowguard::test::port_of(url));
    return rowguard::test::via_port(url, proxy->port());
  });
  t.db().migrate();
  Ledger l(t.db());
  l.open("card", "EUR");
  l.open("shop", "EUR");
  l.deposit("card", 10'000, "salary");
  auto round_trips = [&](const std::function<void()>& call) {
    const std::uint64_t before = proxy->requests();
    call();
    return proxy->requests() - before;
  };
  // The first call of each prepares its statement (a round trip of its own on a direct connection).
  for (int pass = 0; pass < 2; ++pass) {
    const std::uint64_t transfer = round_trips([&] { l.transfer("card", "shop", 1, fmt::format("t-{}", pass)); });
    HoldResult h, v;
    const std::uint64_t hold = round_trips([&] { h = l.hold("card", "shop", 10, fmt::format("h-{}", pass), 60s); });
    const std::uint64_t capture = round_trips([&] { l.capture(h.hold_id); });
    v = l.hold("card", "shop", 10, fmt::format("v-{}", pass), 60s);
    const std::uint64_t void_ = round_trips([&] { l.void_hold(v.hold_id); });
    if (pass == 0) continue;
    INFO(fmt::format("{}: transfer {}, hold {}, capture {}, void {}", rowguard::test::backend(), transfer, hold,
                     capture, void_));
    CHECK(transfer >= 1);
    CHECK(hold == transfer);
    CHECK(capture == transfer);
    CHECK(void_ == transfer);
  }
  CHECK(l.check().ok());
}

TEST_CASE("holds: concurrent holds, captures, voids, expiries and transfers never spend held money twice",
          "[backend][holds][threads]") {
  Options options;
  options.pool_size = 8;
  TestDb t(options);
  t.db().migrate();
  LedgerOptions lo;
  lo.retry.attempts = 200;
  lo.retry.deadline = std::chrono::seconds(60);
  Ledger l(t.db(), lo);
  const int accounts = 3;
  for (int a = 0; a < accounts; ++a) {
    l.open(fmt::format("acct-{}", a), "EUR", a == 0 ? -500 : 0);
    l.deposit(fmt::format("acct-{}", a), 2'000, fmt::format("seed-{}", a));
  }
  std::atomic<bool> done{false};
  std::atomic<int> bad_snapshots{0};
  std::thread reader([&] {
    while (!done) {
      const CheckReport r = l.check();
      if (!r.ok() || r.total_balance != 6'000) ++bad_snapshots;
      std::this_thread::sleep_for(5ms);
    }
  });
  std::mutex mutex;
  std::map<std::int64_t, int> captures;  // hold id -> successful (non-replayed) captures
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w)
    workers.emplace_back([&, w] {
      std::mt19937 rng(777 + w);                                // seeded: a failure can be replayed
      std::vector<std::pair<std::int64_t, std::int64_t>> mine;  // hold id, amount
      for (int i = 0; i < 40; ++i) {
        const int from = rng() % accounts;
        const int to = (from + 1 + rng() % (accounts - 1)) % accounts;
        const std::int64_t amount = 1 + rng() % 900;
        const auto src = fmt::format("acct-{}", from), dst = fmt::format("acct-{}", to);
        try {
          switch (rng() % 4) {
            case 0: {
              const auto timeout = std::chrono::milliseconds(rng() % 2 ? 50 + rng() % 100 : 60'000);
              const HoldResult h = l.hold(src, dst, amount, fmt::format("h{}-{}", w, i), timeout);
              if (h.ok()) mine.emplace_back(h.hold_id, amount);
              break;
            }
            case 1:
              if (!mine.empty()) {
                const auto [id, held] = mine[rng() % mine.size()];
                try {
                  const auto r = l.capture(id, 1 + static_cast<std::int64_t>(rng() % held));
                  std::lock_guard lock(mutex);
                  if (!r.replayed) ++captures[id];
                } catch (const Error& e) {
                  if (e.kind() != ErrorKind::hold_closed && e.kind() != ErrorKind::idempotency_mismatch) throw;
                }
              }
              break;
            case 2:
              if (!mine.empty()) {
                try {
                  l.void_hold(mine[rng() % mine.size()].first);
                } catch (const Error& e) {
                  if (e.kind() != ErrorKind::hold_closed) throw;
                }
              }
              break;
            default:
              l.transfer(src, dst, amount, fmt::format("t{}-{}", w, i));
          }
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
  for (const auto& [id, n] : captures) CHECK(n == 1);
  l.sweep_holds();
  const CheckReport report = l.check();
  CHECK(report.ok());
  CHECK(report.total_balance == 6'000);
  for (const auto& a : l.list()) CHECK(a.available() >= a.min_balance);
  WARN(fmt::format("{}: {} captures, {} retries", rowguard::test::backend(), captures.size(), l.stats().retries));
}

TEST_CASE("holds: a hold's key reused with any field or operation changed is idempotency_mismatch",
          "[backend][holds]") {
  Shop s;
  auto& l = s.ledger;
  l.open("other", "EUR");
  const HoldResult h = l.hold("card", "shop", 3'000, "auth", 60s);
  REQUIRE(h.ok());
  CHECK(l.hold("card", "shop", 3'000, "auth", 60s).replayed);
  require_mismatches(s.t.db(), l,
                     {
                         {"from", [&] { l.hold("other", "shop", 3'000, "auth", 60s); }},
                         {"to", [&] { l.hold("card", "other", 3'000, "auth", 60s); }},
                         {"amount", [&] { l.hold("card", "shop", 3'001, "auth", 60s); }},
                         {"timeout", [&] { l.hold("card", "shop", 3'000, "auth", 61s); }},
                         {"operation", [&] { l.transfer("card", "shop", 3'000, "auth"); }},
                         {"operation", [&] { l.deposit("card", 3'000, "auth"); }},
                         // The hold's own key for its capture.
                         {"operation", [&] { l.capture(h.hold_id, 3'000, "auth"); }},
                     });
}

TEST_CASE("holds: a capture's key reused with another hold, amount or operation is idempotency_mismatch",
          "[backend][holds]") {
  Shop s;
  auto& l = s.ledger;
  const HoldResult h1 = l.hold("card", "shop", 3'000, "h1", 60s);
  const HoldResult h2 = l.hold("card", "shop", 3'000, "h2", 60s);
  const HoldResult h3 = l.hold("card", "shop", 1'000, "h3", 60s);
  REQUIRE(l.capture(h1.hold_id, 2'000, "cap").ok());
  CHECK(l.capture(h1.hold_id, 2'000, "cap").replayed);
  REQUIRE(l.capture(h3.hold_id).ok());  // under hold:<id>:capture
  const std::string default_key = fmt::format("hold:{}:capture", h3.hold_id);
  require_mismatches(s.t.db(), l,
                     {
                         {"hold", [&] { l.capture(h2.hold_id, 2'000, "cap"); }},
                         {"amount", [&] { l.capture(h1.hold_id, 2'001, "cap"); }},
                         // A plain transfer of the same accounts and amount is another operation.
                         {"operation", [&] { l.transfer("card", "shop", 2'000, "cap"); }},
                         {"operation", [&] { l.transfer("card", "shop", 1'000, default_key); }},
                         {"operation", [&] { l.hold("card", "shop", 2'000, "cap", 60s); }},
                         {"operation", [&] { l.withdraw("card", 2'000, "cap"); }},
                     });
  CHECK(l.get_hold(h2.hold_id).state == HoldState::held);
}

TEST_CASE("holds: two threads capturing one hold, or capturing and voiding it, concurrently: exactly one applies",
          "[backend][holds][threads]") {
  Shop s;
  auto& l = s.ledger;
  Database& db = s.t.db();
  // Every call waits behind a lock on the hold's source account, so both are in flight at once.
  auto gate = [&] {
    Transaction g = db.begin();
    g.exec(fmt::format("UPDATE {}accounts SET version = version WHERE id = 'card'", db.table_prefix()));
    return g;
  };
  struct Outcome {
    std::optional<TransferResult> result;
    std::optional<ErrorKind> error;
  };
  auto capture = [&](std::int64_t hold, std::optional<std::int64_t> amount, Outcome& out) {
    return [&l, hold, amount, &out] {
      try {
        out.result = l.capture(hold, amount);
      } catch (const Error& error) {
        out.error = error.kind();
      }
    };
  };
  std::int64_t captured = 0;
  for (int round = 0; round < 2; ++round) {
    INFO("round " << round);
    {  // Capture against capture, the same request: one applies, the other replays it.
      const HoldResult h = l.hold("card", "shop", 1'000, fmt::format("cc-{}", round), 60s);
      Outcome o[2];
      CHECK(rowguard::test::race_through_gate(gate(), {capture(h.hold_id, 600, o[0]), capture(h.hold_id, 600, o[1])}) ==
            0);
      REQUIRE_FALSE(o[0].error);
      REQUIRE_FALSE(o[1].error);
      CHECK(o[0].result->replayed != o[1].result->replayed);
      CHECK(o[0].result->transfer_id == o[1].result->transfer_id);
      captured += 600;
    }
    {  // Capture against capture of other amounts: one applies, the other is idempotency_mismatch.
      const HoldResult h = l.hold("card", "shop", 1'000, fmt::format("cc2-{}", round), 60s);
      Outcome o[2];
      CHECK(rowguard::test::race_through_gate(gate(), {capture(h.hold_id, 100, o[0]), capture(h.hold_id, 101, o[1])}) ==
            0);
      REQUIRE(o[0].result.has_value() != o[1].result.has_value());
      const int won = o[0].result ? 0 : 1;
      CHECK_FALSE(o[won].result->replayed);
      CHECK(o[1 - won].error == ErrorKind::idempotency_mismatch);
      CHECK(l.get_hold(h.hold_id).captured == 100 + won);
      captured += 100 + won;
    }
    {  // Capture against void: exactly one of them.
      const HoldResult h = l.hold("card", "shop", 1'000, fmt::format("cv-{}", round), 60s);
      Outcome c;
      std::optional<Hold> void_result;
      std::optional<ErrorKind> void_error;
      CHECK(rowguard::test::race_through_gate(gate(), {capture(h.hold_id, std::nullopt, c), [&] {
                                                         try {
                                                           void_result = l.void_hold(h.hold_id);
                                                         } catch (const Error& error) {
                                                           void_error = error.kind();
                                                         }
                                                       }}) == 0);
      const Hold after = l.get_hold(h.hold_id);
      if (c.result) {
        CHECK(c.result->ok());
        CHECK(void_error == ErrorKind::hold_closed);
        CHECK(after.state == HoldState::captured);
        captured += 1'000;
      } else {
        CHECK(c.error == ErrorKind::hold_closed);
        REQUIRE(void_result);
        CHECK(void_result->state == HoldState::voided);
        CHECK(after.state == HoldState::voided);
      }
    }
  }
  // Money is conserved and moved exactly once per applied capture.
  CHECK(l.get("shop").balance == captured);
  CHECK(l.get("card").balance == 10'000 - captured);
  CHECK(l.get("card").held == 0);
  const CheckReport report = l.check();
  CHECK(report.ok());
  CHECK(report.total_balance == 10'000);
}

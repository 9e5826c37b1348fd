// Two-phase commit across two PostgreSQL databases: atomic transfers, presumed abort, recovery
// after a coordinator crash at every step, and the clear refusal on SQLite.
#include <chrono>
#include <latch>
#include <map>
#include <random>
#include <set>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/wait.h>

#include "support/fault_proxy.hpp"
#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::FaultProxy;
using rowguard::test::kind_of;
using rowguard::test::port_of;
using rowguard::test::TestDb;
using rowguard::test::via_port;

namespace {

// Thrown from on_step to leave a global transaction where it stands, as a crashed coordinator would.
struct Crash {};

// The test database, whose twin in a second database of the same server (same table prefix)
// is the other participant. The test database also holds the decision log.
struct TwoBanks {
  TestDb t;
  std::string url_b;
  std::shared_ptr<Database> b;
  Ledger la, lb;

  static Database& make_second(TestDb& t, std::string& url, std::shared_ptr<Database>& b) {
    url = rowguard::test::own_database(t.url(), "rowguard_2pc_b");
    Options o = t.options();
    b = std::make_shared<Database>(Database::open(url, o));
    b->migrate();
    return *b;
  }

  TwoBanks() : la((t.db().migrate(), t.db())), lb(make_second(t, url_b, b)) {}

  Database& a() { return t.db(); }

  // alice in a with 1'000, bob in b with nothing.
  void alice_and_bob() {
    la.open("alice", "EUR");
    lb.open("bob", "EUR");
    la.deposit("alice", 1'000, "seed");
  }

  TwoPhase coordinator(TwoPhaseOptions options = {}) {
    options.log_name = "t" + std::to_string(::getpid());
    return TwoPhase(a(), {{"a", &a()}, {"b", b.get()}}, std::move(options));
  }

  // Prepared transactions of this test's coordinators left on the server (it is cluster-wide).
  std::int64_t prepared_left() {
    return a()
        .exec("SELECT count(*) FROM pg_prepared_xacts WHERE left(gid, length($1)) = $1",
              {fmt::format("rowguard:t{}:", ::getpid())})
        .one()
        .i64(0);
  }

  std::int64_t balance(Ledger& l, const char* id) { return l.get(id).balance; }

  void check_both() {
    for (Ledger* l : {&la, &lb}) {
      const CheckReport r = l->check();
      for (const auto& v : r.violations) UNSCOPED_INFO(v.what << " " << v.account << ": " << v.detail);
      CHECK(r.ok());
    }
  }
};

}  // namespace

// [sqlite-only]: not registered on the PostgreSQL backends, which have prepared transactions (the
// [pg] tests cover them).
TEST_CASE("two-phase: SQLite says clearly that it has no two-phase commit", "[backend][sqlite-only]") {
  TestDb t;
  t.db().migrate();
  std::string message;
  CHECK(kind_of([&] { TwoPhase tp(t.db(), {{"a", &t.db()}}); }, &message) == ErrorKind::invalid_argument);
  CHECK_THAT(message, Catch::Contains("two-phase commit is not supported on sqlite"));
  try {
    TwoPhase tp(t.db(), {{"a", &t.db()}});
  } catch (const Error& e) {
    CHECK(e.sqlstate() == "0A000");  // feature_not_supported
  }
  auto tx = t.db().begin();
  tx.exec(
      fmt::format("INSERT INTO {}accounts (id, currency, balance, min_balance, version, created_at, updated_at) "
                  "VALUES ('x', 'EUR', 0, 0, 0, 0, 0)",
                  t.db().table_prefix()));
  CHECK(kind_of([&] { tx.prepare("rowguard:x:1"); }) == ErrorKind::invalid_argument);
  tx.rollback();
  CHECK(rowguard::test::rows_in(t.db(), "accounts") == 0);
}

TEST_CASE("two-phase: a transfer between two databases commits both legs, each ledger check passes", "[pg]") {
  TwoBanks w;
  w.la.open("alice", "EUR");
  w.lb.open("bob", "EUR");
  w.la.deposit("alice", 10'000, "seed");
  auto tp = w.coordinator();
  std::vector<TwoPhaseStep> steps;
  TwoPhaseOptions traced;
  traced.on_step = [&](TwoPhaseStep s, const std::string&) { steps.push_back(s); };
  auto traced_tp = w.coordinator(traced);

  const auto before = metrics();
  const TwoPhaseTransferResult r = traced_tp.transfer("a", "alice", "b", "bob", 2'500, "x-1");
  CHECK(metrics().value("rowguard_two_phase_total", {{"outcome", "committed"}}) -
            before.value("rowguard_two_phase_total", {{"outcome", "committed"}}) ==
        1);
  CHECK(r.ok());
  CHECK_FALSE(r.replayed);
  CHECK(r.unfinished == 0);
  CHECK(r.withdrawal_id > 0);
  CHECK(r.deposit_id > 0);
  CHECK_THAT(r.gid, Catch::StartsWith(fmt::format("rowguard:t{}:", ::getpid())));
  CHECK(steps == std::vector<TwoPhaseStep>{TwoPhaseStep::prepared, TwoPhaseStep::deciding, TwoPhaseStep::decided,
                                           TwoPhaseStep::committed_one, TwoPhaseStep::committed_one,
                                           TwoPhaseStep::finished});
  CHECK(w.balance(w.la, "alice") == 7'500);
  CHECK(w.balance(w.lb, "bob") == 2'500);
  // Each leg is journaled in its own database as money to / from the outside world, tied by the gid.
  const std::string tr = w.a().table_prefix() + "transfers";
  const Row leg_a =
      w.a().exec(fmt::format("SELECT kind, global_txid, amount FROM {} WHERE id = $1", tr), {r.withdrawal_id}).one();
  const Row leg_b =
      w.b->exec(fmt::format("SELECT kind, global_txid, amount FROM {} WHERE id = $1", tr), {r.deposit_id}).one();
  CHECK(leg_a.text(0) == "withdrawal");
  CHECK(leg_b.text(0) == "deposit");
  CHECK(leg_a.text(1) == r.gid);
  CHECK(leg_b.text(1) == r.gid);
  // The decision is logged, and finished once both committed.
  const Row decision = w.a()
                           .exec(fmt::format("SELECT decision, participants, finished_at IS NOT NULL FROM "
                                             "{}global_transactions WHERE gid = $1",
                                             w.a().table_prefix()),
                                 {r.gid})
                           .one();
  CHECK(decision.text(0) == "commit");
  CHECK(decision.text(1) == "a,b");
  CHECK(decision.i64(2) == 1);

  // Back the other way, and a rejection: recorded under its key in the source only.
  CHECK(tp.transfer("b", "bob", "a", "alice", 500, "x-2").ok());
  const TwoPhaseTransferResult short_r = tp.transfer("b", "bob", "a", "alice", 5'000, "x-3");
  CHECK(short_r.status == TransferStatus::insufficient_funds);
  CHECK(short_r.deposit_id == 0);
  CHECK(w.balance(w.la, "alice") == 8'000);
  CHECK(w.balance(w.lb, "bob") == 2'000);
  w.check_both();
  CHECK(w.la.check().total_balance + w.lb.check().total_balance == 10'000);
  CHECK(w.prepared_left() == 0);
}

TEST_CASE("two-phase: a failure in the work or a refused transfer rolls back every database", "[pg]") {
  TwoBanks w;
  w.la.open("alice", "EUR");
  w.lb.open("bob", "EUR");
  w.lb.open("bert", "USD");
  w.la.deposit("alice", 1'000, "seed");
  auto tp = w.coordinator();
  const std::string acc = w.a().table_prefix() + "accounts";
  struct Boom {};
  const auto before = metrics();
  CHECK_THROWS_AS(tp.run([&](GlobalTransaction& g) {
    g["a"].exec(fmt::format("UPDATE {} SET balance = balance - 100 WHERE id = 'alice'", acc));
    g["b"].exec(fmt::format("UPDATE {} SET balance = balance + 100 WHERE id = 'bob'", acc));
    throw Boom{};
  }),
                  Boom);
  CHECK(metrics().value("rowguard_two_phase_total", {{"outcome", "rolled_back"}}) -
            before.value("rowguard_two_phase_total", {{"outcome", "rolled_back"}}) ==
        1);
  // A statement error in the work: the participant's transaction is aborted, nothing prepares.
  CHECK(kind_of([&] {
          tp.run([&](GlobalTransaction& g) {
            g["a"].exec(fmt::format("UPDATE {} SET balance = balance - 100 WHERE id = 'alice'", acc));
            g["b"].exec("SELECT 1 / 0");
          });
        }) == ErrorKind::permanent);
  CHECK(kind_of([&] { tp.run([&](GlobalTransaction& g) { g["c"]; }); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "b", "nobody", 10, "k-1"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "b", "bert", 10, "k-2"); }) == ErrorKind::currency_mismatch);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "a", "alice", 10, "k-3"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "z", "bob", 10, "k-4"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "b", "bob", 0, "k-5"); }) == ErrorKind::invalid_argument);
  CHECK(w.balance(w.la, "alice") == 1'000);
  CHECK(w.balance(w.lb, "bob") == 0);
  CHECK(rowguard::test::rows_in(w.a(), "transfers") == 1);  // the seed deposit only
  CHECK(rowguard::test::rows_in(*w.b, "transfers") == 0);
  CHECK(rowguard::test::rows_in(w.a(), "global_transactions") == 0);  // presumed abort: nothing logged
  CHECK(w.prepared_left() == 0);

  // A transaction aborted by an error cannot be prepared: PostgreSQL would quietly roll it back.
  auto tx = w.a().begin();
  CHECK_THROWS(tx.exec("SELECT 1 / 0"));
  CHECK(kind_of([&] { tx.prepare(fmt::format("rowguard:t{}:aborted:a", ::getpid())); }) == ErrorKind::permanent);
  // Gids go into the statement as literals, so only a strict alphabet passes.
  auto tx2 = w.a().begin();
  CHECK(kind_of([&] { tx2.prepare("x'; DROP TABLE y; --"); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { tx2.prepare(std::string(201, 'a')); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { tx2.prepare(""); }) == ErrorKind::invalid_argument);
  CHECK(w.prepared_left() == 0);
  CHECK(kind_of([&] { TwoPhase(w.a(), {{"a", &w.a()}, {"a", w.b.get()}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { TwoPhase(w.a(), {{"a b", &w.a()}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { TwoPhase(w.a(), {}); }) == ErrorKind::invalid_argument);
}

TEST_CASE("two-phase: a replayed key returns the original outcome and applies once", "[pg][threads]") {
  TwoBanks w;
  w.alice_and_bob();
  auto tp = w.coordinator();
  const TwoPhaseTransferResult first = tp.transfer("a", "alice", "b", "bob", 300, "once");
  const TwoPhaseTransferResult again = tp.transfer("a", "alice", "b", "bob", 300, "once");
  CHECK(again.replayed);
  CHECK(again.ok());
  CHECK(again.gid == first.gid);
  CHECK(again.withdrawal_id == first.withdrawal_id);
  CHECK(again.deposit_id == first.deposit_id);
  const TwoPhaseTransferResult rejected = tp.transfer("a", "alice", "b", "bob", 5'000, "too-much");
  CHECK(tp.transfer("a", "alice", "b", "bob", 5'000, "too-much").replayed);
  CHECK(tp.transfer("a", "alice", "b", "bob", 5'000, "too-much").status == TransferStatus::insufficient_funds);
  CHECK(rejected.status == TransferStatus::insufficient_funds);
  CHECK(kind_of([&] { tp.transfer("a", "alice", "b", "bob", 301, "once"); }) == ErrorKind::idempotency_mismatch);
  // The key is also taken in the destination: a transfer whose key a local deposit there used is refused.
  w.lb.deposit("bob", 1, "taken-in-b");
  CHECK(kind_of([&] { tp.transfer("a", "alice", "b", "bob", 5, "taken-in-b"); }) == ErrorKind::idempotency_mismatch);
  CHECK(w.balance(w.la, "alice") == 700);
  CHECK(w.balance(w.lb, "bob") == 301);
  w.check_both();
  CHECK(w.prepared_left() == 0);
}

TEST_CASE("two-phase: concurrent requests with one key apply once, and the others wait on its locks and replay it",
          "[pg][threads]") {
  TwoBanks w;
  w.alice_and_bob();
  constexpr int requests = 4;
  // The request that prepares first holds its prepared legs (and so the source account's row lock)
  // until every other request is seen waiting for that lock in pg_stat_activity: their calls overlap
  // its own, whatever the scheduler does. Bounded: it gives up after 30 s and the CHECK fails.
  const std::string waiting_sql =
      fmt::format("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%{}accounts%'",
                  w.a().table_prefix());
  std::atomic<int> prepared{0};
  std::int64_t waited = -1;  // written by the one request that prepares, read after the joins
  TwoPhaseOptions o;
  o.on_step = [&](TwoPhaseStep s, const std::string&) {
    if (s != TwoPhaseStep::prepared || ++prepared != 1) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::int64_t n = 0;
    while ((n = w.a().exec(waiting_sql).one().i64(0)) < requests - 1 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    waited = n;
  };
  auto tp = w.coordinator(o);
  std::latch start(requests);
  std::vector<std::thread> threads;
  std::atomic<int> applied{0}, replayed{0}, failed{0};
  for (int i = 0; i < requests; ++i)
    threads.emplace_back([&] {
      start.arrive_and_wait();
      try {
        const TwoPhaseTransferResult r = tp.transfer("a", "alice", "b", "bob", 7, "racing");
        ++(r.replayed ? replayed : applied);
        if (!r.ok() || r.deposit_id == 0) ++failed;
      } catch (const Error&) {
        ++failed;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(prepared == 1);
  CHECK(waited == requests - 1);  // they overlapped: every other request waited on the first one's lock
  CHECK(applied == 1);
  CHECK(replayed == requests - 1);
  CHECK(failed == 0);
  CHECK(w.balance(w.la, "alice") == 993);
  CHECK(w.balance(w.lb, "bob") == 7);
  w.check_both();
  CHECK(w.prepared_left() == 0);
}

TEST_CASE("two-phase: a key reused with any field changed is idempotency_mismatch, never a replay", "[pg]") {
  TwoBanks w;
  // A third participant, so that the destination participant can change alone.
  const std::string url_c = rowguard::test::own_database(w.t.url(), "rowguard_2pc_c");
  Database c = Database::open(url_c, w.t.options());
  c.migrate();
  Ledger lc(c);
  w.la.open("alice", "EUR");
  w.la.open("alice2", "EUR");
  w.lb.open("bob", "EUR");
  w.lb.open("bert", "EUR");
  lc.open("alice", "EUR");
  lc.open("bob", "EUR");
  w.la.deposit("alice", 1'000, "seed");
  w.la.deposit("alice2", 1'000, "seed2");
  lc.deposit("alice", 1'000, "seed-c");
  TwoPhaseOptions o;
  o.log_name = "t" + std::to_string(::getpid());
  TwoPhase tp(w.a(), {{"a", &w.a()}, {"b", w.b.get()}, {"c", &c}}, o);
  REQUIRE(tp.transfer("a", "alice", "b", "bob", 300, "paid").ok());
  REQUIRE(tp.transfer("a", "alice", "b", "bob", 5'000, "short").status == TransferStatus::insufficient_funds);
  auto mismatch = [&](std::string_view from_db, std::string_view from, std::string_view to_db, std::string_view to,
                      std::int64_t amount, std::string_view key) {
    try {
      const TwoPhaseTransferResult r = tp.transfer(from_db, from, to_db, to, amount, key);
      UNSCOPED_INFO("answered " << to_string(r.status) << (r.replayed ? ", replayed" : ""));
      return false;
    } catch (const Error& e) {
      UNSCOPED_INFO(e.what());
      return e.kind() == ErrorKind::idempotency_mismatch;
    }
  };
  for (const auto& [key, amount] : {std::pair<std::string, std::int64_t>{"paid", 300}, {"short", 5'000}}) {
    INFO("key " << key);
    const TwoPhaseTransferResult same = tp.transfer("a", "alice", "b", "bob", amount, key);
    CHECK(same.replayed);
    CHECK(same.ok() == (key == "paid"));
    CHECK(mismatch("a", "alice2", "b", "bob", amount, key));     // source account
    CHECK(mismatch("a", "alice", "c", "bob", amount, key));      // destination participant
    CHECK(mismatch("a", "alice", "b", "bert", amount, key));     // destination account
    CHECK(mismatch("a", "alice", "b", "bob", amount + 1, key));  // amount
  }
  // Source participant: the destination holds the key's deposit.
  CHECK(mismatch("c", "alice", "b", "bob", 300, "paid"));
  // Keys recorded by something that is not a two-phase transfer.
  w.la.withdraw("alice", 10, "plain-withdrawal");
  CHECK(mismatch("a", "alice", "b", "bob", 10, "plain-withdrawal"));
  w.la.deposit("alice", 10, "plain-deposit");
  CHECK(mismatch("a", "alice", "b", "bob", 10, "plain-deposit"));
  // A withdrawal leg of a global transaction with no deposit anywhere.
  tp.run([&](GlobalTransaction& g) { w.la.withdraw(g["a"], "alice", 10, "leg-only", g.gid()); });
  CHECK(mismatch("a", "alice", "b", "bob", 10, "leg-only"));
  CHECK(w.balance(w.la, "alice") == 690);
  CHECK(w.balance(w.la, "alice2") == 1'000);
  CHECK(w.balance(w.lb, "bob") == 300);
  CHECK(w.balance(w.lb, "bert") == 0);
  CHECK(lc.get("alice").balance == 1'000);
  CHECK(lc.get("bob").balance == 0);
  w.check_both();
  CHECK(lc.check().ok());
  CHECK(w.prepared_left() == 0);
}

TEST_CASE("two-phase: a replay whose deposit leg is still prepared commits it by the logged decision", "[pg]") {
  TwoBanks w;
  w.alice_and_bob();
  // The coordinator dies after COMMIT PREPARED in a, before the one in b.
  TwoPhaseOptions o;
  o.on_step = [&](TwoPhaseStep s, const std::string&) {
    if (s == TwoPhaseStep::committed_one) throw Crash{};
  };
  CHECK_THROWS_AS(w.coordinator(o).transfer("a", "alice", "b", "bob", 100, "half"), Crash);
  CHECK(w.prepared_left() == 1);
  const TwoPhaseTransferResult r = w.coordinator().transfer("a", "alice", "b", "bob", 100, "half");
  CHECK(r.replayed);
  CHECK(r.ok());
  CHECK(r.deposit_id > 0);
  CHECK(r.unfinished == 0);
  CHECK(w.prepared_left() == 0);
  CHECK(w.balance(w.lb, "bob") == 100);
  // And with the other destination account, it is a mismatch, not a replay.
  CHECK(kind_of([&] { w.coordinator().transfer("a", "alice", "b", "alice", 100, "half"); }) ==
        ErrorKind::idempotency_mismatch);
  const RecoveryReport rec = w.coordinator().recover();
  CHECK(rec.finished == 1);
  CHECK(rec.clean());
  w.check_both();
}

TEST_CASE(
    "two-phase: a coordinator stopped before its decision past the grace is refused while recover and prune "
    "run, and both legs end alike",
    "[pg][threads]") {
  TwoBanks w;
  w.alice_and_bob();
  const auto grace = std::chrono::milliseconds(300);
  TwoPhaseOptions graced;
  graced.recovery_grace = grace;
  for (const bool b_reachable : {false, true}) {
    INFO("participant b reachable by recovery: " << b_reachable);
    const std::string key = b_reachable ? "late-seen" : "late-blind";
    // Recovery reaches b through a proxy, which is gone when b is to be unreachable.
    auto proxy = std::make_unique<FaultProxy>(port_of(w.url_b));
    Database b_via_proxy = Database::open(via_port(w.url_b, proxy->port()), w.t.options());
    graced.log_name = "t" + std::to_string(::getpid());
    TwoPhase recovery(w.a(), {{"a", &w.a()}, {"b", &b_via_proxy}}, graced);
    if (!b_reachable) proxy.reset();
    RecoveryReport meanwhile;
    std::int64_t pruned = -1;
    TwoPhaseOptions o = graced;
    // The coordinator stalls just before logging its decision, past the grace: recovery aborts the
    // gid, and once that row is older than the grace, prune may run.
    o.on_step = [&](TwoPhaseStep s, const std::string&) {
      if (s != TwoPhaseStep::deciding) return;
      std::this_thread::sleep_for(grace + std::chrono::milliseconds(100));
      meanwhile = recovery.recover();
      std::this_thread::sleep_for(grace + std::chrono::milliseconds(100));
      pruned = w.coordinator(graced).prune(grace);
    };
    std::string message;
    CHECK(kind_of(
              [&] {
                w.coordinator(o).run([&](GlobalTransaction& g) {
                  w.la.withdraw(g["a"], "alice", 100, key, g.gid());
                  w.lb.deposit(g["b"], "bob", 100, key, g.gid());
                });
              },
              &message) == ErrorKind::conflict);
    UNSCOPED_INFO(message);
    for (const auto& e : meanwhile.errors) UNSCOPED_INFO(e);
    CHECK(meanwhile.rolled_back == (b_reachable ? 2 : 1));
    // A participant it could not reach is an unknown outcome: the abort is not finished, not pruned.
    CHECK(meanwhile.finished == (b_reachable ? 1 : 0));
    // Reachable: this abort, and the first round's, which its last recovery finished.
    CHECK(pruned == (b_reachable ? 2 : 0));
    const RecoveryReport last = w.coordinator(graced).recover();
    CHECK(last.clean());
    CHECK(w.prepared_left() == 0);
    // Both legs ended the same way: rolled back, as the coordinator said.
    const std::string sql =
        fmt::format("SELECT count(*) FROM {}transfers WHERE idempotency_key = $1", w.a().table_prefix());
    const std::int64_t in_a = w.a().exec(sql, {key}).one().i64(0);
    const std::int64_t in_b = w.b->exec(sql, {key}).one().i64(0);
    CHECK(in_a == in_b);
    CHECK(in_a == 0);
    CHECK(w.balance(w.la, "alice") + w.balance(w.lb, "bob") == 1'000);
    w.check_both();
  }
}

TEST_CASE("two-phase: a cached balance shows a two-phase transfer at once", "[pg]") {
  TwoBanks w;
  w.alice_and_bob();
  Cache cache_a(w.a()), cache_b(*w.b);
  LedgerOptions cached_a, cached_b;
  cached_a.cache = &cache_a;
  cached_a.cache_ttl = std::chrono::minutes(10);
  cached_b.cache = &cache_b;
  cached_b.cache_ttl = std::chrono::minutes(10);
  Ledger read_a(w.a(), cached_a), read_b(*w.b, cached_b);
  CHECK(read_a.get("alice").balance == 1'000);  // now cached
  CHECK(read_b.get("bob").balance == 0);
  TwoPhaseOptions o;
  o.ledgers = {{"a", cached_a}, {"b", cached_b}};
  auto tp = w.coordinator(o);
  REQUIRE(tp.transfer("a", "alice", "b", "bob", 250, "cached").ok());
  CHECK(read_a.get("alice").balance == 750);
  CHECK(read_b.get("bob").balance == 250);
  REQUIRE(tp.transfer("b", "bob", "a", "alice", 50, "cached-back").ok());
  CHECK(read_a.get("alice").balance == 800);
  CHECK(read_b.get("bob").balance == 200);
  // A participant name the coordinator does not have is refused.
  TwoPhaseOptions bad;
  bad.ledgers = {{"z", cached_a}};
  CHECK(kind_of([&] { w.coordinator(bad); }) == ErrorKind::invalid_argument);
  w.check_both();
}

TEST_CASE("two-phase: recover commits the prepared legs of a logged commit decision", "[pg]") {
  TwoBanks w;
  w.alice_and_bob();
  for (const bool halfway : {false, true}) {
    // Crash after the decision: before any COMMIT PREPARED, or after the first one.
    TwoPhaseOptions o;
    int committed = 0;
    o.on_step = [&](TwoPhaseStep s, const std::string&) {
      if (s == TwoPhaseStep::decided && !halfway) throw Crash{};
      if (s == TwoPhaseStep::committed_one && halfway && ++committed == 1) throw Crash{};
    };
    auto crashing = w.coordinator(o);
    CHECK_THROWS_AS(crashing.transfer("a", "alice", "b", "bob", 100, halfway ? "k-half" : "k-decided"), Crash);
    CHECK(w.prepared_left() == (halfway ? 1 : 2));
    // Recovery needs no grace for a decided gid.
    auto tp = w.coordinator();
    const RecoveryReport r = tp.recover();
    CHECK(r.committed == (halfway ? 1 : 2));
    CHECK(r.rolled_back == 0);
    CHECK(r.in_doubt == 0);
    CHECK(r.finished == 1);
    CHECK(r.clean());
    CHECK(w.prepared_left() == 0);
    // Nothing left to do the second time.
    const RecoveryReport again = tp.recover();
    CHECK(again.committed + again.rolled_back + again.in_doubt + again.finished == 0);
  }
  CHECK(w.balance(w.la, "alice") == 800);
  CHECK(w.balance(w.lb, "bob") == 200);
  // The crashed transfers replay their committed outcome.
  CHECK(w.coordinator().transfer("a", "alice", "b", "bob", 100, "k-decided").replayed);
  w.check_both();
}

TEST_CASE("two-phase: recover aborts an undecided prepare only after the grace, and logs abort first", "[pg]") {
  TwoBanks w;
  w.alice_and_bob();
  TwoPhaseOptions o;
  std::string gid;
  o.on_step = [&](TwoPhaseStep s, const std::string& g) {
    gid = g;
    if (s == TwoPhaseStep::prepared) throw Crash{};
  };
  CHECK_THROWS_AS(w.coordinator(o).transfer("a", "alice", "b", "bob", 100, "k"), Crash);
  CHECK(w.prepared_left() == 2);
  // Younger than the grace: a coordinator may still be deciding, so recovery leaves it.
  const RecoveryReport early = w.coordinator().recover();
  CHECK(early.in_doubt == 2);
  CHECK_FALSE(early.clean());
  CHECK(w.prepared_left() == 2);
  TwoPhaseOptions no_grace;
  no_grace.recovery_grace = std::chrono::milliseconds(0);
  const RecoveryReport r = w.coordinator(no_grace).recover();
  CHECK(r.rolled_back == 2);
  CHECK(r.committed == 0);
  CHECK(r.in_doubt == 0);
  CHECK(r.finished == 1);
  CHECK(w.prepared_left() == 0);
  const Row decision =
      w.a()
          .exec(fmt::format("SELECT decision FROM {}global_transactions WHERE gid = $1", w.a().table_prefix()), {gid})
          .one();
  CHECK(decision.text(0) == "abort");
  CHECK(w.balance(w.la, "alice") == 1'000);
  CHECK(w.balance(w.lb, "bob") == 0);
  // Aborted, so the key is free: the transfer applies when run again.
  const TwoPhaseTransferResult again = w.coordinator().transfer("a", "alice", "b", "bob", 100, "k");
  CHECK(again.ok());
  CHECK_FALSE(again.replayed);
  CHECK(w.balance(w.lb, "bob") == 100);
  w.check_both();
  // Finished decisions are pruned once old enough, never younger than the grace.
  auto tp = w.coordinator();
  CHECK(kind_of([&] { tp.prune(std::chrono::seconds(1)); }) == ErrorKind::invalid_argument);
  CHECK(w.coordinator(no_grace).prune(std::chrono::milliseconds(0)) == 2);
}

TEST_CASE("two-phase: a coordinator that lost the race to recovery does not commit", "[pg]") {
  TwoBanks w;
  w.alice_and_bob();
  TwoPhaseOptions no_grace;
  no_grace.recovery_grace = std::chrono::milliseconds(0);
  auto recovery = w.coordinator(no_grace);
  RecoveryReport meanwhile;
  TwoPhaseOptions o;
  // Recovery runs between the coordinator's PREPAREs and its decision, as if the coordinator had
  // stalled past the grace: it logs 'abort' and rolls back; the coordinator then finds 'abort'.
  o.on_step = [&](TwoPhaseStep s, const std::string&) {
    if (s == TwoPhaseStep::prepared) meanwhile = recovery.recover();
  };
  auto slow = w.coordinator(o);
  CHECK(kind_of([&] {
          slow.run([&](GlobalTransaction& g) {
            w.la.withdraw(g["a"], "alice", 100, "raced", g.gid());
            w.lb.deposit(g["b"], "bob", 100, "raced", g.gid());
          });
        }) == ErrorKind::conflict);
  CHECK(meanwhile.rolled_back == 2);
  CHECK(w.balance(w.la, "alice") == 1'000);
  CHECK(w.balance(w.lb, "bob") == 0);
  CHECK(w.prepared_left() == 0);
  // And the other way round: a decided commit wins over a late recovery's abort.
  TwoPhaseOptions decided;
  decided.on_step = [&](TwoPhaseStep s, const std::string&) {
    if (s == TwoPhaseStep::decided) meanwhile = recovery.recover();
  };
  const TwoPhaseResult r = w.coordinator(decided).run([&](GlobalTransaction& g) {
    w.la.withdraw(g["a"], "alice", 100, "decided", g.gid());
    w.lb.deposit(g["b"], "bob", 100, "decided", g.gid());
  });
  CHECK(meanwhile.committed == 2);
  CHECK(r.unfinished == 0);
  CHECK(w.balance(w.la, "alice") == 900);
  CHECK(w.balance(w.lb, "bob") == 100);
  CHECK(w.prepared_left() == 0);
  w.check_both();
}

TEST_CASE("two-phase: concurrent transfers both ways conserve the total across both databases", "[pg][threads]") {
  TwoBanks w;
  for (int i = 0; i < 3; ++i) {
    w.la.open(fmt::format("a{}", i), "EUR");
    w.lb.open(fmt::format("b{}", i), "EUR");
    w.la.deposit(fmt::format("a{}", i), 1'000, fmt::format("seed-a{}", i));
    w.lb.deposit(fmt::format("b{}", i), 1'000, fmt::format("seed-b{}", i));
  }
  auto tp = w.coordinator();
  std::atomic<int> ok{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t * 7919 + 1));
      for (int i = 0; i < 15; ++i) {
        const bool ab = rng() % 2 == 0;
        const std::string x = fmt::format("{}", rng() % 3), y = fmt::format("{}", rng() % 3);
        try {
          const auto r = ab ? tp.transfer("a", "a" + x, "b", "b" + y, 1 + rng() % 300, fmt::format("c{}-{}", t, i))
                            : tp.transfer("b", "b" + x, "a", "a" + y, 1 + rng() % 300, fmt::format("c{}-{}", t, i));
          if (r.ok()) ++ok;
        } catch (const Error&) {
          ++errors;
        }
      }
    });
  for (auto& th : threads) th.join();
  CHECK(errors == 0);
  CHECK(ok > 0);
  w.check_both();
  CHECK(w.la.check().total_balance + w.lb.check().total_balance == 6'000);
  CHECK(w.prepared_left() == 0);
}

TEST_CASE("two-phase: coordinators killed at random between prepare and commit, then recovered, conserve money",
          "[pg][threads]") {
  TwoBanks w;
  constexpr int accounts = 3;
  for (int i = 0; i < accounts; ++i) {
    w.la.open(fmt::format("a{}", i), "EUR");
    w.lb.open(fmt::format("b{}", i), "EUR");
    w.la.deposit(fmt::format("a{}", i), 10'000, fmt::format("seed-a{}", i));
    w.lb.deposit(fmt::format("b{}", i), 10'000, fmt::format("seed-b{}", i));
  }
  const std::string log_name = "t" + std::to_string(::getpid());
  const Options options = w.t.options();
  const std::string url_a = w.t.url(), url_b = w.url_b;
  const unsigned seed = std::random_device{}();
  INFO("seed " << seed);
  TwoPhaseOptions no_grace;
  no_grace.recovery_grace = std::chrono::milliseconds(0);
  auto recovery = w.coordinator(no_grace);
  std::map<int, int> deaths;  // step -> children that died there
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  int round = 0;
  for (; round < 3 || std::chrono::steady_clock::now() < deadline; ++round) {
    if (round >= 8) break;
    std::vector<pid_t> children;
    for (int c = 0; c < 4; ++c) {
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        // The child: its own connections, transfers until its chosen moment, then _exit there
        // (no destructor, no rollback: the server sees the connection vanish).
        try {
          std::mt19937 rng(seed + static_cast<unsigned>(round * 16 + c));
          const int die_at =
              c < 3 ? c : static_cast<int>(rng() % 4);    // 0 prepared, 1 decided, 2 mid phase two, 3 random
          const int after = static_cast<int>(rng() % 6);  // transfers completed before dying
          auto a = Database::open(url_a, options);
          auto b = Database::open(url_b, options);
          int done = 0;
          TwoPhaseOptions o;
          o.log_name = log_name;
          o.on_step = [&](TwoPhaseStep s, const std::string&) {
            if (done < after) return;
            const int at = die_at == 3 ? static_cast<int>(rng() % 3) : die_at;
            if ((at == 0 && s == TwoPhaseStep::prepared) || (at == 1 && s == TwoPhaseStep::decided) ||
                (at == 2 && s == TwoPhaseStep::committed_one))
              ::_exit(10 + at);
          };
          TwoPhase tp(a, {{"a", &a}, {"b", &b}}, o);
          for (int i = 0; i < 12; ++i) {
            const bool ab = rng() % 2 == 0;
            const std::string x = std::to_string(rng() % accounts), y = std::to_string(rng() % accounts);
            const std::string key = fmt::format("r{}-c{}-{}", round, c, i);
            const std::int64_t amount = 1 + rng() % 400;
            if (ab)
              tp.transfer("a", "a" + x, "b", "b" + y, amount, key);
            else
              tp.transfer("b", "b" + x, "a", "a" + y, amount, key);
            ++done;
          }
          ::_exit(0);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "child %d: %s\n", c, e.what());
          ::_exit(3);
        }
      }
      children.push_back(pid);
    }
    // Recovery races the live coordinators: it may abort a gid a child has not decided yet (with
    // no grace), and the child must then roll back instead of committing.
    bool alive = true;
    while (alive) {
      const RecoveryReport r = recovery.recover();
      for (const auto& e : r.errors) UNSCOPED_INFO(e);
      alive = false;
      for (auto& pid : children) {
        if (pid == 0) continue;
        int status = 0;
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == 0) {
          alive = true;
          continue;
        }
        REQUIRE(WIFEXITED(status));
        const int code = WEXITSTATUS(status);
        CHECK(code != 3);
        if (code >= 10) ++deaths[code - 10];
        pid = 0;
      }
      if (alive) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  // Every coordinator is dead or done: recovery settles everything.
  const RecoveryReport last = recovery.recover();
  for (const auto& e : last.errors) UNSCOPED_INFO(e);
  CHECK(last.clean());
  CHECK(w.prepared_left() == 0);
  UNSCOPED_INFO("rounds " << round << ", deaths after prepare " << deaths[0] << ", after the decision " << deaths[1]
                          << ", mid phase two " << deaths[2]);
  CHECK(deaths[0] > 0);
  CHECK(deaths[1] > 0);
  CHECK(deaths[2] > 0);

  // Each database adds up on its own, and the money is conserved across both.
  w.check_both();
  CHECK(w.la.check().total_balance + w.lb.check().total_balance == 2 * accounts * 10'000);
  // Every applied leg has its twin with the same gid, key and amount in the other database, and no
  // key applied twice.
  const std::string sql = fmt::format(
      "SELECT idempotency_key, global_txid, amount, kind FROM {}transfers WHERE global_txid IS NOT NULL AND outcome = "
      "'ok' ORDER BY idempotency_key",
      w.a().table_prefix());
  std::map<std::string, std::tuple<std::string, std::int64_t, std::string>> in_a, in_b;
  for (const auto& r : w.a().exec(sql).rows)
    CHECK(in_a.emplace(r.text(0), std::tuple{r.text(1), r.i64(2), r.text(3)}).second);
  for (const auto& r : w.b->exec(sql).rows)
    CHECK(in_b.emplace(r.text(0), std::tuple{r.text(1), r.i64(2), r.text(3)}).second);
  CHECK(in_a.size() == in_b.size());
  CHECK(!in_a.empty());
  for (const auto& [key, leg] : in_a) {
    INFO("key " << key);
    const auto twin = in_b.find(key);
    REQUIRE(twin != in_b.end());
    CHECK(std::get<0>(twin->second) == std::get<0>(leg));
    CHECK(std::get<1>(twin->second) == std::get<1>(leg));
    CHECK(std::get<2>(twin->second) != std::get<2>(leg));  // a withdrawal on one side, a deposit on the other
  }
  // The decisions of committed legs say commit.
  for (const auto& [key, leg] : in_a) {
    const Result d =
        w.a().exec(fmt::format("SELECT decision FROM {}global_transactions WHERE gid = $1", w.a().table_prefix()),
                   {std::get<0>(leg)});
    REQUIRE_FALSE(d.empty());
    CHECK(d.rows[0].text(0) == "commit");
  }
}

TEST_CASE("two-phase: the CLI transfers between databases and recovers, exit 9 while anything is in doubt",
          "[pg][threads][cli]") {
  TwoBanks w;
  w.alice_and_bob();
  const std::string log = "t" + std::to_string(::getpid());
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    std::vector<std::string> all{"--db", w.t.url(), "--prefix", w.a().table_prefix(), "--json"};
    all.insert(all.end(), args.begin(), args.end());
    for (const std::string& p : {"a=" + w.t.url(), "b=" + w.url_b}) all.insert(all.end(), {"--participant", p});
    all.insert(all.end(), {"--log-name", log});
    return rowguard::test::run_cli(all, out, true);
  };
  std::string out;
  CHECK(cli({"2pc", "transfer", "a:alice", "b:bob", "250", "--key", "cli-1"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"status\":\"ok\""));
  CHECK(cli({"2pc", "transfer", "a:alice", "b:bob", "250", "--key", "cli-1"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"replayed\":true"));
  CHECK(cli({"2pc", "transfer", "a:alice", "b:bob", "5000", "--key", "cli-2"}) == 4);  // insufficient funds
  CHECK(cli({"2pc", "transfer", "alice", "b:bob", "5", "--key", "cli-3"}) == 2);
  CHECK(w.balance(w.la, "alice") == 750);
  CHECK(w.balance(w.lb, "bob") == 250);
  // A coordinator crashes after its PREPAREs: in doubt until the grace has passed.
  TwoPhaseOptions o;
  o.on_step = [](TwoPhaseStep s, const std::string&) {
    if (s == TwoPhaseStep::prepared) throw Crash{};
  };
  CHECK_THROWS_AS(w.coordinator(o).transfer("a", "alice", "b", "bob", 100, "crashed"), Crash);
  CHECK(cli({"2pc", "recover"}, &out) == 9);
  CHECK_THAT(out, Catch::Contains("\"in_doubt\":2"));
  CHECK(cli({"2pc", "recover", "--grace", "0s"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"rolled_back\":2"));
  CHECK(w.prepared_left() == 0);
  CHECK(w.balance(w.la, "alice") == 750);
  w.check_both();
}

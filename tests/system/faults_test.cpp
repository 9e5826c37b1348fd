// Faults injected into real servers while the bank, lock and cache workloads run; each test ends
// by checking the workloads' invariants (tests/support/fault_workloads.hpp). The CI mode runs each for a
// few seconds; scripts/soak.sh runs them for minutes ($ROWGUARD_FAULT_SECONDS).
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <exception>
#include <future>
#include <latch>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/wait.h>

#include "support/fault_proxy.hpp"
#include "support/fault_workloads.hpp"
#include "support/replication.hpp"
#include "support/support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {

// Transient and in-doubt failures the library retried on its callers' behalf, so far (process-wide).
double retried_faults() {
  return metrics().value("rowguard_retries_total", {{"kind", "transient"}}) +
         metrics().value("rowguard_retries_total", {{"kind", "in_doubt"}});
}

// Runs the three workloads side by side while `fault` runs on its own thread until they finish;
// then checks every invariant, and that the clients met at least `min_seen` of the faults: errors
// of kind transient or in_doubt that reached the workloads, or that the library retried for them.
void under_fault(TestDb& t, const std::string& tag, std::chrono::seconds duration, int min_seen,
                 const std::function<void(const std::atomic<bool>& done)>& fault) {
  t.db().migrate();
  ErrorTally errors;
  const double retried_before = retried_faults();
  std::atomic<bool> done{false};
  BankReport bank;
  LockReport locks;
  CacheReport cache;
  // The faults run until all three workloads have done their work, and stop before their checks.
  std::latch work_done(3);
  std::promise<void> stopped;
  const std::shared_future<void> faults_stopped = stopped.get_future().share();
  std::thread faults([&] {
    fault(done);
    stopped.set_value();
  });
  std::thread stopper([&] {
    work_done.wait();
    done = true;
  });
  std::mutex failed_mutex;
  std::exception_ptr failed;  // a workload's exception, rethrown here rather than ending the process
  auto workload = [&](auto body) {
    return std::thread([&, body] {
      bool quieted = false;
      const std::function<void()> quiet = [&] {
        quieted = true;
        work_done.count_down();
        faults_stopped.wait();
      };
      try {
        body(quiet);
      } catch (...) {
        std::lock_guard lock(failed_mutex);
        if (!failed) failed = std::current_exception();
      }
      if (!quieted) work_done.count_down();
    });
  };
  std::thread b = workload([&](const auto& q) { bank = run_bank(t.db(), tag + "b", 6, 3, duration, errors, q); });
  std::thread l = workload([&](const auto& q) { locks = run_locks(t.db(), tag + "l", 3, duration, errors, q); });
  std::thread c = workload([&](const auto& q) { cache = run_cache(t.db(), tag + "c", 2, duration, errors, q); });
  b.join();
  l.join();
  c.join();
  stopper.join();
  faults.join();
  if (failed) std::rethrow_exception(failed);
  const int retried = static_cast<int>(retried_faults() - retried_before);
  const int seen = errors.of(ErrorKind::transient) + errors.of(ErrorKind::in_doubt) + retried;
  WARN(
      fmt::format("{}: bank {} acknowledged, {} given up, {} retries; locks {} holds, {} stale fenced writes "
                  "rejected; cache {} reads, {} loads; errors: {}; {} transient or in-doubt failures retried by "
                  "the library; {} faults seen by the clients",
                  backend(), bank.acknowledged, bank.given_up, bank.retries, locks.holds, locks.stale_writes_rejected,
                  cache.reads, cache.loads, errors.summary(), retried, seen));
  CHECK(seen >= min_seen);  // the faults reached the clients, not only the server or the network
  INFO("first unexpected error: " << errors.first_unexpected);
  CHECK(errors.first_unexpected.empty());
  // Bank: nothing lost, nothing doubled.
  CHECK(bank.check_ok);
  CHECK(bank.total == bank.expected_total);
  CHECK(bank.acknowledged > 0);
  CHECK(bank.missing == 0);
  CHECK(bank.unexplained == 0);
  CHECK(bank.journal_transfers >= bank.acknowledged);
  CHECK(bank.journal_transfers <= bank.acknowledged + bank.given_up);
  // Locks: never two holders, tokens only grow.
  CHECK(locks.holds > 0);
  CHECK(locks.overlaps == 0);
  CHECK(locks.tokens_out_of_order == 0);
  CHECK(locks.fence_wrong == 0);
  // Cache: only values the loader made for that key, and it still works afterwards.
  CHECK(cache.wrong_values == 0);
  CHECK(cache.final_reads_ok);
}

int shell(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("faults: sessions killed at random by pg_terminate_backend during transfers, locks and cache loads",
          "[pg][threads]") {
  Options options;
  options.pool_size = 8;
  // Its own application_name, so the killer never touches the sessions of tests running beside it.
  options.application_name = fmt::format("rowguard-faults-{}", ::getpid());
  // Behind PgBouncer a server connection serves whichever client comes next: a database of its own
  // keeps the killed ones away from the tests running beside this one.
  TestDb t(options, [](const std::string& url) {
    return can().transaction_pooler ? own_database(url, "rowguard_kill_faults") : url;
  });
  auto admin = t.another(Options{});
  std::atomic<int> kills{0};
  // Seen by the clients in 6 s (2026-12-04): 146-154 directly, 61 through PgBouncer, which absorbs
  // the kills of idle server connections.
  under_fault(t, "kill", fault_duration(6), 10, [&](const std::atomic<bool>& done) {
    std::mt19937 rng(42);
    while (!done) {
      try {
        kills += static_cast<int>(
            admin
                ->exec("SELECT CAST(count(pg_terminate_backend(pid)) AS bigint) FROM (SELECT pid FROM "
                       "pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid() ORDER BY random() "
                       "LIMIT 1) AS victim",
                       {options.application_name})
                .one()
                .i64(0));
      } catch (const Error&) {
        // Behind PgBouncer the admin's own server connection can be the victim: go on.
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 60));
    }
  });
  WARN(fmt::format("{}: {} sessions terminated", backend(), kills.load()));
  CHECK(kills > 0);
}

// Runs only under its own throwaway server (tests/CMakeLists.txt), which it restarts.
TEST_CASE("faults: PostgreSQL restarted (fast shutdown, then start) during transfers, locks and cache loads",
          "[.restart][threads]") {
  const char* data = std::getenv("ROWGUARD_TEST_PGDATA");
  const char* bin = std::getenv("ROWGUARD_TEST_PG_BIN");
  const char* direct_url = std::getenv("ROWGUARD_TEST_PG");
  if (data == nullptr || bin == nullptr || direct_url == nullptr)
    FAIL(
        "ROWGUARD_TEST_PGDATA / ROWGUARD_TEST_PG_BIN / ROWGUARD_TEST_PG are not set: this test restarts its server and "
        "runs "
        "only under its own scripts/pg-throwaway.sh (ctest -L faults)");
  TestDb t;
  int restarts = 0, failed = 0, restarted_in_flight = 0;
  // Seen by the clients (2026-12-04): 406 in 2 restarts, 327 through PgBouncer in 5; under ASan
  // through PgBouncer once only 7 in 6, and once in CI none at all: PgBouncer holds a query while
  // the server is down rather than failing it, so only the transactions in flight at each shutdown
  // see it. So each restart waits (up to 2 s) until the server runs a client's statement or holds
  // its open transaction, seen on a direct session.
  auto direct = Database::open(direct_url);
  const auto busy = [&] {
    try {
      return direct
                 .exec(
                     "SELECT CAST(count(*) AS bigint) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                     "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction') "
                     "AND query NOT LIKE '%pg_stat_activity%'")
                 .one()
                 .i64(0) > 0;
    } catch (const Error&) {
      return false;  // the server is still coming back: the next round asks again
    }
  };
  under_fault(t, "restart", fault_duration(8), 3, [&](const std::atomic<bool>& done) {
    const std::string as_postgres = ::getuid() == 0 ? "runuser -u postgres -- " : "";
    const std::string restart = fmt::format(
        "{}{}/pg_ctl -D {} -l {}/../server.log -m fast -w -t 60 restart >/dev/null 2>&1", as_postgres, bin, data, data);
    std::this_thread::sleep_for(1500ms);  // the workloads are under way
    while (!done) {
      bool in_flight = false;
      for (int i = 0; i < 400 && !done && !(in_flight = busy()); ++i) std::this_thread::sleep_for(5ms);
      restarted_in_flight += in_flight ? 1 : 0;
      (shell(restart) == 0 ? restarts : failed) += 1;
      for (int i = 0; i < 25 && !done; ++i) std::this_thread::sleep_for(100ms);
    }
  });
  WARN(fmt::format("{}: {} restarts, {} of them with a client transaction in flight", backend(), restarts,
                   restarted_in_flight));
  CHECK(restarts > 0);
  CHECK(failed == 0);
}

namespace {

// The first call after a failover may meet an idle session to the dead primary and fail as
// transient; the pool then drops every idle session, and the next call connects to the new primary.
template <class F>
auto once_reconnected(F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::transient) throw;
    return f();
  }
}

}  // namespace

TEST_CASE("failover: the primary killed and its synchronous standby promoted during transfers, locks and cache loads",
          "[.failover-sync][threads]") {
  TestDb t(Options{}, multi_host);
  std::string report;
  under_fault(t, "failover", fault_duration(8), 1, [&](const std::atomic<bool>&) {
    std::this_thread::sleep_for(1500ms);  // the workloads are under way
    report = failover("failover");
  });
  WARN(fmt::format("{}: {}", backend(), report));
  CHECK_THAT(report, Catch::Contains("kill_to_writable_ms"));
}

TEST_CASE(
    "failover: a COMMIT whose wait for the synchronous standby is canceled is in doubt until the standby confirms",
    "[.sync-cancel][threads]") {
  TestDb t(Options{}, multi_host);
  t.db().migrate();
  Ledger ledger(t.db());
  ledger.open("sync-a", "EUR");
  auto admin = Database::open(replicated_env("ROWGUARD_TEST_PG_PRIMARY"));
  // Sessions waiting in a COMMIT for the standby; `cancel` cancels those waits.
  auto waiting = [&](bool cancel) {
    return admin
        .exec(fmt::format("SELECT CAST(count({}) AS bigint) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                          cancel ? "pg_cancel_backend(pid)" : "*"))
        .one()
        .i64(0);
  };
  auto until = [&](const std::function<bool()>& done) {  // done() may act: called until true, once at a time
    for (int i = 0; i < 500; ++i) {
      if (done()) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };
  const auto retried_in_doubt = [] { return metrics().value("rowguard_retries_total", {{"kind", "in_doubt"}}); };
  const double in_doubt_before = retried_in_doubt();

  failover("stop-standby");  // from here every COMMIT on the primary waits for the standby
  std::optional<TransferResult> result;
  std::optional<Error> error;
  std::thread depositor([&] {
    try {
      result = ledger.deposit("sync-a", 700, "sync-cancel-1");
    } catch (const Error& e) {
      error = e;
    }
  });
  // Cancel the deposit's wait (what a client timeout or an operator does): PostgreSQL reports
  // success with a WARNING; rowguard takes it as in doubt and retries with the key. The retry finds
  // the transfer, and before answering commits a barrier that waits for the standby again.
  const bool canceled = until([&] { return waiting(true) == 1; });
  const bool barrier_waits = until([&] { return retried_in_doubt() > in_doubt_before && waiting(false) == 1; });
  failover("start-standby");  // the standby confirms: the barrier, and the deposit before it, are replicated
  depositor.join();
  REQUIRE(canceled);
  CHECK(barrier_waits);
  REQUIRE_FALSE(error);
  REQUIRE(result);
  CHECK(result->ok());
  CHECK(result->replayed);  // the first attempt had committed: applied once, answered by the retry
  CHECK(retried_in_doubt() == in_doubt_before + 1);
  CHECK(ledger.get("sync-a").balance == 700);
  CHECK(ledger.check().ok());
}

TEST_CASE("failover: with an asynchronous standby an acknowledged deposit is lost and a fencing token issued twice",
          "[.failover-async][threads]") {
  TestDb t(Options{}, multi_host);
  t.db().migrate();
  Ledger ledger(t.db());
  Locks locks(t.db());
  ledger.open("async-a", "EUR");
  ledger.deposit("async-a", 100, "async-before");
  std::int64_t token_before = 0;
  {
    auto lease = locks.try_acquire("async-lock", 60s);
    REQUIRE(lease);
    token_before = lease->token();
    lease->release();
  }
  failover("caught-up");       // the standby has everything so far...
  failover("detach-standby");  // ...and nothing after this: what a lagging asynchronous standby misses
  const auto lost = ledger.deposit("async-a", 250, "async-lost");
  REQUIRE(lost.ok());  // acknowledged by the primary
  std::int64_t token_lost = 0;
  {
    auto lease = locks.try_acquire("async-lock", 60s);
    REQUIRE(lease);
    token_lost = lease->token();
    lease->release();
  }
  REQUIRE(token_lost > token_before);
  const std::string report = failover("failover");
  WARN(fmt::format("{}: {}", backend(), report));

  // The promoted standby never saw them: the acknowledged deposit is gone...
  CHECK(once_reconnected([&] { return ledger.get("async-a").balance; }) == 100);
  CHECK(kind_of([&] { ledger.find_transfer_by_key("async-lost"); }) == ErrorKind::not_found);
  // ...and the next holder gets the same token again: a fenced resource that saw token_lost now
  // refuses the new holder's writes, one that did not cannot tell the two holders apart.
  auto again = locks.try_acquire("async-lock", 60s);
  REQUIRE(again);
  CHECK(again->token() == token_lost);
  CHECK(ledger.check().ok());
}

TEST_CASE("faults: a TCP proxy delays, stalls and cuts the connections during transfers, locks and cache loads",
          "[pg][threads]") {
  std::unique_ptr<FaultProxy> proxy;
  TestDb t(Options{}, [&](const std::string& url) {
    proxy = std::make_unique<FaultProxy>(port_of(url));
    return via_port(url, proxy->port());
  });
  int cuts = 0, stalls = 0, delays = 0;
  // Seen by the clients (2026-12-04): 26-33 in 6 cuts (and the stalls and delays), on each backend.
  under_fault(t, "net", fault_duration(6), 6, [&](const std::atomic<bool>& done) {
    std::mt19937 rng(7);
    std::this_thread::sleep_for(300ms);
    while (!done) {
      switch (rng() % 3) {
        case 0:  // a cut: every connection dies at once, mid-statement or idle
          proxy->cut_all();
          ++cuts;
          break;
        case 1:  // a stall shorter than the lease ttl: everything waits, then goes on
          proxy->set_stalled(true);
          std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
          proxy->set_stalled(false);
          ++stalls;
          break;
        default:  // a slow network for a while
          proxy->set_delay(static_cast<int>(1 + rng() % 20));
          std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 300));
          proxy->set_delay(0);
          ++delays;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 250));
    }
  });
  WARN(fmt::format(
      "{}: {} cuts closed {} connections; {} stalls, {} slow periods; {} connections through the "
      "proxy, {} of them opened after the first cut",
      backend(), cuts, proxy->connections_cut(), stalls, delays, proxy->connections(), proxy->reconnections()));
  CHECK(proxy->connections_cut() > 0);  // cuts that closed connections, not calls that found none
  CHECK(proxy->reconnections() > 0);    // the clients connected again after a cut
}

// The lock row's expiry on the database clock, in epoch milliseconds, floored as the library
// floors acquired_at (a cast to bigint would round: an expiry at x.2316 s read as ...232 ms against a
// takeover at x.2317 s read as ...231 ms failed this test once in CI).
std::int64_t expires_at_ms(Database& db, const std::string& name) {
  auto tx = db.begin();
  const Result r = tx.exec(
      "SELECT floor(extract(epoch FROM expires_at) * 1000)::bigint FROM " + db.table_prefix() + "locks WHERE name = $1",
      {name});
  tx.commit();
  REQUIRE(r.rows.size() == 1);
  return r.rows[0].i64(0);
}

TEST_CASE(
    "faults: a holder partitioned from the database knows it lost its lease before another takes it over, "
    "and only after the lease expired on the database clock",
    "[pg][threads]") {
  std::unique_ptr<FaultProxy> proxy;
  std::string direct_url;
  TestDb t(Options{}, [&](const std::string& url) {
    direct_url = url;
    proxy = std::make_unique<FaultProxy>(port_of(url));
    return via_port(url, proxy->port());
  });
  t.db().migrate();
  auto direct = Database::open(direct_url, t.options());
  Locks holder_locks(t.db());  // through the proxy
  Locks other_locks(direct);   // the database's side of the partition
  constexpr auto ttl = 3s;

  std::atomic<bool> on_lost_called{false};  // before the lease: its heartbeat writes them
  std::chrono::steady_clock::time_point on_lost_at;
  auto lease = holder_locks.try_acquire("partitioned", ttl);
  REQUIRE(lease);
  // Destroyed before the lease: a failed REQUIRE during the partition heals it first, so the lease's
  // destructor does not wait forever on its stuck renewal.
  struct Heal {
    FaultProxy& proxy;
    ~Heal() { proxy.set_stalled(false); }
  } heal{*proxy};
  lease->start_heartbeat({.interval = std::nullopt, .on_lost = [&] {
                            on_lost_at = std::chrono::steady_clock::now();
                            on_lost_called = true;
                          }});
  std::this_thread::sleep_for(1500ms);  // a renewal or two go through
  REQUIRE(lease->valid());

  // The partition: nothing passes between the holder and the server, its connections stay open
  // (a stuck renewal waits, as on a real network until TCP gives up). Once a renewal already past
  // the proxy has committed, the server's expiry for the holder is final.
  proxy->set_stalled(true);
  std::this_thread::sleep_for(100ms);
  const std::int64_t holder_expires_ms = expires_at_ms(direct, "partitioned");

  int refused = 0;
  std::optional<Lease> taken;
  const auto give_up = std::chrono::steady_clock::now() + 3 * ttl;
  while (!(taken = other_locks.try_acquire("partitioned", 30s)) && std::chrono::steady_clock::now() < give_up) {
    ++refused;
    std::this_thread::sleep_for(10ms);
  }
  const auto taken_at = std::chrono::steady_clock::now();
  REQUIRE(taken);
  const bool holder_valid_at_takeover = lease->valid();
  const bool holder_told_at_takeover = on_lost_called.load();
  std::int64_t taken_at_db_ms = 0;
  for (const LockInfo& info : other_locks.list())
    if (info.name == "partitioned") taken_at_db_ms = info.acquired_at_ms;
  proxy->set_stalled(false);  // the holder's stuck renewal now reaches the server, too late

  CHECK(refused > 0);                          // it was held while the lease ran
  CHECK(taken_at_db_ms >= holder_expires_ms);  // taken over only after expiry, on the database clock
  CHECK(taken->token() > lease->token());
  CHECK_FALSE(holder_valid_at_takeover);  // the holder's local deadline had passed
  CHECK(holder_told_at_takeover);         // and on_lost had told it, despite the stuck renewal
  if (holder_told_at_takeover) CHECK(on_lost_at < taken_at);

  // After the partition the holder's renewals and guarded writes are refused.
  const auto settle = std::chrono::steady_clock::now() + 10s;
  while (lease->state() != LeaseState::lost && std::chrono::steady_clock::now() < settle)
    std::this_thread::sleep_for(20ms);
  CHECK(lease->state() == LeaseState::lost);
  CHECK(kind_of([&] { lease->renew(ttl); }) == ErrorKind::lock_lost);
  auto tx = t.db().begin();
  CHECK(kind_of([&] { lease->guard(tx); }) == ErrorKind::lock_lost);
  tx.rollback();
  taken->release();
}

TEST_CASE("faults: a server-side statement timeout is transient and a lock timeout a conflict, and nothing applies",
          "[pg][threads]") {
  TestDb t;
  t.db().migrate();
  Ledger ledger(t.db());
  ledger.open("st-a", "EUR");
  ledger.open("st-b", "EUR");
  ledger.deposit("st-a", 1'000, "st-seed");
  const std::string accounts = t.db().table_prefix() + "accounts";
  std::string message;
  {
    // statement_timeout cancels the statement (57014): the transaction is rolled back, so it is
    // safe to retry: transient.
    auto tx = t.db().begin();
    tx.exec("SET LOCAL statement_timeout = 200");
    tx.exec(fmt::format("UPDATE {} SET balance = balance - 1 WHERE id = 'st-a'", accounts));
    const Error e = [&] {
      try {
        tx.exec("SELECT CAST(1 AS bigint) FROM pg_sleep(3)");
      } catch (const Error& e) {
        return e;
      }
      FAIL("the statement was not cancelled");
      return Error(ErrorKind::permanent, "");
    }();
    CHECK(e.kind() == ErrorKind::transient);
    CHECK(e.sqlstate() == "57014");
  }
  CHECK(ledger.get("st-a").balance == 1'000);
  {
    // lock_timeout (55P03) while another transaction holds the row: a conflict, retried by the
    // ledger's policy; the holder's work is untouched.
    auto holder = t.db().begin();
    holder.exec(fmt::format("SELECT id FROM {} WHERE id = 'st-a' FOR UPDATE", accounts));
    auto other = t.another()->begin();
    other.exec("SET LOCAL lock_timeout = 100");
    CHECK(kind_of([&] { other.exec(fmt::format("UPDATE {} SET balance = 0 WHERE id = 'st-a'", accounts)); },
                  &message) == ErrorKind::conflict);
    INFO(message);
    other.rollback();
    holder.commit();
  }
  CHECK(ledger.get("st-a").balance == 1'000);
  // The ledger waits out a row lock held for a while and then applies the transfer once.
  {
    auto holder = t.db().begin();
    holder.exec(fmt::format("SELECT id FROM {} WHERE id = 'st-b' FOR UPDATE", accounts));
    auto transfer = std::async(std::launch::async, [&] { return ledger.transfer("st-a", "st-b", 10, "st-t"); });
    std::this_thread::sleep_for(300ms);
    holder.commit();
    CHECK(transfer.get().ok());
  }
  CHECK(ledger.get("st-b").balance == 10);
  CHECK(ledger.check().ok());
}

TEST_CASE("faults: a lock holder paused with SIGSTOP past its ttl has its stale writes refused by the fence",
          "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  int to_child[2], to_parent[2];
  REQUIRE(::pipe(to_child) == 0);
  REQUIRE(::pipe(to_parent) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The holder: its own connections, no Catch2. Exit 0 when its late write was refused.
    int code = 3;
    try {
      auto db = Database::open(t.url(), t.options());
      Locks locks(db);
      Fence fence(db);
      auto lease = locks.try_acquire("paused", 1s);
      if (lease && fence.admit("ledger-file", lease->token())) {
        char c = 'r';
        (void)!::write(to_parent[1], &c, 1);
        (void)!::read(to_child[0], &c, 1);                          // paused here by SIGSTOP, resumed by SIGCONT
        code = fence.admit("ledger-file", lease->token()) ? 1 : 0;  // the stale write
        auto tx = db.begin();
        try {
          fence.guard(tx, "ledger-file", lease->token());
          code = 1;
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::lock_lost) code = 2;
        }
        lease->detach();
      }
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  char c = 0;
  REQUIRE(::read(to_parent[0], &c, 1) == 1);
  ::kill(child, SIGSTOP);
  Locks locks(t.db());
  Fence fence(t.db());
  auto lease = locks.acquire("paused", 30s, 10s);  // after the paused holder's lease expired
  CHECK(lease.token() == 2);
  CHECK(fence.admit("ledger-file", lease.token()));
  ::kill(child, SIGCONT);
  REQUIRE(::write(to_child[1], &c, 1) == 1);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // its write with token 1 was refused, after token 2 had written
  CHECK(fence.highest("ledger-file") == 2);
  for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]}) ::close(fd);
}

// rowguard-bench: rowguard's locks, transfers and cache side by side with the baselines a user
// would pick instead, on the same server in one run; prints a table of ratios and writes JSON.
//
// Workloads (each names its baselines; bench/baselines.hpp says what each baseline is):
//   transfer   rowguard Ledger::transfer | one-statement raw libpqxx / raw sqlite3 | pessimistic
//              FOR UPDATE transaction | pgbench TPC-B-like, at each --clients count
//   batch      transfer_batch of 100 against single transfers, at each --clients count
//   lock       try_acquire + release | raw one-statement upsert | ShedLock-style | advisory | Redis
//   handoff    holder in another process releases, waiter acquires: LISTEN/NOTIFY vs 100 ms polling
//   cache      Cache::get table hit | raw primary-key SELECT | Redis GET; in-process tier ns per hit
//   hot        16 clients on 2 accounts: rowguard vs pessimistic, every transfer must succeed
//   payment    hold + capture | the same as a two-step saga, steps in their progress transactions |
//              the same saga, steps committing on their own | one transfer; with --pgbouncer also
//              hold + capture | one transfer, both through the PgBouncer
//   2pc        TwoPhase::transfer between accounts in two databases of one server | a transfer
//              inside one database (same run, same accounts): what two-phase commit costs
//   scaling    transfers and pgbench at 1, 2, 4, 8, 16 clients
//   pooler     rowguard transfer, lock and cache get through a transaction-pooling PgBouncer
//              (--pgbouncer) | the same hand-written through it (unnamed statements) | rowguard
//              straight to PostgreSQL
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <rowguard/rowguard.hpp>
#include <sys/wait.h>

#include "baselines.hpp"
#include "runner.hpp"

using namespace std::chrono_literals;

namespace bench {
namespace {

struct Settings {
  std::string backends = "sqlite,postgres";
  std::string pg_url;
  std::string redis;      // host:port
  std::string pgbouncer;  // URL of a transaction-pooling PgBouncer in front of pg_url
  std::vector<int> clients{1, 4};
  double seconds = 5;
  int rounds = 3;
  bool quick = false;
  bool processes = false;
  bool sane = false;
  std::string json_path;
  std::string label;
  std::string pgbench = "/usr/lib/postgresql/15/bin/pgbench";
  std::string sqlite_dir;
  std::string only;  // comma-separated workload names; empty = all
  int accounts = 1000;
  int keys = 1000;
};

const Tables tables{"bench_"};

struct Row {
  std::string backend, group, variant;
  int clients = 0;
  std::string mode = "threads";
  std::vector<double> rounds;  // ops/s per round
  std::uint64_t errors = 0;
  std::string first_error;
  std::string baseline;  // the variant this row is compared with
  double per_op = 1;     // units of work per operation (100 for a batch of 100 transfers)
  double value() const { return median(rounds) * per_op; }
};

struct Check {
  std::string name;
  double value;
  std::string target;
  bool met;
};

struct Report {
  std::vector<Row> rows;
  std::vector<Check> checks;
  nlohmann::json extra = nlohmann::json::object();
  const Row* find(const std::string& backend, const std::string& group, const std::string& variant, int clients) const {
    for (const auto& r : rows)
      if (r.backend == backend && r.group == group && r.variant == variant && r.clients == clients) return &r;
    return nullptr;
  }
  void check(const std::string& name, double value, double at_least, const std::string& target) {
    checks.push_back({name, value, target, value >= at_least});
  }
};

// Random hex: idempotency keys and lock names include one per run and per client, so no
// measurement replays another's keys.
std::string run_nonce() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

std::unique_ptr<rowguard::Database> open_db(const std::string& url, std::size_t pool = 2) {
  rowguard::Options o;
  o.table_prefix = tables.prefix;
  o.pool_size = pool;
  o.application_name = "rowguard-bench";
  return std::make_unique<rowguard::Database>(rowguard::Database::open(url, o));
}

// A variant: a name and how each client makes its operation.
struct Variant {
  std::string name;
  ClientFactory make;
  Mode mode = Mode::threads;
  double per_op = 1;  // units of work per operation (100 for a batch of 100 transfers)
};

// Runs the variants in alternating rounds (so drift hits all alike) and records a row each.
void compare(Report& report, const Settings& s, const std::string& backend, const std::string& group, int clients,
             const std::vector<Variant>& variants, const std::string& baseline) {
  std::vector<Row> rows(variants.size());
  for (std::size_t v = 0; v < variants.size(); ++v) {
    rows[v].backend = backend, rows[v].group = group, rows[v].variant = variants[v].name;
    rows[v].clients = clients, rows[v].baseline = baseline, rows[v].per_op = variants[v].per_op;
    rows[v].mode = variants[v].mode == Mode::threads ? "threads" : "processes";
  }
  for (int round = 0; round < s.rounds; ++round)
    for (std::size_t v = 0; v < variants.size(); ++v) {
      const Measurement m = run_clients(clients, s.seconds, variants[v].mode, variants[v].make);
      rows[v].rounds.push_back(m.ops_per_second());
      rows[v].errors += m.errors;
      if (rows[v].first_error.empty()) rows[v].first_error = m.first_error;
    }
  for (auto& r : rows) {
    std::cerr << fmt::format("  {:<8} {:<15} {:<26} {:>2} {:<9} {:>10.0f}/s{}\n", r.backend, r.group, r.variant,
                             r.clients, r.mode, r.value(),
                             r.errors ? fmt::format("  ({} errors: {})", r.errors, r.first_error) : "");
    report.rows.push_back(std::move(r));
  }
}

// pgbench's built-in TPC-B-like script on the same server: tps (without connection time); the
// transactions it reports failed (serialization or deadlock failures, PostgreSQL 15) into *failed.
double run_pgbench(const Settings& s, int clients, int seconds, std::uint64_t* failed) {
  const std::string cmd = fmt::format("'{}' -n -M prepared -b tpcb-like -c {} -j {} -T {} '{}' 2>&1", s.pgbench,
                                      clients, clients, std::max(1, seconds), s.pg_url);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run pgbench");
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  if (::pclose(p) != 0) throw std::runtime_error("pgbench failed: " + out);
  const auto at = out.find("tps = ");
  if (at == std::string::npos) throw std::runtime_error("no tps in pgbench output: " + out);
  if (const auto f = out.find("number of failed transactions: "); f != std::string::npos)
    *failed += std::stoull(out.substr(f + 31));
  return std::stod(out.substr(at + 6));
}

void pgbench_rows(Report& report, const Settings& s, const std::string& group, int clients) {
  Row r;
  r.backend = "postgres", r.group = group, r.variant = "pgbench tpcb-like", r.clients = clients, r.mode = "pgbench";
  for (int round = 0; round < s.rounds; ++round)
    r.rounds.push_back(run_pgbench(s, clients, static_cast<int>(std::lround(std::max(1.0, s.seconds))), &r.errors));
  if (r.errors) r.first_error = "pgbench reported failed transactions";
  std::cerr << fmt::format("  {:<8} {:<15} {:<26} {:>2} {:<9} {:>10.0f}/s{}\n", r.backend, r.group, r.variant,
                           r.clients, r.mode, r.value(), r.errors ? fmt::format("  ({} failed)", r.errors) : "");
  report.rows.push_back(std::move(r));
}

void pgbench_init(const Settings& s, int scale) {
  const std::string cmd = fmt::format("'{}' -i -q -s {} '{}' > /dev/null 2>&1", s.pgbench, scale, s.pg_url);
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("pgbench -i failed: " + cmd);
}

// Accounts with balances too large to run out, the hot pair, and the cached keys.
void seed(const std::string& url, const Settings& s) {
  auto db = open_db(url);
  db->migrate();
  rowguard::Ledger ledger(*db);
  auto ensure = [&](const std::string& id) {
    ledger.open(id, "EUR");  // already open on a second seed: fine
    ledger.deposit(id, 1'000'000'000'000, "seed-" + id);
  };
  for (int a = 0; a < s.accounts; ++a) ensure(account_id(a));
  ensure("hot-a");
  ensure("hot-b");
  rowguard::Cache cache(*db);
  for (int k = 0; k < s.keys; ++k) cache.put(cache_key(k), std::string(100, 'v'), 24h);
}

ClientFactory rowguard_transfer(const std::string& url, const Accounts& accounts, const std::string& run,
                                std::shared_ptr<std::atomic<std::uint64_t>> retries = nullptr) {
  return [=](int client) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    rowguard::LedgerOptions lo;
    lo.retry.attempts = 10'000;
    lo.retry.deadline = 120s;
    auto ledger = std::make_shared<rowguard::Ledger>(*db, lo);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const std::string nonce = run_nonce();  // keys unique across measurements
    return [=](std::uint64_t i) {
      const auto [from, to] = pick_pair(*rng, accounts);
      const auto before = retries ? ledger->stats().retries : 0;
      const auto r = ledger->transfer(from, to, static_cast<std::int64_t>(1 + (*rng)() % 100),
                                      fmt::format("rg-{}-{}-{}-{}", run, nonce, client, i));
      if (retries) *retries += ledger->stats().retries - before;
      if (!r.ok()) throw std::runtime_error("transfer rejected");
      (void)db;
    };
  };
}

// Workload "payment": one payment authorised, then captured: hold() then capture(), two
// transactions where a plain transfer is one.
ClientFactory rowguard_hold_capture(const std::string& url, const Accounts& accounts, const std::string& run) {
  return [=](int client) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    auto ledger = std::make_shared<rowguard::Ledger>(*db);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const std::string nonce = run_nonce();
    return [=](std::uint64_t i) {
      const auto [from, to] = pick_pair(*rng, accounts);
      const auto h = ledger->hold(from, to, static_cast<std::int64_t>(1 + (*rng)() % 100),
                                  fmt::format("rgh-{}-{}-{}-{}", run, nonce, client, i), 10min);
      if (!h.ok()) throw std::runtime_error("hold rejected");
      ledger->capture(h.hold_id);
      (void)db;
    };
  };
}

// Workload "payment", third and fourth rows: the same hold and capture as the two steps of a saga
// (the hold's compensation voids it), so the rows show what persisting the saga's progress and
// holding its lease cost on top of the ledger calls. in_transaction: each step runs its ledger call
// in the transaction that records the step (SagaStep::in_transaction, what a user writes for
// ledger steps); otherwise each step is an action of its own between two progress commits.
ClientFactory rowguard_saga_hold_capture(const std::string& url, const Accounts& accounts, const std::string& run,
                                         bool in_transaction) {
  return [=](int client) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    auto ledger = std::make_shared<rowguard::Ledger>(*db);
    auto sagas = std::make_shared<rowguard::Sagas>(*db);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const std::string nonce = run_nonce();
    // The payload names the accounts and the amount: "FROM TO AMOUNT". tx: the step's transaction.
    auto hold = [ledger](rowguard::StepContext& c, rowguard::Transaction* tx) {
      std::istringstream in(c.payload);
      std::string from, to;
      std::int64_t amount = 0;
      in >> from >> to >> amount;
      const auto h = tx ? ledger->hold(*tx, from, to, amount, c.idempotency_key(), 10min)
                        : ledger->hold(from, to, amount, c.idempotency_key(), 10min);
      if (!h.ok()) throw std::runtime_error("hold rejected");
      return std::to_string(h.hold_id);
    };
    auto capture = [ledger](rowguard::StepContext& c, rowguard::Transaction* tx) {
      const std::int64_t id = std::stoll(*c.result_of("hold"));
      if (tx)
        ledger->capture(*tx, id, std::nullopt, c.idempotency_key());
      else
        ledger->capture(id, std::nullopt, c.idempotency_key());
      return std::string();
    };
    auto void_hold = [ledger](rowguard::StepContext& c) {
      if (const auto* id = c.result_of("hold")) ledger->void_hold(std::stoll(*id));
    };
    if (in_transaction)
      sagas->define(
          "bench_payment",
          {rowguard::SagaStep::in_transaction(
               "hold", [hold](rowguard::StepContext& c, rowguard::Transaction& tx) { return hold(c, &tx); }, void_hold),
           rowguard::SagaStep::in_transaction(
               "capture", [capture](rowguard::StepContext& c, rowguard::Transaction& tx) { return capture(c, &tx); })});
    else
      sagas->define("bench_payment",
                    {{"hold", [hold](rowguard::StepContext& c) { return hold(c, nullptr); }, void_hold},
                     {"capture", [capture](rowguard::StepContext& c) { return capture(c, nullptr); }, {}}});
    const std::string prefix = in_transaction ? "rgs" : "rgo";
    return [=](std::uint64_t i) {
      const auto [from, to] = pick_pair(*rng, accounts);
      const auto outcome = sagas->run("bench_payment", fmt::format("{}-{}-{}-{}-{}", prefix, run, nonce, client, i),
                                      fmt::format("{} {} {}", from, to, 1 + (*rng)() % 100));
      if (outcome.state != rowguard::SagaState::completed) throw std::runtime_error("saga: " + outcome.error);
      (void)db;
    };
  };
}

// Workload "2pc": a transfer between the same account pool in two databases (alternating
// directions), by two-phase commit: PREPARE on both, the decision row, COMMIT PREPARED on both.
ClientFactory rowguard_two_phase_transfer(const std::string& url, const std::string& url_b, const Accounts& accounts,
                                          const std::string& run) {
  return [=](int client) -> Op {
    auto a = std::shared_ptr<rowguard::Database>(open_db(url));
    auto b = std::shared_ptr<rowguard::Database>(open_db(url_b));
    rowguard::TwoPhaseOptions o;
    o.log_name = "bench";
    o.retry.attempts = 10'000;
    o.retry.deadline = 120s;
    auto tp = std::make_shared<rowguard::TwoPhase>(
        *a, std::vector<std::pair<std::string, rowguard::Database*>>{{"a", a.get()}, {"b", b.get()}}, o);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const std::string nonce = run_nonce();
    return [=](std::uint64_t i) {
      const auto [from, to] = pick_pair(*rng, accounts);
      const bool ab = (*rng)() % 2 == 0;
      const auto amount = static_cast<std::int64_t>(1 + (*rng)() % 100);
      const std::string key = fmt::format("rg2-{}-{}-{}-{}", run, nonce, client, i);
      const auto r = ab ? tp->transfer("a", from, "b", to, amount, key) : tp->transfer("b", from, "a", to, amount, key);
      if (!r.ok()) throw std::runtime_error("2pc transfer rejected");
      (void)a, (void)b;
    };
  };
}

// The second database of the "2pc" workload, on the same server as url: made once, then seeded
// like the first. Returns its URL.
std::string two_phase_database(const std::string& url, const Settings& s) {
  const std::string name = "rowguard_bench_2pc";
  {
    pqxx::connection c(url);
    pqxx::nontransaction n(c);
    try {
      n.exec("CREATE DATABASE " + name);
    } catch (const pqxx::sql_error& e) {
      if (std::string(e.what()).find("already exists") == std::string::npos) throw;
    }
  }
  // postgresql://host:port/DB?query -> the same with the new database name.
  const auto scheme = url.find("://");
  const auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  if (slash == std::string::npos) throw std::runtime_error("2pc workload: cannot find the database name in the URL");
  const auto query = url.find('?', slash);
  const std::string url_b = url.substr(0, slash + 1) + name + (query == std::string::npos ? "" : url.substr(query));
  seed(url_b, s);
  return url_b;
}

ClientFactory rowguard_batch(const std::string& url, const Accounts& accounts, const std::string& run) {
  return [=](int client) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    auto ledger = std::make_shared<rowguard::Ledger>(*db);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const std::string nonce = run_nonce();
    return [=](std::uint64_t i) {
      std::vector<rowguard::BatchItem> items;
      for (int k = 0; k < 100; ++k) {
        const auto [from, to] = pick_pair(*rng, accounts);
        items.push_back({from, to, static_cast<std::int64_t>(1 + (*rng)() % 100),
                         fmt::format("rgb-{}-{}-{}-{}-{}", run, nonce, client, i, k)});
      }
      for (const auto& r : ledger->transfer_batch(items))
        if (!r.ok()) throw std::runtime_error("batch item failed: " + r.message);
      (void)db;
    };
  };
}

ClientFactory rowguard_lock(const std::string& url, const std::string& run) {
  return [=](int client) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    auto locks = std::make_shared<rowguard::Locks>(*db);
    const std::string name = fmt::format("rg-{}-{}", run, client);
    return [=](std::uint64_t) {
      auto lease = locks->try_acquire(name, 30s);
      if (!lease) throw std::runtime_error("lock busy");
      lease->release();
      (void)db;
    };
  };
}

ClientFactory rowguard_cache_get(const std::string& url, const Settings& s) {
  return [=](int) -> Op {
    auto db = std::shared_ptr<rowguard::Database>(open_db(url));
    auto cache = std::make_shared<rowguard::Cache>(*db);
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    const int keys = s.keys;
    return [=](std::uint64_t) {
      if (!cache->get(cache_key(static_cast<int>((*rng)() % static_cast<unsigned>(keys)))))
        throw std::runtime_error("cache miss");
      (void)db;
    };
  };
}

// Nanoseconds per hit of the in-process tier, one thread, warm.
double local_tier_ns(const std::string& url, const Settings& s) {
  auto db = open_db(url);
  rowguard::CacheOptions o;
  o.local_max_bytes = 64 << 20;
  o.local_ttl = 3600s;
  rowguard::Cache cache(*db, o);
  std::vector<std::string> keys;
  for (int k = 0; k < s.keys; ++k) keys.push_back(cache_key(k));
  for (const auto& k : keys) cache.get(k);
  const int n = s.quick ? 200'000 : 2'000'000;
  const auto start = now_ns();
  std::size_t bytes = 0;
  for (int i = 0; i < n; ++i) bytes += cache.get(keys[static_cast<std::size_t>(i) % keys.size()])->size();
  const double ns = static_cast<double>(now_ns() - start) / n;
  if (bytes == 0 || cache.stats().local_hits < static_cast<std::uint64_t>(n)) throw std::runtime_error("tier missed");
  return ns;
}

// Hand-off latency: a holder in another process releases at a recorded instant, this process's
// waiter (already waiting) acquires; milliseconds per hand-off.
std::vector<double> handoff(const std::string& url, const std::string& name, int turns, bool polling) {
  int to_child[2], to_parent[2];
  if (::pipe(to_child) != 0 || ::pipe(to_parent) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(to_child[1]), ::close(to_parent[0]);
    try {
      auto db = open_db(url);
      rowguard::Locks locks(*db);
      for (int t = 0; t < turns; ++t) {
        auto lease = locks.acquire(name, 30s, 30s);
        char byte = 'h';
        (void)!::write(to_parent[1], &byte, 1);
        if (::read(to_child[0], &byte, 1) != 1) break;
        const std::int64_t released_at = now_ns();
        lease.release();
        (void)!::write(to_parent[1], &released_at, sizeof released_at);
        (void)!::read(to_child[0], &byte, 1);  // the waiter has its turn and released
      }
    } catch (const std::exception& e) {
      std::cerr << "rowguard-bench: handoff holder: " << e.what() << '\n';
      ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(to_child[0]), ::close(to_parent[1]);
  auto db = open_db(url, 4);
  rowguard::Locks locks(*db);
  std::vector<double> ms;
  for (int t = 0; t < turns; ++t) {
    char byte = 0;
    if (::read(to_parent[0], &byte, 1) != 1) throw std::runtime_error("holder process died");
    std::int64_t acquired_at = 0;
    std::exception_ptr waiter_failed;
    std::thread waiter([&] {
      try {
        if (polling) {  // Spring's JdbcLockRegistry style: try again every 100 ms
          for (;;) {
            if (auto lease = locks.try_acquire(name, 30s)) {
              acquired_at = now_ns();
              lease->release();
              return;
            }
            std::this_thread::sleep_for(100ms);
          }
        }
        auto lease = locks.acquire(name, 30s, 30s);
        acquired_at = now_ns();
        lease.release();
      } catch (...) {
        waiter_failed = std::current_exception();
      }
    });
    std::this_thread::sleep_for(polling ? 130ms : 30ms);  // the waiter is waiting (polling: mid-interval)
    (void)!::write(to_child[1], "g", 1);
    std::int64_t released_at = 0;
    if (::read(to_parent[0], &released_at, sizeof released_at) != sizeof released_at)
      throw std::runtime_error("holder process died");
    waiter.join();
    if (waiter_failed) std::rethrow_exception(waiter_failed);  // the run fails: no hand-off figure from a failure
    ms.push_back(static_cast<double>(acquired_at - released_at) / 1e6);
    (void)!::write(to_child[1], "n", 1);
  }
  ::close(to_child[1]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(to_parent[0]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("handoff: the holder process failed");
  return ms;
}

bool wanted(const Settings& s, const std::string& workload) {
  return s.only.empty() || ("," + s.only + ",").find("," + workload + ",") != std::string::npos;
}

double ratio(const Report& r, const std::string& backend, const std::string& group, const std::string& ours,
             const std::string& theirs, int clients) {
  const Row* a = r.find(backend, group, ours, clients);
  const Row* b = r.find(backend, group, theirs, clients);
  return a && b && b->value() > 0 ? a->value() / b->value() : 0;
}

// Workload "batch": transfer_batch(100) against single transfers, at each client count.
void batch_rows(Report& report, const Settings& s, const std::string& backend, const std::string& url,
                const Accounts& pool, const std::string& run) {
  for (int c : s.clients) {
    compare(report, s, backend, "batch", c,
            {{"transfer_batch(100)", rowguard_batch(url, pool, run), Mode::threads, 100},
             {"single transfers", rowguard_transfer(url, pool, run)}},
            "single transfers");
    report.check(fmt::format("{} transfer_batch(100) / single transfers, {} client(s)", backend, c),
                 ratio(report, backend, "batch", "transfer_batch(100)", "single transfers", c), 10.0, ">= 10x");
  }
}

// Workload "payment": hold + capture, and the same as a two-step saga, against one transfer.
void payment_rows(Report& report, const Settings& s, const std::string& backend, const std::string& url,
                  const Accounts& pool, const std::string& run) {
  for (int c : s.clients) {
    compare(report, s, backend, "payment", c,
            {{"transfer", rowguard_transfer(url, pool, run)},
             {"hold + capture", rowguard_hold_capture(url, pool, run)},
             {"saga: hold, capture", rowguard_saga_hold_capture(url, pool, run, true)},
             {"saga: own commits", rowguard_saga_hold_capture(url, pool, run, false)}},
            "transfer");
    report.check(fmt::format("{} hold + capture / transfer, {} client(s)", backend, c),
                 ratio(report, backend, "payment", "hold + capture", "transfer", c), 0.45, ">= 0.45x");
    report.check(fmt::format("{} two-step saga / transfer, {} client(s)", backend, c),
                 ratio(report, backend, "payment", "saga: hold, capture", "transfer", c), 0.2, ">= 0.2x");
    // With --pgbouncer: the same pair through a transaction-pooling PgBouncer, where every statement
    // a client sends is planned again on every call.
    if (s.pgbouncer.empty() || backend != "postgres") continue;
    compare(report, s, backend, "payment via PgBouncer", c,
            {{"transfer", rowguard_transfer(s.pgbouncer, pool, run)},
             {"hold + capture", rowguard_hold_capture(s.pgbouncer, pool, run)}},
            "transfer");
    report.check(fmt::format("{} hold + capture / transfer via PgBouncer, {} client(s)", backend, c),
                 ratio(report, backend, "payment via PgBouncer", "hold + capture", "transfer", c), 0.45, ">= 0.45x");
  }
}

// Workload "pooler": rowguard through a transaction-pooling PgBouncer against the same work
// hand-written through the same PgBouncer (unnamed statements, as PgBouncer 1.18 requires), with
// rowguard straight to PostgreSQL as a third row for what the pooler itself costs.
void pooler_rows(Report& report, const Settings& s, const std::string& url, const Accounts& pool,
                 const std::string& run, int c) {
  const std::string& bouncer = s.pgbouncer;
  const std::string hand = "hand-written via PgBouncer";
  compare(report, s, "postgres", "pooler transfer", c,
          {{"rowguard via PgBouncer", rowguard_transfer(bouncer, pool, run)},
           {hand, [&](int client) { return pg_raw_transfer(bouncer, tables, pool, run, client, Sent::unnamed); }},
           {"rowguard direct", rowguard_transfer(url, pool, run)}},
          hand);
  compare(report, s, "postgres", "pooler lock", c,
          {{"rowguard via PgBouncer", rowguard_lock(bouncer, run + "b")},
           {hand, [&](int client) { return pg_raw_lock(bouncer, tables, run + "h", client, Sent::unnamed); }},
           {"rowguard direct", rowguard_lock(url, run)}},
          hand);
  compare(report, s, "postgres", "pooler cache", c,
          {{"rowguard via PgBouncer", rowguard_cache_get(bouncer, s)},
           {hand, [&](int) { return pg_raw_cache_get(bouncer, tables, s.keys, Sent::unnamed); }},
           {"rowguard direct", rowguard_cache_get(url, s)}},
          hand);
  const struct {
    const char* group;
    const char* what;
    double target;
  } targets[] = {
      {"pooler transfer", "transfer", 1.3}, {"pooler lock", "lock", 1.2}, {"pooler cache", "cache get", 0.9}};
  for (const auto& t : targets)
    report.check(fmt::format("postgres {} via PgBouncer / hand-written via it, {} client(s)", t.what, c),
                 ratio(report, "postgres", t.group, "rowguard via PgBouncer", hand, c), t.target,
                 fmt::format(">= {}x", t.target));
}

void run_postgres(Report& report, const Settings& s) {
  const std::string url = s.pg_url;
  const std::string run = run_nonce();
  const Accounts pool = account_pool(s.accounts);
  const Accounts hot_pair{"hot-a", "hot-b"};
  // --redis HOST:PORT, when given: the Redis rows of the lock and cache workloads.
  const auto colon = s.redis.rfind(':');
  const std::string host = s.redis.substr(0, colon);
  const int port = s.redis.empty() ? 0 : std::stoi(s.redis.substr(colon + 1));
  std::cerr << "postgres: seeding " << s.accounts << " accounts and " << s.keys << " cache keys\n";
  seed(url, s);
  pg_create_shedlock_table(url);
  int most = 1;
  for (int c : s.clients) most = std::max(most, c);
  const int scale = std::max(4, s.quick ? most : 16);
  pgbench_init(s, scale);
  report.extra["pgbench_scale"] = scale;

  if (wanted(s, "transfer"))
    for (int c : s.clients) {
      compare(
          report, s, "postgres", "transfer", c,
          {{"rowguard", rowguard_transfer(url, pool, run)},
           {"raw libpqxx 1-stmt", [&](int client) { return pg_raw_transfer(url, tables, pool, run, client); }},
           {"pessimistic 7-stmt", [&](int client) { return pg_pessimistic_transfer(url, tables, pool, run, client); }}},
          "raw libpqxx 1-stmt");
      pgbench_rows(report, s, "transfer", c);
      report.check(fmt::format("postgres transfer / pgbench tpcb, {} client(s)", c),
                   ratio(report, "postgres", "transfer", "rowguard", "pgbench tpcb-like", c), 2.0, ">= 2x");
      report.check(fmt::format("postgres transfer / raw libpqxx one statement, {} client(s)", c),
                   ratio(report, "postgres", "transfer", "rowguard", "raw libpqxx 1-stmt", c), 0.95, ">= 0.95x");
      if (s.processes)
        compare(report, s, "postgres", "transfer", c,
                {{"rowguard (processes)", rowguard_transfer(url, pool, run), Mode::processes},
                 {"raw libpqxx (processes)",
                  [&](int client) { return pg_raw_transfer(url, tables, pool, run, client); }, Mode::processes}},
                "raw libpqxx (processes)");
    }
  if (wanted(s, "batch")) batch_rows(report, s, "postgres", url, pool, run);
  if (wanted(s, "payment")) payment_rows(report, s, "postgres", url, pool, run);
  if (wanted(s, "2pc")) {
    const std::string url_b = two_phase_database(url, s);
    for (int c : s.clients) {
      compare(report, s, "postgres", "2pc", c,
              {{"transfer", rowguard_transfer(url, pool, run)},
               {"2pc transfer", rowguard_two_phase_transfer(url, url_b, pool, run)}},
              "transfer");
      report.check(fmt::format("postgres 2pc transfer / one-database transfer, {} client(s) (informational)", c),
                   ratio(report, "postgres", "2pc", "2pc transfer", "transfer", c), 0.0, "measured");
    }
  }
  if (wanted(s, "lock"))
    for (int c : s.clients) {
      std::vector<Variant> v{{"rowguard", rowguard_lock(url, run)},
                             {"raw libpqxx upsert", [&](int client) { return pg_raw_lock(url, tables, run, client); }},
                             {"shedlock-style", [&](int client) { return pg_shedlock(url, run, client); }},
                             {"advisory lock", [&](int client) { return pg_advisory_lock(url, client); }}};
      if (!s.redis.empty()) {
        v.push_back({"redis SET NX PX", [=](int client) { return redis_lock(host, port, run, client); }});
      }
      compare(report, s, "postgres", "lock", c, v, "raw libpqxx upsert");
      report.check(fmt::format("postgres lock / raw libpqxx, {} client(s)", c),
                   ratio(report, "postgres", "lock", "rowguard", "raw libpqxx upsert", c), 0.9, ">= 0.9x");
      report.check(fmt::format("postgres lock / shedlock-style, {} client(s)", c),
                   ratio(report, "postgres", "lock", "rowguard", "shedlock-style", c), 1.0, ">= 1x");
    }
  if (wanted(s, "handoff")) {
    const int turns = s.quick ? 5 : 40;
    const auto notify = handoff(url, "handoff-" + run, turns, false);
    const auto poll = handoff(url, "handoff-poll-" + run, s.quick ? 3 : 15, true);
    report.extra["handoff_ms"] = {
        {"listen_notify", {{"p50", percentile(notify, 50)}, {"p99", percentile(notify, 99)}, {"turns", notify.size()}}},
        {"polling_100ms", {{"p50", percentile(poll, 50)}, {"p99", percentile(poll, 99)}, {"turns", poll.size()}}}};
    std::cerr << fmt::format(
        "  postgres handoff  LISTEN/NOTIFY p50 {:.2f} ms p99 {:.2f} ms; 100 ms polling p50 {:.1f} "
        "ms p99 {:.1f} ms\n",
        percentile(notify, 50), percentile(notify, 99), percentile(poll, 50), percentile(poll, 99));
    report.checks.push_back(
        {"postgres lock hand-off p50 (ms)", percentile(notify, 50), "< 5 ms", percentile(notify, 50) < 5.0});
  }
  if (wanted(s, "cache"))
    for (int c : s.clients) {
      std::vector<Variant> v{{"rowguard get (table)", rowguard_cache_get(url, s)},
                             {"raw libpqxx pk select", [&](int) { return pg_raw_cache_get(url, tables, s.keys); }}};
      if (!s.redis.empty()) {
        redis_fill(host, port, s.keys, std::string(100, 'v'));
        v.push_back({"redis GET", [=](int) { return redis_get(host, port, s.keys); }});
      }
      compare(report, s, "postgres", "cache", c, v, "raw libpqxx pk select");
      report.check(fmt::format("postgres cache hit / raw pk select, {} client(s)", c),
                   ratio(report, "postgres", "cache", "rowguard get (table)", "raw libpqxx pk select", c), 0.9,
                   ">= 0.9x");
    }
  if (wanted(s, "hot")) {
    auto retries = std::make_shared<std::atomic<std::uint64_t>>(0);
    const int hot_clients = s.quick ? 4 : 16;
    compare(report, s, "postgres", "hot", hot_clients,
            {{"rowguard", rowguard_transfer(url, hot_pair, run, retries)},
             {"pessimistic 7-stmt",
              [&](int client) { return pg_pessimistic_transfer(url, tables, hot_pair, run, client); }}},
            "pessimistic 7-stmt");
    report.extra["hot_rowguard_retries"] = retries->load();
    report.check(fmt::format("postgres hot pair, {} clients: rowguard / pessimistic", hot_clients),
                 ratio(report, "postgres", "hot", "rowguard", "pessimistic 7-stmt", hot_clients), 1.0, ">= 1x");
  }
  if (wanted(s, "pooler") && !s.pgbouncer.empty())
    for (int c : s.clients) pooler_rows(report, s, url, pool, run, c);
  if (wanted(s, "scaling"))
    for (int c : s.quick ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4, 8, 16}) {
      compare(report, s, "postgres", "scaling", c, {{"rowguard", rowguard_transfer(url, pool, run)}}, "");
      pgbench_rows(report, s, "scaling", c);
    }
}

void run_sqlite(Report& report, const Settings& s) {
  const std::string path = s.sqlite_dir + "/bench.db";
  const std::string url = "sqlite:" + path;
  const std::string run = run_nonce();
  const Accounts pool = account_pool(s.accounts);
  std::cerr << "sqlite: seeding " << path << "\n";
  seed(url, s);
  if (wanted(s, "transfer"))
    for (int c : s.clients) {
      compare(report, s, "sqlite", "transfer", c,
              {{"rowguard", rowguard_transfer(url, pool, run)},
               {"raw sqlite3", [&](int client) { return sqlite_raw_transfer(path, tables, pool, run, client); }}},
              "raw sqlite3");
      report.check(fmt::format("sqlite transfer / raw sqlite3, {} client(s)", c),
                   ratio(report, "sqlite", "transfer", "rowguard", "raw sqlite3", c), 0.95, ">= 0.95x");
    }
  if (wanted(s, "batch")) batch_rows(report, s, "sqlite", url, pool, run);
  if (wanted(s, "payment")) payment_rows(report, s, "sqlite", url, pool, run);
  if (wanted(s, "lock"))
    for (int c : s.clients) {
      compare(report, s, "sqlite", "lock", c,
              {{"rowguard", rowguard_lock(url, run)},
               {"raw sqlite3 upsert", [&](int client) { return sqlite_raw_lock(path, tables, run, client); }}},
              "raw sqlite3 upsert");
      report.check(fmt::format("sqlite lock / raw sqlite3, {} client(s)", c),
                   ratio(report, "sqlite", "lock", "rowguard", "raw sqlite3 upsert", c), 0.9, ">= 0.9x");
    }
  if (wanted(s, "cache")) {
    for (int c : s.clients) {
      compare(report, s, "sqlite", "cache", c,
              {{"rowguard get (table)", rowguard_cache_get(url, s)},
               {"raw sqlite3 pk select", [&](int) { return sqlite_raw_cache_get(path, tables, s.keys); }}},
              "raw sqlite3 pk select");
      report.check(fmt::format("sqlite cache hit / raw pk select, {} client(s)", c),
                   ratio(report, "sqlite", "cache", "rowguard get (table)", "raw sqlite3 pk select", c), 0.9,
                   ">= 0.9x");
    }
    const double ns = local_tier_ns(url, s);
    report.extra["local_tier_ns_per_hit"] = ns;
    std::cerr << fmt::format("  in-process tier hit: {:.0f} ns\n", ns);
    report.checks.push_back({"in-process tier hit (ns)", ns, "< 1000 ns", ns < 1000});
  }
}

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
  using namespace bench;
  Settings s;
  if (const char* pg = std::getenv("ROWGUARD_TEST_PG")) s.pg_url = pg;
  if (const char* redis = std::getenv("ROWGUARD_BENCH_REDIS")) s.redis = redis;
  if (const char* bouncer = std::getenv("ROWGUARD_TEST_PGBOUNCER")) s.pgbouncer = bouncer;
  std::string clients = "1,4";
  CLI::App app("rowguard-bench: rowguard against its baselines on the same server, as ratios");
  app.add_option("--backend", s.backends, "sqlite, postgres, or both comma-separated (default both)");
  app.add_option("--pg", s.pg_url, "PostgreSQL URL (default $ROWGUARD_TEST_PG)");
  app.add_option("--redis", s.redis,
                 "HOST:PORT of a redis-server for the Redis rows (default $ROWGUARD_BENCH_REDIS; none: no Redis rows)");
  app.add_option("--pgbouncer", s.pgbouncer,
                 "URL of a transaction-pooling PgBouncer in front of --pg, with rowguard_pooling=transaction "
                 "(default $ROWGUARD_TEST_PGBOUNCER; none: no pooler rows)");
  app.add_option("--clients", clients, "Client counts, comma-separated (default 1,4)");
  app.add_option("--seconds", s.seconds, "Seconds per measurement (default 5)");
  app.add_option("--rounds", s.rounds, "Alternating rounds per comparison; the median counts (default 3)");
  app.add_flag("--quick", s.quick, "Smoke run: 0.5 s, 1 round, clients 1,2, fewer hand-offs");
  app.add_flag("--processes", s.processes, "Also run the transfer comparison with clients as processes");
  app.add_option("--only", s.only,
                 "Workloads, comma-separated: transfer,batch,payment,2pc,lock,handoff,cache,hot,scaling,pooler");
  app.add_option("--json", s.json_path, "Write the results as JSON to this file");
  app.add_flag("--sane", s.sane,
               "Exit 1 unless every row measured more than 0 ops/s and met no errors: rowguard's, the baselines' "
               "and pgbench's failed transactions alike (CI smoke)");
  std::uint64_t fail_every = 0;
  app.add_option("--fail-every", fail_every,
                 "Self-test of --sane: every Nth operation of every row throws instead of running (default 0: never)");
  app.add_option("--label", s.label, "A label for this run's settings, e.g. fsync=off");
  app.add_option("--pgbench", s.pgbench, "pgbench binary");
  app.add_option("--accounts", s.accounts, "Accounts for random transfers (default 1000)");
  CLI11_PARSE(app, argc, argv);
  if (s.quick) s.seconds = 0.5, s.rounds = 1, clients = "1,2";
  inject_failures(fail_every);
  s.clients.clear();
  for (std::size_t at = 0; at < clients.size();) {
    const auto comma = clients.find(',', at);
    s.clients.push_back(std::stoi(clients.substr(at, comma - at)));
    at = comma == std::string::npos ? clients.size() : comma + 1;
  }
  char dir[] = "/tmp/rowguard-bench.XXXXXX";
  if (!::mkdtemp(dir)) return 1;
  s.sqlite_dir = dir;
  Report report;
  int rc = 0;
  try {
    if (s.backends.find("sqlite") != std::string::npos) run_sqlite(report, s);
    if (s.backends.find("postgres") != std::string::npos) {
      if (s.pg_url.empty()) throw std::runtime_error("postgres: no --pg URL and no $ROWGUARD_TEST_PG");
      run_postgres(report, s);
    }
  } catch (const std::exception& e) {
    std::cerr << "rowguard-bench: " << e.what() << '\n';
    rc = 1;
  }
  std::filesystem::remove_all(dir);

  std::cout << fmt::format("\nrowguard-bench {}{}, {} round(s) of {} s, median ops/s\n", s.label.empty() ? "" : s.label,
                           s.quick ? " (quick)" : "", s.rounds, s.seconds);
  std::cout << fmt::format("{:<8} {:<15} {:<26} {:>3} {:<9} {:>11} {:>8}  {}\n", "backend", "workload", "variant",
                           "cli", "mode", "ops/s", "ratio", "errors");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : report.rows) {
    const Row* base = r.baseline.empty() ? nullptr : report.find(r.backend, r.group, r.baseline, r.clients);
    const double rel = base && base->value() > 0 ? r.value() / base->value() : 0;
    std::cout << fmt::format("{:<8} {:<15} {:<26} {:>3} {:<9} {:>11.0f} {:>8}  {}\n", r.backend, r.group, r.variant,
                             r.clients, r.mode, r.value(), base ? fmt::format("{:.2f}x", rel) : "", r.errors);
    rows.push_back({{"backend", r.backend},
                    {"workload", r.group},
                    {"variant", r.variant},
                    {"clients", r.clients},
                    {"mode", r.mode},
                    {"ops_per_second", r.value()},
                    {"rounds", r.rounds},
                    {"errors", r.errors},
                    {"first_error", r.first_error},
                    {"baseline", r.baseline},
                    {"ratio_to_baseline", rel}});
  }
  std::cout << "\ntargets\n";
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& c : report.checks) {
    std::cout << fmt::format("  {:<68} {:>9.2f}  target {:<9} {}\n", c.name, c.value, c.target,
                             c.met ? "met" : "MISSED");
    checks.push_back({{"name", c.name}, {"value", c.value}, {"target", c.target}, {"met", c.met}});
  }
  if (s.sane) {
    // Every row, rowguard's and the baselines' alike: an error anywhere means the figures compare
    // something else than the workload says.
    for (const auto& r : report.rows) {
      if (r.value() <= 0 || !std::isfinite(r.value()) || r.errors > 0) {
        std::cerr << fmt::format("rowguard-bench: not sane: {} {} {} ({} clients): {:.0f} ops/s, {} errors {}\n",
                                 r.backend, r.group, r.variant, r.clients, r.value(), r.errors, r.first_error);
        rc = 1;
      }
    }
    if (report.rows.empty()) rc = 1;
  }
  if (!s.json_path.empty()) {
    std::ofstream out(s.json_path);
    out << nlohmann::json{{"label", s.label}, {"quick", s.quick},  {"seconds", s.seconds}, {"rounds", s.rounds},
                          {"rows", rows},     {"targets", checks}, {"extra", report.extra}}
               .dump(2)
        << '\n';
  }
  return rc;
}

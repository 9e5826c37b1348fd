// rowguard demo: the README's first command. A payment simulation on an embedded SQLite file by
// default: workers move money between accounts (some hot, some overdraft attempts, some retried
// idempotency keys), showing each payer's balance read through the cache table first, a
// nightly-settlement job runs under a lease, and the ledger check ends it, with a check that every
// cached balance equals its account row.
#include <atomic>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unistd.h>
#include <vector>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct DemoArgs {
  int workers = 4;
  int accounts = 20;
  int seconds = 5;
  bool no_cache = false;
};

std::string run_id() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

std::string account_name(std::int64_t n) { return fmt::format("demo-{:04}", n); }

struct Tally {
  std::atomic<std::int64_t> ok{0}, rejected{0}, replays{0}, failures{0}, balance_reads{0};
};

// The demo's one currency.
constexpr std::string_view currency = "EUR";

// Accounts are opened once per database; a rerun finds them open (open is idempotent) and their
// seed deposits replay.
void open_accounts(Ledger& ledger, int accounts) {
  for (int i = 0; i < accounts; ++i) {
    const std::string id = account_name(i);
    ledger.open(id, currency, i % 5 == 0 ? -5'000 : 0);  // every fifth may overdraw by 50.00
    ledger.deposit(id, 100'000, "demo-seed-" + id);
  }
}

// One worker: transfers until stop, some of them retries of its previous key, some overdraft
// attempts, 40% into or out of the hot account demo-0000.
void pay(Ledger& ledger, const DemoArgs& a, const std::string& run, int worker, const std::atomic<bool>& stop,
         Tally& tally) {
  std::mt19937_64 rng(std::random_device{}());
  std::string previous_key;
  std::string prev_from, prev_to;
  std::int64_t prev_amount = 0;
  for (std::int64_t n = 0; !stop; ++n) {
    const int roll = static_cast<int>(rng() % 100);
    std::string from, to, key;
    std::int64_t amount = 0;
    if (roll < 10 && !previous_key.empty()) {
      // A client whose reply was lost retries with the same key: it must replay, not repeat.
      from = prev_from, to = prev_to, amount = prev_amount, key = previous_key;
    } else {
      int f = static_cast<int>(rng() % a.accounts);
      int t = static_cast<int>(rng() % (a.accounts - 1));
      if (t >= f) ++t;
      if (roll < 20) f = 0;
      if (roll >= 20 && roll < 40) t = 0;
      if (f == t) t = (f + 1) % a.accounts;
      from = account_name(f);
      to = account_name(t);
      amount = roll >= 90 ? 500'000 : 1 + static_cast<std::int64_t>(rng() % 5'000);  // 10%: overdraft attempts
      key = fmt::format("demo-{}-{}-{}", run, worker, n);
    }
    try {
      // Balances are read more often than they change: the payer's app shows its balance, and
      // two other customers look at theirs.
      (void)ledger.get(from).balance;
      for (int look = 0; look < 2; ++look)
        (void)ledger.get(account_name(static_cast<std::int64_t>(rng() % a.accounts))).balance;
      tally.balance_reads += 3;
      const auto r = ledger.transfer(from, to, amount, key);
      if (r.replayed)
        ++tally.replays;
      else if (r.ok())
        ++tally.ok;
      else
        ++tally.rejected;
    } catch (const Error&) {
      ++tally.failures;
    }
    previous_key = key, prev_from = from, prev_to = to, prev_amount = amount;
  }
}

double per_second(std::int64_t count, double seconds) { return static_cast<double>(count) / seconds; }

// Runs the workers for a.seconds, showing progress unless --json; returns the seconds they ran.
double run_workers(Ledger& ledger, const DemoArgs& a, const Globals& globals, Tally& tally) {
  const std::string run = run_id();
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(a.workers));
  const auto start = std::chrono::steady_clock::now();
  for (int w = 0; w < a.workers; ++w) workers.emplace_back([&, w] { pay(ledger, a, run, w, stop, tally); });
  const auto run_for = std::chrono::seconds(a.seconds);
  while (std::chrono::steady_clock::now() - start < run_for) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    if (globals.json) continue;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto s = ledger.stats();
    std::cerr << fmt::format(
                     "\r  {:4.1f}s  {:6} transfers  {:7.0f}/s  {:5} rejected  {:5} replays  {:5} conflicts  "
                     "{:5} retries ",
                     secs, tally.ok.load(), per_second(tally.ok.load(), secs), tally.rejected.load(),
                     tally.replays.load(), s.conflicts, s.retries)
              << std::flush;
  }
  stop = true;
  for (auto& t : workers) t.join();
  if (!globals.json) std::cerr << '\n';
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The nightly settlement: every worker tries to run it; the lease lets them take turns. Returns
// the fencing tokens in the order the turns came.
std::vector<std::int64_t> settle(Database& db, int workers) {
  Locks locks(db);
  std::mutex order;
  std::vector<std::int64_t> tokens;
  std::vector<std::thread> settlers;
  settlers.reserve(static_cast<std::size_t>(workers));
  for (int w = 0; w < workers; ++w)
    settlers.emplace_back([&] {
      Lease lease = locks.acquire("demo-nightly-settlement", std::chrono::seconds(10), std::chrono::seconds(60));
      std::lock_guard lock(order);
      tokens.push_back(lease.token());
    });
  for (auto& t : settlers) t.join();
  return tokens;
}

// Transactional invalidation: no cached balance may differ from its row once writes stop.
bool cache_coherent(Ledger& ledger) {
  bool coherent = true;
  for (const auto& row : ledger.list()) {
    const Account cached = ledger.get(row.id);
    if (cached.balance != row.balance || cached.version != row.version) {
      coherent = false;
      std::cerr << fmt::format("  cached {} shows {} (version {}), the row {} (version {})\n", row.id,
                               format_money(cached.balance, currency), cached.version,
                               format_money(row.balance, currency), row.version);
    }
  }
  return coherent;
}

void run_demo(const DemoArgs& a, const Globals& globals) {
  Options options;
  options.table_prefix = globals.prefix;
  options.pool_size = static_cast<std::size_t>(a.workers) + 2;
  auto db = Database::open(globals.db, options);
  const int applied = db.migrate();
  // Balances are read through the cache (with an in-process tier); every transfer drops the
  // cached copies of its two accounts in its own transaction.
  CacheOptions co;
  co.local_max_bytes = 1 << 20;
  Cache cache(db, co);
  LedgerOptions lo;
  lo.retry.attempts = 1000;
  lo.retry.deadline = std::chrono::seconds(60);
  if (!a.no_cache) lo.cache = &cache;
  Ledger ledger(db, lo);
  open_accounts(ledger, a.accounts);

  Tally tally;
  const double secs = run_workers(ledger, a, globals, tally);
  const std::vector<std::int64_t> tokens = settle(db, a.workers);
  bool increasing = true;
  for (std::size_t i = 1; i < tokens.size(); ++i) increasing = increasing && tokens[i] > tokens[i - 1];

  const CheckReport report = ledger.check();
  const LedgerStats stats = ledger.stats();
  const CacheStats cs = cache.stats();
  const bool coherent = cache_coherent(ledger);
  const auto reads = tally.balance_reads.load();
  const auto ok = tally.ok.load();
  const double hit_ratio = reads ? static_cast<double>(cs.hits) / static_cast<double>(reads) : 0.0;
  const bool all_good = report.ok() && increasing && tally.failures == 0 && coherent;
  nlohmann::json out{{"backend", db.backend_name()},
                     {"url", db.display_url()},
                     {"migrations_applied", applied},
                     {"seconds", secs},
                     {"workers", a.workers},
                     {"accounts", report.accounts},
                     {"transfers_ok", ok},
                     {"transfers_rejected", tally.rejected.load()},
                     {"replays", tally.replays.load()},
                     {"failures", tally.failures.load()},
                     {"conflicts", stats.conflicts},
                     {"retries", stats.retries},
                     {"transfers_per_second", per_second(ok, secs)},
                     {"total_balance", report.total_balance},
                     {"ledger_ok", report.ok()},
                     {"lease_tokens_increasing", increasing},
                     {"balance_reads", reads},
                     {"balance_reads_cached", !a.no_cache},
                     {"cache_hits", cs.hits},
                     {"cache_local_hits", cs.local_hits},
                     {"cache_loads", cs.loads},
                     {"cache_coherent", coherent},
                     {"ok", all_good}};
  emit(globals, out,
       fmt::format("rowguard demo on {} ({}), {} workers, {:.1f}s\n"
                   "  transfers applied      {:>10}   ({:.0f}/s)\n"
                   "  rejected (no funds)    {:>10}\n"
                   "  retried keys replayed  {:>10}\n"
                   "  conflicts / retries    {:>10} / {}\n"
                   "  failures               {:>10}\n"
                   "  accounts / total       {:>10} / {}\n"
                   "  balance reads          {:>10}   ({:.0f}% cache hits, {} in process; {} loads)\n"
                   "  cached = stored        {:>10}\n"
                   "  settlement lease       {:>10} turns, tokens strictly increasing: {}\n"
                   "  ledger check           {:>10}",
                   db.display_url(), db.backend_name(), a.workers, secs, ok, per_second(ok, secs),
                   tally.rejected.load(), tally.replays.load(), stats.conflicts, stats.retries, tally.failures.load(),
                   report.accounts, format_money(report.total_balance, currency), reads, hit_ratio * 100.0,
                   cs.local_hits, cs.loads, coherent ? "yes" : "NO", tokens.size(), increasing ? "yes" : "NO",
                   report.ok() ? "every invariant holds" : "VIOLATED"));
  for (const auto& v : report.violations) std::cerr << "  " << v.what << " " << v.account << ": " << v.detail << '\n';
  if (!all_good) throw Error(ErrorKind::permanent, "the demo's invariants failed");
}
}  // namespace

void add_demo_command(CLI::App& app, Globals& globals) {
  auto* demo = app.add_subcommand("demo", "Run the payment demo on an embedded SQLite file (or --db); under a minute");
  auto a = std::make_shared<DemoArgs>();
  demo->add_option("--workers", a->workers, "Concurrent workers (default: 4)")
      ->check(decimal())
      ->check(CLI::Range(1, 64));
  demo->add_option("--accounts", a->accounts, "Accounts (default: 20)")->check(decimal())->check(CLI::Range(2, 10000));
  demo->add_option("--seconds", a->seconds, "How long the workers run (default: 5)")
      ->check(decimal())
      ->check(CLI::Range(1, 600));
  demo->add_flag("--no-cache", a->no_cache, "Read balances from the account rows instead of through the cache");
  demo->callback([a, &globals] { run_demo(*a, globals); });
}

}  // namespace rowguard::cli

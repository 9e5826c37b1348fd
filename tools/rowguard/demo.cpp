// rowguard demo: the README's first command. A payment simulation on an embedded SQLite file by
// default: workers move money between accounts (some hot, some overdraft attempts, some retried
// idempotency keys), showing each payer's balance read through the cache table first, a
// nightly-settlement job runs under a lease, and the ledger check ends it, with a check that every
// cached balance equals its account row.
#include <atomic>
#include <iostream>
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
}  // namespace

void add_demo_command(CLI::App& app, Globals& globals) {
  auto* demo = app.add_subcommand("demo", "Run the payment demo on an embedded SQLite file (or --db); under a minute");
  static DemoArgs a;
  demo->add_option("--workers", a.workers, "Concurrent workers (default: 4)")
      ->check(decimal())
      ->check(CLI::Range(1, 64));
  demo->add_option("--accounts", a.accounts, "Accounts (default: 20)")->check(decimal())->check(CLI::Range(2, 10000));
  demo->add_option("--seconds", a.seconds, "How long the workers run (default: 5)")
      ->check(decimal())
      ->check(CLI::Range(1, 600));
  demo->add_flag("--no-cache", a.no_cache, "Read balances from the account rows instead of through the cache");
  demo->callback([&globals] {
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

    // Accounts are opened once per database; a rerun reuses them (their seed deposits replay).
    for (int i = 0; i < a.accounts; ++i) {
      const std::string id = fmt::format("demo-{:04}", i);
      try {
        ledger.open(id, "EUR", i % 5 == 0 ? -5'000 : 0);  // every fifth may overdraw by 50.00
      } catch (const Error& e) {
        if (e.sqlstate() != "23505") throw;
      }
      ledger.deposit(id, 100'000, "demo-seed-" + id);
    }

    const std::string run = run_id();
    std::atomic<bool> stop{false};
    std::atomic<std::int64_t> ok{0}, rejected{0}, replays{0}, failures{0}, balance_reads{0};
    std::vector<std::thread> workers;
    const auto start = std::chrono::steady_clock::now();
    for (int w = 0; w < a.workers; ++w)
      workers.emplace_back([&, w] {
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
            // A hot account: 40% of transfers pay into or out of demo-0000, so workers contend on it.
            int f = static_cast<int>(rng() % a.accounts);
            int t = static_cast<int>(rng() % (a.accounts - 1));
            if (t >= f) ++t;
            if (roll < 20) f = 0;
            if (roll >= 20 && roll < 40) t = 0;
            if (f == t) t = (f + 1) % a.accounts;
            from = fmt::format("demo-{:04}", f);
            to = fmt::format("demo-{:04}", t);
            amount = roll >= 90 ? 500'000 : 1 + static_cast<std::int64_t>(rng() % 5'000);  // 10%: overdraft attempts
            key = fmt::format("demo-{}-{}-{}", run, w, n);
          }
          try {
            // Balances are read more often than they change: the payer's app shows its balance, and
            // two other customers look at theirs.
            (void)ledger.get(from).balance;
            for (int look = 0; look < 2; ++look)
              (void)ledger.get(fmt::format("demo-{:04}", rng() % a.accounts)).balance;
            balance_reads += 3;
            const auto r = ledger.transfer(from, to, amount, key);
            if (r.replayed)
              ++replays;
            else if (r.ok())
              ++ok;
            else
              ++rejected;
          } catch (const Error&) {
            ++failures;
          }
          previous_key = key, prev_from = from, prev_to = to, prev_amount = amount;
        }
      });

    const auto run_for = std::chrono::seconds(a.seconds);
    while (std::chrono::steady_clock::now() - start < run_for) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (globals.json) continue;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const auto s = ledger.stats();
      std::cerr << fmt::format(
                       "\r  {:4.1f}s  {:6} transfers  {:7.0f}/s  {:5} rejected  {:5} replays  {:5} conflicts  "
                       "{:5} retries ",
                       secs, ok.load(), ok.load() / secs, rejected.load(), replays.load(), s.conflicts, s.retries)
                << std::flush;
    }
    stop = true;
    for (auto& t : workers) t.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!globals.json) std::cerr << '\n';

    // The nightly settlement: every worker tries to run it; the lease lets them take turns, and
    // the fencing tokens come out strictly increasing.
    Locks locks(db);
    std::mutex order;
    std::vector<std::int64_t> tokens;
    std::vector<std::thread> settlers;
    for (int w = 0; w < a.workers; ++w)
      settlers.emplace_back([&] {
        Lease lease = locks.acquire("demo-nightly-settlement", std::chrono::seconds(10), std::chrono::seconds(60));
        std::lock_guard lock(order);
        tokens.push_back(lease.token());
      });
    for (auto& t : settlers) t.join();
    bool increasing = true;
    for (std::size_t i = 1; i < tokens.size(); ++i) increasing = increasing && tokens[i] > tokens[i - 1];

    const CheckReport report = ledger.check();
    const LedgerStats stats = ledger.stats();
    const CacheStats cs = cache.stats();
    // Transactional invalidation: no cached balance may differ from its row once writes stop.
    bool cache_coherent = true;
    for (const auto& row : ledger.list()) {
      const Account cached = ledger.get(row.id);
      if (cached.balance != row.balance || cached.version != row.version) {
        cache_coherent = false;
        std::cerr << fmt::format("  cached {} shows {} (version {}), the row {} (version {})\n", row.id, cached.balance,
                                 cached.version, row.balance, row.version);
      }
    }
    const auto reads = balance_reads.load();
    const double hit_ratio = reads ? static_cast<double>(cs.hits) / static_cast<double>(reads) : 0.0;
    const bool all_good = report.ok() && increasing && failures == 0 && cache_coherent;
    nlohmann::json out{{"backend", db.backend_name()},
                       {"url", db.display_url()},
                       {"migrations_applied", applied},
                       {"seconds", secs},
                       {"workers", a.workers},
                       {"accounts", report.accounts},
                       {"transfers_ok", ok.load()},
                       {"transfers_rejected", rejected.load()},
                       {"replays", replays.load()},
                       {"failures", failures.load()},
                       {"conflicts", stats.conflicts},
                       {"retries", stats.retries},
                       {"transfers_per_second", ok.load() / secs},
                       {"total_balance", report.total_balance},
                       {"ledger_ok", report.ok()},
                       {"lease_tokens_increasing", increasing},
                       {"balance_reads", reads},
                       {"balance_reads_cached", !a.no_cache},
                       {"cache_hits", cs.hits},
                       {"cache_local_hits", cs.local_hits},
                       {"cache_loads", cs.loads},
                       {"cache_coherent", cache_coherent},
                       {"ok", all_good}};
    emit(globals, out,
         fmt::format("rowguard demo on {} ({}), {} workers, {:.1f}s\n"
                     "  transfers applied      {:>10}   ({:.0f}/s)\n"
                     "  rejected (no funds)    {:>10}\n"
                     "  retried keys replayed  {:>10}\n"
                     "  conflicts / retries    {:>10} / {}\n"
                     "  failures               {:>10}\n"
                     "  accounts / total       {:>10} / {} minor units\n"
                     "  balance reads          {:>10}   ({:.0f}% cache hits, {} in process; {} loads)\n"
                     "  cached = stored        {:>10}\n"
                     "  settlement lease       {:>10} turns, tokens strictly increasing: {}\n"
                     "  ledger check           {:>10}",
                     db.display_url(), db.backend_name(), a.workers, secs, ok.load(), ok.load() / secs, rejected.load(),
                     replays.load(), stats.conflicts, stats.retries, failures.load(), report.accounts,
                     report.total_balance, reads, hit_ratio * 100.0, cs.local_hits, cs.loads,
                     cache_coherent ? "yes" : "NO", tokens.size(), increasing ? "yes" : "NO",
                     report.ok() ? "every invariant holds" : "VIOLATED"));
    for (const auto& v : report.violations) std::cerr << "  " << v.what << " " << v.account << ": " << v.detail << '\n';
    if (!all_good) throw Error(ErrorKind::permanent, "the demo's invariants failed");
  });
}

}  // namespace rowguard::cli

// rowguard-client-path: a fixed number of one operation, rowguard's or its hand-written baseline's,
// for measuring the client's own cost per operation under callgrind (instruction counts do not
// depend on the machine's load) or strace (messages per operation). bench/RESULTS.md, "Issue 23:
// the client path", has the figures and the commands.
//
//   rowguard-client-path --seed                          migrate and seed $ROWGUARD_TEST_PG
//   rowguard-client-path --sqlite FILE --seed            the same on a SQLite file (then --sqlite FILE
//                                                        on every run: the baselines are raw sqlite3)
//   rowguard-client-path --op lock --impl rowguard --ops 2000 [--pooled]
//   valgrind --tool=callgrind --collect-atstart=no rowguard-client-path --op transfer --impl raw ...
//
// Workloads (the same as rowguard-bench's, bench/baselines.hpp):
//   transfer  Ledger::transfer | the one-statement transfer on libpqxx
//   lock      Locks::try_acquire + Lease::release | the hand-written upsert and update
//   cache     Cache::get hitting the table (no in-process tier) | a primary-key SELECT
// --pooled runs through $ROWGUARD_TEST_PGBOUNCER; the baselines then send unnamed statements.
// Only the measured operations are collected (CALLGRIND_TOGGLE_COLLECT): connecting, preparing
// and --warmup operations are not.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <rowguard/rowguard.hpp>

#include "baselines.hpp"

// callgrind's client requests (Debian's valgrind package); without it the driver still builds and
// times its operations.
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_TOGGLE_COLLECT
#endif

using namespace std::chrono_literals;

namespace {

const bench::Tables tables{"bench_"};
constexpr int accounts = 100, keys = 100;

std::unique_ptr<rowguard::Database> open_db(const std::string& url) {
  rowguard::Options o;
  o.table_prefix = tables.prefix;
  o.pool_size = 2;
  o.application_name = "rowguard-client-path";
  return std::make_unique<rowguard::Database>(rowguard::Database::open(url, o));
}

void seed(const std::string& url) {
  auto db = open_db(url);
  db->migrate();
  rowguard::Ledger ledger(*db);
  for (int a = 0; a < accounts; ++a) {
    const std::string id = bench::account_id(a);
    ledger.open(id, "EUR");  // already open on a second seed: fine
    ledger.deposit(id, 1'000'000'000'000, "seed-" + id);
  }
  rowguard::Cache cache(*db);
  for (int k = 0; k < keys; ++k) cache.put(bench::cache_key(k), std::string(100, 'v'), 24h);
}

// Everything a rowguard operation needs, kept alive by the Op.
bench::Op rowguard_op(const std::string& op, const std::string& url, const std::string& run) {
  std::shared_ptr<rowguard::Database> db = open_db(url);
  auto rng = std::make_shared<std::mt19937_64>(42);
  if (op == "transfer") {
    auto ledger = std::make_shared<rowguard::Ledger>(*db);
    const bench::Accounts pool = bench::account_pool(accounts);
    return [=](std::uint64_t i) {
      const auto [from, to] = bench::pick_pair(*rng, pool);
      if (!ledger->transfer(from, to, 1, fmt::format("cp-{}-{}", run, i)).ok())
        throw std::runtime_error("transfer rejected");
      (void)db;
    };
  }
  if (op == "lock") {
    auto locks = std::make_shared<rowguard::Locks>(*db);
    const std::string name = "cp-" + run;
    return [=](std::uint64_t) {
      auto lease = locks->try_acquire(name, 30s);
      if (!lease) throw std::runtime_error("lock busy");
      lease->release();
      (void)db;
    };
  }
  auto cache = std::make_shared<rowguard::Cache>(*db);
  return [=](std::uint64_t) {
    if (!cache->get(bench::cache_key(static_cast<int>((*rng)() % keys)))) throw std::runtime_error("cache miss");
    (void)db;
  };
}

bench::Op raw_op(const std::string& op, const std::string& url, const std::string& run, bench::Sent sent) {
  if (url.rfind("sqlite:", 0) == 0) {
    const std::string path = url.substr(7);
    if (op == "transfer") return bench::sqlite_raw_transfer(path, tables, bench::account_pool(accounts), run, 0);
    if (op == "lock") return bench::sqlite_raw_lock(path, tables, run, 0);
    return bench::sqlite_raw_cache_get(path, tables, keys);
  }
  if (op == "transfer") return bench::pg_raw_transfer(url, tables, bench::account_pool(accounts), run, 0, sent);
  if (op == "lock") return bench::pg_raw_lock(url, tables, run, 0, sent);
  return bench::pg_raw_cache_get(url, tables, keys, sent);
}

// The measured loop, alone in the collected part of a callgrind run.
__attribute__((noinline)) void measured(const bench::Op& op, std::uint64_t first, std::uint64_t n) {
  CALLGRIND_TOGGLE_COLLECT;
  for (std::uint64_t i = first; i < first + n; ++i) op(i);
  CALLGRIND_TOGGLE_COLLECT;
}

}  // namespace

int main(int argc, char** argv) {
  std::string op = "transfer", impl = "rowguard";
  std::uint64_t ops = 1000, warmup = 50;
  bool pooled = false, do_seed = false;
  std::string sqlite;
  CLI::App app("rowguard-client-path: N operations of one workload, for callgrind and strace");
  app.add_option("--op", op, "transfer, lock or cache")->check(CLI::IsMember({"transfer", "lock", "cache"}));
  app.add_option("--impl", impl, "rowguard or raw")->check(CLI::IsMember({"rowguard", "raw"}));
  app.add_option("--ops", ops, "Measured operations (default 1000)");
  app.add_option("--warmup", warmup, "Operations before the measured ones (default 50)");
  app.add_flag("--pooled", pooled, "Through $ROWGUARD_TEST_PGBOUNCER instead of $ROWGUARD_TEST_PG");
  app.add_flag("--seed", do_seed, "Migrate and seed $ROWGUARD_TEST_PG, then exit");
  app.add_option("--sqlite", sqlite, "A SQLite file instead of PostgreSQL (the baselines are raw sqlite3)");
  CLI11_PARSE(app, argc, argv);
  const char* env =
      !sqlite.empty() ? sqlite.c_str() : std::getenv(pooled ? "ROWGUARD_TEST_PGBOUNCER" : "ROWGUARD_TEST_PG");
  if (!env) {
    std::cerr << "rowguard-client-path: $" << (pooled ? "ROWGUARD_TEST_PGBOUNCER" : "ROWGUARD_TEST_PG")
              << " is not set (run under scripts/pg-throwaway.sh)\n";
    return 2;
  }
  const std::string url = sqlite.empty() ? std::string(env) : "sqlite:" + sqlite;
  try {
    if (do_seed) {
      seed(url);
      return 0;
    }
    const std::string run = fmt::format("{:08x}", std::random_device{}());
    const bench::Op o = impl == "rowguard"
                            ? rowguard_op(op, url, run)
                            : raw_op(op, url, run, pooled ? bench::Sent::unnamed : bench::Sent::prepared);
    for (std::uint64_t i = 0; i < warmup; ++i) o(i);
    const auto start = std::chrono::steady_clock::now();
    measured(o, warmup, ops);
    const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
    std::cout << fmt::format("{} {} {}: {} ops, {:.1f} us/op\n", impl, op, pooled ? "pooled" : "direct", ops,
                             took.count() / static_cast<double>(ops));
  } catch (const std::exception& e) {
    std::cerr << "rowguard-client-path: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

// cache_demo: a read-through cache on an SQLite file. Many threads ask for one cold key and the
// loader runs once; an invalidation inside a write transaction commits with the write; the ledger
// reads balances through the cache (with an in-process tier) and each transfer drops them.
// Run: ./cache_demo [sqlite:cache_demo.db]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <rowguard/rowguard.hpp>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  try {
    auto db = rowguard::Database::open(argc > 1 ? argv[1] : "sqlite:cache_demo.db");
    db.migrate();
    rowguard::Cache cache(db);
    cache.invalidate("fx:EURUSD");  // start cold, also on a rerun

    std::atomic<int> loads{0};
    auto slow_rate = [&] {
      ++loads;
      std::this_thread::sleep_for(100ms);  // an expensive upstream call
      return std::optional<std::string>("1.0842");
    };
    std::vector<std::thread> callers;
    for (int i = 0; i < 8; ++i) callers.emplace_back([&] { cache.get_or_load("fx:EURUSD", 30s, slow_rate); });
    for (auto& c : callers) c.join();
    std::printf("8 callers, loader ran %d time(s), cached value %s\n", loads.load(),
                cache.get("fx:EURUSD").value_or("(none)").c_str());

    // The write and the invalidation commit together: no window where the cache is stale.
    db.exec("CREATE TABLE IF NOT EXISTS cache_demo_rates (pair text PRIMARY KEY, rate text NOT NULL)");
    auto tx = db.begin();
    tx.exec("DELETE FROM cache_demo_rates WHERE pair = $1", {std::string("EURUSD")});
    tx.exec("INSERT INTO cache_demo_rates VALUES ($1, $2)", {std::string("EURUSD"), std::string("1.0900")});
    cache.invalidate(tx, "fx:EURUSD");
    tx.commit();
    std::printf("after the committed write the cache holds: %s\n",
                cache.get("fx:EURUSD").value_or("(nothing)").c_str());
    const auto s = cache.stats();
    std::printf("hits %llu, misses %llu, loads %llu, waits %llu\n", static_cast<unsigned long long>(s.hits),
                static_cast<unsigned long long>(s.misses), static_cast<unsigned long long>(s.loads),
                static_cast<unsigned long long>(s.waits));

    // Balances through the cache: repeat reads come from this process's memory, and a transfer
    // drops both cached accounts when it commits.
    rowguard::CacheOptions in_process;
    in_process.local_max_bytes = 1 << 20;  // a 1 MiB LRU in front of the table
    in_process.local_ttl = 1s;             // how stale another process's change can look here
    rowguard::Cache balances(db, in_process);
    rowguard::LedgerOptions lo;
    lo.cache = &balances;
    rowguard::Ledger ledger(db, lo);
    for (const char* id : {"shop", "customer"}) ledger.open(id, "EUR");  // false when an earlier run opened it
    const auto run = std::to_string(ledger.get("shop").version);         // fresh keys on every run
    ledger.deposit("customer", 10'000, "cache-demo-seed-" + run);
    const auto before = ledger.get("customer").balance;
    for (int i = 0; i < 100; ++i) ledger.get("customer");  // served from memory
    ledger.transfer("customer", "shop", 250, "cache-demo-pay-" + run);
    const auto after = ledger.get("customer").balance;
    std::printf("customer balance %lld -> %lld after paying 250; %llu of %llu balance reads came from memory\n",
                static_cast<long long>(before), static_cast<long long>(after),
                static_cast<unsigned long long>(balances.stats().local_hits),
                static_cast<unsigned long long>(balances.stats().hits + balances.stats().misses));
    return loads == 1 && after == before - 250 ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "cache_demo: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

// cache_demo: a read-through cache on an SQLite file. Many threads ask for one cold key and the
// loader runs once; an invalidation inside a write transaction commits with the write.
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
    std::printf("after the committed write the cache holds: %s\n", cache.get("fx:EURUSD").value_or("(nothing)").c_str());
    const auto s = cache.stats();
    std::printf("hits %llu, misses %llu, loads %llu, waits %llu\n", static_cast<unsigned long long>(s.hits),
                static_cast<unsigned long long>(s.misses), static_cast<unsigned long long>(s.loads),
                static_cast<unsigned long long>(s.waits));
    return loads == 1 ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "cache_demo: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return rowguard::exit_code(e.kind());
  }
}

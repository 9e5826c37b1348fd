// The read-through cache: hits, misses, one loader per key across threads and processes,
// stale write-backs refused, transactional invalidation.
#include <atomic>
#include <fstream>
#include <future>
#include <set>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "support/support.hpp"

using namespace rowguard;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::TestDb;

namespace {
// Polls until done() or 20 s pass; true when done() became true. For waits that are no assertion.
bool eventually(const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A loader the test holds: it says when it has started, then waits (at most 20 s) until the test
// opens the gate, and returns value. Counts its calls.
struct Gate {
  std::string value;
  std::atomic<int> calls{0};
  std::atomic<bool> open_{false};
  explicit Gate(std::string v) : value(std::move(v)) {}
  CacheLoader loader() {
    return [this] {
      ++calls;
      eventually([this] { return open_.load(); });
      return std::optional<std::string>(value);
    };
  }
  bool started() {
    return eventually([this] { return calls > 0; });
  }
  void open() { open_ = true; }
  // get_or_load(key) through this loader on another thread, returned once the loader runs.
  std::future<std::optional<std::string>> start(Cache& cache, const std::string& key, LoadOptions o = {}) {
    auto load =
        std::async(std::launch::async, [this, &cache, key, o] { return cache.get_or_load(key, 60s, loader(), o); });
    REQUIRE(started());
    return load;
  }
};

LoadOptions scoped(LoadScope scope) {
  LoadOptions o;
  o.scope = scope;
  return o;
}

const char* name_of(LoadScope scope) { return scope == LoadScope::all_processes ? "all_processes" : "this_process"; }
}  // namespace

TEST_CASE("cache: put, get, expiry, binary values and invalidation", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  CHECK_FALSE(cache.get("k"));
  std::string bytes("\0\x01\xff payload \0", 13);
  cache.put("k", bytes, 10s);
  CHECK(cache.get("k") == bytes);
  cache.put("short", "v", 200ms);
  CHECK(cache.get("short") == "v");
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(cache.get("short"));  // expired on the database clock
  cache.invalidate("k");
  CHECK_FALSE(cache.get("k"));
  for (const char* key : {"user:1:name", "user:1:email", "user:2:name"}) cache.put(key, "x", 10s);
  CHECK(cache.invalidate_prefix("user:1:") == 2);
  CHECK_FALSE(cache.get("user:1:name"));
  CHECK(cache.get("user:2:name") == "x");
  // Hits: k, short, user:2:name. Misses: k (before the put), short (expired), k (invalidated),
  // user:1:name.
  const auto s = cache.stats();
  CHECK(s.hits == 3);
  CHECK(s.misses == 4);
}

TEST_CASE("cache: 16 threads asking for one cold key run the loader once", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::atomic<int> loads{0};
  std::atomic<int> ready{0};
  std::vector<std::future<std::optional<std::string>>> callers;
  for (int i = 0; i < 16; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      ++ready;
      eventually([&] { return ready == 16; });  // the start barrier
      return cache.get_or_load("report:2024", 30s, [&] {
        ++loads;
        // The load lasts until the other 15 are waiting for it (at most 20 s): they overlapped.
        eventually([&] { return cache.stats().waits == 15; });
        return std::optional<std::string>("the report");
      });
    }));
  for (auto& c : callers) CHECK(c.get() == "the report");
  CHECK(loads == 1);
  CHECK(cache.stats().waits == 15);
  CHECK(cache.stats().loads == 1);
  CHECK(cache.get("report:2024") == "the report");
}

TEST_CASE("cache: 8 processes asking for one cold key run the loader once", "[backend][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  const auto dir = rowguard::test::scratch_dir();
  const std::string counter = (dir / "loads").string();
  // The loader appends a line per run and takes a while, so concurrent callers would overlap.
  const std::string loader = fmt::format("echo run >> '{}'; sleep 0.3; printf 'value-42'", counter);
  std::vector<std::future<std::pair<int, std::string>>> procs;
  for (int p = 0; p < 8; ++p)
    procs.push_back(std::async(std::launch::async, [&] {
      std::string out;
      const int rc = rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "fetch",
                                              "shared-key", "--ttl", "60s", "--", "sh", "-c", loader},
                                             &out);
      return std::make_pair(rc, out);
    }));
  for (auto& p : procs) {
    const auto [rc, out] = p.get();
    CHECK(rc == 0);
    CHECK(out == "value-42");
  }
  std::ifstream in(counter);
  int runs = 0;
  for (std::string line; std::getline(in, line);) ++runs;
  CHECK(runs == 1);
  // A failing loader command: its exit code passes through and nothing is cached.
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "fetch", "failing", "--",
                                 "sh", "-c", "exit 9"}) == 9);
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "get", "failing"}) == 5);
}

TEST_CASE("cache: a loader that throws releases its waiters with the error and stores nothing", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::atomic<int> loads{0};
  std::atomic<int> arrived{0};
  auto failing = [&] {
    ++loads;
    // Fail only once every caller is inside get_or_load and has had time to start waiting: a
    // caller that arrives after the failure rightly loads again, and on a loaded machine (or with
    // a cold pool opening connections) a fixed 100 ms was not always enough for all four to arrive.
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (arrived < 4 && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(5ms);
    std::this_thread::sleep_for(300ms);
    throw std::runtime_error("upstream down");
    return std::optional<std::string>();
  };
  std::vector<std::future<bool>> callers;
  for (int i = 0; i < 4; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      ++arrived;
      try {
        cache.get_or_load("flaky", 30s, failing);
      } catch (const std::runtime_error&) {
        return true;
      }
      return false;
    }));
  for (auto& c : callers) CHECK(c.wait_for(10s) == std::future_status::ready);
  for (auto& c : callers) CHECK(c.get());
  CHECK(loads == 1);
  CHECK(cache.stats().load_failures == 1);
  CHECK_FALSE(cache.get("flaky"));
  CHECK(cache.get_or_load("flaky", 30s, [] { return std::optional<std::string>("ok now"); }) == "ok now");
}

TEST_CASE("cache: a loader whose process died frees the key when its lease expires", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  // A loader elsewhere took the key's lease and died without releasing it.
  Locks locks(t.db());
  auto dead = locks.try_acquire("cache:orphan", 500ms);
  REQUIRE(dead);
  dead->detach();
  const auto start = std::chrono::steady_clock::now();
  CHECK(cache.get_or_load("orphan", 30s, [] { return std::optional<std::string>("loaded"); }) == "loaded");
  CHECK(std::chrono::steady_clock::now() - start >= 400ms);
  CHECK(cache.stats().waits == 1);
}

TEST_CASE("cache: a loader process killed mid-load frees the key at its lease ttl, and the next caller loads",
          "[backend][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  // `cache fetch` with a loader that outlives the kill (5 s; an orphan holding the test's output
  // open for longer would stall ctest), holding a 1 s loader lease.
  const pid_t pid = rowguard::test::start_cli_holding(
      t, {"cache", "fetch", "killed-key", "--lease", "1s", "--", "sleep", "5"}, "cache:killed-key");
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  Cache cache(t.db());
  const auto start = std::chrono::steady_clock::now();
  CHECK(cache.get_or_load("killed-key", 30s, [] { return std::optional<std::string>("loaded here"); }) ==
        "loaded here");
  CHECK(std::chrono::steady_clock::now() - start < 10s);  // released within the lease ttl, not load_wait
  CHECK(cache.stats().loads == 1);
  CHECK(cache.get("killed-key") == "loaded here");
}

TEST_CASE("cache: a slow loader never writes back a value an invalidation made stale", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::promise<void> loading;
  std::promise<void> invalidated;
  auto slow = std::async(std::launch::async, [&] {
    return cache.get_or_load("balance:alice", 30s, [&] {
      loading.set_value();
      invalidated.get_future().wait();  // a transfer commits while we load the old balance
      return std::optional<std::string>("100");
    });
  });
  loading.get_future().wait();
  cache.invalidate("balance:alice");
  invalidated.set_value();
  CHECK(slow.get() == "100");               // the caller gets what it loaded...
  CHECK_FALSE(cache.get("balance:alice"));  // ...but the stale value was not stored
  CHECK(cache.stats().stale_skipped == 1);
}

TEST_CASE("cache: invalidation inside a transaction commits with it, and not on rollback", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  Ledger ledger(t.db());
  ledger.open("alice", "EUR");
  cache.put("balance:alice", "0", 60s);
  {
    auto tx = t.db().begin();
    tx.exec(fmt::format("UPDATE {}accounts SET min_balance = -1 WHERE id = 'alice'", t.db().table_prefix()));
    cache.invalidate(tx, "balance:alice");
    tx.rollback();
  }
  CHECK(cache.get("balance:alice") == "0");
  {
    auto tx = t.db().begin();
    tx.exec(fmt::format("UPDATE {}accounts SET min_balance = -1 WHERE id = 'alice'", t.db().table_prefix()));
    cache.invalidate(tx, "balance:alice");
    tx.commit();
  }
  CHECK_FALSE(cache.get("balance:alice"));
  CHECK(ledger.get("alice").min_balance == -1);
}

TEST_CASE("cache: absent values are cached only when asked", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  int calls = 0;
  auto absent = [&] {
    ++calls;
    return std::optional<std::string>();
  };
  CHECK_FALSE(cache.get_or_load("nobody", 30s, absent));
  CHECK_FALSE(cache.get_or_load("nobody", 30s, absent));
  CHECK(calls == 2);  // not cached by default
  LoadOptions negative;
  negative.negative_ttl = 30s;
  CHECK_FALSE(cache.get_or_load("ghost", 30s, absent, negative));
  CHECK_FALSE(cache.get_or_load("ghost", 30s, absent, negative));
  CHECK(calls == 3);  // the absence was cached
}

// Without the functions the calls fail, so these paths cannot have gone around them.
TEST_CASE("cache: on PostgreSQL the write-back and every invalidation are calls of schema step 010's functions",
          "[pg]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  LedgerOptions lo;
  lo.cache = &cache;
  Ledger ledger(t.db(), lo);
  ledger.open("alice", "EUR");
  const std::string p = t.db().table_prefix();
  t.db().exec(
      fmt::format("DROP FUNCTION {}cache_store(text, bytea, bigint, bigint, bigint, bigint, bigint, bigint)", p));
  t.db().exec(fmt::format("DROP FUNCTION {}cache_invalidate(text, text)", p));
  const auto sqlstate = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const Error& e) {
      return e.sqlstate();
    }
    return std::string("no error");
  };
  CHECK(sqlstate([&] { cache.get_or_load("k", 10s, [] { return std::optional<std::string>("v"); }); }) == "42883");
  CHECK(sqlstate([&] { cache.invalidate("k"); }) == "42883");
  CHECK(sqlstate([&] {
          auto tx = t.db().begin();
          cache.invalidate(tx, "k");
        }) == "42883");
  CHECK(sqlstate([&] { (void)ledger.deposit("alice", 10, "fn-deposit"); }) == "42883");  // the ledger's drop of two
  cache.put("k", "v", 10s);                                                              // a statement of its own
  CHECK(cache.get("k") == "v");
}

namespace {
// A write-back that waits at the write gate while a sweep holds it, having deleted the key's
// tombstone and recorded its cutoff, is refused once the sweep commits: its upsert sees what the
// sweep committed (docs/cache.md, "What a load may store"). cache runs on db, which may be another
// connection to t's data.
void store_waits_for_a_sweep_in_flight(TestDb& t, Database& db) {
  Cache cache(db);
  const std::string p = t.db().table_prefix();
  Gate gate("stale");
  auto load = gate.start(cache, "gated");  // read: no row
  cache.invalidate("gated");               // a tombstone with a generation: refuses that load
  auto sweep = t.db().begin();             // a sweep deletes the tombstone and records its cutoff
  sweep.exec(rowguard::test::dialect_of(t.db()).transaction_lock(), {p + "cache"});
  CHECK(sweep.exec(fmt::format("DELETE FROM {}cache WHERE key = 'gated'", p)).affected == 1);
  sweep.exec(
      fmt::format("INSERT INTO {}cache_prefixes AS x (prefix, invalidated_at) VALUES ('', clock_timestamp()) "
                  "ON CONFLICT (prefix) DO UPDATE SET invalidated_at = excluded.invalidated_at",
                  p));
  gate.open();  // the store now waits for the gate
  CHECK(eventually([&] {
    return t.db()
               .exec(
                   "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' AND "
                   "strpos(query, $1) > 0",
                   {p + "cache_store("})
               .one()
               .i64(0) == 1;
  }));
  sweep.commit();
  CHECK(load.get() == "stale");  // the caller gets what it loaded, but it is not stored
  CHECK_FALSE(cache.get("gated"));
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 0);
  CHECK(cache.stats().stale_skipped == 1);
  // A load that begins afterwards stores.
  CHECK(cache.get_or_load("gated", 10s, [] { return std::optional<std::string>("fresh"); }) == "fresh");
  CHECK(cache.get("gated") == "fresh");
}
}  // namespace

TEST_CASE("cache: a write-back waiting at the write gate for a sweep in flight is refused by what the sweep committed",
          "[pg]") {
  TestDb t;
  t.db().migrate();
  store_waits_for_a_sweep_in_flight(t, t.db());
}

// The write-back's function judges nothing outside READ COMMITTED (its snapshot would predate the
// gate): the library sends it again in a READ COMMITTED transaction. (A connection option:
// PgBouncer refuses it, hence direct.)
TEST_CASE("cache: with a default isolation of SERIALIZABLE the write-back is still judged after the write gate",
          "[pg][direct]") {
  TestDb t;
  t.db().migrate();
  Options o;
  o.table_prefix = t.db().table_prefix();
  Database serializable = Database::open(
      rowguard::test::keyword_form(t.url(), "options='-c default_transaction_isolation=serializable'"), o);
  REQUIRE(serializable.exec("SELECT current_setting('transaction_isolation')").one().text(0) == "serializable");
  store_waits_for_a_sweep_in_flight(t, serializable);
}

TEST_CASE("cache: sweep deletes long-expired rows in batches", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.sweep_grace = 0ms;
  Cache cache(t.db(), options);
  for (int i = 0; i < 25; ++i) cache.put(fmt::format("old-{}", i), "x", 50ms);
  cache.put("fresh", "y", 60s);
  std::this_thread::sleep_for(150ms);
  CHECK(cache.sweep(10) == 25);
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 1);
  CHECK(cache.get("fresh") == "y");
  CHECK(cache.stats().evictions == 25);
}

TEST_CASE("cache: sweep enforces row and byte bounds, oldest writes first", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.max_rows = 10;
  Cache cache(t.db(), options);
  for (int i = 0; i < 30; ++i) {
    cache.put(fmt::format("k{:02}", i), std::string(100, 'x'), 60s);
    std::this_thread::sleep_for(2ms);  // distinct write times
  }
  CHECK(cache.sweep(7) == 20);
  CHECK(cache.table_stats().rows == 10);
  CHECK_FALSE(cache.get("k00"));  // the oldest went
  CHECK(cache.get("k29"));
  CacheOptions by_bytes;
  by_bytes.max_bytes = 350;
  Cache small(t.db(), by_bytes);
  CHECK(small.sweep() == 7);  // 10 rows of 100 bytes: 7 go, 300 bytes stay
  CHECK(small.table_stats().bytes == 300);
}

TEST_CASE("cache: bad keys, values and ttls are invalid_argument and write nothing", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.max_value_bytes = 16;
  Cache cache(t.db(), options);
  CHECK(kind_of([&] { cache.put("", "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put(std::string(1025, 'k'), "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("bad\xff", "v", 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("k", std::string(17, 'v'), 1s); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.put("k", "v", 0ms); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.get_or_load("k", -1ms, [] { return std::optional<std::string>("v"); }); }) ==
        ErrorKind::invalid_argument);
  CHECK(kind_of([&] { cache.get_or_load("k", 1s, [] { return std::optional<std::string>(std::string(17, 'v')); }); }) ==
        ErrorKind::invalid_argument);
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 0);
  const std::string long_key(1024, 'k');  // the maximum is allowed; its lease name is hashed
  CHECK(cache.get_or_load(long_key, 1s, [] { return std::optional<std::string>("v"); }) == "v");
}

TEST_CASE("cache: stale-while-revalidate serves the old value while another caller refreshes", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions options;
  options.ttl_jitter = 0;
  Cache cache(t.db(), options);
  int loads = 0;
  auto loader = [&] { return std::optional<std::string>(fmt::format("v{}", ++loads)); };
  LoadOptions swr;
  swr.stale_for = 10s;
  CHECK(cache.get_or_load("quote", 100ms, loader, swr) == "v1");
  std::this_thread::sleep_for(200ms);  // expired, within stale_for
  // Someone else is refreshing it (holds the key's loader lease): the stale value comes back at once.
  Locks locks(t.db());
  auto refresher = locks.try_acquire("cache:quote", 10s);
  REQUIRE(refresher);
  CHECK(cache.get_or_load("quote", 100ms, loader, swr) == "v1");
  CHECK(loads == 1);
  CHECK(cache.stats().stale_served == 1);
  refresher->release();
  // Nobody refreshing: this caller refreshes and gets the new value.
  CHECK(cache.get_or_load("quote", 10s, loader, swr) == "v2");
  CHECK(cache.get("quote") == "v2");
  // Without stale_for an expired value is a plain miss.
  cache.put("plain", "old", 50ms);
  std::this_thread::sleep_for(100ms);
  CHECK(cache.get_or_load("plain", 10s, [] { return std::optional<std::string>("new"); }) == "new");
}

TEST_CASE("cache: early refresh (XFetch) reloads a hot key before it expires, one caller at a time", "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  int loads = 0;
  auto loader = [&] { return std::optional<std::string>(fmt::format("v{}", ++loads)); };
  LoadOptions xfetch;
  xfetch.early_refresh = true;
  xfetch.beta = 0.0;  // never early
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v1");
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v1");
  CHECK(loads == 1);
  xfetch.beta = 1e12;  // always early: the value is refreshed although it is live
  CHECK(cache.get_or_load("hot", 60s, loader, xfetch) == "v2");
  CHECK(cache.stats().early_refreshes == 1);
  CHECK(cache.get("hot") == "v2");
}

namespace {
CacheOptions with_local_tier(std::chrono::milliseconds ttl) {
  CacheOptions o;
  o.local_max_bytes = 1 << 20;
  o.local_ttl = ttl;
  return o;
}
}  // namespace

TEST_CASE("cache: the in-process tier drops a key when this process's invalidation commits, not before or on rollback",
          "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(60s));
  cache.put("k", "v1", 60s);
  CHECK(cache.get("k") == "v1");  // read from the table, kept in process
  CHECK(cache.get("k") == "v1");
  CHECK(cache.stats().local_hits == 1);
  // Another process's write reaches this tier only when its copy expires: the documented bound.
  auto elsewhere_db = t.another();
  Cache elsewhere(*elsewhere_db);
  elsewhere.put("k", "v2", 60s);
  CHECK(cache.get("k") == "v1");
  {
    auto tx = t.db().begin();
    cache.invalidate(tx, "k");
    CHECK(cache.get("k") == "v1");  // not before the commit
    tx.rollback();
  }
  CHECK(cache.get("k") == "v1");  // nor after a rollback
  {
    auto tx = t.db().begin();
    cache.put(tx, "other", "x", 60s);
    cache.invalidate(tx, "k");
    tx.commit();
  }
  CHECK_FALSE(cache.get("k"));  // dropped at commit, and the table has the tombstone
  CHECK(cache.get("other") == "x");
}

TEST_CASE("cache: the in-process tier keeps a copy for at most local_ttl", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(300ms));
  cache.put("k", "v1", 60s);
  CHECK(cache.get("k") == "v1");
  auto elsewhere_db = t.another();
  Cache(*elsewhere_db).put("k", "v2", 60s);
  CHECK(cache.get("k") == "v1");
  std::this_thread::sleep_for(400ms);
  CHECK(cache.get("k") == "v2");
  // Nor past the value's own expiry in the table.
  Cache longer(t.db(), with_local_tier(60s));
  longer.put("brief", "b", 200ms);
  CHECK(longer.get("brief") == "b");
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(longer.get("brief"));
}

TEST_CASE("cache: once this process's write has committed, no reader gets an older value from the in-process tier",
          "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(60s));  // a stale copy would outlive the test
  cache.put("counter", "0", 60s);
  std::atomic<int> completed{0};  // the last write whose put (or commit) has returned
  std::atomic<bool> stop{false};
  std::atomic<int> stale{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 4; ++r)
    readers.emplace_back([&] {
      while (!stop) {
        const int floor = completed;
        const auto v = cache.get("counter");
        if (!v || std::stoi(*v) < floor) ++stale;
      }
    });
  constexpr int writes = 150;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (int i = 1; i <= writes; ++i) {
    if (i % 10 == 1) {  // readers must be hitting the tier between writes, or the test proves nothing
      const auto hits = cache.stats().local_hits;
      while (cache.stats().local_hits == hits && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    }
    if (i % 2) {
      cache.put("counter", std::to_string(i), 60s);
    } else {
      auto tx = t.db().begin();
      cache.put(tx, "counter", std::to_string(i), 60s);
      tx.commit();
    }
    completed = i;
  }
  stop = true;
  for (auto& r : readers) r.join();
  CHECK(stale == 0);
  CHECK(cache.get("counter") == std::to_string(writes));
  CHECK(cache.stats().local_hits >= writes / 10);
}

TEST_CASE("cache: a load overtaken by this process's invalidation is kept neither in the table nor in process",
          "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(60s));
  for (const LoadScope scope : {LoadScope::all_processes, LoadScope::this_process}) {
    LoadOptions o;
    o.scope = scope;
    const auto v = cache.get_or_load(
        "balance", 30s,
        [&] {
          cache.invalidate("balance");  // a transfer commits while the old balance is being loaded
          return std::optional<std::string>("old");
        },
        o);
    CHECK(v == "old");
    CHECK_FALSE(cache.get("balance"));
  }
  CHECK(cache.stats().stale_skipped == 2);
}

TEST_CASE("cache: the in-process tier stays within its byte bound, least recently used out first",
          "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o = with_local_tier(60s);
  o.local_max_bytes = 4096;
  Cache cache(t.db(), o);
  for (int i = 0; i < 40; ++i) {
    cache.put(fmt::format("k{}", i), std::string(200, 'x'), 60s);
    CHECK(cache.get(fmt::format("k{}", i)));
    CHECK(cache.get("k0"));  // k0 stays recently used
  }
  const auto s = cache.stats();
  CHECK(s.local_bytes <= 4096);
  CHECK(s.local_evictions > 0);
  const auto before = cache.stats().local_hits;
  CHECK(cache.get("k0"));
  CHECK(cache.stats().local_hits == before + 1);
}

TEST_CASE("cache: this_process scope runs one loader per process without a lease", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());
  std::atomic<int> loads{0};
  std::atomic<int> ready{0};
  LoadOptions o;
  o.scope = LoadScope::this_process;
  std::vector<std::future<std::optional<std::string>>> callers;
  for (int i = 0; i < 8; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      ++ready;
      eventually([&] { return ready == 8; });  // the start barrier
      return cache.get_or_load(
          "cheap", 30s,
          [&] {
            ++loads;
            eventually([&] { return cache.stats().waits == 7; });  // the others overlapped this load
            return std::optional<std::string>("v");
          },
          o);
    }));
  for (auto& c : callers) CHECK(c.get() == "v");
  CHECK(loads == 1);
  CHECK(cache.stats().waits == 7);
  CHECK(rowguard::test::rows_in(t.db(), "locks") == 0);  // no loader lease was taken
}

TEST_CASE("cache: sweep_every sweeps on a background thread", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.sweep_grace = 0ms;
  o.sweep_every = 50ms;
  Cache cache(t.db(), o);
  for (int i = 0; i < 20; ++i) cache.put(fmt::format("brief-{}", i), "x", 10ms);
  cache.put("kept", "y", 60s);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  // The sweeper counts a batch just after committing it: wait for the count too.
  while ((rowguard::test::rows_in(t.db(), "cache") > 1 || cache.stats().evictions < 20) &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  CHECK(rowguard::test::rows_in(t.db(), "cache") == 1);
  CHECK(cache.stats().evictions == 20);
  CHECK(cache.get("kept") == "y");
}

TEST_CASE(
    "cache: the ledger reads accounts through the cache: a committed transfer drops them, a rolled-back one leaves "
    "them",
    "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(60s));
  LedgerOptions lo;
  lo.cache = &cache;
  lo.cache_ttl = 60s;
  Ledger ledger(t.db(), lo);
  ledger.open("alice", "EUR");
  ledger.open("bob", "EUR");
  ledger.deposit("alice", 1'000, "d1");
  CHECK(ledger.get("alice").balance == 1'000);
  CHECK(ledger.get("bob").balance == 0);
  CHECK(cache.get("ledger:account:alice"));  // cached
  const auto loads = cache.stats().loads;
  CHECK(ledger.get("alice").balance == 1'000);
  CHECK(cache.stats().loads == loads);  // answered from the cache
  // A committed transfer (the one-statement transfer on PostgreSQL) drops both cached accounts.
  REQUIRE(ledger.transfer("alice", "bob", 300, "t1").ok());
  CHECK_FALSE(cache.get("ledger:account:alice"));
  CHECK_FALSE(cache.get("ledger:account:bob"));
  CHECK(ledger.get("alice").balance == 700);
  CHECK(ledger.get("bob").balance == 300);
  // A rejected transfer changes nothing and keeps the cached copies.
  CHECK(ledger.transfer("alice", "bob", 5'000, "t2").status == TransferStatus::insufficient_funds);
  CHECK(cache.get("ledger:account:alice"));
  // A batch whose chain fails rolls back its first transfer, and with it that transfer's invalidation.
  const auto results = ledger.transfer_batch({{"alice", "bob", 100, "b1", true}, {"bob", "nobody", 1, "b2"}});
  CHECK(results[1].error == ErrorKind::not_found);
  CHECK(cache.get("ledger:account:alice"));
  CHECK(ledger.get("alice").balance == 700);
  // Deposits, reversals and min_balance updates drop them too.
  ledger.deposit("alice", 50, "d2");
  CHECK(ledger.get("alice").balance == 750);
  ledger.reverse("t1", 100, "r1");
  CHECK(ledger.get("alice").balance == 850);
  CHECK(ledger.get("bob").balance == 200);
  ledger.update("bob", [](Account& a) { a.min_balance = -10; });
  CHECK(ledger.get("bob").min_balance == -10);
  CHECK(kind_of([&] { ledger.get("nobody"); }) == ErrorKind::not_found);
  CHECK(ledger.check().ok());
}

TEST_CASE("cache: a batch drops the cached copies of every account it moved money of, and keeps the others",
          "[backend]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db(), with_local_tier(60s));
  LedgerOptions lo;
  lo.cache = &cache;
  lo.cache_ttl = 60s;
  Ledger ledger(t.db(), lo);
  for (const char* id : {"a", "b", "c", "d"}) {
    ledger.open(id, "EUR");
    ledger.deposit(id, 100, std::string("seed-") + id);
    CHECK(ledger.get(id).balance == 100);  // cached, in the table and in this process
  }
  // Every item applies (on PostgreSQL the batch then runs as a few set statements), and one
  // account appears in several items.
  const auto r = ledger.transfer_batch({{"a", "b", 10, "b1"}, {"b", "c", 5, "b2", true}, {"a", "c", 1, "b3"}});
  for (const auto& item : r) CHECK(item.ok());
  for (const char* id : {"a", "b", "c"}) CHECK_FALSE(cache.get(std::string("ledger:account:") + id));
  CHECK(cache.get("ledger:account:d"));
  CHECK(ledger.get("a").balance == 89);
  CHECK(ledger.get("b").balance == 105);
  CHECK(ledger.get("c").balance == 106);
  CHECK(ledger.get("d").balance == 100);
  CHECK(ledger.check().ok());
}

TEST_CASE("cache: the CLI's ledger commands keep a service's cached accounts correct",
          "[backend][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  Cache cache(t.db());  // no in-process tier: another process's change must be seen at once
  LedgerOptions lo;
  lo.cache = &cache;
  lo.cache_ttl = 60s;
  Ledger ledger(t.db(), lo);
  ledger.open("alice", "EUR");
  ledger.open("bob", "EUR");
  ledger.deposit("alice", 1'000, "d1");
  CHECK(ledger.get("alice").balance == 1'000);
  const std::string prefix = t.db().table_prefix();
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", prefix, "transfer", "alice", "bob", "400"}) == 0);
  CHECK(ledger.get("alice").balance == 600);
  std::string out;
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", prefix, "--json", "account", "show", "bob"}, &out) == 0);
  CHECK(nlohmann::json::parse(out)["balance"] == 400);
  CHECK(rowguard::test::run_cli({"--db", t.url(), "--prefix", prefix, "deposit", "bob", "1"}) == 0);
  CHECK(ledger.get("bob").balance == 401);
}

// Issue 21, defect 1: the sweep deleted tombstones at once (their expires_at was the epoch), and
// eviction by size deleted them too, so a slow loader then found no row and stored its stale value.
TEST_CASE(
    "cache: a loader overtaken by an invalidation or put stores nothing, whatever sweeps and evictions run meanwhile",
    "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.sweep_grace = 60s;
  Cache cache(t.db(), o);
  CacheOptions bounded = o;  // another Cache (as in another process) that evicts down to one row
  bounded.max_rows = 1;
  Cache evictor(t.db(), bounded);
  int overtaken = 0;
  for (const LoadScope scope : {LoadScope::all_processes, LoadScope::this_process})
    for (const char* write : {"invalidate", "put"})
      for (const char* maintenance : {"sweep", "evict"}) {
        const std::string key = fmt::format("k:{}:{}:{}", name_of(scope), write, maintenance);
        INFO(key);
        Gate gate("stale");
        auto load = gate.start(cache, key, scoped(scope));
        if (std::string_view(write) == "put")
          cache.put(key, "new", 60s);
        else
          cache.invalidate(key);
        if (std::string_view(maintenance) == "sweep") {
          cache.sweep();
        } else {
          for (int i = 0; i < 3; ++i) evictor.put(fmt::format("filler-{}", i), "x", 60s);  // written after key
          evictor.sweep();
          CHECK(rowguard::test::rows_in(t.db(), "cache") == 1);  // the bound holds, rows within the grace too
        }
        gate.open();
        CHECK(load.get() == "stale");  // the caller gets what it loaded...
        ++overtaken;
        const auto now = cache.get(key);  // ...but it was not stored
        CHECK(now != std::optional<std::string>("stale"));
        if (std::string_view(maintenance) == "sweep" && std::string_view(write) == "put") CHECK(now == "new");
      }
  CHECK(cache.stats().stale_skipped == static_cast<std::uint64_t>(overtaken));
  // A load that begins after all that stores as usual (in a later millisecond of the database
  // clock: one that begins in the same millisecond as an eviction inside the grace is refused too).
  std::this_thread::sleep_for(2ms);
  CHECK(cache.get_or_load("k:later", 60s, [] { return std::optional<std::string>("fresh"); }) == "fresh");
  CHECK(cache.get("k:later") == "fresh");
}

TEST_CASE("cache: the background sweeper thread never lets an overtaken loader store", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.sweep_grace = 60s;
  o.sweep_every = 10ms;
  o.max_rows = 2;  // it evicts too
  Cache cache(t.db(), o);
  for (const LoadScope scope : {LoadScope::all_processes, LoadScope::this_process}) {
    const std::string key = fmt::format("bg:{}", name_of(scope));
    INFO(key);
    Gate gate("stale");
    auto load = gate.start(cache, key, scoped(scope));
    cache.invalidate(key);
    for (int i = 0; i < 3; ++i) cache.put(fmt::format("bg-filler-{}", i), "x", 60s);
    const auto sweeps = cache.stats().sweeps;
    REQUIRE(eventually([&] { return cache.stats().sweeps >= sweeps + 2; }));  // one ran after all the writes
    CHECK(rowguard::test::rows_in(t.db(), "cache") <= 2);
    gate.open();
    CHECK(load.get() == "stale");
    CHECK_FALSE(cache.get(key));
  }
  CHECK(cache.stats().stale_skipped == 2);
  CHECK(cache.stats().sweep_failures == 0);
}

TEST_CASE("cache: a load that took longer than sweep_grace is refused, not stored, and counted", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.sweep_grace = 1s;
  Cache cache(t.db(), o);
  for (const LoadScope scope : {LoadScope::all_processes, LoadScope::this_process}) {
    const std::string key = fmt::format("late:{}", name_of(scope));
    const auto v = cache.get_or_load(
        key, 60s,
        [] {
          std::this_thread::sleep_for(1300ms);  // longer than the grace: nothing can judge it any more
          return std::optional<std::string>("late");
        },
        scoped(scope));
    CHECK(v == "late");
    CHECK_FALSE(cache.get(key));
  }
  const auto s = cache.stats();
  CHECK(s.too_old == 2);
  CHECK(s.stale_skipped == 2);
  CHECK(cache.get_or_load("quick", 60s, [] { return std::optional<std::string>("v"); }) == "v");
  CHECK(cache.get("quick") == "v");
}

// Issue 21, defect 2: invalidate_prefix only updated rows that existed.
TEST_CASE("cache: invalidate_prefix stops every loader in flight under the prefix, rows or not", "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.sweep_grace = 60s;
  Cache cache(t.db(), o);
  cache.put("user:7:email", "old@example.com", 60s);
  for (const LoadScope scope : {LoadScope::all_processes, LoadScope::this_process}) {
    INFO(name_of(scope));
    const std::string inside = fmt::format("user:7:name:{}", name_of(scope));    // no row yet
    const std::string outside = fmt::format("user:70:name:{}", name_of(scope));  // not under "user:7:"
    Gate in_gate("stale"), out_gate("fresh");
    auto in_load = in_gate.start(cache, inside, scoped(scope));
    auto out_load = out_gate.start(cache, outside, scoped(scope));
    CHECK(cache.invalidate_prefix("user:7:") == 1);  // the one row there: user:7:email
    cache.sweep();                                   // and the prefix's record survives a sweep within the grace
    in_gate.open();
    out_gate.open();
    CHECK(in_load.get() == "stale");
    CHECK(out_load.get() == "fresh");
    CHECK_FALSE(cache.get(inside));
    CHECK(cache.get(outside) == "fresh");
  }
  CHECK_FALSE(cache.get("user:7:email"));
  CHECK(cache.stats().stale_skipped == 2);
  // Loads that begin after the invalidation (in a later millisecond) store as usual.
  std::this_thread::sleep_for(2ms);
  CHECK(cache.get_or_load("user:7:name", 60s, [] { return std::optional<std::string>("new"); }) == "new");
  CHECK(cache.get("user:7:name") == "new");
}

// Issue 21, defect 9: the loader's lease ran out under a slow loader; its release then threw
// lock_lost at the caller and the waiters, and another process could start a second load.
TEST_CASE(
    "cache: a loader slower than load_lease_ttl keeps its lease: one load, every caller here and elsewhere gets its "
    "value",
    "[backend][threads][cli]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.load_lease_ttl = 400ms;
  Cache cache(t.db(), o);
  Gate gate("slow value");
  std::atomic<int> ready{0};
  std::vector<std::future<std::optional<std::string>>> callers;
  for (int i = 0; i < 4; ++i)
    callers.push_back(std::async(std::launch::async, [&] {
      ++ready;
      eventually([&] { return ready == 4; });  // the start barrier
      return cache.get_or_load("slow", 60s, gate.loader());
    }));
  REQUIRE(gate.started());
  REQUIRE(eventually([&] { return cache.stats().waits == 3; }));  // the other three wait for this load
  // Another Cache (its own single flight, as another process has) waits for the lease, and so
  // does a `cache fetch` process, whose own CMD would record that it ran.
  auto other_db = t.another();
  Cache other(*other_db, o);
  Gate other_gate("second load");
  auto elsewhere = std::async(std::launch::async, [&] { return other.get_or_load("slow", 60s, other_gate.loader()); });
  std::future<std::pair<int, std::string>> cli;
  const std::string ran = (rowguard::test::scratch_dir() / "ran").string();
  if (rowguard::test::can().shared_database)  // another process can open it
    cli = std::async(std::launch::async, [&] {
      std::string out;
      const int rc = rowguard::test::run_cli(
          {"--db", t.url(), "--prefix", t.db().table_prefix(), "cache", "fetch", "slow", "--lease", "400ms", "--", "sh",
           "-c", fmt::format("echo run >> '{}'; printf cli", ran)},
          &out);
      return std::make_pair(rc, out);
    });
  REQUIRE(eventually([&] { return other.stats().waits == 1; }));
  std::this_thread::sleep_for(3 * o.load_lease_ttl);  // without renewals the lease would expire here
  gate.open();
  for (auto& c : callers) CHECK(c.get() == "slow value");  // no lock_lost, here or in the waiters
  CHECK(elsewhere.get() == "slow value");
  CHECK(other_gate.calls == 0);
  if (cli.valid()) {
    const auto [rc, out] = cli.get();
    CHECK(rc == 0);
    CHECK(out == "slow value");
    CHECK_FALSE(std::filesystem::exists(ran));
  }
  CHECK(gate.calls == 1);
  CHECK(cache.get("slow") == "slow value");
  CHECK(cache.stats().lease_lost == 0);
  // A lease lost anyway (force-released mid-load): the caller still gets its value, and the store
  // is judged by the table as always (nothing overtook this load, so it is stored).
  Gate forced("kept");
  auto forced_load = forced.start(cache, "forced");
  Locks(t.db()).force_release("cache:forced", "operator");
  forced.open();
  CHECK(forced_load.get() == "kept");
  CHECK(cache.stats().lease_lost == 1);
  CHECK(cache.get("forced") == "kept");
}

TEST_CASE("cache: a cached balance is not stale after a transfer and a sweep that ran while its loader ran",
          "[backend][threads]") {
  TestDb t;
  t.db().migrate();
  CacheOptions co;
  co.sweep_grace = 60s;
  Cache cache(t.db(), co);
  LedgerOptions lo;
  lo.cache = &cache;
  lo.cache_ttl = 60s;
  Ledger ledger(t.db(), lo);
  ledger.open("alice", "EUR");
  ledger.open("bob", "EUR");
  ledger.deposit("alice", 1'000, "d1");
  CHECK(ledger.get("alice").balance == 1'000);
  const std::string key = "ledger:account:alice";
  const auto before = cache.get(key);  // exactly what the ledger's loader reads before the transfer
  REQUIRE(before);
  cache.invalidate(key);  // the copy is gone (as after any change): the next get loads
  // A get of alice that read her row before the transfer, and is slow to store it.
  Gate gate(*before);
  auto load = gate.start(cache, key, scoped(LoadScope::this_process));
  REQUIRE(ledger.transfer("alice", "bob", 300, "t1").ok());  // drops the copy: on PostgreSQL inside the one statement
  cache.sweep();
  gate.open();
  CHECK(load.get() == before);
  CHECK(ledger.get("alice").balance == 700);
  CHECK(ledger.get("bob").balance == 300);
}

TEST_CASE("cache: a cache fetch overtaken by other processes' invalidation and sweep stores nothing",
          "[backend][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  const auto dir = rowguard::test::scratch_dir();
  const std::string started = (dir / "started").string(), go = (dir / "go").string();
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), {"--db", t.url(), "--prefix", t.db().table_prefix()});
    return rowguard::test::run_cli(args, out);
  };
  // The reproduction: the loader command waits (at most 20 s) for the test's go.
  const std::string loader = fmt::format(
      "touch '{}'; i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; printf stale", started,
      go);
  auto fetch = std::async(std::launch::async, [&] {
    std::string out;
    const int rc = cli({"cache", "fetch", "k", "--ttl", "60s", "--", "sh", "-c", loader}, &out);
    return std::make_pair(rc, out);
  });
  REQUIRE(eventually([&] { return std::filesystem::exists(started); }));
  CHECK(cli({"cache", "invalidate", "k"}) == 0);
  CHECK(cli({"cache", "sweep"}) == 0);
  std::ofstream(go).put('\n');
  const auto [rc, out] = fetch.get();
  CHECK(rc == 0);
  CHECK(out == "stale");                   // the fetch prints what it loaded...
  CHECK(cli({"cache", "get", "k"}) == 5);  // ...but did not store it
}

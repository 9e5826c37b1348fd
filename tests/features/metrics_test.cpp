// In-process metrics (rowguard::metrics, to_prometheus) and the logging hook. Metrics are
// process-wide: the backend tests assert on the difference between a snapshot before and after.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <catch2/catch.hpp>

#include "obs/logging.hpp"
#include "obs/metrics_registry.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::TestDb;
namespace m = rowguard::detail::metrics;

namespace {
// Every record the hook delivers, until destroyed (which makes rowguard silent again).
struct CapturedLogs {
  std::mutex mutex;
  std::vector<std::tuple<LogLevel, std::string, std::string, LogFields>> records;
  explicit CapturedLogs(LogLevel min = LogLevel::debug) {
    set_log_handler(
        [this](const LogRecord& r) {
          std::lock_guard lock(mutex);
          records.emplace_back(r.level, std::string(r.component), std::string(r.message), r.fields);
        },
        min);
  }
  ~CapturedLogs() { set_log_handler(nullptr); }
  // The fields of the first record with this message, or nullptr.
  const LogFields* find(const std::string& message) {
    std::lock_guard lock(mutex);
    for (const auto& [level, component, msg, fields] : records)
      if (msg == message) return &fields;
    return nullptr;
  }
};

std::string field(const LogFields& fields, const std::string& name) {
  for (const auto& [n, v] : fields)
    if (n == name) return v;
  return "<missing>";
}

// Prometheus text format 0.0.4, one line at a time.
const std::regex help_line(R"(# HELP [a-zA-Z_:][a-zA-Z0-9_:]* ([^\\\n]|\\[\\n])*)");
const std::regex type_line(R"(# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))");
const std::regex sample_line(
    R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (\S+))");

// A Prometheus sample value: a float Go's ParseFloat reads whole.
bool parses_as_number(const std::string& v) {
  if (v == "NaN" || v == "+Inf" || v == "-Inf") return true;
  char* end = nullptr;
  std::strtod(v.c_str(), &end);
  return !v.empty() && *end == '\0' && v.find_first_of("xXpP") == std::string::npos;
}

// Checks every line of an exposition against the spec; returns the number of sample lines.
int check_exposition(const std::string& text) {
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    INFO(line);
    std::smatch match;
    if (line.rfind("# HELP ", 0) == 0) {
      CHECK(std::regex_match(line, help_line));
    } else if (line.rfind("# TYPE ", 0) == 0) {
      CHECK(std::regex_match(line, type_line));
    } else {
      REQUIRE(std::regex_match(line, match, sample_line));
      CHECK(parses_as_number(match[3].str()));
      ++samples;
    }
  }
  return samples;
}

// A fresh database with rowguard's tables.
struct Migrated {
  TestDb test;
  explicit Migrated(const Options& options = {}) : test(options) { test.db().migrate(); }
  Database& db() { return test.db(); }
};

double delta(const MetricsSnapshot& before, const MetricsSnapshot& after, std::string_view name,
             const MetricLabels& labels = {}) {
  return after.value(name, labels) - before.value(name, labels);
}
}  // namespace

TEST_CASE("metrics: counters and gauges add exactly", "[unit]") {
  m::Registry r;
  auto& c = r.counter("t_total", "help");
  c.add();
  c.add(41);
  CHECK(&r.counter("t_total", "help") == &c);  // one series per name and labels
  auto& g = r.gauge("t_gauge", "help");
  g.add(5);
  g.add(-2);
  const auto s = r.snapshot();
  CHECK(s.value("t_total") == 42);
  CHECK(s.value("t_gauge") == 3);
  CHECK(s.value("t_absent") == 0);
  CHECK(s.find("t_absent") == nullptr);
  CHECK_THROWS_AS(r.gauge("t_total", "help"), std::logic_error);     // another type
  CHECK_THROWS_AS(r.counter("t_total", "other"), std::logic_error);  // another help
  CHECK_THROWS_AS(r.counter("0bad", "help"), std::logic_error);
  CHECK_THROWS_AS(r.counter("t2_total", "help", {{"__x", "v"}}), std::logic_error);
  CHECK_THROWS_AS(r.histogram("t_seconds", "help", {{"le", "v"}}), std::logic_error);
}

TEST_CASE("metrics: a histogram puts a value on a bound into that bound's bucket", "[unit]") {
  m::Registry r;
  auto& h = r.histogram("t_seconds", "help", {}, {0.001, 0.01, 1});
  h.observe(0.0);                           // bucket 0
  h.observe(0.001);                         // on the bound: bucket 0 (le)
  h.observe(0.0011);                        // bucket 1
  h.observe(0.01);                          // bucket 1
  h.observe(1.0);                           // bucket 2
  h.observe(1.5);                           // +Inf
  h.observe(-3.0);                          // a clock that stepped back: 0, bucket 0
  h.observe(std::chrono::milliseconds(5));  // bucket 1
  const HistogramData d = r.snapshot().find("t_seconds")->series.at(0).histogram;
  CHECK(d.bounds == std::vector<double>{0.001, 0.01, 1});
  CHECK(d.counts == std::vector<std::uint64_t>{3, 3, 1, 1});
  CHECK(d.count == 8);
  CHECK(d.sum == Approx(0.001 + 0.0011 + 0.01 + 1.0 + 1.5 + 0.005).epsilon(1e-9));
  CHECK(r.snapshot().value("t_seconds") == 8);
}

TEST_CASE("metrics: the exposition is Prometheus text format 0.0.4, line by line", "[unit]") {
  m::Registry r;
  r.counter("t_requests_total", "Requests\nby \\ kind", {{"kind", "a"}, {"outcome", "ok"}}).add(3);
  r.counter("t_requests_total", "Requests\nby \\ kind", {{"kind", "b"}, {"outcome", "ok"}});
  r.gauge("t_open", "Open").add(-2);
  auto& h = r.histogram("t_seconds", "Latency", {{"kind", "x"}}, {0.0005, 0.25, 10});
  h.observe(0.0001);
  h.observe(0.1);
  h.observe(100.0);
  const std::string text = to_prometheus(r.snapshot());
  CHECK(check_exposition(text) == 2 + 1 + 6);
  CHECK(text.find("# HELP t_requests_total Requests\\nby \\\\ kind\n") != std::string::npos);
  CHECK(text.find("# TYPE t_requests_total counter\n") != std::string::npos);
  CHECK(text.find("t_requests_total{kind=\"a\",outcome=\"ok\"} 3\n") != std::string::npos);
  CHECK(text.find("t_requests_total{kind=\"b\",outcome=\"ok\"} 0\n") != std::string::npos);
  CHECK(text.find("t_open -2\n") != std::string::npos);
  // Cumulative buckets, +Inf equal to _count, then _sum and _count.
  CHECK(text.find("t_seconds_bucket{kind=\"x\",le=\"0.0005\"} 1\n"
                  "t_seconds_bucket{kind=\"x\",le=\"0.25\"} 2\n"
                  "t_seconds_bucket{kind=\"x\",le=\"10\"} 2\n"
                  "t_seconds_bucket{kind=\"x\",le=\"+Inf\"} 3\n"
                  "t_seconds_sum{kind=\"x\"} 100.1001\n"
                  "t_seconds_count{kind=\"x\"} 3\n") != std::string::npos);
  // Families come sorted by name.
  CHECK(text.find("t_open") < text.find("t_requests_total"));
  CHECK(text.find("t_requests_total") < text.find("t_seconds"));
}

TEST_CASE("metrics: label values are escaped and bad names refused", "[unit]") {
  MetricsSnapshot s;
  s.families.push_back(MetricFamily{"t_total", "h", MetricType::counter, {}});
  s.families[0].series.push_back(MetricSeries{{{"path", "a\\b\"c\nd"}}, 1.5, {}});
  const std::string text = to_prometheus(s);
  CHECK(text == "# HELP t_total h\n# TYPE t_total counter\nt_total{path=\"a\\\\b\\\"c\\nd\"} 1.5\n");
  CHECK(check_exposition(text) == 1);

  MetricsSnapshot special;
  special.families.push_back(MetricFamily{"t_gauge", "h", MetricType::gauge, {}});
  special.families[0].series.push_back(MetricSeries{{}, std::numeric_limits<double>::infinity(), {}});
  special.families[0].series.push_back(MetricSeries{{{"a", "1"}}, std::numeric_limits<double>::quiet_NaN(), {}});
  special.families[0].series.push_back(MetricSeries{{{"a", "2"}}, 1e-7, {}});
  special.families[0].series.push_back(MetricSeries{{{"a", "3"}}, 12345678901234.0, {}});
  const std::string t2 = to_prometheus(special);
  CHECK(check_exposition(t2) == 4);
  CHECK(t2.find("t_gauge +Inf\n") != std::string::npos);
  CHECK(t2.find("t_gauge{a=\"1\"} NaN\n") != std::string::npos);

  MetricsSnapshot bad_name;
  bad_name.families.push_back(MetricFamily{"t-total", "h", MetricType::counter, {MetricSeries{}}});
  CHECK_THROWS_AS(to_prometheus(bad_name), std::invalid_argument);
  MetricsSnapshot bad_label;
  bad_label.families.push_back(
      MetricFamily{"t_total", "h", MetricType::counter, {MetricSeries{{{"a-b", "1"}}, 0, {}}}});
  CHECK_THROWS_AS(to_prometheus(bad_label), std::invalid_argument);
}

TEST_CASE("metrics: every family rowguard documents is registered and exposes cleanly", "[unit]") {
  const auto s = metrics();
  for (const char* name : {"rowguard_lock_acquires_total",
                           "rowguard_lock_acquire_seconds",
                           "rowguard_lock_waits_total",
                           "rowguard_lock_wait_seconds",
                           "rowguard_lock_renewals_total",
                           "rowguard_lock_releases_total",
                           "rowguard_leases_lost_total",
                           "rowguard_lock_force_releases_total",
                           "rowguard_ledger_requests_total",
                           "rowguard_ledger_request_seconds",
                           "rowguard_ledger_conflicts_total",
                           "rowguard_ledger_retries_total",
                           "rowguard_cache_lookups_total",
                           "rowguard_cache_loads_total",
                           "rowguard_cache_load_seconds",
                           "rowguard_cache_invalidations_total",
                           "rowguard_cache_stale_writes_refused_total",
                           "rowguard_pool_borrows_total",
                           "rowguard_pool_waits_total",
                           "rowguard_pool_wait_seconds",
                           "rowguard_pool_timeouts_total",
                           "rowguard_pool_sessions_created_total",
                           "rowguard_pool_sessions_discarded_total",
                           "rowguard_pool_sessions_open",
                           "rowguard_pool_sessions_idle",
                           "rowguard_retries_total",
                           "rowguard_retries_exhausted_total",
                           "rowguard_sagas_total",
                           "rowguard_two_phase_total"}) {
    INFO(name);
    CHECK(s.find(name) != nullptr);
  }
  CHECK(s.find("rowguard_ledger_requests_total")->series.size() == 9 * 4);
  for (std::size_t i = 1; i < s.families.size(); ++i) CHECK(s.families[i - 1].name < s.families[i].name);
  CHECK(check_exposition(to_prometheus(s)) > 100);
}

TEST_CASE("metrics: 8 threads adding to one counter and one histogram give the exact totals", "[unit][threads]") {
  m::Registry r;
  auto& c = r.counter("t_total", "help");
  auto& h = r.histogram("t_seconds", "help");
  constexpr int threads = 8, each = 100'000;
  std::vector<std::thread> pool;
  std::atomic<int> ready{0};
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      ++ready;
      while (ready < threads) std::this_thread::yield();  // start together
      for (int i = 0; i < each; ++i) {
        c.add();
        h.observe(0.002);
      }
    });
  for (auto& t : pool) t.join();
  const auto s = r.snapshot();
  CHECK(s.value("t_total") == threads * each);
  const HistogramData d = s.find("t_seconds")->series.at(0).histogram;
  CHECK(d.count == threads * each);
  CHECK(d.counts.at(2) == threads * each);  // 0.002 is in (0.001, 0.0025]
  CHECK(d.sum == Approx(0.002 * threads * each).epsilon(1e-9));
}

TEST_CASE("log hook: silent by default, a minimum level, fields, and a throwing handler is harmless", "[unit]") {
  set_log_handler(nullptr);
  CHECK_FALSE(detail::log_enabled(LogLevel::error));
  detail::log(LogLevel::error, "test", "nobody listens", {});  // no handler: nothing happens
  {
    CapturedLogs logs(LogLevel::warn);
    CHECK_FALSE(detail::log_enabled(LogLevel::info));
    CHECK(detail::log_enabled(LogLevel::warn));
    detail::log(LogLevel::info, "test", "too low", {});
    detail::log(LogLevel::warn, "test", "delivered", {{"lock", "jobs"}, {"token", "7"}});
    detail::log(LogLevel::error, "test", "also delivered", {});
    REQUIRE(logs.records.size() == 2);
    CHECK(std::get<0>(logs.records[0]) == LogLevel::warn);
    CHECK(std::get<1>(logs.records[0]) == "test");
    CHECK(std::get<2>(logs.records[0]) == "delivered");
    CHECK(std::get<3>(logs.records[0]) == LogFields{{"lock", "jobs"}, {"token", "7"}});
  }
  CHECK_FALSE(detail::log_enabled(LogLevel::error));  // uninstalled again
  int calls = 0;
  set_log_handler([&](const LogRecord&) {
    ++calls;
    throw std::runtime_error("the service's logger failed");
  });
  CHECK_NOTHROW(detail::log(LogLevel::error, "test", "x", {}));
  CHECK(calls == 1);
  set_log_handler(nullptr);
  detail::log(LogLevel::error, "test", "x", {});
  CHECK(calls == 1);
  CHECK(to_string(LogLevel::warn) == "warn");
}

TEST_CASE("metrics: lock acquire, busy and release are counted", "[backend][metrics]") {
  Migrated t;
  Locks locks(t.db());
  const auto before = metrics();
  auto lease = locks.try_acquire("metrics-lock", std::chrono::seconds(30));
  REQUIRE(lease);
  CHECK_FALSE(locks.try_acquire("metrics-lock", std::chrono::seconds(30)));
  lease->renew(std::chrono::seconds(30));
  lease->release();
  locks.force_release("metrics-lock", "test");
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_lock_acquires_total", {{"result", "acquired"}}) == 1);
  CHECK(delta(before, after, "rowguard_lock_acquires_total", {{"result", "busy"}}) == 1);
  CHECK(delta(before, after, "rowguard_lock_acquires_total", {{"result", "error"}}) == 0);
  CHECK(delta(before, after, "rowguard_lock_acquire_seconds") == 2);  // a histogram's count
  CHECK(delta(before, after, "rowguard_lock_renewals_total", {{"result", "ok"}}) == 1);
  CHECK(delta(before, after, "rowguard_lock_releases_total", {{"result", "ok"}}) == 1);
  CHECK(delta(before, after, "rowguard_lock_force_releases_total") == 1);
  CHECK(delta(before, after, "rowguard_pool_borrows_total") >= 5);
}

TEST_CASE("metrics: a lease taken over is counted lost once and logged with its lock name", "[backend][metrics]") {
  Migrated t;
  Locks locks(t.db());
  CapturedLogs logs;
  const auto before = metrics();
  auto lease = locks.try_acquire("metrics-lost", std::chrono::seconds(30));
  REQUIRE(lease);
  locks.force_release("metrics-lost", "taken over for the test");
  CHECK(test::kind_of([&] { lease->renew(std::chrono::seconds(30)); }) == ErrorKind::lock_lost);
  CHECK(test::kind_of([&] { lease->release(); }) == ErrorKind::lock_lost);
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_leases_lost_total") == 1);
  CHECK(delta(before, after, "rowguard_lock_renewals_total", {{"result", "lost"}}) == 1);
  const LogFields* f = logs.find("lease lost");
  REQUIRE(f);
  CHECK(field(*f, "lock") == "metrics-lost");
  CHECK(field(*f, "token") == std::to_string(lease->token()));
  REQUIRE(logs.find("lock force-released"));
}

TEST_CASE(
    "metrics: a release the database refuses is counted and logged, the lock stays taken, and Locks::run hands "
    "the failure to release_error",
    "[backend][metrics]") {
  Migrated t;
  Locks locks(t.db());
  CapturedLogs logs(LogLevel::warn);
  const auto before = metrics();
  {
    test::RefusedUpdates refused(t.db(), "locks");
    // Locks::run whose function throws: its release fails, fn's exception still comes out.
    std::optional<Error> release_error;
    LockRunOptions options;
    options.release_error = &release_error;
    CHECK_THROWS_WITH(
        locks.run(
            "metrics-unreleased", std::chrono::seconds(30),
            [](const Lease&, const std::stop_token&) -> int { throw std::runtime_error("the job failed"); }, options),
        "the job failed");
    REQUIRE(release_error);
    CHECK(release_error->kind() != ErrorKind::lock_lost);
    CHECK_THAT(release_error->what(), Catch::Contains("refuses updates"));
    // A Lease dropped while held: ~Lease's release fails too.
    auto dropped = locks.try_acquire("metrics-dropped", std::chrono::seconds(30));
    REQUIRE(dropped);
    dropped.reset();
    // fn returned and the release that ends the run is refused: run() throws that error, and
    // nothing releases again behind it (one failed release each, and no log from ~Lease).
    std::string message;
    CHECK(
        test::kind_of(
            [&] { locks.run("metrics-finish", std::chrono::seconds(30), [](const Lease&, const std::stop_token&) {}); },
            &message) != ErrorKind::lock_lost);
    CHECK_THAT(message, Catch::Contains("refuses updates"));
  }
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_lock_releases_total", {{"result", "error"}}) == 3);
  std::vector<std::string> unreleased;
  {
    std::lock_guard lock(logs.mutex);
    for (const auto& [level, component, message, fields] : logs.records)
      if (message == "lease not released: it stays taken until its ttl") {
        CHECK(level == LogLevel::warn);
        CHECK(component == "locks");
        CHECK_THAT(field(fields, "error"), Catch::Contains("refuses updates"));
        unreleased.push_back(field(fields, "lock"));
      }
  }
  CHECK(unreleased == std::vector<std::string>{"metrics-unreleased", "metrics-dropped"});  // each once
  // Both are still taken until their ttl: another owner is refused.
  CHECK_FALSE(locks.try_acquire("metrics-unreleased", std::chrono::seconds(30)));
  CHECK_FALSE(locks.try_acquire("metrics-dropped", std::chrono::seconds(30)));
  CHECK_FALSE(locks.try_acquire("metrics-finish", std::chrono::seconds(30)));
}

TEST_CASE("metrics: ledger requests are counted by kind and outcome, conflicts and retries too", "[backend][metrics]") {
  Migrated t;
  Ledger l(t.db());
  l.open("m-a", "EUR");
  l.open("m-b", "EUR");
  const auto before = metrics();
  CHECK(l.deposit("m-a", 1'000, "m-dep").ok());
  CHECK(l.transfer("m-a", "m-b", 600, "m-t1").ok());
  CHECK_FALSE(l.transfer("m-a", "m-b", 600, "m-t2").ok());  // 400 left
  CHECK(l.transfer("m-a", "m-b", 600, "m-t1").replayed);
  CHECK(test::kind_of([&] { l.transfer("m-a", "nobody", 1, "m-t3"); }) == ErrorKind::not_found);
  // A conflict: the account changes between update's read and its write, once.
  int calls = 0;
  l.update("m-b", [&](Account& a) {
    if (++calls == 1) l.update("m-b", [](Account& inner) { inner.min_balance = -1; });
    a.min_balance = -10;
  });
  CHECK(calls == 2);
  const auto after = metrics();
  auto requests = [&](const char* kind, const char* outcome) {
    return delta(before, after, "rowguard_ledger_requests_total", {{"kind", kind}, {"outcome", outcome}});
  };
  CHECK(requests("deposit", "ok") == 1);
  CHECK(requests("transfer", "ok") == 1);
  CHECK(requests("transfer", "insufficient_funds") == 1);
  CHECK(requests("transfer", "replayed") == 1);
  CHECK(requests("transfer", "error") == 1);
  CHECK(requests("update", "ok") == 2);
  CHECK(delta(before, after, "rowguard_ledger_request_seconds", {{"kind", "transfer"}}) == 4);
  CHECK(delta(before, after, "rowguard_ledger_conflicts_total") == 1);
  CHECK(delta(before, after, "rowguard_ledger_retries_total") == 1);
  CHECK(delta(before, after, "rowguard_retries_total", {{"kind", "conflict"}}) == 1);
  CHECK(delta(before, after, "rowguard_retries_exhausted_total") == 0);
}

TEST_CASE("metrics: cache hits, misses and loads are counted, and a failed load is counted and logged",
          "[backend][metrics]") {
  Migrated t;
  Cache cache(t.db());
  CapturedLogs logs;
  const auto before = metrics();
  CHECK_FALSE(cache.get("m-key"));  // miss
  CHECK(cache.get_or_load("m-key", std::chrono::minutes(1), [] { return std::optional<std::string>("v"); }) == "v");
  CHECK(cache.get("m-key") == "v");  // hit
  CHECK_THROWS_AS(cache.get_or_load("m-bad", std::chrono::minutes(1),
                                    []() -> std::optional<std::string> { throw std::runtime_error("backend down"); }),
                  std::runtime_error);
  cache.invalidate("m-key");
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_cache_lookups_total", {{"result", "miss"}}) == 3);
  CHECK(delta(before, after, "rowguard_cache_lookups_total", {{"result", "hit"}}) == 1);
  CHECK(delta(before, after, "rowguard_cache_loads_total", {{"result", "ok"}}) == 1);
  CHECK(delta(before, after, "rowguard_cache_loads_total", {{"result", "error"}}) == 1);
  CHECK(delta(before, after, "rowguard_cache_load_seconds") == 2);
  CHECK(delta(before, after, "rowguard_cache_invalidations_total") == 1);
  const LogFields* f = logs.find("cache load failed");
  REQUIRE(f);
  CHECK(field(*f, "key") == "m-bad");
  CHECK(field(*f, "error") == "backend down");
}

TEST_CASE("metrics: a pool borrow is counted and open sessions show in the gauge", "[backend][metrics]") {
  Migrated t;
  Locks locks(t.db());
  const auto before = metrics();
  locks.list();  // one statement, one borrowed session
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_pool_borrows_total") == 1);
  CHECK(after.value("rowguard_pool_sessions_open") >= 1);
  CHECK(after.value("rowguard_pool_sessions_idle") >= 1);
  CHECK(after.value("rowguard_pool_sessions_idle") <= after.value("rowguard_pool_sessions_open"));
}

TEST_CASE("metrics: a blocking acquire that waits is counted and timed once", "[backend][metrics][threads]") {
  Migrated t;
  Locks locks(t.db());
  auto held = locks.try_acquire("metrics-wait", std::chrono::seconds(30));
  REQUIRE(held);
  const auto before = metrics();
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    held->release();
  });
  Lease lease = locks.acquire("metrics-wait", std::chrono::seconds(30), std::chrono::seconds(20));
  releaser.join();
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_lock_waits_total") == 1);
  CHECK(delta(before, after, "rowguard_lock_wait_seconds") == 1);
  CHECK(delta(before, after, "rowguard_lock_acquires_total", {{"result", "acquired"}}) == 1);
  CHECK(delta(before, after, "rowguard_lock_acquires_total", {{"result", "busy"}}) >= 1);
}

TEST_CASE("metrics: a borrow that finds the pool exhausted waits and times out, and is counted", "[backend][metrics]") {
  Options options;
  options.pool_size = 1;
  options.pool_wait = std::chrono::milliseconds(50);
  Migrated t(options);
  Locks locks(t.db());
  Transaction tx = t.db().begin();  // holds the only session
  const auto before = metrics();
  CHECK(test::kind_of([&] { locks.list(); }) == ErrorKind::transient);
  const auto after = metrics();
  CHECK(delta(before, after, "rowguard_pool_waits_total") == 1);
  CHECK(delta(before, after, "rowguard_pool_wait_seconds") == 1);
  CHECK(delta(before, after, "rowguard_pool_timeouts_total") == 1);
  CHECK(delta(before, after, "rowguard_pool_borrows_total") == 0);
}

TEST_CASE("metrics: saga runs are counted by event and a compensation is logged", "[backend][metrics][threads]") {
  Migrated t;
  Sagas sagas(t.db());
  auto step = [](std::string name, bool fails) {
    return SagaStep{name,
                    [fails](StepContext&) -> std::string {
                      if (fails) throw std::runtime_error("provider said no");
                      return "done";
                    },
                    [](StepContext&) {}};
  };
  sagas.define("m-ok", {step("a", false), step("b", false)});
  sagas.define("m-bad", {step("a", false), step("b", true)});
  CapturedLogs logs;
  const auto before = metrics();
  CHECK(sagas.run("m-ok", "m-s1", "p").state == SagaState::completed);
  CHECK(sagas.run("m-bad", "m-s2", "p").state == SagaState::compensated);
  CHECK(sagas.run("m-ok", "m-s1", "p").replayed);  // a replay starts nothing
  const auto after = metrics();
  auto events = [&](const char* event) { return delta(before, after, "rowguard_sagas_total", {{"event", event}}); };
  CHECK(events("started") == 2);
  CHECK(events("completed") == 1);
  CHECK(events("compensated") == 1);
  CHECK(events("compensation_failed") == 0);
  const LogFields* f = logs.find("saga compensated");
  REQUIRE(f);
  CHECK(field(*f, "saga") == "m-s2");
  CHECK(field(*f, "type") == "m-bad");
}

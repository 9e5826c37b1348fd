// rowguard-metrics-bench: what the in-process metrics and the logging hook cost.
//
// Workloads (single thread; each timed for --seconds, the median of --rounds rounds reported;
// each figure includes one std::function call of the harness, measured alone as "empty"):
//   empty             the harness: a std::function call that increments a volatile int
//   counter_add       one Counter::add (a relaxed atomic add on a series found once)
//   histogram_observe one Histogram::observe of a steady_clock duration (bucket search + 3 adds)
//   log_no_handler    one log_enabled() check + skipped log call, as every call site does with no handler
//   log_handler       one log call delivered to an installed handler that does nothing
//   lock_pair         try_acquire + release of one uncontended lock on SQLite :memory: (rowguard, with metrics)
//   lock_instruments  the instrument calls one lock_pair makes (2 clock reads + histogram observe,
//                     acquires/releases counters, 2 pool borrows, 4 pool gauge adds), without the lock:
//                     the baseline row next to lock_pair, so their ratio is the share of metrics in it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "rowguard/rowguard.hpp"

#include "obs/instruments.hpp"
#include "obs/logging.hpp"

namespace {
using Clock = std::chrono::steady_clock;

// Nanoseconds per call of op, run in batches until `seconds` have passed.
double ns_per_op(double seconds, const std::function<void(std::uint64_t)>& op) {
  std::uint64_t n = 0;
  const auto start = Clock::now();
  const auto until = start + std::chrono::duration<double>(seconds);
  auto now = start;
  while (now < until) {
    for (int i = 0; i < 1000; ++i) op(n++);
    now = Clock::now();
  }
  return std::chrono::duration<double, std::nano>(now - start).count() / static_cast<double>(n);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  double seconds = 1;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--seconds")
      seconds = std::atof(argv[i + 1]);
    else if (a == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: rowguard-metrics-bench [--seconds S] [--rounds N]\n");
      return 2;
    }
  }
  namespace in = rowguard::detail::instruments;
  auto& m = rowguard::detail::metrics::Registry::instance();
  auto& counter = m.counter("rowguard_bench_total", "bench only");
  auto& histogram = m.histogram("rowguard_bench_seconds", "bench only");
  volatile int sink = 0;

  auto db = rowguard::Database::open("sqlite::memory:");
  db.migrate();
  rowguard::Locks locks(db);

  struct Row {
    std::string name;
    std::function<void(std::uint64_t)> op;
    double pair_ops;  // how many lock pairs a call is (for the lock rows)
  };
  const auto& lm = in::locks();
  const auto& pm = in::pool();
  std::vector<Row> rows{
      {"empty", [&](std::uint64_t) { sink = sink + 1; }, 0},  // the harness's own call: subtract it
      {"counter_add", [&](std::uint64_t) { counter.add(); }, 0},
      {"histogram_observe", [&](std::uint64_t i) { histogram.observe(std::chrono::nanoseconds(i & 0xfffff)); }, 0},
      {"log_no_handler",
       [&](std::uint64_t) {
         if (rowguard::detail::log_enabled(rowguard::LogLevel::warn))
           rowguard::detail::log(rowguard::LogLevel::warn, "bench", "never", {});
         sink = sink + 1;
       },
       0},
      {"log_handler",
       [&](std::uint64_t) {
         static const rowguard::LogFields fields{{"lock", "bench"}};
         if (rowguard::detail::log_enabled(rowguard::LogLevel::warn))
           rowguard::detail::log(rowguard::LogLevel::warn, "bench", "delivered", fields);
       },
       0},
      {"lock_pair",
       [&](std::uint64_t) {
         auto lease = locks.try_acquire("bench-lock", std::chrono::seconds(30));
         if (!lease) std::abort();
         lease->release();
       },
       1},
      {"lock_instruments",
       [&](std::uint64_t) {
         const auto sent = Clock::now();
         pm.idle.add(-1), pm.borrows.add(), pm.idle.add(1);
         lm.acquire_seconds.observe_since(sent);
         lm.acquired.add();
         pm.idle.add(-1), pm.borrows.add(), pm.idle.add(1);
         lm.released.add();
       },
       1},
  };
  std::vector<std::vector<double>> results(rows.size());
  for (int r = 0; r < rounds; ++r)
    for (std::size_t i = 0; i < rows.size(); ++i) {  // alternate rows within each round
      if (rows[i].name == "log_handler")
        rowguard::set_log_handler([](const rowguard::LogRecord&) {}, rowguard::LogLevel::info);
      results[i].push_back(ns_per_op(seconds, rows[i].op));
      rowguard::set_log_handler(nullptr);
    }
  std::printf("%-18s %12s\n", "workload", "ns/op");
  double pair = 0, instruments = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const double ns = median(results[i]);
    if (rows[i].name == "lock_pair") pair = ns;
    if (rows[i].name == "lock_instruments") instruments = ns;
    std::printf("%-18s %12.1f\n", rows[i].name.c_str(), ns);
  }
  std::printf("metrics share of a lock pair: %.2f%% (lock_instruments / lock_pair)\n", 100 * instruments / pair);
  return sink < 0;
}

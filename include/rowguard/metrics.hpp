#pragma once
// In-process metrics: counters, gauges and latency histograms kept by every rowguard component
// (locks, ledger, cache, pool, retries, sagas, two-phase transfers) since the process started, and
// their Prometheus text exposition, so a service serves them on its own endpoint:
//
//   server.Get("/metrics", [](auto&, auto& res) {
//     res.set_content(rowguard::to_prometheus(rowguard::metrics()), "text/plain; version=0.0.4");
//   });
//
// The names and labels of every series are listed in docs/operations.md. Recording is a relaxed
// atomic add on a series found once per call site: cheap enough for every operation (a few ns,
// bench/RESULTS.md). Values are per process and start at 0. Histograms are latencies in seconds,
// buckets 0.0005 to 10 (docs/operations.md).

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rowguard {

enum class MetricType { counter, gauge, histogram };

// Label name/value pairs, in the order they are printed.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

struct HistogramData {
  std::vector<double> bounds;         // upper bounds of the buckets, seconds, ascending (+Inf implied)
  std::vector<std::uint64_t> counts;  // per bucket, NOT cumulative; size bounds.size() + 1 (the last is +Inf)
  std::uint64_t count = 0;
  double sum = 0;  // seconds
};

struct MetricSeries {
  MetricLabels labels;
  double value = 0;         // counter or gauge
  HistogramData histogram;  // histogram
};

struct MetricFamily {
  std::string name;  // [a-zA-Z_:][a-zA-Z0-9_:]*
  std::string help;
  MetricType type = MetricType::counter;
  std::vector<MetricSeries> series;
};

struct MetricsSnapshot {
  std::vector<MetricFamily> families;  // sorted by name
  // nullptr when there is no such family.
  const MetricFamily* find(std::string_view name) const;
  // A counter's or gauge's value (a histogram's count); 0 when there is no such series.
  double value(std::string_view name, const MetricLabels& labels = {}) const;
};

// A snapshot of every series this process has, each family registered up front (a counter that
// never moved reads 0, so rates work from the first scrape). Thread-safe.
MetricsSnapshot metrics();

// Prometheus text exposition format 0.0.4 of a snapshot (HELP, TYPE, cumulative buckets with
// le="+Inf", _sum and _count; label values escaped). Error-free for any snapshot from metrics();
// std::invalid_argument for a family or label name that Prometheus would refuse.
std::string to_prometheus(const MetricsSnapshot& snapshot);

}  // namespace rowguard

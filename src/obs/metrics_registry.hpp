#pragma once
// The process-wide registry behind rowguard::metrics(): counters, gauges and fixed-bucket latency
// histograms. Internal: included only from src/.
//
// Thread-safety: registration takes the registry's mutex and happens once per series (call sites
// keep the returned reference, see core/instruments.hpp); recording is a relaxed atomic add on
// that reference and takes no lock. Series live until the process ends (references never dangle).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rowguard/metrics.hpp"

namespace rowguard::detail::metrics {

class Counter {
 public:
  void add(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class Gauge {
 public:
  void add(std::int64_t n) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  void set(std::int64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
  std::int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> value_{0};
};

// Latency buckets, seconds: 0.5 ms to 10 s (a lock statement on SQLite :memory: to a stuck load).
inline const std::vector<double>& latency_bounds() {
  static const std::vector<double> bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  return bounds;
}

// Observations in seconds, each counted in the first bucket whose upper bound is >= it (Prometheus'
// "le"); the sum is kept in nanoseconds so that it adds exactly and without a CAS loop.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double seconds) noexcept;
  void observe(std::chrono::steady_clock::duration d) noexcept {
    observe_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
  }
  // Seconds since `since`.
  void observe_since(std::chrono::steady_clock::time_point since) noexcept {
    observe(std::chrono::steady_clock::now() - since);
  }
  HistogramData data() const;

 private:
  void observe_ns(std::int64_t ns) noexcept;
  std::vector<double> bounds_;
  std::vector<std::int64_t> bounds_ns_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

class Registry {
 public:
  static Registry& instance();

  // The series of family `name` with `labels`, created (and the family registered) on first use;
  // the same reference on every later call. std::logic_error when the family exists with another
  // type or help text, or a name is not one Prometheus accepts.
  Counter& counter(const std::string& name, const std::string& help, const MetricLabels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const MetricLabels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help, const MetricLabels& labels = {},
                       const std::vector<double>& bounds = latency_bounds());

  MetricsSnapshot snapshot() const;

  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether Prometheus accepts these as a metric or label name.
bool valid_metric_name(std::string_view name) noexcept;
bool valid_label_name(std::string_view name) noexcept;

}  // namespace rowguard::detail::metrics

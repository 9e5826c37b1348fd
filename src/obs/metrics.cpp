// The metrics registry, rowguard::metrics() and the Prometheus text exposition (format 0.0.4).
#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <variant>

#include <fmt/format.h>

#include "obs/instruments.hpp"
#include "obs/metrics_registry.hpp"

namespace rowguard {
namespace detail::metrics {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end())
    throw std::logic_error("histogram bounds must be strictly ascending");
  for (const double b : bounds_) {
    if (!std::isfinite(b) || b < 0) throw std::logic_error("histogram bounds must be finite and not negative");
    bounds_ns_.push_back(static_cast<std::int64_t>(std::llround(b * 1e9)));
  }
  for (std::size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double seconds) noexcept {
  if (std::isnan(seconds)) return;
  const double ns = std::clamp(seconds, 0.0, 9.0e18) * 1e9;  // > 290 years clamps
  observe_ns(ns >= 9.0e18 ? std::int64_t{9'000'000'000'000'000'000} : static_cast<std::int64_t>(std::llround(ns)));
}

void Histogram::observe_ns(std::int64_t ns) noexcept {
  if (ns < 0) ns = 0;  // a clock that stepped back
  // The first bound >= ns: Prometheus buckets are "less than or equal".
  const auto at =
      static_cast<std::size_t>(std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), ns) - bounds_ns_.begin());
  counts_[at].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

HistogramData Histogram::data() const {
  HistogramData d;
  d.bounds = bounds_;
  d.counts.reserve(bounds_.size() + 1);
  for (std::size_t i = 0; i <= bounds_.size(); ++i) d.counts.push_back(counts_[i].load(std::memory_order_relaxed));
  // A scrape racing an observe may see the bucket before the count: count is the buckets' total,
  // so the exposition stays consistent (+Inf bucket == _count).
  d.count = 0;
  for (const auto c : d.counts) d.count += c;
  d.sum = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return d;
}

bool valid_metric_name(std::string_view name) noexcept {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool valid_label_name(std::string_view name) noexcept {
  if (name.empty() || name.substr(0, 2) == "__") return false;  // "__" is reserved for Prometheus
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

struct Registry::Impl {
  using Instrument = std::variant<std::unique_ptr<Counter>, std::unique_ptr<Gauge>, std::unique_ptr<Histogram>>;
  struct Series {
    MetricLabels labels;
    Instrument instrument;
  };
  struct Family {
    std::string help;
    MetricType type;
    std::deque<Series> series;  // registration order
  };
  mutable std::mutex mutex;
  std::map<std::string, Family, std::less<>> families;  // sorted by name, as snapshots are

  template <class T, class Make>
  T& find_or_add(const std::string& name, const std::string& help, MetricType type, const MetricLabels& labels,
                 Make&& make) {
    if (!valid_metric_name(name)) throw std::logic_error(fmt::format("'{}' is not a Prometheus metric name", name));
    for (const auto& [label, value] : labels)
      if (!valid_label_name(label) || (type == MetricType::histogram && label == "le"))
        throw std::logic_error(fmt::format("'{}' is not a valid label name for metric '{}'", label, name));
    std::lock_guard lock(mutex);
    auto [it, added] = families.try_emplace(name, Family{help, type, {}});
    Family& f = it->second;
    if (!added && (f.type != type || f.help != help))
      throw std::logic_error(fmt::format("metric '{}' is registered twice with another type or help", name));
    for (auto& s : f.series)
      if (s.labels == labels) return *std::get<std::unique_ptr<T>>(s.instrument);
    auto made = make();
    T& out = *made;
    f.series.push_back(Series{labels, Instrument(std::move(made))});
    return out;
  }
};

Registry::Registry() : impl_(std::make_unique<Impl>()) {}
Registry::~Registry() = default;

Registry& Registry::instance() {
  static Registry* r = new Registry();  // never destroyed: instruments may record during static destruction
  return *r;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const MetricLabels& labels) {
  return impl_->find_or_add<Counter>(name, help, MetricType::counter, labels,
                                     [] { return std::make_unique<Counter>(); });
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const MetricLabels& labels) {
  return impl_->find_or_add<Gauge>(name, help, MetricType::gauge, labels, [] { return std::make_unique<Gauge>(); });
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, const MetricLabels& labels,
                               const std::vector<double>& bounds) {
  return impl_->find_or_add<Histogram>(name, help, MetricType::histogram, labels,
                                       [&] { return std::make_unique<Histogram>(bounds); });
}

MetricsSnapshot Registry::snapshot() const {
  MetricsSnapshot out;
  std::lock_guard lock(impl_->mutex);
  out.families.reserve(impl_->families.size());
  for (const auto& [name, f] : impl_->families) {
    MetricFamily family{name, f.help, f.type, {}};
    for (const auto& s : f.series) {
      MetricSeries series{s.labels, 0, {}};
      if (const auto* c = std::get_if<std::unique_ptr<Counter>>(&s.instrument))
        series.value = static_cast<double>((*c)->value());
      if (const auto* g = std::get_if<std::unique_ptr<Gauge>>(&s.instrument))
        series.value = static_cast<double>((*g)->value());
      if (const auto* h = std::get_if<std::unique_ptr<Histogram>>(&s.instrument)) series.histogram = (*h)->data();
      family.series.push_back(std::move(series));
    }
    out.families.push_back(std::move(family));
  }
  return out;
}

}  // namespace detail::metrics

const MetricFamily* MetricsSnapshot::find(std::string_view name) const {
  const auto it = std::lower_bound(families.begin(), families.end(), name,
                                   [](const MetricFamily& f, std::string_view n) { return f.name < n; });
  if (it != families.end() && it->name == name) return &*it;
  for (const auto& f : families)  // a hand-built snapshot need not be sorted
    if (f.name == name) return &f;
  return nullptr;
}

double MetricsSnapshot::value(std::string_view name, const MetricLabels& labels) const {
  const MetricFamily* f = find(name);
  if (!f) return 0;
  for (const auto& s : f->series)
    if (s.labels == labels) return f->type == MetricType::histogram ? static_cast<double>(s.histogram.count) : s.value;
  return 0;
}

MetricsSnapshot metrics() {
  detail::instruments::register_all();
  return detail::metrics::Registry::instance().snapshot();
}

namespace {
// A sample value as Prometheus' parser (Go's strconv.ParseFloat) reads it: shortest round trip.
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// HELP text escapes backslash and newline; label values also the double quote.
std::string escape(std::string_view s, bool label_value) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"' && label_value)
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// {a="x",b="y"} with an optional extra label last (le), or nothing when there are no labels.
std::string label_set(const MetricLabels& labels, std::string_view extra_name = {}, std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return {};
  std::string out = "{";
  bool first = true;
  auto add = [&](std::string_view n, std::string_view v) {
    if (!first) out += ',';
    first = false;
    out += n;
    out += "=\"";
    out += escape(v, true);
    out += '"';
  };
  for (const auto& [n, v] : labels) add(n, v);
  if (!extra_name.empty()) add(extra_name, extra_value);
  out += '}';
  return out;
}

std::string_view type_name(MetricType t) {
  switch (t) {
    case MetricType::counter:
      return "counter";
    case MetricType::gauge:
      return "gauge";
    case MetricType::histogram:
      return "histogram";
  }
  return "untyped";
}
}  // namespace

std::string to_prometheus(const MetricsSnapshot& snapshot) {
  std::string out;
  for (const auto& f : snapshot.families) {
    if (!detail::metrics::valid_metric_name(f.name))
      throw std::invalid_argument(fmt::format("'{}' is not a Prometheus metric name", f.name));
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", f.name, escape(f.help, false), f.name,
                   type_name(f.type));
    for (const auto& s : f.series) {
      for (const auto& [n, v] : s.labels)
        if (!detail::metrics::valid_label_name(n) || (f.type == MetricType::histogram && n == "le"))
          throw std::invalid_argument(fmt::format("'{}' is not a valid label name for metric '{}'", n, f.name));
      if (f.type != MetricType::histogram) {
        fmt::format_to(std::back_inserter(out), "{}{} {}\n", f.name, label_set(s.labels), number(s.value));
        continue;
      }
      const HistogramData& h = s.histogram;
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < h.bounds.size(); ++i) {
        cumulative += i < h.counts.size() ? h.counts[i] : 0;
        fmt::format_to(std::back_inserter(out), "{}_bucket{} {}\n", f.name,
                       label_set(s.labels, "le", number(h.bounds[i])), cumulative);
      }
      fmt::format_to(std::back_inserter(out), "{}_bucket{} {}\n", f.name, label_set(s.labels, "le", "+Inf"), h.count);
      fmt::format_to(std::back_inserter(out), "{}_sum{} {}\n", f.name, label_set(s.labels), number(h.sum));
      fmt::format_to(std::back_inserter(out), "{}_count{} {}\n", f.name, label_set(s.labels), h.count);
    }
  }
  return out;
}

}  // namespace rowguard

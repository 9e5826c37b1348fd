// TEMPORARY local stub until the metrics branch merges. Never commit.
#include "rowguard/metrics.hpp"
#include "rowguard/ledger.hpp"
#include <fmt/format.h>
namespace rowguard {
MetricsSnapshot metrics() { return {}; }
std::string to_prometheus(const MetricsSnapshot& s) {
  std::string out;
  for (auto& f : s.families) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, f.type == MetricType::counter ? "counter" : "gauge");
    for (auto& se : f.series) {
      std::string l;
      for (auto& [k, v] : se.labels) l += (l.empty() ? "" : ",") + k + "=\"" + v + "\"";
      out += f.name + (l.empty() ? "" : "{" + l + "}") + " " + fmt::format("{}", se.value) + "\n";
    }
  }
  return out;
}
}

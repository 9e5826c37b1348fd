#include "core/schema_scripts.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace rowguard::detail {

std::vector<Migration> migrations(std::string_view dialect) {
  std::vector<Migration> steps;
  for (const auto& script : schema_scripts()) {
    if (script.dialect != dialect || script.name.size() < 4 || script.name[3] != '_') continue;
    if (!std::all_of(script.name.begin(), script.name.begin() + 3, [](char c) { return std::isdigit(c); })) continue;
    const int version = std::atoi(std::string(script.name.substr(0, 3)).c_str());
    if (version > 0) steps.push_back({version, &script});
  }
  std::sort(steps.begin(), steps.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
  return steps;
}

const SchemaScript* find_script(std::string_view dialect, std::string_view name) {
  for (const auto& script : schema_scripts())
    if (script.dialect == dialect && script.name == name) return &script;
  return nullptr;
}

std::string with_prefix(std::string_view sql, std::string_view prefix) {
  static constexpr std::string_view stock = "rowguard_";
  std::string out;
  out.reserve(sql.size());
  std::size_t i = 0;
  while (i < sql.size()) {
    const bool word_start = i == 0 || !(std::isalnum(static_cast<unsigned char>(sql[i - 1])) || sql[i - 1] == '_');
    if (word_start && sql.substr(i, stock.size()) == stock) {
      out += prefix;
      i += stock.size();
    } else {
      out += sql[i++];
    }
  }
  return out;
}

}  // namespace rowguard::detail

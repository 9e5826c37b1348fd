#include "core/schema_scripts.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <fmt/format.h>

#include "rowguard/error.hpp"
#include "rowguard/schema.hpp"

#include "base/sql_text.hpp"

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

namespace rowguard {

std::string schema_sql(std::string_view dialect, SchemaPart part, std::string_view table_prefix) {
  if (dialect != "sqlite" && dialect != "postgres")
    throw Error(ErrorKind::invalid_argument,
                fmt::format("schema dialect must be sqlite or postgres, got '{}'", dialect));
  if (!detail::is_identifier(table_prefix, 40))
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format("table prefix '{}' is not a valid SQL identifier prefix ([a-z_][a-z0-9_]*, at most 40 bytes)",
                    table_prefix));
  if (part != SchemaPart::migrations) {
    const std::string_view name = part == SchemaPart::roles ? "roles" : "partitioning";
    const detail::SchemaScript* script = detail::find_script(dialect, name);
    if (script == nullptr)
      throw Error(ErrorKind::invalid_argument, std::string("the ") + std::string(name) + " script is PostgreSQL's");
    return detail::with_prefix(script->sql, table_prefix);
  }
  std::string out = detail::with_prefix(detail::find_script(dialect, "000_schema_version")->sql, table_prefix);
  for (const auto& step : detail::migrations(dialect))
    out += "\n" + detail::with_prefix(step.script->sql, table_prefix);
  return out;
}

}  // namespace rowguard

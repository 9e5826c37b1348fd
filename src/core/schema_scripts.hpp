#pragma once
// The schema scripts of schema/, embedded at build time, and their prefixed forms.

#include <string>
#include <string_view>
#include <vector>

namespace rowguard::detail {

struct SchemaScript {
  std::string_view dialect;  // "sqlite" or "postgres"
  std::string_view name;     // file name without .sql: "000_schema_version", "001_init", "roles"
  std::string_view sql;      // written with the default prefix rowguard_
};

const std::vector<SchemaScript>& schema_scripts();

// A numbered migration step of one dialect.
struct Migration {
  int version;
  const SchemaScript* script;
};

// The numbered steps (001, 002, ...) of a dialect in order; 000 (the version table) is not among them.
std::vector<Migration> migrations(std::string_view dialect);
// The script with this name, or nullptr.
const SchemaScript* find_script(std::string_view dialect, std::string_view name);
// The script text with every rowguard_ identifier prefix replaced by prefix.
std::string with_prefix(std::string_view sql, std::string_view prefix);

}  // namespace rowguard::detail

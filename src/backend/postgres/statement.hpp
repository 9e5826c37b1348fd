#pragma once
// Prepared statements of one libpqxx connection, keyed by SQL text.

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rowguard/value.hpp"

namespace pqxx {
class connection_base;
class transaction_base;
}  // namespace pqxx

namespace rowguard::detail {

// Thread-safety: none; owned by one session.
class PgStatements {
 public:
  explicit PgStatements(pqxx::connection_base& connection);
  // Runs sql with bound parameters: prepared once per connection; transaction control
  // (BEGIN/COMMIT/ROLLBACK) goes as a plain one-round-trip query instead.
  Result run(pqxx::transaction_base& tx, std::string_view sql, const std::vector<Value>& params);

 private:
  static bool is_transaction_control(std::string_view sql);
  const std::string& name_for(std::string_view sql);
  pqxx::connection_base& connection_;
  std::unordered_map<std::string, std::string> names_;
};

}  // namespace rowguard::detail

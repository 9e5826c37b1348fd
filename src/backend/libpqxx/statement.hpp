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
  // unnamed: send every statement as an unnamed one (parse, bind and execute in one round trip)
  // instead of preparing it once per connection; what a transaction-pooling PgBouncer needs, since
  // the next transaction may run on a server connection that never saw the prepared statement.
  PgStatements(pqxx::connection_base& connection, bool unnamed);
  // Runs sql with bound parameters: prepared once per connection (unless unnamed); transaction
  // control (BEGIN/COMMIT/ROLLBACK) goes as a plain one-round-trip query instead.
  Result run(pqxx::transaction_base& tx, std::string_view sql, const std::vector<Value>& params);

 private:
  static bool is_transaction_control(std::string_view sql);
  const std::string& name_for(std::string_view sql);
  pqxx::connection_base& connection_;
  const bool unnamed_;
  std::unordered_map<std::string, std::string> names_;
};

}  // namespace rowguard::detail

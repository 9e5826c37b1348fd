#pragma once
// Prepared statements of one libpqxx connection, found by their SQL text.

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rowguard/value.hpp"

#include "base/sql_text.hpp"

namespace pqxx {
class connection_base;
class transaction_base;
}  // namespace pqxx

namespace rowguard::detail {

// What the session needs to know of a statement's text, worked out once per distinct text.
struct PgStatementTraits {
  StatementEffect effect = StatementEffect::write;
  bool rollback = false;     // exactly "ROLLBACK": ends the transaction
  bool begin = false;        // starts with "BEGIN": opens one
  bool rollback_to = false;  // ROLLBACK TO a savepoint: ends an abort
  static PgStatementTraits of(std::string_view sql);
};

// One distinct SQL text of a connection: its prepared name (empty when it is sent unnamed, which
// a statement starting with plan_each_call_marker always is, or as a plain query) and its traits. Lives as long as the
// connection's PgStatements.
struct PgStatement {
  std::string sql;
  std::string name;
  bool control = false;  // BEGIN, COMMIT, ROLLBACK or END: a plain one-round-trip query without parameters
  PgStatementTraits traits;
};

// Thread-safety: none; owned by one session.
class PgStatements {
 public:
  // unnamed: send every statement as an unnamed one (parse, bind and execute in one round trip)
  // instead of preparing it once per connection; what a transaction-pooling PgBouncer needs, since
  // the next transaction may run on a server connection that never saw the prepared statement.
  PgStatements(pqxx::connection_base& connection, bool unnamed);
  // The statement of this text, prepared once per connection (unless unnamed). Callers pass the
  // same long-lived strings (their statements are built once), so the text's address finds it
  // without hashing the text; the text is still compared, so any string of the same text works.
  const PgStatement& find(std::string_view sql);
  // Runs the statement with bound parameters: transaction control (BEGIN/COMMIT/ROLLBACK) goes as
  // a plain one-round-trip query.
  Result run(pqxx::transaction_base& tx, const PgStatement& statement, const std::vector<Value>& params);

 private:
  struct TextHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>()(s); }
  };
  struct Recent {
    const char* data = nullptr;
    const PgStatement* statement = nullptr;
  };
  pqxx::connection_base& connection_;
  const bool unnamed_;
  std::unordered_map<std::string, PgStatement, TextHash, std::equal_to<>> by_text_;  // node-based: stable
  std::array<Recent, 64> recent_{};  // by the text's address, overwritten on collision: bounded
};

}  // namespace rowguard::detail

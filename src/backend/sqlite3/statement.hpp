#pragma once
// Prepared statements of one sqlite3 connection.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/backend.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace rowguard::detail {

// Prepared statements of one connection, keyed by SQL text. Thread-safety: none (one session).
class SqliteStatements {
 public:
  explicit SqliteStatements(sqlite3* db) : db_(db) {}
  SqliteStatements(const SqliteStatements&) = delete;
  SqliteStatements& operator=(const SqliteStatements&) = delete;
  ~SqliteStatements();
  // Prepares (or reuses), binds, steps to the end; leaves the statement reset.
  Result run(std::string_view sql, const std::vector<Value>& params);
  void clear() noexcept;

 private:
  sqlite3_stmt* prepare(std::string_view sql);
  sqlite3* db_;
  std::vector<std::pair<std::string, sqlite3_stmt*>> cache_;  // small; most-recent last
};

}  // namespace rowguard::detail

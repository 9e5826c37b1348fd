#pragma once
// The native SQLite backend (sqlite3 C API). Internal: only src/ includes this.

#include <memory>
#include <string>
#include <string_view>

#include "backend/backend.hpp"
#include "backend/url.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace rowguard::detail {

// Opens the backend for sqlite:PATH or sqlite::memory:.
std::shared_ptr<Backend> open_sqlite(const ParsedUrl& url, const Options& options);

// The one place SQLite result codes become rowguard errors (the SOCI adapter's SQLite side uses it too).
ErrorKind kind_for_sqlite(int result_code) noexcept;
// The SQLSTATE a SQLite result code corresponds to ("23505" for a unique violation), or "".
std::string sqlstate_for_sqlite(int extended_code);
Error sqlite_error(int result_code, std::string_view context, std::string_view message);

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

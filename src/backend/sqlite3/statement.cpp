#include "backend/sqlite3/statement.hpp"

#include <algorithm>
#include <sqlite3.h>

#include <fmt/format.h>

#include "base/sql_text.hpp"

#include "backend/sqlite3/driver.hpp"

namespace rowguard::detail {

namespace {
constexpr std::size_t max_cached_statements = 128;

void bind(sqlite3* db, sqlite3_stmt* stmt, int index, const Value& value) {
  int rc = SQLITE_OK;
  if (std::holds_alternative<std::nullptr_t>(value)) {
    rc = sqlite3_bind_null(stmt, index);
  } else if (const auto* i = std::get_if<std::int64_t>(&value)) {
    rc = sqlite3_bind_int64(stmt, index, *i);
  } else if (const auto* s = std::get_if<std::string>(&value)) {
    rc = sqlite3_bind_text64(stmt, index, s->data(), s->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  } else {
    const auto& b = std::get<Blob>(value).bytes;
    rc = sqlite3_bind_blob64(stmt, index, b.data(), b.size(), SQLITE_TRANSIENT);
  }
  if (rc != SQLITE_OK) throw sqlite_error(rc, fmt::format("binding parameter ${}", index), sqlite3_errmsg(db));
}

Value cell(sqlite3_stmt* stmt, int column) {
  switch (sqlite3_column_type(stmt, column)) {
    case SQLITE_NULL:
      return nullptr;
    case SQLITE_INTEGER:
      return static_cast<std::int64_t>(sqlite3_column_int64(stmt, column));
    case SQLITE_BLOB: {
      const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt, column));
      return Blob{std::string(data ? data : "", static_cast<std::size_t>(sqlite3_column_bytes(stmt, column)))};
    }
    default: {  // TEXT, and FLOAT rendered as text (rowguard never stores floating point)
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, column));
      return std::string(text ? text : "", static_cast<std::size_t>(sqlite3_column_bytes(stmt, column)));
    }
  }
}
}  // namespace

SqliteStatements::~SqliteStatements() { clear(); }

void SqliteStatements::clear() noexcept {
  for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
  cache_.clear();
}

sqlite3_stmt* SqliteStatements::prepare(std::string_view sql) {
  const auto hit = std::find_if(cache_.rbegin(), cache_.rend(), [&](const auto& e) { return e.first == sql; });
  if (hit != cache_.rend()) return hit->second;
  const std::string text = rewrite_placeholders(sql, PlaceholderStyle::question_numbered);
  sqlite3_stmt* stmt = nullptr;
  const int rc =
      sqlite3_prepare_v3(db_, text.c_str(), static_cast<int>(text.size()), SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) throw sqlite_error(rc, "preparing a statement", sqlite3_errmsg(db_));
  if (stmt == nullptr) throw Error(ErrorKind::invalid_argument, "empty SQL statement");
  if (cache_.size() >= max_cached_statements) {
    sqlite3_finalize(cache_.front().second);
    cache_.erase(cache_.begin());
  }
  cache_.emplace_back(std::string(sql), stmt);
  return stmt;
}

Result SqliteStatements::run(std::string_view sql, const std::vector<Value>& params) {
  sqlite3_stmt* stmt = prepare(sql);
  struct Reset {
    sqlite3_stmt* s;
    ~Reset() {
      sqlite3_reset(s);
      sqlite3_clear_bindings(s);
    }
  } reset{stmt};
  const int expected = sqlite3_bind_parameter_count(stmt);
  if (expected != static_cast<int>(params.size()))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("statement takes {} parameters, {} were given", expected, params.size()));
  for (std::size_t i = 0; i < params.size(); ++i) bind(db_, stmt, static_cast<int>(i + 1), params[i]);

  Result result;
  const int columns = sqlite3_column_count(stmt);
  for (;;) {
    const int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) throw sqlite_error(rc, "running a statement", sqlite3_errmsg(db_));
    std::vector<Value> cells;
    cells.reserve(static_cast<std::size_t>(columns));
    for (int c = 0; c < columns; ++c) cells.push_back(cell(stmt, c));
    result.rows.emplace_back(std::move(cells));
  }
  result.affected = sqlite3_stmt_readonly(stmt) ? 0 : sqlite3_changes64(db_);
  return result;
}

}  // namespace rowguard::detail

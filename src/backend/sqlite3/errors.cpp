#include <sqlite3.h>

#include <fmt/format.h>

#include "backend/sqlite/engine.hpp"
#include "backend/sqlite3/driver.hpp"

namespace rowguard::detail {

Error sqlite_error(int result_code, std::string_view context, std::string_view message) {
  return Error(kind_for_sqlite(result_code),
               fmt::format("sqlite: {}: {} ({})", context, message, sqlite3_errstr(result_code)),
               sqlstate_for_sqlite(result_code));
}

}  // namespace rowguard::detail

#include <sqlite3.h>

#include <fmt/format.h>

#include "backend/sqlite/engine.hpp"

namespace rowguard::detail {

ErrorKind kind_for_sqlite(int result_code) noexcept {
  switch (result_code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return ErrorKind::conflict;  // another writer held the lock past the busy timeout
    case SQLITE_CANTOPEN:          // the database file cannot be reached
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_INTERRUPT:
    case SQLITE_PROTOCOL:
      return ErrorKind::transient;  // SQLite rolls the transaction back; nothing was applied
    default:
      return ErrorKind::permanent;  // constraint, read-only, corrupt, misuse, ...
  }
}

std::string sqlstate_for_sqlite(int extended_code) {
  switch (extended_code) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
      return "23505";
    case SQLITE_CONSTRAINT_FOREIGNKEY:
      return "23503";
    case SQLITE_CONSTRAINT_CHECK:
      return "23514";
    case SQLITE_CONSTRAINT_NOTNULL:
      return "23502";
    default:
      break;
  }
  switch (extended_code & 0xff) {
    case SQLITE_CONSTRAINT:
      return "23000";
    case SQLITE_READONLY:
      return "25006";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "40001";
    default:
      return {};
  }
}

}  // namespace rowguard::detail

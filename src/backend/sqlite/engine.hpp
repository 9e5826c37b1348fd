#pragma once
// What rowguard knows of the SQLite engine, whichever driver talks to it (sqlite3/, soci/):
// result codes as error kinds and SQLSTATEs.

#include <string>
#include <string_view>

#include "backend/backend.hpp"

namespace rowguard::detail {

// The one place SQLite result codes become rowguard errors (the SOCI adapter's SQLite side uses it too).
ErrorKind kind_for_sqlite(int result_code) noexcept;
// The SQLSTATE a SQLite result code corresponds to ("23505" for a unique violation), or "".
std::string sqlstate_for_sqlite(int extended_code);

}  // namespace rowguard::detail

#pragma once
#include <exception>
#include <string>

#include "backend/sql_text.hpp"
#include "backend/url.hpp"
#include "rowguard/error.hpp"

namespace rowguard::detail {
// The SOCI exception in flight as a rowguard Error, its message scrubbed of secrets; sets
// connection_lost when the session is unusable.
// sqlite_extended_code: the connection's sqlite3_extended_errcode(), since SOCI reports only the primary code.
Error soci_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                 const Secrets& secrets, int sqlite_extended_code);
}  // namespace rowguard::detail

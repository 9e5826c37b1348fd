#pragma once
#include <exception>
#include <string>

#include "backend/sql_text.hpp"
#include "rowguard/error.hpp"

namespace rowguard::detail {
// The SOCI exception in flight as a rowguard Error; sets connection_lost when the session is unusable.
Error soci_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                 const std::string& password);
}  // namespace rowguard::detail

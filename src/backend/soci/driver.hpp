#pragma once
// The SOCI 4.0 driver, over the SQLite and PostgreSQL engines (backend/sqlite/engine.hpp,
// backend/postgres/engine.hpp): rowguard over a soci::session, for services that already use SOCI.

#include <exception>
#include <memory>
#include <string>

#include "base/sql_text.hpp"

#include "backend/backend.hpp"
#include "backend/url.hpp"

namespace soci {
class session;
class connection_pool;
}  // namespace soci

namespace rowguard::detail {

// soci+sqlite3:PATH and soci+postgresql://...: sessions opened by rowguard.
std::shared_ptr<Backend> open_soci(const ParsedUrl& url, const Options& options);
// A service's own session (used by one rowguard operation at a time) or connection pool.
std::shared_ptr<Backend> open_soci(soci::session& session, const Options& options);
std::shared_ptr<Backend> open_soci(soci::connection_pool& pool, std::size_t pool_size, const Options& options);

// The SOCI exception in flight as a rowguard Error, its message scrubbed of secrets; sets
// connection_lost when the session is unusable.
// sqlite_extended_code: the connection's sqlite3_extended_errcode(), since SOCI reports only the primary code.
Error soci_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                 const Secrets& secrets, int sqlite_extended_code);

}  // namespace rowguard::detail

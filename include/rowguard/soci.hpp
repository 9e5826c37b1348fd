#pragma once
// Opt-in: rowguard over a SOCI session or connection pool the service already has.
// Including this header needs SOCI's (and Boost's) headers; link rowguard::rowguard.

#include <soci/soci.h>

#include "rowguard/database.hpp"

namespace rowguard {

// Uses the service's session (sqlite3 or postgresql backend). rowguard runs one operation at a time
// on it (pool size 1) and the service must not use the session concurrently with rowguard.
// The session must outlive the Database.
// Example: soci::session sql(soci::postgresql, "dbname=app"); auto db = rowguard::from_soci(sql);
Database from_soci(soci::session& session, const Options& options = {});

// Leases sessions from the service's pool: at most pool_size at once (REQUIRES: <= the pool's size).
// Idle rowguard sessions stay leased, so size the service's pool for both. The pool must outlive the Database.
Database from_soci(soci::connection_pool& pool, std::size_t pool_size, Options options = {});

}  // namespace rowguard

// from_soci(): rowguard over a SOCI session or pool the service already has.
#include "rowguard/soci.hpp"

#include "backend/backend.hpp"
#include "backend/soci/driver.hpp"

#include "core/database_gate.hpp"

namespace rowguard {

Database from_soci(soci::session& session, const Options& options) {
  detail::validate_options(options);
  return detail::DatabaseGate::wrap(detail::open_soci(session, options));
}

Database from_soci(soci::connection_pool& pool, std::size_t pool_size, Options options) {
  options.pool_size = pool_size;
  detail::validate_options(options);
  return detail::DatabaseGate::wrap(detail::open_soci(pool, pool_size, options));
}

}  // namespace rowguard

// from_soci() and from_pqxx(): rowguard over connections the service already has.
#include "backend/backend.hpp"
#ifdef ROWGUARD_HAVE_POSTGRES
#include "backend/libpqxx/driver.hpp"
#include "rowguard/postgres.hpp"
#endif
#ifdef ROWGUARD_HAVE_SOCI
#include "backend/soci/driver.hpp"
#include "rowguard/soci.hpp"
#endif

namespace rowguard {

#ifdef ROWGUARD_HAVE_POSTGRES
Database from_pqxx(std::function<std::unique_ptr<pqxx::connection>()> factory, Options options) {
  detail::validate_options(options);
  return Database(detail::open_postgres(std::move(factory), options));
}
#endif

#ifdef ROWGUARD_HAVE_SOCI
Database from_soci(soci::session& session, Options options) {
  detail::validate_options(options);
  return Database(detail::open_soci(session, options));
}

Database from_soci(soci::connection_pool& pool, std::size_t pool_size, Options options) {
  options.pool_size = pool_size;
  detail::validate_options(options);
  return Database(detail::open_soci(pool, pool_size, options));
}
#endif

}  // namespace rowguard

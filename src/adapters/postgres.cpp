// from_pqxx(): rowguard over libpqxx connections the service already makes.
#include "rowguard/postgres.hpp"

#include "backend/backend.hpp"
#include "backend/libpqxx/driver.hpp"

#include "core/database_gate.hpp"

namespace rowguard {

Database from_pqxx(std::function<std::unique_ptr<pqxx::connection>()> factory, const Options& options) {
  detail::validate_options(options);
  return detail::DatabaseGate::wrap(detail::open_postgres(std::move(factory), options));
}

}  // namespace rowguard

#pragma once
// The SOCI adapter: rowguard over a soci::session, for services that already use SOCI.
// Internal: only src/ includes this.

#include <memory>
#include <string>

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

}  // namespace rowguard::detail

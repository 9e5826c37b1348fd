#pragma once
// The libpqxx 6.4 driver of the PostgreSQL engine (backend/postgres/engine.hpp).

#include <exception>
#include <functional>
#include <memory>

#include <pqxx/connection>

#include "base/sql_text.hpp"

#include "backend/backend.hpp"
#include "backend/url.hpp"

namespace rowguard::detail {

// pqxx::connection_base has no virtual destructor in libpqxx 6.4: connections are always owned as
// the concrete pqxx::connection.
using PqxxFactory = std::function<std::unique_ptr<pqxx::connection>()>;

// Opens the backend for postgresql://... or a libpq keyword string.
std::shared_ptr<Backend> open_postgres(const ParsedUrl& url, const Options& options);
// Wraps connections made by the service's own factory (rowguard/postgres.hpp).
std::shared_ptr<Backend> open_postgres(PqxxFactory factory, const Options& options);

// The libpqxx exception in flight, as a rowguard Error; sets connection_lost when the session is unusable.
// Its message is scrubbed of secrets.
Error postgres_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                     const Secrets& secrets);

}  // namespace rowguard::detail

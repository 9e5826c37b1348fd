#pragma once
// The native PostgreSQL backend (libpqxx 6.4). Internal: only src/ includes this.

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "backend/backend.hpp"
#include "backend/sql_text.hpp"
#include "backend/url.hpp"

#include <pqxx/connection>

namespace rowguard::detail {

// pqxx::connection_base has no virtual destructor in libpqxx 6.4: connections are always owned as
// the concrete pqxx::connection.
using PqxxFactory = std::function<std::unique_ptr<pqxx::connection>()>;

// Opens the backend for postgresql://... or a libpq keyword string.
std::shared_ptr<Backend> open_postgres(const ParsedUrl& url, const Options& options);
// Wraps connections made by the service's own factory (rowguard/postgres.hpp).
std::shared_ptr<Backend> open_postgres(PqxxFactory factory, const Options& options);

// A LISTEN connection made with libpq from a connection string (used by both the native and the
// SOCI PostgreSQL backends).
ListenerFactory libpq_listener_factory(std::string conninfo, std::string password);

// The one place SQLSTATEs become error kinds (the SOCI adapter's PostgreSQL side uses it too).
ErrorKind kind_for_sqlstate(std::string_view sqlstate) noexcept;

// Whether a lost connection leaves this statement's outcome unknown: a COMMIT, or a write sent
// outside a transaction. Inside a transaction the server rolls back, so the loss is transient.
bool outcome_unknown(StatementEffect effect, bool in_transaction) noexcept;

// Error(invalid_argument) when libpq cannot parse the connection string (checked before connecting).
void validate_conninfo(const std::string& conninfo, const std::string& password);

// The libpqxx exception in flight, as a rowguard Error; sets connection_lost when the session is unusable.
Error postgres_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                     const std::string& password);

}  // namespace rowguard::detail

#pragma once
// The native PostgreSQL backend (libpqxx 6.4). Internal: only src/ includes this.

#include <atomic>
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
ListenerFactory libpq_listener_factory(std::string conninfo, Secrets secrets);

// The one place SQLSTATEs become error kinds (the SOCI adapter's PostgreSQL side uses it too).
ErrorKind kind_for_sqlstate(std::string_view sqlstate) noexcept;

// Whether a lost connection leaves this statement's outcome unknown: a COMMIT, or a write sent
// outside a transaction. Inside a transaction the server rolls back, so the loss is transient.
bool outcome_unknown(StatementEffect effect, bool in_transaction) noexcept;

// PostgreSQL ends a COMMIT whose wait for a synchronous standby was canceled (pg_cancel_backend, a
// client or pooler that gives up) with success and only a WARNING: "canceling wait for synchronous
// replication ... The transaction has already committed locally, but might not have been replicated
// to the standby." A failover then could lose the transfer or the token. Both PostgreSQL backends
// watch their sessions' notices for it (the server's English text: with lc_messages in another
// language it goes unseen) and report such a commit as in_doubt. The doubt is shared by a backend's
// sessions, pending until a later commit has waited for the standby in full: since the standby
// confirms WAL in order, that commit's confirmation covers the doubtful one too (settle_replication).
bool is_sync_replication_cancel(std::string_view notice) noexcept;
struct ReplicationDoubt {
  std::atomic<bool> pending{false};
};
// The in_doubt error for such a commit.
Error replication_in_doubt(std::string_view backend_name);

// Error(invalid_argument) when libpq cannot parse the connection string (checked before connecting).
void validate_conninfo(const std::string& conninfo, const Secrets& secrets);

// The libpqxx exception in flight, as a rowguard Error; sets connection_lost when the session is unusable.
// Its message is scrubbed of secrets.
Error postgres_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                     const Secrets& secrets);

}  // namespace rowguard::detail

#pragma once
// What rowguard knows of the PostgreSQL engine, whichever driver talks to it (libpqxx/, soci/):
// SQLSTATEs as error kinds, outcome-unknown rules, LISTEN through libpq. Needs libpq at most.

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "base/sql_text.hpp"

#include "backend/backend.hpp"
#include "backend/url.hpp"

namespace rowguard::detail {

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

}  // namespace rowguard::detail

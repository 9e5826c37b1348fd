#include <fmt/format.h>
#include <libpq-fe.h>

#include "backend/postgres/engine.hpp"

namespace rowguard::detail {

ErrorKind kind_for_sqlstate(std::string_view s) noexcept {
  if (s == "40001" || s == "40P01") return ErrorKind::conflict;  // serialization failure, deadlock
  if (s == "55P03") return ErrorKind::conflict;                  // lock_not_available (NOWAIT, lock_timeout)
  if (s == "40003") return ErrorKind::in_doubt;                  // statement_completion_unknown
  if (s == "57014") return ErrorKind::transient;                 // statement timeout / cancel: rolled back
  if (s.substr(0, 2) == "08") return ErrorKind::transient;       // connection exceptions
  if (s == "57P01" || s == "57P02" || s == "57P03") return ErrorKind::transient;  // shutdown, crash, starting up
  if (s.substr(0, 2) == "53") return ErrorKind::transient;  // too many connections, out of memory/disk
  if (s == "25P03") return ErrorKind::transient;            // idle_in_transaction_session_timeout
  // read_only_sql_transaction: a write reached a server that is (now) a standby, e.g. an old
  // primary demoted by a failover. The session is dropped (below) and the retry connects afresh,
  // where target_session_attrs=read-write finds the new primary.
  if (s == "25006") return ErrorKind::transient;
  return ErrorKind::permanent;
}

bool is_sync_replication_cancel(std::string_view notice) noexcept {
  return notice.find("canceling wait for synchronous replication") != std::string_view::npos;
}

Error replication_in_doubt(std::string_view backend_name) {
  return Error(ErrorKind::in_doubt,
               fmt::format("{}: committed on the primary, but the wait for the synchronous standby was canceled: "
                           "the change might not survive a failover until a later commit has waited for the "
                           "standby (retry with the same idempotency key)",
                           backend_name));
}

bool outcome_unknown(StatementEffect effect, bool in_transaction) noexcept {
  return effect == StatementEffect::commit || (!in_transaction && effect == StatementEffect::write);
}

void validate_conninfo(const std::string& conninfo, const Secrets& secrets) {
  char* message = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &message);
  if (options == nullptr) {
    const std::string text = message ? message : "out of memory";
    PQfreemem(message);
    throw Error(ErrorKind::invalid_argument,
                scrub(fmt::format("malformed PostgreSQL connection string '{}': {}", redact(conninfo), text), secrets));
  }
  PQconninfoFree(options);
}

}  // namespace rowguard::detail

#include <libpq-fe.h>

#include <pqxx/except>

#include <fmt/format.h>

#include "backend/postgres/postgres.hpp"

namespace rowguard::detail {

ErrorKind kind_for_sqlstate(std::string_view s) noexcept {
  if (s == "40001" || s == "40P01") return ErrorKind::conflict;  // serialization failure, deadlock
  if (s == "55P03") return ErrorKind::conflict;                   // lock_not_available (NOWAIT, lock_timeout)
  if (s == "40003") return ErrorKind::in_doubt;                   // statement_completion_unknown
  if (s == "57014") return ErrorKind::transient;                  // statement timeout / cancel: rolled back
  if (s.substr(0, 2) == "08") return ErrorKind::transient;        // connection exceptions
  if (s == "57P01" || s == "57P02" || s == "57P03") return ErrorKind::transient;  // shutdown, crash, starting up
  if (s.substr(0, 2) == "53") return ErrorKind::transient;        // too many connections, out of memory/disk
  if (s == "25P03") return ErrorKind::transient;                  // idle_in_transaction_session_timeout
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

namespace {
// libpqxx 6.4 drops the SQLSTATE from errors raised while preparing a statement; its exception
// type still names the condition, so recover the code from the most specific type.
std::string sqlstate_of(const pqxx::sql_error& e) {
  if (!e.sqlstate().empty()) return e.sqlstate();
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e)) return "42501";
  if (dynamic_cast<const pqxx::undefined_table*>(&e)) return "42P01";
  if (dynamic_cast<const pqxx::undefined_column*>(&e)) return "42703";
  if (dynamic_cast<const pqxx::undefined_function*>(&e)) return "42883";
  if (dynamic_cast<const pqxx::syntax_error*>(&e)) return "42601";
  if (dynamic_cast<const pqxx::unique_violation*>(&e)) return "23505";
  if (dynamic_cast<const pqxx::foreign_key_violation*>(&e)) return "23503";
  if (dynamic_cast<const pqxx::not_null_violation*>(&e)) return "23502";
  if (dynamic_cast<const pqxx::check_violation*>(&e)) return "23514";
  if (dynamic_cast<const pqxx::integrity_constraint_violation*>(&e)) return "23000";
  if (dynamic_cast<const pqxx::disk_full*>(&e)) return "53100";
  if (dynamic_cast<const pqxx::out_of_memory*>(&e)) return "53200";
  if (dynamic_cast<const pqxx::insufficient_resources*>(&e)) return "53000";
  if (dynamic_cast<const pqxx::feature_not_supported*>(&e)) return "0A000";
  if (dynamic_cast<const pqxx::data_exception*>(&e)) return "22000";
  return {};
}
}  // namespace

Error postgres_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                     const Secrets& secrets) {
  auto message = [&](std::string_view prefix) { return scrub(fmt::format("postgres: {}{}", prefix, e.what()), secrets); };
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e)) {
    connection_lost = true;
    return Error(ErrorKind::in_doubt, message("outcome unknown: "), "40003");
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e)) {
    connection_lost = true;
    if (outcome_unknown(effect, in_transaction))
      return Error(ErrorKind::in_doubt, message("connection lost, outcome unknown: "), "08006");
    return Error(ErrorKind::transient, message("connection lost: "), "08006");
  }
  // libpqxx 6.4 throws these without an SQLSTATE (they do not derive from sql_error): map by type.
  if (dynamic_cast<const pqxx::serialization_failure*>(&e)) return Error(ErrorKind::conflict, message(""), "40001");
  if (dynamic_cast<const pqxx::deadlock_detected*>(&e)) return Error(ErrorKind::conflict, message(""), "40P01");
  if (dynamic_cast<const pqxx::statement_completion_unknown*>(&e))
    return Error(ErrorKind::in_doubt, message("outcome unknown: "), "40003");
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e)) return Error(ErrorKind::conflict, message(""), "40000");
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string state = sqlstate_of(*sql);
    const ErrorKind kind = kind_for_sqlstate(state);
    // An explicit error reply means the server aborted this statement: its outcome is known even
    // when the server then closes the connection (57P01 admin shutdown).
    if (state.substr(0, 2) == "08" || state.substr(0, 3) == "57P" || state == "25006") connection_lost = true;
    return Error(kind, message(""), state);
  }
  if (dynamic_cast<const pqxx::argument_error*>(&e) || dynamic_cast<const pqxx::conversion_error*>(&e))
    return Error(ErrorKind::invalid_argument, message(""));
  return Error(ErrorKind::permanent, message(""));
}

}  // namespace rowguard::detail

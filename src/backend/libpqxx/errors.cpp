#include <fmt/format.h>
#include <pqxx/except>

#include "backend/libpqxx/driver.hpp"
#include "backend/postgres/engine.hpp"

namespace rowguard::detail {

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
  auto message = [&](std::string_view prefix) {
    return scrub(fmt::format("postgres: {}{}", prefix, e.what()), secrets);
  };
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

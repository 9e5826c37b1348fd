// SOCI's error classes do not classify conflicts (40001, 40P01 and SQLITE_BUSY come out as
// "unknown"): this maps them through the native backends' tables.
#include <fmt/format.h>
#include <soci/postgresql/soci-postgresql.h>
#include <soci/soci.h>
#include <soci/sqlite3/soci-sqlite3.h>

#include "backend/postgres/engine.hpp"
#include "backend/soci/driver.hpp"
#include "backend/sqlite/engine.hpp"

namespace rowguard::detail {

Error soci_error(const std::exception& e, StatementEffect effect, bool in_transaction, bool& connection_lost,
                 const Secrets& secrets, int sqlite_extended_code) {
  const std::string message = scrub(fmt::format("soci: {}", e.what()), secrets);
  if (const auto* pg = dynamic_cast<const soci::postgresql_soci_error*>(&e)) {
    const std::string state = pg->sqlstate();
    const auto category = pg->get_error_category();
    if (category == soci::soci_error::unknown_transaction_state) {
      connection_lost = true;
      return Error(ErrorKind::in_doubt, message, "40003");
    }
    const bool has_state = state.size() == 5 && state != "     " && state.find('\0') == std::string::npos;
    if (category == soci::soci_error::connection_error && (!has_state || state.substr(0, 2) == "08")) {
      connection_lost = true;
      return Error(outcome_unknown(effect, in_transaction) ? ErrorKind::in_doubt : ErrorKind::transient, message,
                   has_state ? state : "08006");
    }
    if (!has_state) return Error(ErrorKind::permanent, message);
    if (state.substr(0, 3) == "57P" || state == "25006") connection_lost = true;  // 25006: a standby now
    return Error(kind_for_sqlstate(state), message, state);
  }
  if (const auto* lite = dynamic_cast<const soci::sqlite3_soci_error*>(&e)) {
    const int code = (sqlite_extended_code & 0xff) == (lite->result() & 0xff) ? sqlite_extended_code : lite->result();
    return Error(kind_for_sqlite(code), message, sqlstate_for_sqlite(code));
  }
  if (const auto* generic = dynamic_cast<const soci::soci_error*>(&e)) {
    if (generic->get_error_category() == soci::soci_error::connection_error) {
      connection_lost = true;
      return Error(outcome_unknown(effect, in_transaction) ? ErrorKind::in_doubt : ErrorKind::transient, message);
    }
  }
  return Error(ErrorKind::permanent, message);
}

}  // namespace rowguard::detail

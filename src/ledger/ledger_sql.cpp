#include "ledger/ledger_sql.hpp"

#include <fmt/format.h>

namespace rowguard::detail {

AccountStatements::AccountStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string acc = backend.table("accounts");
  const std::string now = d.now_timestamp();
  open = fmt::format(
      "INSERT INTO {} (id, currency, balance, min_balance, version, created_at, updated_at) "
      "VALUES ($1, $2, 0, $3, 0, {now}, {now})",
      acc, fmt::arg("now", now));
  const std::string live_held = fmt::format(
      "CASE WHEN a.held = 0 THEN 0 ELSE (SELECT CAST(COALESCE(SUM(h.amount), 0) AS bigint) FROM {} h "
      "WHERE h.from_account = a.id AND h.state = 'held' AND h.expires_at > {}) END",
      backend.table("holds"), now);
  const std::string columns = fmt::format("a.id, a.currency, a.balance, a.min_balance, a.version, {}", live_held);
  get = fmt::format("SELECT {} FROM {} a WHERE a.id = $1", columns, acc);
  list = fmt::format("SELECT {} FROM {} a ORDER BY a.id", columns, acc);
  currencies = fmt::format(
      "SELECT currency, count(*), CAST(COALESCE(SUM(balance), 0) AS bigint), CAST(COALESCE(SUM(held), 0) AS bigint) "
      "FROM {} GROUP BY currency ORDER BY currency",
      acc);
  largest = fmt::format("SELECT {} FROM {} a ORDER BY a.balance DESC, a.id LIMIT $1", columns, acc);
}

}  // namespace rowguard::detail

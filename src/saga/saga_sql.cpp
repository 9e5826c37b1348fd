#include "saga/saga_sql.hpp"

#include <string_view>

#include <fmt/format.h>

namespace rowguard::detail {

SagaStatements::SagaStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string t = backend.table("sagas");
  const std::string s = backend.table("saga_steps");
  const std::string now = d.now_timestamp();
  select_ = fmt::format("SELECT id, type, payload, state, step, error, owner, {}, {} FROM {}",
                        d.timestamp_to_ms("created_at"), d.timestamp_to_ms("updated_at"), t);
  read = select_ + " WHERE id = $1";
  steps = fmt::format("SELECT step, name, state, result, error, attempts FROM {} WHERE saga_id = $1 ORDER BY step", s);
  insert = fmt::format(
      "INSERT INTO {} (id, type, payload, state, step, owner, created_at, updated_at) "
      "VALUES ($1, $2, $3, 'running', 0, $4, {now}, {now}) ON CONFLICT (id) DO NOTHING",
      t, fmt::arg("now", now));
  set =
      fmt::format("UPDATE {} SET state = $2, step = $3, error = $4, owner = $5, updated_at = {} WHERE id = $1", t, now);
  step_start = fmt::format(
      "INSERT INTO {} AS st (saga_id, step, name, state, attempts, started_at, updated_at) "
      "VALUES ($1, $2, $3, 'started', 1, {now}, {now}) "
      "ON CONFLICT (saga_id, step) DO UPDATE SET state = 'started', attempts = st.attempts + 1, "
      "updated_at = excluded.updated_at",
      s, fmt::arg("now", now));
  const auto step_end = [&](std::string_view state, std::string_view column, std::string_view cleared) {
    return fmt::format(
        "INSERT INTO {s} AS st (saga_id, step, name, state, {column}, attempts, started_at, updated_at) "
        "VALUES ($1, $2, $3, '{state}', $4, $5, {now}, {now}) "
        "ON CONFLICT (saga_id, step) DO UPDATE SET state = '{state}', {column} = excluded.{column}{cleared}, "
        "attempts = st.attempts + excluded.attempts, updated_at = excluded.updated_at",
        fmt::arg("s", s), fmt::arg("state", state), fmt::arg("column", column), fmt::arg("cleared", cleared),
        fmt::arg("now", now));
  };
  step_done = step_end("done", "result", ", error = NULL");
  step_failed = step_end("failed", "error", "");
  step_state = fmt::format("UPDATE {} SET state = $3, updated_at = {} WHERE saga_id = $1 AND step = $2", s, now);
  unresolved =
      fmt::format("SELECT id, type FROM {} WHERE state IN ('running', 'compensating') ORDER BY updated_at, id", t);
}

std::string SagaStatements::list(bool by_state, bool by_type) const {
  std::string sql = select_;
  int n = 0;  // parameters so far
  if (by_state) {
    ++n;
    sql += fmt::format(" WHERE state = ${}", n);
  }
  if (by_type) {
    ++n;
    sql += fmt::format(" {} type = ${}", n == 1 ? "WHERE" : "AND", n);
  }
  sql += fmt::format(" ORDER BY created_at, id LIMIT ${}", n + 1);
  return sql;
}

}  // namespace rowguard::detail

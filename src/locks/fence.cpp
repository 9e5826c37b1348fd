#include "rowguard/fence.hpp"

#include <fmt/format.h>

#include "backend/backend.hpp"
#include "base/sql_text.hpp"

namespace rowguard {

Fence::Fence(Database& db) : backend_(db.shared_backend()) {
  const auto& d = backend_->dialect();
  const std::string t = backend_->table("fences");
  admit_sql_ = fmt::format(
      "INSERT INTO {t} AS f (resource, last_token, updated_at) VALUES ($1, $2, {now}) "
      "ON CONFLICT (resource) DO UPDATE SET last_token = excluded.last_token, updated_at = excluded.updated_at "
      "WHERE f.last_token <= excluded.last_token RETURNING last_token",
      fmt::arg("t", t), fmt::arg("now", d.now_timestamp()));
  highest_sql_ = fmt::format("SELECT last_token FROM {} WHERE resource = $1", t);
}

namespace {
void validate(std::string_view resource, std::int64_t token) {
  if (resource.empty() || resource.size() > 1000 || !detail::is_text(resource))
    throw Error(ErrorKind::invalid_argument, "fence resource must be 1 to 1000 bytes of UTF-8 without NUL");
  if (token < 1) throw Error(ErrorKind::invalid_argument, fmt::format("fencing token must be positive, got {}", token));
}
}  // namespace

bool Fence::admit(std::string_view resource, std::int64_t token) {
  validate(resource, token);
  auto session = backend_->borrow();
  return !(*session)->exec(admit_sql_, {std::string(resource), token}).rows.empty();
}

void Fence::guard(Transaction& tx, std::string_view resource, std::int64_t token) {
  validate(resource, token);
  if (tx.exec(admit_sql_, {std::string(resource), token}).rows.empty())
    throw Error(ErrorKind::lock_lost,
                fmt::format("fence: token {} for '{}' is older than one already seen", token, resource));
}

std::int64_t Fence::highest(std::string_view resource) {
  auto session = backend_->borrow();
  const Result r = (*session)->exec(highest_sql_, {std::string(resource)});
  return r.rows.empty() ? 0 : r.rows[0].i64(0);
}

}  // namespace rowguard

#include "rowguard/fence.hpp"

#include <fmt/format.h>

#include "base/sql_text.hpp"

#include "backend/backend.hpp"

#include "core/database_gate.hpp"

#include "locks/locks_sql.hpp"

namespace rowguard {

struct Fence::Impl {
  std::shared_ptr<detail::Backend> backend;
  detail::FenceStatements sql;
};

Fence::Fence(Database& db) {
  auto backend = detail::DatabaseGate::shared_backend(db);
  detail::FenceStatements sql(backend->dialect(), backend->table("fences"));
  impl_ = std::make_shared<const Impl>(Impl{std::move(backend), std::move(sql)});
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
  auto session = impl_->backend->borrow();
  return !(*session)->exec(impl_->sql.admit, {std::string(resource), token}).rows.empty();
}

void Fence::guard(Transaction& tx, std::string_view resource, std::int64_t token) {
  validate(resource, token);
  if (tx.exec(impl_->sql.admit, {std::string(resource), token}).rows.empty())
    throw Error(ErrorKind::lock_lost,
                fmt::format("fence: token {} for '{}' is older than one already seen", token, resource));
}

std::int64_t Fence::highest(std::string_view resource) {
  auto session = impl_->backend->borrow();
  const Result r = (*session)->exec(impl_->sql.highest, {std::string(resource)});
  return r.rows.empty() ? 0 : r.rows[0].i64(0);
}

}  // namespace rowguard

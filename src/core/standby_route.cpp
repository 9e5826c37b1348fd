#include "core/standby_route.hpp"

#include <fmt/format.h>

#include "rowguard/database.hpp"

#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "core/database_gate.hpp"

namespace rowguard::detail {

namespace {
// After the standby failed, reads skip it for this long instead of waiting on it each time.
constexpr std::chrono::milliseconds failure_backoff{5000};

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

StandbyRoute::StandbyRoute(const Backend& primary, const StandbyReads& reads, const char* what)
    : max_staleness_(reads.max_staleness) {
  if (reads.database == nullptr) return;
  if (reads.max_staleness.count() <= 0)
    throw Error(ErrorKind::invalid_argument, fmt::format("{}.max_staleness must be positive", what));
  const Backend& standby = *detail::DatabaseGate::shared_backend(*reads.database);
  if (primary.dialect().standby_staleness().empty() || standby.dialect().standby_staleness().empty())
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}: standby reads need PostgreSQL on both sides (got {} and {})", what, primary.name(),
                            standby.name()));
  if (standby.table("x") != primary.table("x"))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}: the standby's Database has another table prefix than the primary's", what));
  standby_ = detail::DatabaseGate::shared_backend(*reads.database);
  staleness_sql_ = standby_->dialect().standby_staleness();
}

bool StandbyRoute::run(const std::function<void(Session&)>& read) const {
  if (!standby_ || steady_ms() < skip_until_ms_.load(std::memory_order_relaxed)) return false;
  const auto& m = instruments::standby();
  try {
    auto session = standby_->borrow();
    // Measured before the read's snapshot is taken, so the snapshot is at least as new.
    const Result staleness = (*session)->exec(staleness_sql_, {});
    if (staleness.empty() || staleness.rows[0].is_null(0) || staleness.rows[0].i64(0) > max_staleness_.count()) {
      m.stale.add();
      return false;
    }
    (*session)->begin(TxOptions{Isolation::repeatable_read, TxAccess::read_only});
    struct Rollback {
      Session& s;
      ~Rollback() {
        if (s.in_transaction()) try {
            s.rollback();
          } catch (...) {
            // The session is dropped as broken if the rollback failed.
          }
      }
    } rollback{**session};
    read(**session);
    (*session)->commit();
    m.answered.add();
    return true;
  } catch (const Error& e) {
    m.failed.add();
    skip_until_ms_.store(steady_ms() + failure_backoff.count(), std::memory_order_relaxed);
    if (log_enabled(LogLevel::warn))
      log(LogLevel::warn, "standby", "standby read failed: reading the primary for a while",
          {{"error", e.what()}, {"backoff_ms", std::to_string(failure_backoff.count())}});
    return false;
  }
}

}  // namespace rowguard::detail

#pragma once
// Sends reads that accept bounded staleness to a standby (rowguard/standby.hpp), and tells the
// caller when a read must go to the primary instead.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "rowguard/standby.hpp"

#include "backend/backend.hpp"

namespace rowguard::detail {

class StandbyRoute {
 public:
  StandbyRoute() = default;
  // Error(invalid_argument) unless both databases are PostgreSQL (or reads.database is null) and
  // max_staleness is positive. what: the option's name, for the message.
  StandbyRoute(const Backend& primary, const StandbyReads& reads, const char* what);

  explicit operator bool() const noexcept { return standby_ != nullptr; }

  // Runs read on a standby session, in a READ ONLY REPEATABLE READ transaction begun after the
  // standby was found to be at most max_staleness behind the primary. False when the read must go
  // to the primary: no standby configured, too stale, or the standby failed (counted and logged,
  // never thrown; reads then skip the standby for a few seconds). Exceptions other than
  // rowguard::Error from read propagate.
  bool run(const std::function<void(Session&)>& read) const;

 private:
  std::shared_ptr<Backend> standby_;
  std::string staleness_sql_;  // the standby dialect's standby_staleness()
  std::chrono::milliseconds max_staleness_{0};
  mutable std::atomic<std::int64_t> skip_until_ms_{0};  // steady clock; 0: use the standby
};

}  // namespace rowguard::detail

#pragma once
// The logging hook: rowguard logs through one callback the service installs, and is silent until
// it does. No logging framework is forced on users; wire the callback to spdlog, glog, syslog or
// JSON lines as the service already does.
//
//   rowguard::set_log_handler([](const rowguard::LogRecord& r) {
//     std::fprintf(stderr, "%s %.*s: %.*s\n", ...);
//   }, rowguard::LogLevel::info);
//
// What is logged (docs/operations.md): lost leases, forced releases, retries given up, cache load
// failures, sessions discarded from the pool, saga compensations, two-phase decisions.

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rowguard {

enum class LogLevel { debug, info, warn, error };
std::string_view to_string(LogLevel level) noexcept;

// Named values of a record (lock name, token, account, key, error kind, ...). Never secrets: no
// passwords or connection URLs with credentials, no cache values.
using LogFields = std::vector<std::pair<std::string, std::string>>;

struct LogRecord {
  LogLevel level = LogLevel::info;
  std::string_view component;  // "locks", "ledger", "cache", "pool", "retry", "saga", "two_phase"
  std::string_view message;
  const LogFields& fields;
};

using LogHandler = std::function<void(const LogRecord&)>;

// Installs the handler for records at min_level and above; an empty handler makes rowguard silent
// again (the default). The handler may be called from any thread, concurrently, and must not call
// back into rowguard; an exception it throws is swallowed. Thread-safe; a call in flight on another
// thread may still reach the previous handler.
void set_log_handler(LogHandler handler, LogLevel min_level = LogLevel::info);

}  // namespace rowguard

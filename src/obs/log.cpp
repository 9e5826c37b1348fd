// The logging hook: one handler for the process, silent by default.
#include <memory>
#include <mutex>

#include "obs/logging.hpp"

namespace rowguard {

std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug:
      return "debug";
    case LogLevel::info:
      return "info";
    case LogLevel::warn:
      return "warn";
    case LogLevel::error:
      return "error";
  }
  return "unknown";
}

namespace detail {

std::atomic<int> log_threshold{log_off};

namespace {
struct Installed {
  LogHandler handler;
  int min_level;
};
// The handler is copied out (a shared_ptr) under this mutex and called after it is released, so a
// slow handler never blocks set_log_handler or another thread's record.
std::mutex& installed_mutex() {
  static std::mutex m;
  return m;
}
std::shared_ptr<const Installed>& installed() {
  static std::shared_ptr<const Installed> current;
  return current;
}
}  // namespace

void log(LogLevel level, std::string_view component, std::string_view message, const LogFields& fields) noexcept {
  if (!log_enabled(level)) return;
  std::shared_ptr<const Installed> h;
  {
    std::lock_guard lock(installed_mutex());
    h = installed();
  }
  if (!h || static_cast<int>(level) < h->min_level) return;
  try {
    h->handler(LogRecord{level, component, message, fields});
  } catch (...) {
    // The service's handler failed: dropping one record is better than failing the operation.
  }
}

}  // namespace detail

void set_log_handler(LogHandler handler, LogLevel min_level) {
  std::shared_ptr<const detail::Installed> old;
  {
    std::lock_guard lock(detail::installed_mutex());
    old = std::move(detail::installed());
    detail::installed().reset();
    const bool on = static_cast<bool>(handler);
    if (on)
      detail::installed() =
          std::make_shared<const detail::Installed>(detail::Installed{std::move(handler), static_cast<int>(min_level)});
    detail::log_threshold.store(on ? static_cast<int>(min_level) : detail::log_off, std::memory_order_relaxed);
  }
  // `old` (and what its handler captured) is destroyed here, outside the lock.
}

}  // namespace rowguard

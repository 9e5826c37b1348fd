#pragma once
// The library's side of the logging hook (rowguard/log.hpp). Internal: included only from src/.
//
//   if (detail::log_enabled(LogLevel::warn))
//     detail::log(LogLevel::warn, "locks", "lease lost", {{"lock", name}, {"token", std::to_string(token)}});
//
// Silent until a handler is installed: log_enabled() is one relaxed atomic load. Call log() with no
// library lock held (the handler is the service's code); it never throws.

#include <atomic>

#include "rowguard/log.hpp"

namespace rowguard::detail {

// The lowest level a handler wants; above LogLevel::error (the default) when there is no handler.
inline constexpr int log_off = static_cast<int>(LogLevel::error) + 1;
extern std::atomic<int> log_threshold;

inline bool log_enabled(LogLevel level) noexcept {
  return static_cast<int>(level) >= log_threshold.load(std::memory_order_relaxed);
}

// Hands the record to the installed handler, if it wants the level; swallows what the handler throws.
void log(LogLevel level, std::string_view component, std::string_view message, const LogFields& fields) noexcept;

}  // namespace rowguard::detail

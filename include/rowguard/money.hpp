#pragma once
// Money is a std::int64_t count of minor units (cents). These helpers add and subtract without
// ever wrapping around: an overflow is an empty optional, never a wrong balance.

#include <cstdint>
#include <optional>

namespace rowguard {

// a + b, or nothing when the sum does not fit in 64 bits.
constexpr std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// a - b, or nothing when the difference does not fit in 64 bits.
constexpr std::optional<std::int64_t> checked_sub(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t out = 0;
  if (__builtin_sub_overflow(a, b, &out)) return std::nullopt;
  return out;
}

}  // namespace rowguard

#pragma once
// Money is a std::int64_t count of minor units (cents). These helpers add and subtract without
// ever wrapping around: an overflow is an empty optional, never a wrong balance.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

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

// How many minor units make one major unit of a currency, as a power of ten: ISO 4217's "minor
// unit" column (2 for EUR and USD, 0 for JPY and KRW, 3 for BHD and KWD, 4 for CLF). A code
// the table does not list is taken as 2, the exponent of most currencies. Thread-safe.
int currency_exponent(std::string_view currency) noexcept;

// An amount of minor units written for people, in major units by the currency's exponent:
// format_money(123456, "EUR") == "1234.56 EUR", format_money(500, "JPY") == "500 JPY",
// format_money(1234, "BHD") == "1.234 BHD", format_money(-5, "EUR") == "-0.05 EUR". Exact for every
// int64 (no floating point); no thousands separators, so the text reads back unambiguously.
// Machine output (JSON) and every input stay in minor units.
std::string format_money(std::int64_t minor, std::string_view currency);

}  // namespace rowguard

// Amounts for people: minor units shown in major units by ISO 4217's exponent of the currency.
#include "rowguard/money.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace rowguard {
namespace {
struct Exponent {
  std::string_view code;
  int exponent;
};

// The codes of ISO 4217 (list one, 2024 edition) whose minor unit is not 2, sorted by code. Funds
// and metals without a minor unit (XAU, XDR, ...) count in whole units here: they have no smaller one.
constexpr std::array<Exponent, 35> kNotTwo{{
    {"BHD", 3}, {"BIF", 0}, {"CLF", 4}, {"CLP", 0}, {"DJF", 0}, {"GNF", 0}, {"IQD", 3}, {"ISK", 0}, {"JOD", 3},
    {"JPY", 0}, {"KMF", 0}, {"KRW", 0}, {"KWD", 3}, {"LYD", 3}, {"OMR", 3}, {"PYG", 0}, {"RWF", 0}, {"TND", 3},
    {"UGX", 0}, {"UYI", 0}, {"UYW", 4}, {"VND", 0}, {"VUV", 0}, {"XAF", 0}, {"XAG", 0}, {"XAU", 0}, {"XBA", 0},
    {"XBB", 0}, {"XBC", 0}, {"XBD", 0}, {"XDR", 0}, {"XOF", 0}, {"XPD", 0}, {"XPF", 0}, {"XPT", 0},
}};
}  // namespace

int currency_exponent(std::string_view currency) noexcept {
  for (const auto& e : kNotTwo)
    if (e.code == currency) return e.exponent;
  return 2;
}

std::string format_money(std::int64_t minor, std::string_view currency) {
  // The magnitude as unsigned, so INT64_MIN has one too.
  const bool negative = minor < 0;
  const std::uint64_t magnitude =
      negative ? std::uint64_t{0} - static_cast<std::uint64_t>(minor) : static_cast<std::uint64_t>(minor);
  std::string digits = std::to_string(magnitude);
  const auto exponent = static_cast<std::size_t>(currency_exponent(currency));
  if (exponent > 0) {
    if (digits.size() <= exponent) digits.insert(0, exponent + 1 - digits.size(), '0');
    digits.insert(digits.size() - exponent, 1, '.');
  }
  std::string out;
  out.reserve(digits.size() + currency.size() + 2);
  if (negative) out += '-';
  out += digits;
  if (!currency.empty()) {
    out += ' ';
    out += currency;
  }
  return out;
}

}  // namespace rowguard

#include "args.hpp"

#include <charconv>
#include <limits>
#include <regex>

#include <fmt/format.h>

#include "rowguard/error.hpp"

namespace rowguard::cli {

std::chrono::milliseconds parse_duration(const std::string& text) {
  static const std::regex pattern(R"(^([0-9]{1,12})(ms|s|m|h|d)$)");
  std::smatch m;
  if (!std::regex_match(text, m, pattern))
    throw Error(
        ErrorKind::invalid_argument,
        "invalid duration '" + text + "': expected a whole number with ms, s, m, h or d (250ms, 30s, 5m, 1h, 30d)");
  const long long n = std::stoll(m[1].str());
  const std::string unit = m[2].str();
  const long long factor = unit == "ms"  ? 1
                           : unit == "s" ? 1000
                           : unit == "m" ? 60'000
                           : unit == "h" ? 3'600'000
                                         : 86'400'000;
  // 12 digits of days would overflow 64-bit milliseconds.
  if (n > std::numeric_limits<long long>::max() / factor)
    throw Error(ErrorKind::invalid_argument, "invalid duration '" + text + "': too long");
  return std::chrono::milliseconds(n * factor);
}

std::int64_t parse_time(const std::string& text) {
  using namespace std::chrono;
  static const std::regex epoch(R"(^@(-?[0-9]{1,15})$)");
  static const std::regex iso(
      R"(^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,3}))?(Z|([+-])([0-9]{2}):([0-9]{2})))?$)");
  std::smatch m;
  const auto bad = [&](std::string_view why) {
    return Error(ErrorKind::invalid_argument,
                 fmt::format("invalid time '{}': {} (expected 2026-01-31, 2026-01-31T12:30:00Z, "
                             "2026-01-31T12:30:00+02:00 or @EPOCH_MS)",
                             text, why));
  };
  // UTC years 1 to 9999 only, whatever the spelling: every accepted time prints (format_time) as one.
  const auto in_range = [&](std::int64_t ms) {
    if (ms < -62'135'596'800'000 || ms > 253'402'300'799'999) throw bad("outside the years 1 to 9999 (UTC)");
    return ms;
  };
  if (std::regex_match(text, m, epoch)) return in_range(std::stoll(m[1].str()));
  if (!std::regex_match(text, m, iso)) throw bad("not a date");
  const int y = std::stoi(m[1].str());
  const unsigned mo = static_cast<unsigned>(std::stoi(m[2].str()));
  const unsigned d = static_cast<unsigned>(std::stoi(m[3].str()));
  const year_month_day date{year{y}, month{mo}, day{d}};
  if (y < 1 || !date.ok()) throw bad("no such day");
  std::int64_t ms = duration_cast<milliseconds>(sys_days{date}.time_since_epoch()).count();
  if (m[4].matched) {
    const int hh = std::stoi(m[4].str()), mm = std::stoi(m[5].str()), ss = std::stoi(m[6].str());
    if (hh > 23 || mm > 59 || ss > 59) throw bad("no such time of day");
    std::string frac = m[7].matched ? m[7].str() : "0";
    while (frac.size() < 3) frac += '0';
    ms += ((hh * 60LL + mm) * 60LL + ss) * 1000LL + std::stoll(frac);
    if (m[9].matched) {
      const int oh = std::stoi(m[10].str()), om = std::stoi(m[11].str());
      if (oh > 23 || om > 59) throw bad("no such offset");
      const std::int64_t offset = (oh * 60LL + om) * 60'000LL;
      ms += m[9].str() == "+" ? -offset : offset;
    }
  }
  return in_range(ms);
}

const CLI::Validator& decimal() {
  static const CLI::Validator v(
      [](std::string& text) -> std::string {
        static const std::regex pattern(R"(^-?[0-9]{1,19}$)");
        std::int64_t value = 0;
        const bool digits = std::regex_match(text, pattern);
        if (digits && std::from_chars(text.data(), text.data() + text.size(), value).ec == std::errc()) return {};
        return fmt::format("'{}' is not a whole decimal number within 64 bits", text);
      },
      "DECIMAL");
  return v;
}

}  // namespace rowguard::cli

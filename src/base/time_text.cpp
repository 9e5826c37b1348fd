// Times and lengths of time for people (rowguard/time_text.hpp).
#include "rowguard/time_text.hpp"

#include <chrono>
#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace rowguard {

std::string format_time(std::int64_t epoch_ms) {
  using namespace std::chrono;
  const sys_time<milliseconds> t{milliseconds{epoch_ms}};
  const auto day_start = floor<days>(t);
  const year_month_day date{day_start};
  const hh_mm_ss<milliseconds> tod{t - day_start};
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", static_cast<int>(date.year()),
                     static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()), tod.hours().count(),
                     tod.minutes().count(), tod.seconds().count(), tod.subseconds().count());
}

std::string format_duration(std::chrono::milliseconds length) {
  const std::int64_t ms = length.count();
  // The magnitude as unsigned: the negation of INT64_MIN does not fit in int64.
  const std::uint64_t n = ms < 0 ? 0 - static_cast<std::uint64_t>(ms) : static_cast<std::uint64_t>(ms);
  const std::string sign = ms < 0 ? "-" : "";
  constexpr std::uint64_t second = 1000, minute = 60 * second, hour = 60 * minute, day = 24 * hour;
  // "3d 4h": the largest unit, and the next one unless it is zero.
  const auto two = [&](std::uint64_t big, char big_unit, std::uint64_t small, char small_unit) {
    const std::uint64_t rest = (n % big) / small;
    return rest == 0 ? fmt::format("{}{}{}", sign, n / big, big_unit)
                     : fmt::format("{}{}{} {}{}", sign, n / big, big_unit, rest, small_unit);
  };
  if (n < second) return fmt::format("{}{}ms", sign, n);
  if (n < 10 * second && n % second >= 100) return fmt::format("{}{}.{}s", sign, n / second, n % second / 100);
  if (n < minute) return fmt::format("{}{}s", sign, n / second);
  if (n < hour) return two(minute, 'm', second, 's');
  if (n < day) return two(hour, 'h', minute, 'm');
  return two(day, 'd', hour, 'h');
}

}  // namespace rowguard

// libFuzzer target: the CLI's value parsers (durations, times, decimal amounts and tokens).
// Properties: only rowguard::Error escapes parse_duration, and what it accepts is non-negative and
// exactly digits times unit; only Error escapes parse_time, and what it accepts formats back to a
// time that parses to the same instant; decimal() accepts exactly the strings that are plain
// decimal int64s.
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "rowguard/error.hpp"

#include "args.hpp"

using namespace rowguard;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto ms = cli::parse_duration(text);
    if (ms.count() < 0) std::abort();
    if (text.empty() || text.find_first_not_of("0123456789mshd") != std::string::npos) std::abort();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::invalid_argument) std::abort();
  }
  std::optional<std::int64_t> at;
  try {
    at = cli::parse_time(text);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::invalid_argument) std::abort();
  }
  if (at && cli::parse_time(format_time(*at)) != *at) std::abort();  // an Error here escapes: a crash too
  std::string copy = text;
  const bool accepted = cli::decimal()(copy).empty();
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  // from_chars takes only an optional leading '-' and digits; the CLI also caps them at 19 digits.
  const bool plain = !text.empty() && ec == std::errc() && end == text.data() + text.size() &&
                     text.size() - (text[0] == '-' ? 1 : 0) <= 19;
  if (accepted != plain) std::abort();
  return 0;
}

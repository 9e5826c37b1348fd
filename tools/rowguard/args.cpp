#include "args.hpp"

#include <charconv>
#include <regex>

#include <fmt/format.h>

#include "rowguard/error.hpp"

namespace rowguard::cli {

std::chrono::milliseconds parse_duration(const std::string& text) {
  static const std::regex pattern(R"(^([0-9]{1,12})(ms|s|m|h)$)");
  std::smatch m;
  if (!std::regex_match(text, m, pattern))
    throw Error(ErrorKind::invalid_argument,
                "invalid duration '" + text + "': expected a whole number with ms, s, m or h (250ms, 30s, 5m, 1h)");
  const long long n = std::stoll(m[1].str());
  const std::string unit = m[2].str();
  const long long factor = unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" ? 60'000 : 3'600'000;
  return std::chrono::milliseconds(n * factor);
}

const CLI::Validator& decimal() {
  static const CLI::Validator v(
      [](std::string& text) -> std::string {
        static const std::regex pattern(R"(^-?[0-9]{1,19}$)");
        std::int64_t value = 0;
        const bool digits = std::regex_match(text, pattern);
        if (digits && std::from_chars(text.data(), text.data() + text.size(), value).ec == std::errc())
          return {};
        return fmt::format("'{}' is not a whole decimal number within 64 bits", text);
      },
      "DECIMAL");
  return v;
}

}  // namespace rowguard::cli

#include "cli.hpp"

#include <cstdlib>
#include <iostream>
#include <charconv>
#include <regex>

namespace rowguard::cli {

Database open_database(const Globals& globals) {
  Options options;
  options.table_prefix = globals.prefix;
  const auto timeout = parse_duration(globals.connect_timeout);
  options.connect_timeout = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  if (options.connect_timeout.count() < 1) options.connect_timeout = std::chrono::seconds(1);
  return Database::open(globals.db, options);
}

void emit(const Globals& globals, const nlohmann::json& object, const std::string& text) {
  if (globals.json)
    std::cout << object.dump() << '\n';
  else
    std::cout << text << '\n';
}

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

std::string exit_code_help() {
  return R"(Exit codes:
  0  ok                                   7  idempotency key reused with other parameters
  1  any other error (database, I/O)       8  lock lost while held
  2  usage or invalid argument             9  outcome in doubt (retry with the same key)
  3  lock busy / not acquired in time     10  database unreachable or transient failure
  4  insufficient funds                   11  schema version mismatch
  5  not found                            12  currency mismatch
  6  conflict after all retries
Commands that run a child pass its exit code through (128+N when it dies from signal N).)";
}

}  // namespace rowguard::cli

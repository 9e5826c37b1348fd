#include "backend/url.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <optional>
#include <regex>
#include <utility>

#include <fmt/format.h>

#include "rowguard/error.hpp"

namespace rowguard::detail {

namespace {

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

bool is_uri(std::string_view conninfo) {
  return starts_with(conninfo, "postgresql://") || starts_with(conninfo, "postgres://");
}

// libpq keyword strings start with "keyword =".
bool looks_like_keywords(std::string_view s) {
  static const std::regex keyword_start(R"(^\s*[A-Za-z_]+\s*=)");
  return std::regex_search(s.begin(), s.end(), keyword_start);
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const std::string hex(s.substr(i + 1, 2));
      char* end = nullptr;
      const long v = std::strtol(hex.c_str(), &end, 16);
      if (end == hex.c_str() + 2) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::string find_password(std::string_view url) {
  std::smatch m;
  const std::string s(url);
  static const std::regex userinfo(R"(^[a-z+]+://[^:/@?#]*:([^@/?#]*)@)");
  if (std::regex_search(s, m, userinfo)) return percent_decode(m[1].str());
  static const std::regex query(R"([?&]password=([^&#]*))");
  if (std::regex_search(s, m, query)) return percent_decode(m[1].str());
  static const std::regex keyword_quoted(R"((?:^|\s)password\s*=\s*'((?:[^'\\]|\\.)*)')");
  if (std::regex_search(s, m, keyword_quoted)) return m[1].str();
  static const std::regex keyword(R"((?:^|\s)password\s*=\s*([^\s']+))");
  if (std::regex_search(s, m, keyword)) return m[1].str();
  return {};
}

// Removes rowguard's own option `key` from a libpq URI query or keyword string (libpq rejects
// keys it does not know) and returns its value, if it was there.
std::optional<std::string> take_option(std::string& conninfo, std::string_view key) {
  std::optional<std::string> value;
  if (is_uri(conninfo)) {
    const auto q = conninfo.find('?');
    if (q == std::string::npos) return value;
    std::string kept;
    std::size_t start = q + 1;
    while (start <= conninfo.size()) {
      auto end = conninfo.find('&', start);
      if (end == std::string::npos) end = conninfo.size();
      const std::string_view pair(conninfo.data() + start, end - start);
      if (pair.substr(0, key.size() + 1) == fmt::format("{}=", key))
        value = percent_decode(pair.substr(key.size() + 1));
      else if (!pair.empty())
        kept += (kept.empty() ? "" : "&") + std::string(pair);
      start = end + 1;
    }
    conninfo = conninfo.substr(0, q) + (kept.empty() ? "" : "?" + kept);
    return value;
  }
  const std::regex keyword(fmt::format(R"((^|\s){}\s*=\s*([^\s']*))", key));
  std::smatch m;
  if (std::regex_search(conninfo, m, keyword)) {
    value = m[2].str();
    conninfo = m.prefix().str() + m[1].str() + m.suffix().str();
  }
  return value;
}

// rowguard_pooling=session (the default) or transaction.
void take_pooling_option(ParsedUrl& parsed) {
  const auto pooling = take_option(parsed.target, "rowguard_pooling");
  if (!pooling || *pooling == "session") return;
  if (*pooling != "transaction")
    throw Error(ErrorKind::invalid_argument,
                fmt::format("rowguard_pooling must be 'session' or 'transaction', got '{}'", *pooling));
  if (parsed.engine != Engine::postgres)
    throw Error(ErrorKind::invalid_argument,
                "rowguard_pooling=transaction needs the libpqxx backend (postgresql://...): SOCI prepares named "
                "statements, which a transaction-pooling PgBouncer does not keep");
  parsed.transaction_pooling = true;
}

}  // namespace

std::string redact(std::string_view url) {
  static const std::regex userinfo(R"(^([a-z+]+://[^:/@?#]*:)[^@/?#]*@)");
  static const std::regex query(R"(([?&]password=)[^&#]*)");
  static const std::regex keyword_quoted(R"(((?:^|\s)password\s*=\s*)'(?:[^'\\]|\\.)*')");
  // Any unquoted value, even one that starts with '*' (the fuzzer found "password=***x" kept).
  static const std::regex keyword(R"(((?:^|\s)password\s*=\s*)[^\s'][^\s']*)");
  std::string s(url);
  s = std::regex_replace(s, userinfo, "$1***@");
  s = std::regex_replace(s, query, "$1***");
  s = std::regex_replace(s, keyword_quoted, "$1***");
  s = std::regex_replace(s, keyword, "$1***");
  return s;
}

std::string scrub(std::string text, std::string_view secret) {
  if (secret.empty()) return text;
  std::size_t pos = 0;
  while ((pos = text.find(secret, pos)) != std::string::npos) {
    text.replace(pos, secret.size(), "***");
    pos += 3;
  }
  return text;
}

ParsedUrl parse_url(std::string_view url) {
  ParsedUrl parsed;
  parsed.display = redact(url);
  parsed.password = find_password(url);
  if (url.empty())
    throw Error(ErrorKind::invalid_argument,
                "empty database URL; expected sqlite:PATH, sqlite::memory:, postgresql://..., "
                "soci+sqlite3:PATH or soci+postgresql://...");
  auto sqlite_path = [&](std::string_view rest) {
    if (starts_with(rest, "//")) rest.remove_prefix(2);  // sqlite:///abs/path
    if (rest.empty())
      throw Error(ErrorKind::invalid_argument, fmt::format("database URL '{}' has no file path", parsed.display));
    return std::string(rest);
  };
  if (url == "sqlite::memory:") {
    parsed.engine = Engine::sqlite;
    parsed.memory = true;
    parsed.target = ":memory:";
  } else if (starts_with(url, "sqlite:")) {
    parsed.engine = Engine::sqlite;
    parsed.target = sqlite_path(url.substr(7));
  } else if (starts_with(url, "soci+sqlite3:")) {
    parsed.engine = Engine::soci_sqlite3;
    parsed.target = sqlite_path(url.substr(13));
    if (parsed.target == ":memory:")
      throw Error(ErrorKind::invalid_argument,
                  "soci+sqlite3::memory: is not supported (each SOCI session would get its own empty database); "
                  "use sqlite::memory: or a file");
  } else if (starts_with(url, "soci+postgresql:") || starts_with(url, "soci+postgres:")) {
    parsed.engine = Engine::soci_postgresql;
    parsed.target = std::string(url.substr(5));
    if (!is_uri(parsed.target)) {
      parsed.target = std::string(url.substr(url.find(':') + 1));
      if (!looks_like_keywords(parsed.target))
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("database URL '{}' is neither soci+postgresql://... nor soci+postgresql:KEY=VALUE ...",
                                parsed.display));
    }
  } else if (is_uri(url) || looks_like_keywords(url)) {
    parsed.engine = Engine::postgres;
    parsed.target = std::string(url);
  } else {
    throw Error(ErrorKind::invalid_argument,
                fmt::format("unrecognised database URL '{}'; expected sqlite:PATH, sqlite::memory:, "
                            "postgresql://..., a libpq keyword string, soci+sqlite3:PATH or soci+postgresql://...",
                            parsed.display));
  }
  if (parsed.engine == Engine::postgres || parsed.engine == Engine::soci_postgresql) take_pooling_option(parsed);
  return parsed;
}

std::string with_conninfo_default(std::string conninfo, std::string_view key, std::string_view value) {
  if (is_uri(conninfo)) {
    const std::regex present(fmt::format(R"([?&]{}=)", key));
    if (std::regex_search(conninfo, present)) return conninfo;
    std::string encoded;
    for (const char c : value) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '~')
        encoded += c;
      else
        encoded += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
    conninfo += conninfo.find('?') == std::string::npos ? '?' : '&';
    return conninfo + fmt::format("{}={}", key, encoded);
  }
  const std::regex present(fmt::format(R"((?:^|\s){}\s*=)", key));
  if (std::regex_search(conninfo, present)) return conninfo;
  std::string quoted;
  for (const char c : value) {
    if (c == '\'' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return conninfo + fmt::format(" {}='{}'", key, quoted);
}

std::string with_session_defaults(std::string conninfo, const Options& options) {
  conninfo = with_conninfo_default(std::move(conninfo), "application_name", options.application_name);
  conninfo = with_conninfo_default(std::move(conninfo), "connect_timeout", std::to_string(options.connect_timeout.count()));
  const auto t = options.network_timeout.count();
  if (t == 0) return conninfo;
  // An idle session probes after t/3 and gives up after three unanswered probes t/6 apart (within
  // t); a session with unacknowledged data gives up after t (tcp_user_timeout, which on Linux
  // also bounds the probes).
  const std::pair<const char*, std::string> defaults[] = {
      {"keepalives", "1"},
      {"keepalives_idle", std::to_string(std::max<std::int64_t>(1, t / 3))},
      {"keepalives_interval", std::to_string(std::max<std::int64_t>(1, t / 6))},
      {"keepalives_count", "3"},
      {"tcp_user_timeout", std::to_string(t * 1000)},
  };
  for (const auto& [key, value] : defaults) conninfo = with_conninfo_default(std::move(conninfo), key, value);
  return conninfo;
}

}  // namespace rowguard::detail

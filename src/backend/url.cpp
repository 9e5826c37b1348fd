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

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// As libpq decodes a URI component, except that a '%' not followed by two hex digits (which libpq
// refuses) stays as it is.
std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
      continue;
    }
    out += s[i];
  }
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// Where one parameter stands in a connection string, and what libpq reads from it.
struct Param {
  std::size_t begin = 0;        // its first byte (the key's)
  std::size_t value_begin = 0;  // the value as written, quotes included
  std::size_t end = 0;          // one past the value
  std::string key;              // as libpq reads it
  std::string value;            // as libpq reads it: unquoted, unescaped, decoded
};

// libpq's keyword/value form (fe-connect.c, conninfo_parse): blanks separate parameters; a value
// is single-quoted or ends at a blank, and in both a backslash takes the next character as it is.
// Unlike libpq, which stops there, a token without '=' is skipped (a secret's key without its '='
// still has the next token taken as its value), so no secret after a malformed token is missed.
std::vector<Param> keyword_params(std::string_view s) {
  std::vector<Param> params;
  std::size_t i = 0;
  while (i < s.size()) {
    if (is_space(s[i])) {
      ++i;
      continue;
    }
    Param p;
    p.begin = i;
    while (i < s.size() && s[i] != '=' && !is_space(s[i])) p.key += s[i++];
    while (i < s.size() && is_space(s[i])) ++i;
    const bool equals = i < s.size() && s[i] == '=';
    if (!equals && !is_secret_parameter(p.key)) continue;
    if (equals) ++i;
    while (i < s.size() && is_space(s[i])) ++i;
    p.value_begin = i;
    const bool quoted = i < s.size() && s[i] == '\'';
    if (quoted) ++i;
    while (i < s.size() && (quoted ? s[i] != '\'' : !is_space(s[i]))) {
      if (s[i] == '\\' && i + 1 < s.size()) ++i;
      p.value += s[i++];
    }
    if (quoted && i < s.size()) ++i;  // the closing quote; an unterminated value runs to the end
    p.end = i;
    params.push_back(std::move(p));
  }
  return params;
}

// "scheme://": libpq's URIs, soci+postgresql://, and any other scheme (for messages about it).
std::size_t scheme_length(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '+' || s[i] == '.' || s[i] == '-'))
    ++i;
  if (i == 0 || !std::isalpha(static_cast<unsigned char>(s[0])) || s.substr(i, 3) != "://") return 0;
  return i + 3;
}

// libpq's URI form (fe-connect.c, conninfo_uri_parse_options): the user information runs from the
// scheme to the first '@' that comes before any '/', so a password may hold ':', '?' or '#'.
// Where it ends (the scheme's end when there is none).
std::size_t uri_user_info_end(std::string_view s) {
  const std::size_t start = scheme_length(s);
  const std::size_t at = s.find_first_of("@/", start);
  return at != std::string_view::npos && s[at] == '@' ? at : start;
}

// Where the query of a URI starts (its '?'), or npos.
std::size_t uri_query(std::string_view s) { return s.find('?', uri_user_info_end(s)); }

// A URI's password (as a parameter named "password") and its query parameters: key=value pairs
// split at '&' (a value ends only there), keys and values percent-decoded.
std::vector<Param> uri_params(std::string_view s) {
  std::vector<Param> params;
  const std::size_t start = scheme_length(s), info_end = uri_user_info_end(s);
  const std::size_t colon = s.find(':', start);
  if (info_end != start && colon < info_end) {
    Param p;
    p.begin = start;
    p.value_begin = colon + 1;
    p.end = info_end;
    p.key = "password";
    p.value = percent_decode(s.substr(p.value_begin, p.end - p.value_begin));
    params.push_back(std::move(p));
  }
  const std::size_t query = uri_query(s);
  if (query == std::string_view::npos) return params;
  for (std::size_t start = query + 1; start <= s.size();) {
    std::size_t end = s.find('&', start);
    if (end == std::string_view::npos) end = s.size();
    const std::size_t equals = s.find('=', start);
    if (equals < end) {
      Param p;
      p.begin = start;
      p.value_begin = equals + 1;
      p.end = end;
      p.key = percent_decode(s.substr(start, equals - start));
      p.value = percent_decode(s.substr(p.value_begin, end - p.value_begin));
      params.push_back(std::move(p));
    }
    start = end + 1;
  }
  return params;
}

enum class Form { none, uri, keywords };

// How a URL's secrets are read: where its libpq part starts, and in which form.
std::pair<std::size_t, Form> secret_form(std::string_view url) {
  if (starts_with(url, "sqlite:") || starts_with(url, "soci+sqlite3:")) return {0, Form::none};
  if (scheme_length(url) > 0) return {0, Form::uri};
  for (const std::string_view prefix : {"soci+postgresql:", "soci+postgres:"})
    if (starts_with(url, prefix)) return {prefix.size(), Form::keywords};
  return {0, Form::keywords};
}

// The parameters of url whose values are secrets, positioned in url.
std::vector<Param> secret_params(std::string_view url) {
  const auto [offset, form] = secret_form(url);
  std::vector<Param> params;
  if (form == Form::uri) params = uri_params(url);
  if (form == Form::keywords) params = keyword_params(url.substr(offset));
  std::vector<Param> secret;
  for (auto& p : params) {
    if (!is_secret_parameter(p.key)) continue;
    p.begin += offset;
    p.value_begin += offset;
    p.end += offset;
    secret.push_back(std::move(p));
  }
  return secret;
}

// Removes rowguard's own option `key` from a libpq URI query or keyword string (libpq rejects
// keys it does not know) and returns its value, if it was there.
std::optional<std::string> take_option(std::string& conninfo, std::string_view key) {
  std::optional<std::string> value;
  if (is_uri(conninfo)) {
    const auto q = uri_query(conninfo);
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
  const auto params = keyword_params(conninfo);
  for (auto p = params.rbegin(); p != params.rend(); ++p) {
    if (p->key != key) continue;
    if (!value) value = p->value;  // libpq takes the last one
    conninfo.erase(p->begin, p->end - p->begin);
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

bool is_secret_parameter(std::string_view keyword) noexcept {
  auto equal = [&](std::string_view name) {
    return keyword.size() == name.size() &&
           std::equal(keyword.begin(), keyword.end(), name.begin(),
                      [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
  };
  return equal("password") || equal("sslpassword") || equal("oauth_client_secret");
}

std::string redact(std::string_view url) {
  std::string s(url);
  const auto params = secret_params(url);
  for (auto p = params.rbegin(); p != params.rend(); ++p) s.replace(p->value_begin, p->end - p->value_begin, "***");
  return s;
}

Secrets secrets_of(std::string_view url) {
  Secrets secrets;
  for (const auto& p : secret_params(url)) {
    const std::string_view written = url.substr(p.value_begin, p.end - p.value_begin);
    std::string_view inside = written;  // a quoted value without its quotes, as written
    if (!inside.empty() && inside.front() == '\'') inside.remove_prefix(1);
    if (!inside.empty() && inside.back() == '\'' && inside.size() < written.size()) inside.remove_suffix(1);
    for (std::string v : {std::string(written), std::string(inside), p.value}) {
      if (!v.empty() && std::find(secrets.begin(), secrets.end(), v) == secrets.end()) secrets.push_back(std::move(v));
    }
  }
  return secrets;
}

std::string scrub(std::string text, const Secrets& secrets) {
  Secrets longest_first = secrets;
  std::sort(longest_first.begin(), longest_first.end(),
            [](const auto& a, const auto& b) { return a.size() > b.size(); });
  for (const auto& secret : longest_first) {
    if (secret.empty()) continue;
    for (std::size_t pos = 0; (pos = text.find(secret, pos)) != std::string::npos; pos += 3)
      text.replace(pos, secret.size(), "***");
  }
  return text;
}

ParsedUrl parse_url(std::string_view url) {
  ParsedUrl parsed;
  parsed.display = redact(url);
  parsed.secrets = secrets_of(url);
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
    for (const auto& p : uri_params(conninfo))
      if (p.key == key) return conninfo;
    std::string encoded;
    for (const char c : value) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '~')
        encoded += c;
      else
        encoded += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
    conninfo += uri_query(conninfo) == std::string::npos ? '?' : '&';
    return conninfo + fmt::format("{}={}", key, encoded);
  }
  for (const auto& p : keyword_params(conninfo))
    if (p.key == key) return conninfo;
  std::string quoted;
  for (const char c : value) {
    if (c == '\'' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return conninfo + fmt::format(" {}='{}'", key, quoted);
}

std::string with_session_defaults(std::string conninfo, const Options& options) {
  conninfo = with_conninfo_default(std::move(conninfo), "application_name", options.application_name);
  conninfo =
      with_conninfo_default(std::move(conninfo), "connect_timeout", std::to_string(options.connect_timeout.count()));
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

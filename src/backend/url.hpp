#pragma once
// Parsing of rowguard database URLs, and the redaction that keeps secrets out of every message.

#include <string>
#include <string_view>
#include <vector>

#include "rowguard/database.hpp"

namespace rowguard::detail {

enum class Engine { sqlite, postgres, soci_sqlite3, soci_postgresql };

// Whether a libpq connection parameter's value is a secret: password and sslpassword (the two that
// libpq 15 marks "*", hide the value, in PQconndefaults()), and oauth_client_secret (libpq 18).
// Case-insensitive, so that a misspelt key is hidden too.
bool is_secret_parameter(std::string_view keyword) noexcept;

// The secrets of a URL in every spelling a message could echo: each secret value as written in
// the URL (percent-encoded, quoted or escaped) and as libpq reads it.
using Secrets = std::vector<std::string>;

struct ParsedUrl {
  Engine engine = Engine::sqlite;
  // SQLite: the file path or URI filename; PostgreSQL: the libpq connection string (URI or keywords).
  std::string target;
  bool memory = false;  // sqlite::memory:
  Secrets secrets;      // every secret the URL holds: scrubbed from every message
  std::string display;  // the URL with every secret replaced by ***
  // rowguard_pooling=transaction: the server is reached through a transaction-pooling PgBouncer,
  // so nothing may rely on session state (named prepared statements, LISTEN). Taken out of target.
  bool transaction_pooling = false;
};

// Error(invalid_argument) for an empty URL, an unknown scheme or an empty path.
ParsedUrl parse_url(std::string_view url);

// The URL with the value of every secret parameter replaced by ***, in each form rowguard accepts:
// a libpq URI (the password of its user information, whatever it holds up to the '@', and secret
// query parameters, percent-encoded keys too; one host or several), a libpq keyword/value string
// (quoted or not, with backslash escapes), and both behind soci+postgresql: (or soci+postgres:).
// A URL of another scheme gets the URI rule; anything else the keyword rule, which (unlike libpq)
// reads on past a malformed token, so no secret after it is missed. SQLite URLs hold no secrets.
std::string redact(std::string_view url);

// The secrets of url (see Secrets), found as redact() finds them.
Secrets secrets_of(std::string_view url);

// Replaces every occurrence of each secret in text with ***, longest first.
std::string scrub(std::string text, const Secrets& secrets);

// Adds key=value to a libpq connection string (URI or keyword form) unless the key is already set.
std::string with_conninfo_default(std::string conninfo, std::string_view key, std::string_view value);

// The connection string with rowguard's defaults for whatever it does not set itself:
// application_name, connect_timeout, and (network_timeout > 0) TCP keepalives and
// tcp_user_timeout, so a session on a silent network fails within about network_timeout.
std::string with_session_defaults(std::string conninfo, const Options& options);

}  // namespace rowguard::detail

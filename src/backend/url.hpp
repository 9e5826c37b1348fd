#pragma once
// Parsing of rowguard database URLs, and the redaction that keeps passwords out of every message.

#include <string>
#include <string_view>

#include "rowguard/database.hpp"

namespace rowguard::detail {

enum class Engine { sqlite, postgres, soci_sqlite3, soci_postgresql };

struct ParsedUrl {
  Engine engine = Engine::sqlite;
  // SQLite: the file path or URI filename; PostgreSQL: the libpq connection string (URI or keywords).
  std::string target;
  bool memory = false;       // sqlite::memory:
  std::string password;      // the password found in the URL, if any: scrubbed from every message
  std::string display;       // the URL with the password replaced by ***
  // rowguard_pooling=transaction: the server is reached through a transaction-pooling PgBouncer,
  // so nothing may rely on session state (named prepared statements, LISTEN). Taken out of target.
  bool transaction_pooling = false;
};

// Error(invalid_argument) for an empty URL, an unknown scheme or an empty path.
ParsedUrl parse_url(std::string_view url);

// The URL (or libpq keyword string) with any password replaced by ***.
std::string redact(std::string_view url);

// Replaces every occurrence of secret in text with ***; a no-op for an empty secret.
std::string scrub(std::string text, std::string_view secret);

// Adds key=value to a libpq connection string (URI or keyword form) unless the key is already set.
std::string with_conninfo_default(std::string conninfo, std::string_view key, std::string_view value);

// The connection string with rowguard's defaults for whatever it does not set itself:
// application_name, connect_timeout, and (network_timeout > 0) TCP keepalives and
// tcp_user_timeout, so a session on a silent network fails within about network_timeout.
std::string with_session_defaults(std::string conninfo, const Options& options);

}  // namespace rowguard::detail

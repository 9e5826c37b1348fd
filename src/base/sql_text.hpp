#pragma once
// Helpers over SQL text and bytes that every backend shares.

#include <string>
#include <string_view>

namespace rowguard::detail {

// How a driver spells the n-th bound parameter. rowguard's SQL is written with $1, $2, ...
enum class PlaceholderStyle {
  dollar,             // $1   (libpq, unchanged)
  question_numbered,  // ?1   (sqlite3)
  colon_named,        // :p1  (SOCI, bound by name)
};

// Rewrites $N placeholders outside string literals, quoted identifiers and comments.
std::string rewrite_placeholders(std::string_view sql, PlaceholderStyle style);

// The highest $N placeholder outside literals and comments (0 when there is none).
std::size_t placeholder_count(std::string_view sql);

// What a statement can do to data; decides whether a connection lost mid-statement leaves the
// outcome in doubt. Anything not plainly a read counts as a write (the safe side).
enum class StatementEffect { read, write, commit };
StatementEffect effect_of(std::string_view sql);

// The calls of the schema's server-side functions are SELECTs that write (a transfer, a hold, a
// lease): Backend::function_call starts them with this comment, and effect_of counts a statement
// that starts with it as a write, so a connection lost during the call leaves the outcome in doubt
// as it did when the same work was an INSERT or an UPDATE. It still yields rows (returns_rows).
// (No colon in it: SOCI would take one for a placeholder even inside a comment.)
inline constexpr std::string_view writes_marker = "/* rowguard writes */ ";

// A statement whose best plan depends on its parameters' values so much that PostgreSQL's generic
// plan (which a prepared statement switches to after five runs) can cost it a table walk: the
// transfers() page filtered by metadata containment, whose selectivity the generic plan guesses
// (measured on 200k transfers: 49 ms against 5 ms for a value only one transfer has). The drivers
// send a statement that starts with this comment unprepared (libpqxx: unnamed; SOCI: prepared
// afresh each call), so PostgreSQL plans it for the values of each call. Same rule as above: no colon.
inline constexpr std::string_view plan_each_call_marker = "/* rowguard plans each call */ ";

// A statement that sets, rolls back to or releases a savepoint, and the savepoint's name (an
// unquoted name folded to lower case, a "quoted" one as it is): SAVEPOINT name,
// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name, RELEASE [SAVEPOINT] name. op is none for any
// other statement.
enum class SavepointOp { none, set, rollback_to, release };
struct SavepointStatement {
  SavepointOp op = SavepointOp::none;
  std::string name;
};
SavepointStatement savepoint_statement(std::string_view sql);

std::string to_hex(std::string_view bytes);
// Error(permanent) on an odd length or a non-hex digit; accepts an optional "\x" prefix (bytea text).
std::string from_hex(std::string_view hex);

// True when text is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF)
// without a NUL byte: what names, keys and ids must be. PostgreSQL text cannot hold NUL, and SOCI
// would silently cut a bound string at one, so it is refused everywhere alike.
bool is_text(std::string_view text);

// True for a usable SQL identifier fragment: [a-z_][a-z0-9_]* of at most max_length bytes.
bool is_identifier(std::string_view text, std::size_t max_length);

}  // namespace rowguard::detail

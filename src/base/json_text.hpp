#pragma once
// JSON text as the ledger's metadata needs it: checked, compared as a value, and taken apart for a
// containment filter. Not a general JSON library (the library links none): no numbers as doubles,
// no editing. Pure functions, safe from any thread.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rowguard::detail {

// One parsed JSON text.
struct JsonText {
  // The value's canonical spelling: no whitespace, object keys sorted by bytes, strings with only
  // '"', '\' and control characters escaped, numbers as [-]digits[e exponent] without leading or
  // trailing zeros. Two texts are equal JSON values (as PostgreSQL's jsonb compares them, numbers
  // by their decimal value) exactly when their canonical spellings are equal.
  std::string canonical;
  bool is_object = false;
  // For an object: its members in text order, each key (decoded) with its value's canonical
  // spelling, whether that value is a scalar (string, number, true, false), and the value as the
  // text spells it (numbers keep their digits: SQLite reads 123e1 as a REAL, 1230 as an INTEGER).
  struct Member {
    std::string key;
    std::string value;
    bool scalar = false;
    std::string raw;
  };
  std::vector<Member> members;
};

// Parses text (RFC 8259) at most max_depth arrays or objects deep. nullopt with *error set for
// text that is not JSON, an object with a duplicate key, a \u0000 or a lone surrogate escape
// (PostgreSQL's jsonb refuses both), or a number PostgreSQL's numeric cannot hold (more than 131072
// digits before the decimal point or 16383 after).
std::optional<JsonText> parse_json(std::string_view text, std::string* error, int max_depth = 32);

}  // namespace rowguard::detail

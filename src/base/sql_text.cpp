#include "base/sql_text.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <vector>

#include "rowguard/error.hpp"

namespace rowguard::detail {

namespace {
// Copies sql, replacing each $N outside literals, quoted identifiers and comments by replace(N's digits).
template <class Replace>
std::string scan_placeholders(std::string_view sql, Replace&& replace) {
  std::string out;
  out.reserve(sql.size() + 8);
  std::size_t i = 0;
  const std::size_t n = sql.size();
  auto copy_until = [&](std::size_t end) {
    out.append(sql.substr(i, end - i));
    i = end;
  };
  while (i < n) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {  // literal or quoted identifier; a doubled quote stays inside
      std::size_t j = i + 1;
      while (j < n) {
        if (sql[j] == c) {
          if (j + 1 < n && sql[j + 1] == c) {
            j += 2;
            continue;
          }
          break;
        }
        ++j;
      }
      copy_until(j < n ? j + 1 : n);
    } else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
      const std::size_t end = sql.find('\n', i);
      copy_until(end == std::string_view::npos ? n : end);
    } else if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
      const std::size_t end = sql.find("*/", i + 2);
      copy_until(end == std::string_view::npos ? n : end + 2);
    } else if (c == '$' && i + 1 < n && std::isdigit(static_cast<unsigned char>(sql[i + 1]))) {
      std::size_t j = i + 1;
      while (j < n && std::isdigit(static_cast<unsigned char>(sql[j]))) ++j;
      out += replace(sql.substr(i + 1, j - i - 1));
      i = j;
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}
}  // namespace

std::string rewrite_placeholders(std::string_view sql, PlaceholderStyle style) {
  if (style == PlaceholderStyle::dollar) return std::string(sql);
  const char* mark = style == PlaceholderStyle::question_numbered ? "?" : ":p";
  return scan_placeholders(sql, [&](std::string_view digits) { return mark + std::string(digits); });
}

std::size_t placeholder_count(std::string_view sql) {
  std::size_t highest = 0;
  scan_placeholders(sql, [&](std::string_view digits) {
    highest = std::max<std::size_t>(highest, std::stoul(std::string(digits)));
    return std::string();
  });
  return highest;
}

namespace {
std::string first_keyword(std::string_view sql) {
  std::size_t i = 0;
  while (i < sql.size()) {
    if (std::isspace(static_cast<unsigned char>(sql[i])) || sql[i] == '(') {
      ++i;
    } else if (sql.substr(i, 2) == "--") {
      const std::size_t end = sql.find('\n', i);
      i = end == std::string_view::npos ? sql.size() : end;
    } else if (sql.substr(i, 2) == "/*") {  // e.g. plan_each_call_marker (not nested: ours never are)
      const std::size_t end = sql.find("*/", i + 2);
      i = end == std::string_view::npos ? sql.size() : end + 2;
    } else {
      break;
    }
  }
  std::string word;
  while (i < sql.size() && std::isalpha(static_cast<unsigned char>(sql[i])))
    word += static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i++])));
  return word;
}
}  // namespace

StatementEffect effect_of(std::string_view sql) {
  if (sql.substr(0, writes_marker.size()) == writes_marker) return StatementEffect::write;
  const std::string word = first_keyword(sql);
  // PREPARE TRANSACTION makes the transaction outlive the connection: a lost reply leaves it in doubt.
  if (word == "COMMIT" || word == "END" || word == "PREPARE") return StatementEffect::commit;
  if (word == "SELECT" || word == "SHOW" || word == "VALUES" || word == "BEGIN" || word == "ROLLBACK" ||
      word == "SAVEPOINT" || word == "RELEASE" || word == "PRAGMA" || word == "SET")
    return StatementEffect::read;
  return StatementEffect::write;
}

namespace {
// The words of a short statement: keywords and names upper-cased or (names) lower-cased by the
// caller; a "quoted" identifier stays one word with its quotes. Comments are skipped.
std::vector<std::string> words_of(std::string_view sql) {
  std::vector<std::string> words;
  std::size_t i = 0;
  while (i < sql.size()) {
    const char c = sql[i];
    if (std::isspace(static_cast<unsigned char>(c)) || c == ';') {
      ++i;
    } else if (sql.substr(i, 2) == "--") {
      const std::size_t end = sql.find('\n', i);
      i = end == std::string_view::npos ? sql.size() : end;
    } else if (sql.substr(i, 2) == "/*") {
      const std::size_t end = sql.find("*/", i + 2);
      i = end == std::string_view::npos ? sql.size() : end + 2;
    } else if (c == '"') {
      std::size_t j = i + 1;  // to the closing quote; a doubled quote stays inside
      while (j < sql.size() && (sql[j] != '"' || (j + 1 < sql.size() && sql[j + 1] == '"'))) j += sql[j] == '"' ? 2 : 1;
      j = std::min(j + 1, sql.size());
      words.emplace_back(sql.substr(i, j - i));
      i = j;
    } else {
      std::size_t j = i;
      while (j < sql.size() && !std::isspace(static_cast<unsigned char>(sql[j])) && sql[j] != ';' && sql[j] != '"') ++j;
      words.emplace_back(sql.substr(i, j - i));
      i = j;
    }
  }
  return words;
}

std::string folded(std::string word, bool upper) {
  if (!word.empty() && word[0] == '"') return word;
  for (auto& ch : word)
    ch = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(ch))
                                 : std::tolower(static_cast<unsigned char>(ch)));
  return word;
}
}  // namespace

SavepointStatement savepoint_statement(std::string_view sql) {
  const std::string first = first_keyword(sql);
  if (first != "SAVEPOINT" && first != "ROLLBACK" && first != "RELEASE") return {};
  const auto words = words_of(sql);
  std::size_t i = 1;
  auto is = [&](const char* keyword) { return i < words.size() && folded(words[i], true) == keyword; };
  SavepointStatement s;
  if (first == "SAVEPOINT") {
    s.op = SavepointOp::set;
  } else if (first == "RELEASE") {
    s.op = SavepointOp::release;
    if (is("SAVEPOINT")) ++i;
  } else {
    if (is("WORK") || is("TRANSACTION")) ++i;
    if (!is("TO")) return {};  // a plain ROLLBACK ends the transaction
    ++i;
    if (is("SAVEPOINT")) ++i;
    s.op = SavepointOp::rollback_to;
  }
  if (i + 1 != words.size()) return {};  // not one name: the database refuses it
  s.name = folded(words[i], false);
  return s;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = digits[b >> 4];
    out[2 * i + 1] = digits[b & 0x0f];
  }
  return out;
}

namespace {
// The value of each byte as a hex digit, 0xff for a byte that is none: a blob read from PostgreSQL
// (bytea's text form, a cache value on every hit) is decoded at one table look-up per digit.
constexpr std::array<unsigned char, 256> hex_digits = [] {
  std::array<unsigned char, 256> t{};
  for (auto& v : t) v = 0xff;
  for (int c = '0'; c <= '9'; ++c) t[static_cast<std::size_t>(c)] = static_cast<unsigned char>(c - '0');
  for (int c = 'a'; c <= 'f'; ++c) t[static_cast<std::size_t>(c)] = static_cast<unsigned char>(c - 'a' + 10);
  for (int c = 'A'; c <= 'F'; ++c) t[static_cast<std::size_t>(c)] = static_cast<unsigned char>(c - 'A' + 10);
  return t;
}();
}  // namespace

std::string from_hex(std::string_view hex) {
  if (hex.substr(0, 2) == "\\x") hex.remove_prefix(2);
  if (hex.size() % 2 != 0) throw Error(ErrorKind::permanent, "hex-encoded blob has an odd length");
  std::string out(hex.size() / 2, '\0');
  const auto* in = reinterpret_cast<const unsigned char*>(hex.data());
  unsigned bad = 0;  // above 0x0f once any digit was not one
  for (std::size_t i = 0; i < out.size(); ++i) {
    const unsigned hi = hex_digits[in[2 * i]], lo = hex_digits[in[2 * i + 1]];
    bad |= hi | lo;
    out[i] = static_cast<char>(((hi & 0x0fU) << 4) | (lo & 0x0fU));
  }
  if (bad > 0x0f) throw Error(ErrorKind::permanent, "hex-encoded blob has a non-hex digit");
  return out;
}

bool is_text(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t extra = 0;
    std::uint32_t cp = 0;
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr std::uint32_t min_for[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_for[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

bool is_identifier(std::string_view text, std::size_t max_length) {
  if (text.empty() || text.size() > max_length) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool ok = (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

}  // namespace rowguard::detail

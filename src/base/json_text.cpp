#include "base/json_text.hpp"

#include <algorithm>
#include <cstdint>
#include <map>

namespace rowguard::detail {

namespace {

struct Parser {
  std::string_view s;
  std::size_t i = 0;
  int max_depth;
  std::string error;

  bool fail(const std::string& what) {
    if (error.empty()) error = what + " at byte " + std::to_string(i);
    return false;
  }
  void space() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool literal(std::string_view word, std::string& out) {
    if (s.substr(i, word.size()) != word) return fail("an unexpected character");
    i += word.size();
    out += word;
    return true;
  }
  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  bool hex4(std::uint32_t& v) {
    if (i + 4 > s.size()) return fail("a short \\u escape");
    v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<std::uint32_t>(c - 'A' + 10);
      else
        return fail("a bad \\u escape");
    }
    return true;
  }
  // A string's decoded bytes (the input is checked UTF-8 by the caller).
  bool string(std::string& out) {
    ++i;  // the opening quote
    while (true) {
      if (i >= s.size()) return fail("an unterminated string");
      const char c = s[i++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fail("a control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= s.size()) return fail("an unterminated string");
      const char e = s[i++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp == 0) return fail("\\u0000 (PostgreSQL's jsonb cannot hold it)");
          if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("a lone surrogate escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            std::uint32_t low = 0;
            if (s.substr(i, 2) != "\\u") return fail("a lone surrogate escape");
            i += 2;
            if (!hex4(low)) return false;
            if (low < 0xDC00 || low > 0xDFFF) return fail("a lone surrogate escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return fail("a bad escape");
      }
    }
  }
  static void quote(std::string& out, std::string_view text) {
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (const char c : text) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        out += "\\u00";
        out += hex[(c >> 4) & 0xF];
        out += hex[c & 0xF];
      } else {
        out += c;
      }
    }
    out += '"';
  }
  // A number as [-]digits[e exponent], value = digits * 10^exponent, no leading or trailing zeros.
  bool number(std::string& out) {
    const bool negative = s[i] == '-';
    if (negative) ++i;
    std::string digits;
    std::int64_t exponent = 0;
    auto is_digit = [&] { return i < s.size() && s[i] >= '0' && s[i] <= '9'; };
    if (!is_digit()) return fail("a bad number");
    if (s[i] == '0') {
      ++i;
    } else {
      while (is_digit()) digits += s[i++];
    }
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (!is_digit()) return fail("a bad number");
      while (is_digit()) digits += s[i++], --exponent;
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      bool minus = false;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) minus = s[i++] == '-';
      if (!is_digit()) return fail("a bad number");
      std::int64_t e = 0;
      while (is_digit()) {
        e = e * 10 + (s[i++] - '0');
        if (e > 1'000'000'000) return fail("a number's exponent out of range");
      }
      exponent += minus ? -e : e;
    }
    const auto first = digits.find_first_not_of('0');
    if (first == std::string::npos) {
      out += '0';  // -0 and 0.000 are 0, as numeric says
      return true;
    }
    digits.erase(0, first);
    while (digits.back() == '0') digits.pop_back(), ++exponent;
    // What PostgreSQL's numeric (jsonb's numbers) holds: 131072 digits before the decimal point
    // and 16383 after. Refused here, so that no engine stores what another refuses.
    if (static_cast<std::int64_t>(digits.size()) + exponent > 131072 || -exponent > 16383)
      return fail("a number beyond what PostgreSQL's numeric holds (131072 digits before the point, 16383 after)");
    if (negative) out += '-';
    out += digits;
    if (exponent != 0) out += 'e' + std::to_string(exponent);
    return true;
  }
  bool value(std::string& out, int depth, JsonText* top) {
    space();
    if (i >= s.size()) return fail("the end of the text where a value belongs");
    const char c = s[i];
    if (c == '{' || c == '[') {
      if (depth >= max_depth) return fail("nesting deeper than " + std::to_string(max_depth));
      ++i;
      const bool object = c == '{';
      std::map<std::string, std::string> members;  // sorted by bytes: the canonical order
      std::vector<std::string> items;
      space();
      const char close = object ? '}' : ']';
      if (i < s.size() && s[i] == close) {
        ++i;
      } else {
        while (true) {
          std::string item;
          if (object) {
            space();
            if (i >= s.size() || s[i] != '"') return fail("an object key that is not a string");
            std::string key;
            if (!string(key)) return false;
            space();
            if (i >= s.size() || s[i] != ':') return fail("a missing ':'");
            ++i;
            space();
            const std::size_t start = i;
            if (!value(item, depth + 1, nullptr)) return false;
            if (members.count(key)) return fail("the duplicate key \"" + key + "\"");
            if (top) {
              const char f = item.empty() ? ' ' : item[0];
              top->members.push_back(
                  {key, item, f != '{' && f != '[' && f != 'n', std::string(s.substr(start, i - start))});
            }
            members.emplace(std::move(key), std::move(item));
          } else {
            if (!value(item, depth + 1, nullptr)) return false;
            items.push_back(std::move(item));
          }
          space();
          if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
          }
          if (i < s.size() && s[i] == close) {
            ++i;
            break;
          }
          return fail(object ? "a missing ',' or '}'" : "a missing ',' or ']'");
        }
      }
      out += c;
      bool first = true;
      if (object) {
        for (const auto& [k, v] : members) {
          if (!first) out += ',';
          first = false;
          quote(out, k);
          out += ':';
          out += v;
        }
      } else {
        for (const auto& v : items) {
          if (!first) out += ',';
          first = false;
          out += v;
        }
      }
      out += close;
      if (top) top->is_object = object;
      return true;
    }
    if (c == '"') {
      std::string text;
      if (!string(text)) return false;
      quote(out, text);
      return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(out);
    if (c == 't') return literal("true", out);
    if (c == 'f') return literal("false", out);
    if (c == 'n') return literal("null", out);
    return fail("an unexpected character");
  }
};

}  // namespace

std::optional<JsonText> parse_json(std::string_view text, std::string* error, int max_depth) {
  Parser p{text, 0, max_depth, {}};
  JsonText out;
  if (p.value(out.canonical, 0, &out)) {
    p.space();
    if (p.i == text.size()) return out;
    p.fail("text after the value");
  }
  if (error) *error = p.error;
  return std::nullopt;
}

}  // namespace rowguard::detail

// libFuzzer target: database URL parsing, redaction and the rowguard_pooling option.
// Properties, for the input taken as a URL: only rowguard::Error escapes parse_url; a parsed URL's
// display form never shows a secret it found; the option, once taken out, is gone from the target.
// And for a secret the target makes itself from the input's bytes, written into an accepted form
// picked by the input (a URI's user information or a query parameter, percent-encoded fully or only
// where libpq needs it; a keyword/value string, quoted or backslash-escaped; behind soci+postgresql:
// or not; one host or several; password or sslpassword, a key spelt oddly too; sometimes with a
// malformed part that makes libpq refuse the string): libpq reads exactly that secret, and no byte
// of it shows in display_url, in parse_url's errors, in libpq's error for the target, or in a
// message quoting the whole URL, once scrubbed of the parsed URL's secrets.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <libpq-fe.h>

#include "rowguard/error.hpp"

#include "backend/url.hpp"

using namespace rowguard;

namespace {

// The input's bytes, one at a time (0 once they run out).
struct Bytes {
  const std::uint8_t* data;
  std::size_t size;
  std::uint8_t next() {
    if (size == 0) return 0;
    --size;
    return *data++;
  }
};

// The generated secret starts and ends with a marker that no template text below contains (no
// 'Z' anywhere in them): any part of the secret that leaks carries one of them, or is found whole.
constexpr std::string_view head = "Zq", tail = "qZ";

bool leaks(std::string_view text, std::string_view secret) {
  return text.find(head) != std::string_view::npos || text.find(tail) != std::string_view::npos ||
         text.find(secret) != std::string_view::npos;
}

// Every byte but the unreserved ones encoded (fully), or only '%', blanks, bytes outside printable
// ASCII and those in `needed` (where libpq would otherwise end the value).
std::string percent_encode(std::string_view s, bool fully, std::string_view needed) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    const bool unreserved = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '-' ||
                            b == '.' || b == '_' || b == '~';
    const bool must = b == '%' || b <= ' ' || b >= 0x7f || needed.find(c) != std::string_view::npos;
    if (unreserved || (!fully && !must)) {
      out += c;
    } else {
      out += '%';
      out += digits[b >> 4];
      out += digits[b & 15];
    }
  }
  return out;
}

// A keyword/value value: quoted (backslash before ' and \) or bare (backslash before those and blanks).
std::string keyword_value(std::string_view s, bool quoted) {
  std::string out = quoted ? "'" : "";
  for (const char c : s) {
    const bool blank = c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
    if (c == '\'' || c == '\\' || (!quoted && blank)) out += '\\';
    out += c;
  }
  if (quoted) out += '\'';
  if (out.empty()) out = "''";
  return out;
}

void check_generated(Bytes in) {
  const std::uint8_t form = in.next(), shape = in.next();
  std::string secret(head);
  for (std::size_t n = 1 + in.next() % 40; n > 0; --n) {
    const char c = static_cast<char>(in.next());
    secret += c == '\0' ? 'x' : c;  // a libpq string holds no NUL
  }
  secret += tail;
  const bool ssl = shape & 1, odd_key = shape & 2, soci = shape & 4, several_hosts = shape & 8, fully = shape & 16,
             padded = shape & 32;
  const int broken = (shape >> 6) & 3;                 // 0: well-formed; else a part that libpq refuses
  std::string key = ssl ? "sslpassword" : "password";  // as libpq reads it
  std::string url;
  if (form % 4 < 2) {
    // URI forms. libpq: the user information runs to the first '@' before any '/', a query value to
    // the next '&' (an '=' in it is refused). An unclosed IPv6 bracket makes libpq quote the whole URI
    // (a ']' in the secret would close it: libpq would then read the secret as part of a host).
    const std::string hosts = broken == 3 ? "[::1" : several_hosts ? "h1.example:5432,h2.example:5433" : "db.example";
    const std::string bad = broken == 1 ? "&bogus" : broken == 2 ? "&application_name=a%zz" : "";
    if (form % 4 == 0) {
      key = "password";
      url = "postgresql://app:" + percent_encode(secret, fully, "@/]") + "@" + hosts + "/pay?sslmode=prefer" + bad;
    } else {
      std::string written = key;
      if (odd_key) written.replace(written.find('p'), 1, "%70");  // libpq decodes keys too
      url = "postgres://app@" + hosts + "/pay?application_name=x&" + written + "=" +
            percent_encode(secret, fully, "&=]") + "&connect_timeout=3" + bad;
    }
    if (soci) url = "soci+" + url;
  } else {
    // Keyword/value forms; an odd key (upper case) is one libpq refuses, quoting its name.
    if (odd_key) key = ssl ? "SSLPASSWORD" : "PASSWORD";
    url = std::string(soci ? "soci+postgresql:" : "") +
          "host=" + (several_hosts ? "h1.example,h2.example" : "db.example") + " dbname=pay " + key +
          (padded ? " \t= " : "=") + keyword_value(secret, form % 4 == 2) + (padded ? "\t" : " ") + "user=app" +
          (broken == 1   ? " bogus"
           : broken == 2 ? " sslmode='prefer"
           : broken == 3 ? " nosuch=1"
                         : "");
  }

  detail::ParsedUrl parsed;
  try {
    parsed = detail::parse_url(url);
  } catch (const Error& e) {
    if (leaks(e.what(), secret)) std::abort();
    return;
  }
  if (leaks(parsed.display, secret) || detail::redact(url) != parsed.display) std::abort();
  if (leaks(detail::scrub("cannot open \"" + url + "\"", parsed.secrets), secret)) std::abort();
  // What libpq is given: the target with rowguard's session defaults.
  const std::string conninfo = detail::with_session_defaults(parsed.target, Options{});
  char* message = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &message);
  if (options == nullptr) {
    // libpq quotes parts of a string it refuses (a malformed URI whole).
    if (message != nullptr && leaks(detail::scrub(message, parsed.secrets), secret)) std::abort();
  } else {
    for (const PQconninfoOption* o = options; o->keyword; ++o)
      if (key == o->keyword && (o->val == nullptr || secret != o->val)) std::abort();  // libpq reads it otherwise
    PQconninfoFree(options);
  }
  PQfreemem(message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_generated(Bytes{data, size});

  const std::string url(reinterpret_cast<const char*>(data), size);
  (void)detail::redact(url);
  (void)detail::with_conninfo_default(url, "application_name", "fuzz");
  detail::ParsedUrl parsed;
  try {
    parsed = detail::parse_url(url);
  } catch (const Error&) {
    return 0;  // rejected with rowguard's own error: fine
  }
  // A secret of a few characters may also occur elsewhere in the URL by chance; longer ones
  // must not survive redaction. (One that contains "***" can be rebuilt by the redaction itself:
  // the password "st=db password=*** db" of "host=db password='st=db password=*** db'" reads
  // again in "host=db password=*** dbname", so such secrets are not checked. Nor are URLs with a
  // quote, backslash or '%': a secret's decoded value may then stand elsewhere in the URL as
  // plain text; the generated secrets above cover those forms.)
  if (url.find_first_of("'\\%") == std::string::npos)
    for (const auto& secret : parsed.secrets)
      if (secret.size() >= 6 && secret.find('*') == std::string::npos && url.find(secret) == url.rfind(secret) &&
          parsed.display.find(secret) != std::string::npos)
        std::abort();
  if (parsed.engine == detail::Engine::postgres) {
    const auto again = detail::parse_url(parsed.target);  // the target is a valid URL again
    if (again.transaction_pooling) std::abort();          // and the option is gone from it
  }
  return 0;
}

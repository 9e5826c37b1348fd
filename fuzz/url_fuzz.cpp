// libFuzzer target: database URL parsing, redaction and the rowguard_pooling option.
// Properties: only rowguard::Error escapes parse_url; a parsed URL's display form never shows the
// password it found; the option, once taken out, is gone from the target.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/url.hpp"
#include "rowguard/error.hpp"

using namespace rowguard;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string url(reinterpret_cast<const char*>(data), size);
  (void)detail::redact(url);
  (void)detail::with_conninfo_default(url, "application_name", "fuzz");
  detail::ParsedUrl parsed;
  try {
    parsed = detail::parse_url(url);
  } catch (const Error&) {
    return 0;  // rejected with rowguard's own error: fine
  }
  // A password of a few characters may also occur elsewhere in the URL by chance; longer ones
  // must not survive redaction. (One that contains "***" can be rebuilt by the redaction itself:
  // the password "st=db password=*** db" of "host=db password='st=db password=*** db'" reads
  // again in "host=db password=*** dbname", so such passwords are not checked.)
  if (parsed.password.size() >= 6 && parsed.password.find('*') == std::string::npos &&
      url.find(parsed.password) == url.rfind(parsed.password) &&
      parsed.display.find(parsed.password) != std::string::npos)
    std::abort();
  if (parsed.engine == detail::Engine::postgres) {
    const auto again = detail::parse_url(parsed.target);  // the target is a valid URL again
    if (again.transaction_pooling) std::abort();           // and the option is gone from it
  }
  return 0;
}

#include "rowguard/version.hpp"

#include "rowguard/config.hpp"

namespace rowguard {
std::string_view version() noexcept { return ROWGUARD_VERSION_STRING; }
}  // namespace rowguard

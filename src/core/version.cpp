#include "rowguard/version.hpp"

namespace rowguard {
std::string_view version() noexcept { return ROWGUARD_VERSION; }
}  // namespace rowguard

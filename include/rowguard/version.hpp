#pragma once
// The library's version.
#include <string_view>

namespace rowguard {
std::string_view version() noexcept;  // "0.1.0"
}

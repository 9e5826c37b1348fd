#pragma once
// The CLI's own value parsers, kept apart from the commands so the fuzz targets (fuzz/) can link
// them alone.

#include <chrono>
#include <string>

#include <CLI/CLI.hpp>

namespace rowguard::cli {

// Parses "250ms", "30s", "5m", "1h" (whole numbers); Error(invalid_argument) otherwise.
std::chrono::milliseconds parse_duration(const std::string& text);

// CLI11 would also read 0x10, 0b11, 1e3 or " 7" as numbers: amounts, tokens and counts are plain
// decimal digits (an optional '-'), within 64 bits, or a usage error (exit 2).
const CLI::Validator& decimal();

}  // namespace rowguard::cli

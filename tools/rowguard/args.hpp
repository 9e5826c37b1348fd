#pragma once
// The CLI's own value parsers and the formatters of the same values for people (times in ISO
// 8601, durations as durations), kept apart from the commands so the fuzz targets (fuzz/) can link
// them alone. Every message a person reads writes a time with format_time and a length of time
// with format_duration (rowguard/time_text.hpp, shared with the library); --json keeps the numbers too.

#include <chrono>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "rowguard/time_text.hpp"  // format_time, format_duration

namespace rowguard::cli {

// Parses "250ms", "30s", "5m", "1h", "30d" (whole numbers); Error(invalid_argument) otherwise.
std::chrono::milliseconds parse_duration(const std::string& text);

// CLI11 would also read 0x10, 0b11, 1e3 or " 7" as numbers: amounts, tokens and counts are plain
// decimal digits (an optional '-'), within 64 bits, or a usage error (exit 2).
const CLI::Validator& decimal();

// A point in time as epoch milliseconds (UTC). Accepts "2026-01-31" (midnight UTC),
// "2026-01-31T12:30:00Z", "2026-01-31T12:30:00.250Z", an offset instead of Z ("+02:00"), or
// "@1767225600000" (epoch ms). Years 1 to 9999; Error(invalid_argument) otherwise.
std::int64_t parse_time(const std::string& text);

}  // namespace rowguard::cli

#pragma once
// Times and lengths of time written for people, as every message, the CLI's text output and the
// status page show them. Thread-safe; no time zone but UTC, so the text never depends on the host.

#include <chrono>
#include <cstdint>
#include <string>

namespace rowguard {

// Epoch milliseconds as ISO 8601 in UTC, always with milliseconds:
// format_time(1767184200250) == "2025-12-31T12:30:00.250Z".
std::string format_time(std::int64_t epoch_ms);

// A length of time in its two largest units, as the CLI reads durations: "574ms", "1.5s", "12s",
// "2m 14s", "3h", "5h 2m", "3d", "3d 4h"; "-" before a negative one. Rounds down (2m 59.9s is
// "2m 59s").
std::string format_duration(std::chrono::milliseconds length);

}  // namespace rowguard

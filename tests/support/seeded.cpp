#include "support/seeded.hpp"

#include <cstdlib>
#include <random>

#include <fmt/format.h>

#include "support/support.hpp"

namespace rowguard::test {

unsigned run_seed() {
  if (const char* s = std::getenv("ROWGUARD_SEED"); s && *s) return static_cast<unsigned>(std::strtoul(s, nullptr, 10));
  return std::random_device{}();
}

std::string seed_note(unsigned seed) {
  return fmt::format("seed {} (rerun: ROWGUARD_SEED={} rowguard_tests '<this test>' --backend {})", seed, seed,
                     backend());
}

long env_count(const char* name, long ci) {
  if (const char* s = std::getenv(name); s && *s) {
    const long n = std::strtol(s, nullptr, 10);
    if (n > 0) return n;
  }
  return ci;
}

std::chrono::milliseconds interleave_duration(std::chrono::milliseconds ci) {
  const long seconds = env_count("ROWGUARD_INTERLEAVE_SECONDS", 0);
  return seconds > 0 ? std::chrono::milliseconds(seconds * 1000) : ci;
}

}  // namespace rowguard::test

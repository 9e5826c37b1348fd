#pragma once
// Seeds and sizes of the randomized tests (model, interleavings): every run draws a fresh seed,
// prints it with any failure, and reruns exactly with $ROWGUARD_SEED; the soak mode
// (scripts/soak.sh) makes them longer through the environment.

#include <chrono>
#include <string>

namespace rowguard::test {

// $ROWGUARD_SEED when set (to rerun a failure), else a fresh seed per call.
unsigned run_seed();
// "seed N (rerun with ROWGUARD_SEED=N ...)": what INFO() shows on every failure of the test.
std::string seed_note(unsigned seed);
// The integer in environment variable `name` when set and positive, else ci.
long env_count(const char* name, long ci);
// How long each interleaving workload runs: ci, or $ROWGUARD_INTERLEAVE_SECONDS (soak mode).
std::chrono::milliseconds interleave_duration(std::chrono::milliseconds ci);

}  // namespace rowguard::test

#pragma once
// Runs one workload with N clients, as threads or as processes, lined up on a start barrier, for
// a fixed time; counts operations and errors.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace bench {

enum class Mode { threads, processes };

struct Measurement {
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
  double seconds = 0;
  std::string first_error;  // what the first failed operation threw
  double ops_per_second() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
};

// One operation of one client; an exception counts as an error and the loop goes on.
using Op = std::function<void(std::uint64_t i)>;
// Called in the client's own thread or process, before the barrier: connects and prepares.
using ClientFactory = std::function<Op(int client)>;

Measurement run_clients(int clients, double seconds, Mode mode, const ClientFactory& make);

// For the self-test of --sane (rowguard-bench --fail-every N): from now on every Nth operation of
// every client throws instead of running, in threads and in forked processes alike. 0: never.
void inject_failures(std::uint64_t every);

// The median of values (0 for none).
double median(std::vector<double> values);
// The p-th percentile (0..100) of values, nearest rank.
double percentile(std::vector<double> values, double p);

// Monotonic nanoseconds, comparable across processes on one machine.
std::int64_t now_ns();

}  // namespace bench

#include "runner.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unistd.h>

#include <sys/wait.h>

namespace bench {

namespace {
struct Counts {
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
};

std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

std::uint64_t fail_every = 0;  // inject_failures()

// The loop every client runs once the barrier opens.
Counts drive(const Op& op, std::chrono::steady_clock::time_point until, std::string* first_error) {
  Counts c;
  for (std::uint64_t i = 0; std::chrono::steady_clock::now() < until; ++i) {
    try {
      if (fail_every > 0 && i % fail_every == fail_every - 1)
        throw std::runtime_error("injected failure (--fail-every)");
      op(i);
      ++c.ops;
    } catch (...) {
      if (c.errors++ == 0 && first_error) *first_error = describe(std::current_exception());
    }
  }
  return c;
}

Measurement in_threads(int clients, double seconds, const ClientFactory& make) {
  std::mutex m;
  std::condition_variable cv;
  int ready = 0;
  bool go = false;
  std::chrono::steady_clock::time_point until;
  Measurement out;
  std::vector<std::thread> threads;
  std::exception_ptr setup_failure;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      Op op;
      try {
        op = make(c);
      } catch (...) {
        std::lock_guard lock(m);
        if (!setup_failure) setup_failure = std::current_exception();
      }
      std::unique_lock lock(m);
      ++ready;
      cv.notify_all();
      cv.wait(lock, [&] { return go; });
      lock.unlock();
      if (!op) return;
      std::string error;
      const Counts n = drive(op, until, &error);
      lock.lock();
      out.ops += n.ops;
      out.errors += n.errors;
      if (out.first_error.empty()) out.first_error = error;
    });
  std::chrono::steady_clock::time_point start;
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return ready == clients; });
    start = std::chrono::steady_clock::now();
    until =
        start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
    go = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (setup_failure) throw std::runtime_error("a client could not start: " + describe(setup_failure));
  return out;
}

bool read_all(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n <= 0) return false;
    p += n, size -= static_cast<std::size_t>(n);
  }
  return true;
}

// What a client process writes back: its counts and its first error (cut to fit).
struct ProcessReport {
  Counts counts;
  char first_error[256] = {};
};

// Each client a forked process: it reports ready, waits for the start pipe to close, runs, and
// writes its report back. A client that reports nothing, or exits other than 0, counts as an error.
Measurement in_processes(int clients, double seconds, const ClientFactory& make) {
  int ready[2], start[2], results[2];
  if (::pipe(ready) != 0 || ::pipe(start) != 0 || ::pipe(results) != 0) throw std::runtime_error("pipe failed");
  std::vector<pid_t> children;
  for (int c = 0; c < clients; ++c) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      ::close(ready[0]), ::close(start[1]), ::close(results[0]);
      ProcessReport report;
      std::string error;
      Op op;
      try {
        op = make(c);
      } catch (...) {
        report.counts.errors = 1;
        error = describe(std::current_exception());
      }
      char byte = op ? 'r' : 'x';
      (void)!::write(ready[1], &byte, 1);
      char sink;
      (void)!::read(start[0], &sink, 1);  // EOF when the parent opens the barrier
      if (op)
        report.counts = drive(
            op,
            std::chrono::steady_clock::now() +
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds)),
            &error);
      error.copy(report.first_error, sizeof report.first_error - 1);
      // One write of a few hundred bytes to a pipe is atomic: reports never interleave.
      (void)!::write(results[1], &report, sizeof report);
      ::_exit(0);
    }
    children.push_back(pid);
  }
  ::close(ready[1]), ::close(start[0]), ::close(results[1]);
  bool all_ready = true;
  for (int c = 0; c < clients; ++c) {
    char byte = 0;
    all_ready = read_all(ready[0], &byte, 1) && byte == 'r' && all_ready;
  }
  const auto begin = std::chrono::steady_clock::now();
  ::close(start[1]);
  Measurement out;
  for (int c = 0; c < clients; ++c) {
    ProcessReport report;
    if (!read_all(results[0], &report, sizeof report)) {
      ++out.errors;  // a client died before reporting
      if (out.first_error.empty()) out.first_error = "a client process died before reporting its counts";
      continue;
    }
    out.ops += report.counts.ops, out.errors += report.counts.errors;
    if (out.first_error.empty() && report.first_error[0]) out.first_error = report.first_error;
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  for (const pid_t pid : children) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++out.errors;
      if (out.first_error.empty()) out.first_error = "a client process did not exit cleanly";
    }
  }
  ::close(ready[0]), ::close(results[0]);
  if (!all_ready) throw std::runtime_error("a client process could not start");
  return out;
}
}  // namespace

void inject_failures(std::uint64_t every) { fail_every = every; }

Measurement run_clients(int clients, double seconds, Mode mode, const ClientFactory& make) {
  return mode == Mode::threads ? in_threads(clients, seconds, make) : in_processes(clients, seconds, make);
}

double median(std::vector<double> values) { return percentile(std::move(values), 50); }

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size())));
  return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace bench

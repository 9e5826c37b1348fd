// rowguard cache get | put | invalidate | fetch | sweep
#include <cstring>
#include <iostream>
#include <signal.h>
#include <unistd.h>

#include <sys/wait.h>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
// CMD of `cache fetch` failed: its exit status is passed through.
struct ChildFailed {
  int exit_code;
};

// Runs argv, returns its stdout; ChildFailed unless it exits 0.
std::string run_capture(std::vector<std::string> args) {
  std::vector<char*> argv = c_strings(args);
  int fds[2];
  if (::pipe(fds) != 0) throw Error(ErrorKind::permanent, fmt::format("pipe failed: {}", std::strerror(errno)));
  const pid_t child = ::fork();
  if (child < 0) throw Error(ErrorKind::permanent, fmt::format("fork failed: {}", std::strerror(errno)));
  if (child == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execvp(argv[0], argv.data());
    ::_exit(errno == ENOENT ? 127 : 126);
  }
  ::close(fds[1]);
  std::string out;
  char buffer[65536];
  ssize_t n = 0;
  while ((n = ::read(fds[0], buffer, sizeof buffer)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) out.append(buffer, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (const int code = child_exit_code(status); code != 0) throw ChildFailed{code};
  return out;
}
}  // namespace

void add_cache_commands(CLI::App& app, Globals& globals, int& exit_status) {
  auto* cache = app.add_subcommand("cache", "The read-through cache table");
  cache->require_subcommand(1);
  static std::string key, value, ttl = "60s", wait = "60s";
  static std::vector<std::string> command;
  static std::int64_t batch = 1000;

  auto* get = cache->add_subcommand("get", "Print KEY's value (exit 5 when absent or expired)");
  get->add_option("key", key, "Cache key")->required();
  get->callback([&globals] {
    auto db = open_database(globals);
    const auto v = Cache(db).get(key);
    if (!v) throw Error(ErrorKind::not_found, fmt::format("cache key '{}' is absent or expired", key));
    if (globals.json) {
      nlohmann::json out{{"key", key}};
      json_bytes(out, "value", *v);
      std::cout << json_line(out) << '\n';
    } else
      std::cout << *v;
  });

  auto* put = cache->add_subcommand("put", "Store VALUE under KEY for --ttl");
  put->add_option("key", key, "Cache key")->required();
  put->add_option("value", value, "Value")->required();
  put->add_option("--ttl", ttl, "Time to live (default 60s)");
  put->callback([&globals] {
    auto db = open_database(globals);
    Cache(db).put(key, value, parse_duration(ttl));
    emit(globals, {{"key", key}, {"stored", true}}, fmt::format("stored '{}'", key));
  });

  auto* invalidate = cache->add_subcommand("invalidate", "Drop KEY");
  invalidate->add_option("key", key, "Cache key")->required();
  invalidate->callback([&globals] {
    auto db = open_database(globals);
    Cache(db).invalidate(key);
    emit(globals, {{"key", key}, {"invalidated", true}}, fmt::format("invalidated '{}'", key));
  });

  auto* fetch = cache->add_subcommand(
      "fetch",
      "Read-through from the shell: on a miss exactly one caller across all processes runs CMD and stores "
      "its stdout (when CMD exits 0, and unless an invalidation or put of KEY came after the miss, or CMD "
      "took longer than the sweep grace, 1h); every caller prints the value. CMD's failure code passes "
      "through");
  fetch->add_option("key", key, "Cache key")->required();
  fetch->add_option("--ttl", ttl, "Time to live of a loaded value (default 60s)");
  fetch->add_option("--wait", wait, "How long to wait for another process's loader (default 60s)");
  static std::string lease = "30s";
  fetch->add_option("--lease", lease,
                    "Loader lease, renewed every third of it while CMD runs, however long that takes: if this "
                    "process dies, another caller loads after this (default 30s)");
  fetch->add_option("command", command, "CMD [ARGS...] after --")->required();
  fetch->callback([&globals, &exit_status] {
    auto db = open_database(globals);
    CacheOptions options;
    options.load_wait = parse_duration(wait);
    options.load_lease_ttl = parse_duration(lease);
    Cache cache(db, options);
    try {
      const auto v = cache.get_or_load(key, parse_duration(ttl), [] { return std::optional(run_capture(command)); });
      if (globals.json) {
        nlohmann::json out{{"key", key}};
        json_bytes(out, "value", v.value_or(""));
        std::cout << json_line(out) << '\n';
      } else
        std::cout << v.value_or("");
    } catch (const ChildFailed& failed) {
      std::cerr << "rowguard: the loader command failed; nothing was cached\n";
      emit_failure(globals, "command_failed",
                   fmt::format("the loader command exited {}; nothing was cached", failed.exit_code), failed.exit_code);
      exit_status = failed.exit_code;
    }
  });

  auto* stats = cache->add_subcommand("stats", "Rows, live rows and value bytes in the cache table");
  stats->callback([&globals] {
    auto db = open_database(globals);
    const auto s = Cache(db).table_stats();
    emit(globals, {{"rows", s.rows}, {"live_rows", s.live_rows}, {"bytes", s.bytes}},
         fmt::format("{} rows ({} live), {} value bytes", s.rows, s.live_rows, s.bytes));
  });

  auto* sweep = cache->add_subcommand(
      "sweep", "Delete rows expired and unchanged for longer than the sweep grace (1h) in bounded batches");
  sweep->add_option("--batch", batch, "Rows per statement (default 1000)")->check(decimal());
  sweep->callback([&globals] {
    auto db = open_database(globals);
    const auto n = Cache(db).sweep(batch);
    emit(globals, {{"swept", n}}, fmt::format("swept {} row(s)", n));
  });
}

}  // namespace rowguard::cli

// rowguard lock acquire | renew | release | run | list | force-release | sweep
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <iostream>
#include <thread>

#include "cli.hpp"

namespace rowguard::cli {

namespace {

volatile std::sig_atomic_t pending_signal = 0;
extern "C" void remember_signal(int sig) { pending_signal = sig; }

struct LockArgs {
  std::string name;
  std::string ttl = "30s";
  std::string wait = "0s";
  std::string owner;
  std::int64_t token = 0;
  std::string reason;
  std::string older_than = "1h";
  std::vector<std::string> command;
};

// Runs CMD while holding the lease; returns the exit code rowguard should exit with.
int run_child(Lease& lease, const std::vector<std::string>& command) {
  std::atomic<bool> lost{false};
  HeartbeatOptions heartbeat;
  heartbeat.on_lost = [&lost] { lost = true; };
  lease.start_heartbeat(heartbeat);

  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> env_storage =
      child_environment({fmt::format("ROWGUARD_FENCING_TOKEN={}", lease.token()), "ROWGUARD_LOCK_OWNER=" + lease.owner(),
                         "ROWGUARD_LOCK_NAME=" + lease.name()});
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = command;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &action, nullptr);

  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) throw Error(ErrorKind::permanent, fmt::format("fork failed: {}", std::strerror(errno)));
  if (child == 0) {
    // The lease dies with rowguard: so must the command it protects.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(126);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &dfl, nullptr);
    ::execvpe(argv[0], argv.data(), envp.data());
    ::_exit(errno == ENOENT ? 127 : 126);
  }

  int status = 0;
  bool lease_gone = false;
  auto deadline_kill = std::chrono::steady_clock::time_point::max();
  for (;;) {
    const pid_t done = ::waitpid(child, &status, WNOHANG);
    if (done == child) break;
    if (const int sig = pending_signal) {
      pending_signal = 0;
      ::kill(child, sig);
    }
    if (!lease_gone && (lost || !lease.valid())) {
      // Lost, or the local deadline passed without a confirmed renewal: CMD must stop now.
      lease_gone = true;
      std::cerr << "rowguard: lease on '" << lease.name() << "' lost while the command ran; terminating it\n";
      ::kill(child, SIGTERM);
      deadline_kill = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    }
    if (std::chrono::steady_clock::now() >= deadline_kill) {
      ::kill(child, SIGKILL);
      deadline_kill = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (lease_gone) return exit_code(ErrorKind::lock_lost);
  try {
    lease.release();
  } catch (const Error& e) {
    std::cerr << "rowguard: " << e.what() << '\n';
    return exit_code(e.kind());
  }
  return child_exit_code(status);
}

}  // namespace

void add_lock_commands(CLI::App& app, Globals& globals, int& exit_status) {
  auto* lock = app.add_subcommand("lock", "Leases with fencing tokens");
  lock->require_subcommand(1);
  static LockArgs a;

  auto* acquire = lock->add_subcommand("acquire", "Take a lease; prints its token and owner (exit 3 when busy)");
  acquire->add_option("name", a.name, "Lock name")->required();
  acquire->add_option("--ttl", a.ttl, "Lease length (default 30s)");
  acquire->add_option("--wait", a.wait, "How long to wait for it (default 0s: fail at once)");
  acquire->add_option("--owner", a.owner, "Owner id (default: a new random one)");
  acquire->callback([&globals] {
    auto db = open_database(globals);
    Locks locks(db);
    const auto ttl = parse_duration(a.ttl);
    const auto wait = parse_duration(a.wait);
    std::optional<std::string> owner;
    if (!a.owner.empty()) owner = a.owner;
    Lease lease = locks.acquire(a.name, ttl, wait, {}, owner);
    emit(globals, {{"name", lease.name()}, {"token", lease.token()}, {"owner", lease.owner()}, {"ttl_ms", ttl.count()}},
         fmt::format("token {} owner {}", lease.token(), lease.owner()));
    lease.detach();  // it stays held for its ttl: renew or release it with --owner/--token
  });

  auto* renew = lock->add_subcommand("renew", "Extend a lease (exit 8 when it was lost)");
  renew->add_option("name", a.name, "Lock name")->required();
  renew->add_option("--owner", a.owner, "Owner id")->required();
  renew->add_option("--token", a.token, "Fencing token")->required()->check(decimal());
  renew->add_option("--ttl", a.ttl, "New lease length from now (default 30s)");
  renew->callback([&globals] {
    auto db = open_database(globals);
    Locks(db).renew(a.name, a.owner, a.token, parse_duration(a.ttl));
    emit(globals, {{"name", a.name}, {"token", a.token}, {"renewed", true}}, fmt::format("renewed token {}", a.token));
  });

  auto* release = lock->add_subcommand("release", "Release a lease (exit 8 when it was lost)");
  release->add_option("name", a.name, "Lock name")->required();
  release->add_option("--owner", a.owner, "Owner id")->required();
  release->add_option("--token", a.token, "Fencing token")->required()->check(decimal());
  release->callback([&globals] {
    auto db = open_database(globals);
    Locks(db).release(a.name, a.owner, a.token);
    emit(globals, {{"name", a.name}, {"token", a.token}, {"released", true}}, fmt::format("released token {}", a.token));
  });

  auto* run = lock->add_subcommand(
      "run", "Run CMD while holding the lease, like flock(1): exit with CMD's code, 3 when not acquired, "
             "8 when the lease was lost while CMD ran (CMD is terminated)");
  run->add_option("name", a.name, "Lock name")->required();
  run->add_option("--ttl", a.ttl, "Lease length, renewed every ttl/3 while CMD runs (default 30s)");
  run->add_option("--wait", a.wait, "How long to wait for the lock (default 0s)");
  run->add_option("command", a.command, "CMD [ARGS...] after --")->required();
  run->callback([&globals, &exit_status] {
    auto db = open_database(globals);
    Locks locks(db);
    Lease lease = locks.acquire(a.name, parse_duration(a.ttl), parse_duration(a.wait));
    const std::int64_t token = lease.token();
    {
      const StdoutToStderr aside(globals.json);  // with --json, CMD's output must not mix with rowguard's object
      exit_status = run_child(lease, a.command);
    }
    if (globals.json) emit(globals, {{"name", a.name}, {"token", token}, {"exit_code", exit_status}}, {});
  });

  auto* list = lock->add_subcommand("list", "Who holds what: name, owner, token, expiry, renewals, waiters");
  list->callback([&globals] {
    auto db = open_database(globals);
    for (const auto& l : Locks(db).list()) {
      emit(globals,
           {{"name", l.name}, {"owner", l.owner}, {"token", l.token}, {"held", l.held}, {"acquired_at_ms", l.acquired_at_ms},
            {"expires_in_ms", l.expires_in_ms}, {"renewals", l.renewals}, {"waiters", l.waiters},
            {"release_reason", l.release_reason}},
           fmt::format("{:<30} {:<8} token {:<6} {} renewals {} waiters {}{}", l.name, l.held ? "held" : "free",
                       l.token, l.held ? fmt::format("expires in {} ms by {}", l.expires_in_ms, l.owner) : "",
                       l.renewals, l.waiters, l.release_reason.empty() ? "" : " (force-released: " + l.release_reason + ")"));
    }
  });

  auto* force = lock->add_subcommand("force-release", "End whoever holds NAME; raises its token");
  force->add_option("name", a.name, "Lock name")->required();
  force->add_option("--reason", a.reason, "Why (kept on the lock row)")->required();
  force->callback([&globals] {
    auto db = open_database(globals);
    Locks(db).force_release(a.name, a.reason);
    emit(globals, {{"name", a.name}, {"force_released", true}}, fmt::format("force-released '{}'", a.name));
  });

  auto* sweep = lock->add_subcommand("sweep", "Clear holder fields of leases expired longer ago than --older-than");
  sweep->add_option("--older-than", a.older_than, "Age (default 1h)");
  sweep->callback([&globals] {
    auto db = open_database(globals);
    const auto n = Locks(db).sweep(parse_duration(a.older_than));
    emit(globals, {{"swept", n}}, fmt::format("swept {} lock row(s)", n));
  });
}

}  // namespace rowguard::cli

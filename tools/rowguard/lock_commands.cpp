// rowguard lock acquire | renew | release | run | list | force-release | sweep
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <iostream>
#include <optional>
#include <pthread.h>
#include <signal.h>
#include <string>
#include <termios.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/wait.h>

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

// How long CMD gets to stop: SIGTERM goes to its process group when the lease's local deadline is
// this close without a confirmed renewal (after two renewals in a row failed), or at once when the
// lease is lost; SIGKILL follows this much later, and never after the local deadline, which is a
// tenth of the ttl (at most 5 s) before the database can expire the lease.
std::chrono::milliseconds stop_grace(std::chrono::milliseconds ttl) {
  return std::max(ttl / 5, std::chrono::milliseconds(1));
}

// Hands the terminal to a process group, if we had it (SIGTTOU blocked: a background group that
// calls tcsetpgrp gets it). Async-signal-safe, so the child may call it between fork and exec.
void give_terminal(pid_t group) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTTOU);
  ::pthread_sigmask(SIG_BLOCK, &block, &old);
  ::tcsetpgrp(STDIN_FILENO, group);
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// Runs CMD in a process group of its own while holding the lease; returns the exit code rowguard
// should exit with. Every process CMD starts is in that group (unless it leaves it with setsid or
// setpgid), so a signal to the group reaches them all, and none is left running when the lease ends.
// on_lease_gone runs just before rowguard exits 8 without unwinding (to report the loss).
int run_child(Lease& lease, std::chrono::milliseconds ttl, const std::vector<std::string>& command,
              const std::function<void(const std::string&)>& on_lease_gone) {
  using clock = std::chrono::steady_clock;
  std::atomic<bool> lost{false};
  HeartbeatOptions heartbeat;
  heartbeat.on_lost = [&lost] { lost = true; };
  lease.start_heartbeat(heartbeat);

  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> env_storage =
      child_environment({fmt::format("ROWGUARD_FENCING_TOKEN={}", lease.token()),
                         "ROWGUARD_LOCK_OWNER=" + lease.owner(), "ROWGUARD_LOCK_NAME=" + lease.name()});
  std::vector<char*> envp = c_strings(env_storage);
  std::vector<std::string> args = command;
  std::vector<char*> argv = c_strings(args);

  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &action, nullptr);

  // Descendants of CMD whose parent dies are reparented to us instead of init: we reap them, so
  // "the group is gone" (kill(-group, 0) fails with ESRCH) is never held up by a zombie.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  // In its own group CMD would be a background job and stop at its first read from the terminal:
  // when rowguard is in the foreground, CMD's group takes the terminal over (as a shell does).
  const bool terminal = ::isatty(STDIN_FILENO) && ::tcgetpgrp(STDIN_FILENO) == ::getpgrp();

  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) throw Error(ErrorKind::permanent, fmt::format("fork failed: {}", std::strerror(errno)));
  if (child == 0) {
    ::setpgid(0, 0);
    if (terminal) give_terminal(::getpid());
    // The lease dies with rowguard: so must the command it protects.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(126);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &dfl, nullptr);
    ::execvpe(argv[0], argv.data(), envp.data());
    ::_exit(errno == ENOENT ? 127 : 126);
  }
  // Also here, so the group exists before we signal it whichever process runs first (after the
  // child's exec this fails harmlessly with EACCES).
  ::setpgid(child, child);
  const pid_t group = child;

  const auto grace = stop_grace(ttl);
  int status = 0;
  bool child_done = false;
  bool lease_gone = false;  // lost, or not renewed in time: CMD is stopped and rowguard exits 8
  std::optional<clock::time_point> term_sent;
  auto kill_at = clock::time_point::max();
  bool killed = false;
  auto deadline = clock::now() + lease.remaining();  // the local deadline, as last seen while valid
  for (;;) {
    for (int st = 0;;) {  // CMD itself, and any descendant orphaned to us
      const pid_t done = ::waitpid(-1, &st, WNOHANG);
      if (done <= 0) break;
      if (done == child) {
        status = st;
        child_done = true;
      }
    }
    const bool group_gone = ::kill(-group, 0) != 0 && errno == ESRCH;
    if (child_done && group_gone) break;

    if (const int sig = pending_signal) {
      pending_signal = 0;
      ::kill(-group, sig);
    }
    const auto now = clock::now();
    // remaining() is read after now: the estimate can only be early, never late.
    if (lease.valid()) deadline = now + lease.remaining();
    const bool due = lost || !lease.valid() || now >= deadline - grace;
    if (due && !lease_gone) {
      lease_gone = true;
      std::cerr << "rowguard: lease on '" << lease.name() << "' " << (lease.valid() ? "not renewed in time" : "lost")
                << " while the command ran; terminating its process group\n";
    }
    // The lease may end soon, or CMD ended and left processes behind in its group, which must not
    // outlive the lease either.
    if (!term_sent && (due || child_done)) {
      ::kill(-group, SIGTERM);
      term_sent = now;
      kill_at = now + grace;
    }
    if (term_sent) kill_at = std::min(kill_at, deadline);  // SIGKILL no later than the local deadline
    if (term_sent && now >= kill_at) {
      ::kill(-group, SIGKILL);  // again each round: also whatever was being forked at the first one
      killed = true;
    }
    auto wake = now + std::chrono::milliseconds(20);
    if (!killed) wake = std::min(wake, term_sent ? kill_at : deadline - grace);
    std::this_thread::sleep_until(wake);
  }
  if (terminal) give_terminal(::getpgrp());
  if (lease_gone) {
    // Nothing is left to do but let the lease expire on the database clock, and the heartbeat may
    // be stuck in a renewal on a network that stopped answering (until --network-timeout): exit
    // now rather than wait for it in the Lease's destructor.
    on_lease_gone(fmt::format("lease on '{}' was {} while the command ran", lease.name(),
                              lease.valid() ? "not renewed in time" : "lost"));
    std::cout.flush();
    std::_Exit(exit_code(ErrorKind::lock_lost));
  }
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
    emit(globals, {{"name", a.name}, {"token", a.token}, {"released", true}},
         fmt::format("released token {}", a.token));
  });

  auto* run = lock->add_subcommand(
      "run",
      "Run CMD in a process group of its own while holding the lease, like flock(1): exit with CMD's code, "
      "3 when not acquired, 8 when the lease was lost or not renewed in time while CMD ran. Then CMD's group "
      "gets SIGTERM and ttl/5 to stop (e.g. 6 s of a 30 s ttl), and SIGKILL at the latest a tenth of the ttl "
      "(at most 5 s) before the lease can expire on the database clock. Processes CMD leaves behind in its "
      "group are stopped the same way before the lease is released.");
  run->add_option("name", a.name, "Lock name")->required();
  run->add_option("--ttl", a.ttl,
                  "Lease length, renewed every ttl/3 while CMD runs (default 30s); CMD gets ttl/5 to stop");
  run->add_option("--wait", a.wait, "How long to wait for the lock (default 0s)");
  run->add_option("command", a.command, "CMD [ARGS...] after --")->required();
  run->callback([&globals, &exit_status] {
    auto db = open_database(globals);
    Locks locks(db);
    const auto ttl = parse_duration(a.ttl);
    Lease lease = locks.acquire(a.name, ttl, parse_duration(a.wait));
    const std::int64_t token = lease.token();
    {
      // With --json, CMD's output must not mix with rowguard's object.
      std::optional<StdoutToStderr> aside(std::in_place, globals.json);
      exit_status = run_child(lease, ttl, a.command, [&](const std::string& message) {
        aside.reset();
        emit_failure(globals, "lock_lost", message, exit_code(ErrorKind::lock_lost));
        flush_output();
      });
    }
    if (globals.json) emit(globals, {{"name", a.name}, {"token", token}, {"exit_code", exit_status}}, {});
  });

  auto* list = lock->add_subcommand(
      "list",
      "Who holds what: name, state (held; expired: its lease ran out without a release; free), owner, token, "
      "expiry, renewals, waiters");
  list->callback([&globals] {
    auto db = open_database(globals);
    for (const auto& l : Locks(db).list()) {
      emit(globals,
           {{"name", l.name},
            {"owner", l.owner},
            {"token", l.token},
            {"held", l.held},
            {"expired", l.expired},
            {"acquired_at_ms", l.acquired_at_ms},
            {"expires_in_ms", l.expires_in_ms},
            {"renewals", l.renewals},
            {"waiters", l.waiters},
            {"release_reason", l.release_reason}},
           fmt::format(
               "{:<30} {:<8} token {:<6} {} renewals {} waiters {}{}", l.name,
               l.held      ? "held"
               : l.expired ? "expired"
                           : "free",
               l.token,
               l.held ? fmt::format("expires in {} by {}", format_duration(std::chrono::milliseconds(l.expires_in_ms)),
                                    l.owner)
               : l.expired
                   ? fmt::format("ran out unreleased, by {} (acquired {})", l.owner, format_time(l.acquired_at_ms))
                   : "",
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

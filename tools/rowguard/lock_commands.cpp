// rowguard lock acquire | renew | release | run | list | force-release | sweep
#include <algorithm>
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
#include <stop_token>
#include <string>
#include <termios.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/stat.h>
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
  // lock run: flock(1)'s -E, and its counterparts for a lost lease and ShedLock's lockAtLeastFor.
  int conflict_exit_code = 3;
  int lost_exit_code = 8;
  std::string hold_at_least;
  bool nonblock = false;
  bool fair = false;
};

// CMD could not be executed (exec failed): thrown out of Locks::run so that it releases the lease
// at once, without --hold-at-least's window, since a command that never ran has done nothing to
// keep others from for the window. code: the shell's exit code for it (126 or 127).
struct CommandNotRun {
  int code;
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

// The exit code of a command that could not be executed, as shells have it: 127 when it was not
// found, 126 when it was found but cannot run (permission denied, a directory, a bad format).
int cannot_run_code(int error) { return error == ENOENT ? 127 : 126; }

// Reads what the child wrote to the exec report pipe (and closes it): 0 when CMD is running (the
// pipe closed on exec), else exec's errno, after saying on stderr why CMD cannot run.
int exec_failure(int report, const std::string& cmd) {
  int error = 0;
  std::size_t got = 0;
  while (got < sizeof error) {
    const ssize_t n = ::read(report, reinterpret_cast<char*>(&error) + got, sizeof error - got);
    if (n < 0 && errno == EINTR) continue;  // a forwarded signal: it stays pending for the wait loop
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(report);
  if (got != sizeof error) return 0;  // end-of-file: exec succeeded
  // exec says EACCES for a directory; a shell says what it is.
  struct stat target {};
  if (error == EACCES && cmd.find('/') != std::string::npos && ::stat(cmd.c_str(), &target) == 0 &&
      S_ISDIR(target.st_mode))
    error = EISDIR;
  std::cerr << "rowguard: cannot run '" << cmd << "': " << std::strerror(error) << '\n';
  return error;
}

// Runs CMD in a process group of its own under the lease of a Locks::run (whose heartbeat
// requests `lost` when the lease is lost) and returns CMD's exit code; CommandNotRun when CMD could
// not be executed. Every process CMD starts is in that group (unless it leaves it with setsid or
// setpgid), so a signal to the group reaches them all, and none is left running when the lease
// ends. When the lease is lost, or not renewed in time, on_lease_gone(why) runs, and must not
// return (rowguard exits with --lost-exit-code without unwinding, to report the loss).
int run_child(const Lease& lease, const std::stop_token& lost, std::chrono::milliseconds ttl,
              const std::vector<std::string>& command, const std::function<void(const std::string&)>& on_lease_gone) {
  using clock = std::chrono::steady_clock;

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

  // The child writes exec's errno here when exec fails; a successful exec closes it (O_CLOEXEC),
  // so the parent reads either the errno or end-of-file, and only the parent, which may allocate,
  // formats the message.
  int exec_report[2];
  if (::pipe2(exec_report, O_CLOEXEC) != 0)
    throw Error(ErrorKind::permanent, fmt::format("pipe failed: {}", std::strerror(errno)));
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) {
    const int error = errno;
    ::close(exec_report[0]);
    ::close(exec_report[1]);
    throw Error(ErrorKind::permanent, fmt::format("fork failed: {}", std::strerror(error)));
  }
  if (child == 0) {
    ::close(exec_report[0]);
    ::setpgid(0, 0);
    if (terminal) give_terminal(::getpid());
    // The lease dies with rowguard: so must the command it protects.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(126);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &dfl, nullptr);
    ::execvpe(argv[0], argv.data(), envp.data());
    const int error = errno;
    (void)!::write(exec_report[1], &error, sizeof error);
    ::_exit(cannot_run_code(error));
  }
  // Also here, so the group exists before we signal it whichever process runs first (after the
  // child's exec this fails harmlessly with EACCES).
  ::setpgid(child, child);
  const pid_t group = child;
  ::close(exec_report[1]);
  const int exec_error = exec_failure(exec_report[0], command.front());

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
    const bool due = lost.stop_requested() || !lease.valid() || now >= deadline - grace;
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
  if (lease_gone)
    // Nothing is left to do but let the lease expire on the database clock, and the heartbeat may
    // be stuck in a renewal on a network that stopped answering (until --network-timeout): exit
    // now rather than wait for it in the Lease's destructor.
    on_lease_gone(fmt::format("lease on '{}' was {} while the command ran", lease.name(),
                              lease.valid() ? "not renewed in time" : "lost"));
  if (exec_error != 0) throw CommandNotRun{child_exit_code(status)};
  return child_exit_code(status);
}

// lock run's --help footer: which exit codes are rowguard's and which CMD's.
constexpr const char* run_exit_codes = R"(Exit codes of lock run: CMD's, passed through, and rowguard's own.
  CMD's own code  CMD ran and exited: its code, unchanged
  128+N           CMD died of signal N (143: SIGTERM, 137: SIGKILL)
  126             CMD was found but cannot run (permission denied, a directory); a message on stderr
  127             CMD was not found; a message on stderr. The lease is released at once; if that
                  release fails, a second message says so (the lock stays taken until its ttl)
  3               busy: the lock was not acquired within --wait (--conflict-exit-code N changes it)
  8               lost: the lease was lost or not renewed in time while CMD ran, or lost before its
                  release (--lost-exit-code N changes it); CMD's group was stopped
  2               usage or invalid argument: CMD did not run
  10              database unreachable: CMD did not run, or ran but the lease could not be released
                  (it then runs out at its ttl)
  1, 9, 11        another failure of rowguard (rowguard --help lists every code)
CMD's own 3 or 8 looks like rowguard's busy or lost: to tell them apart, pick --conflict-exit-code
and --lost-exit-code values CMD never exits with (e.g. -E 75 --lost-exit-code 76); 126, 127 and
128+N mean what they mean in a shell. With --json, stdout holds rowguard's one object (CMD's output
goes to stderr): {"name", "token", "exit_code"}, plus "held_for_ms" with --hold-at-least; busy is an
{"error": ...} object with kind lock_busy; "released": false is added when CMD could not run and
the release that followed failed.)";

constexpr const char* fair_help =
    "Wait in line: waiters that pass --fair get the lock in the order they started waiting (as etcd's mutex and "
    "Redisson's FairLock); one that dies holds up those behind it at most 5s. Without it: whoever tries first "
    "once the lock frees up, but never ahead of --fair waiters";

// lock run: takes the lease (busy: a's --conflict-exit-code), runs CMD under it and sets exit_status.
void run_locked(const Globals& globals, const LockArgs& a, int& exit_status) {
  // Every argument is checked before the database is opened: a usage error never takes the lock.
  const auto ttl = parse_duration(a.ttl);
  LockRunOptions options;
  options.wait = parse_duration(a.wait);
  options.order = a.fair ? WaitOrder::fair : WaitOrder::any;
  if (!a.hold_at_least.empty()) {
    options.hold_at_least = parse_duration(a.hold_at_least);
    const auto longest = LockOptions{}.max_ttl;
    if (*options.hold_at_least > longest)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--hold-at-least {} is longer than the longest lease, {}h", a.hold_at_least,
                              std::chrono::duration_cast<std::chrono::hours>(longest).count()));
  }
  std::chrono::milliseconds held_for{0};
  options.held_for = &held_for;
  std::optional<Error> release_error;  // CMD could not run and the release that followed failed
  options.release_error = &release_error;
  auto db = open_database(globals);
  Locks locks(db);
  std::int64_t token = 0;
  bool started = false;  // the lease was taken: a busy lock is no longer the question
  bool ran = false;      // CMD ran and ended: an error now is the release's
  try {
    // With --json, CMD's output must not mix with rowguard's object.
    std::optional<StdoutToStderr> aside(std::in_place, globals.json);
    exit_status = locks.run(
        a.name, ttl,
        [&](const Lease& lease, const std::stop_token& lost) {
          started = true;
          token = lease.token();
          const int code = run_child(lease, lost, ttl, a.command, [&](const std::string& message) {
            aside.reset();
            emit_failure(globals, "lock_lost", message, a.lost_exit_code);
            flush_output();
            std::cout.flush();
            std::_Exit(a.lost_exit_code);
          });
          ran = true;
          return code;
        },
        options);
  } catch (const CommandNotRun& e) {
    exit_status = e.code;  // the shell's code still: CMD not running is what the caller must hear first
    if (release_error)
      std::cerr << fmt::format(
          "rowguard: the lease on '{}' (token {}) could not be released: {}; the lock stays "
          "taken until its ttl ({}) runs out\n",
          a.name, token, release_error->what(), format_duration(ttl));
  } catch (const Error& e) {
    if (!started && e.kind() == ErrorKind::lock_busy) {
      // As main() reports any error, with the caller's code for busy.
      std::cerr << "rowguard: " << to_string(e.kind()) << ": " << e.what() << '\n';
      emit_failure(globals, to_string(e.kind()), e.what(), a.conflict_exit_code);
      exit_status = a.conflict_exit_code;
      return;
    }
    if (!ran) throw;
    std::cerr << "rowguard: " << e.what() << '\n';
    exit_status = e.kind() == ErrorKind::lock_lost ? a.lost_exit_code : exit_code(e.kind());
  }
  if (globals.json) {
    nlohmann::json result{{"name", a.name}, {"token", token}, {"exit_code", exit_status}};
    if (options.hold_at_least) result["held_for_ms"] = held_for.count();
    if (release_error) result["released"] = false;
    emit(globals, result, {});
  }
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
  acquire->add_option("--owner", a.owner,
                      "Owner id (default: a new random one); an owner that holds the lease gets its token back");
  acquire->add_flag("--fair", a.fair, fair_help);
  acquire->callback([&globals] {
    auto db = open_database(globals);
    Locks locks(db);
    const auto ttl = parse_duration(a.ttl);
    const auto wait = parse_duration(a.wait);
    std::optional<std::string> owner;
    if (!a.owner.empty()) owner = a.owner;
    Lease lease =
        locks.acquire(a.name, ttl, {.wait = wait, .order = a.fair ? WaitOrder::fair : WaitOrder::any, .owner = owner});
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
      "3 (or -E N) when not acquired, 8 (or --lost-exit-code N) when the lease was lost or not renewed in time "
      "while CMD ran. Then CMD's group "
      "gets SIGTERM and ttl/5 to stop (e.g. 6 s of a 30 s ttl), and SIGKILL at the latest a tenth of the ttl "
      "(at most 5 s) before the lease can expire on the database clock. Processes CMD leaves behind in its "
      "group are stopped the same way before the lease is released.");
  run->footer(run_exit_codes);
  run->add_option("name", a.name, "Lock name")->required();
  run->add_option("--ttl", a.ttl,
                  "Lease length, renewed every ttl/3 while CMD runs (default 30s); CMD gets ttl/5 to stop");
  auto* wait = run->add_option("-w,--wait", a.wait, "How long to wait for the lock (default 0s)");
  run->add_flag("-n,--nonblock", a.nonblock, "Fail at once when the lock is busy (the default; as flock -n)")
      ->excludes(wait);
  run->add_flag("--fair", a.fair, fair_help);
  run->add_option("-E,--conflict-exit-code", a.conflict_exit_code,
                  "Exit code when the lock is busy: not acquired within --wait (default 3; flock's -E)")
      ->check(CLI::Range(0, 255));
  run->add_option("--lost-exit-code", a.lost_exit_code,
                  "Exit code when the lease was lost or not renewed in time while CMD ran (default 8)")
      ->check(CLI::Range(0, 255));
  run->add_option("--hold-at-least", a.hold_at_least,
                  "Keep the lease until at least DUR after it was acquired, on the database clock, even when CMD "
                  "ends sooner, so a fast job does not run again at once elsewhere (ShedLock's lockAtLeastFor; "
                  "at most 24h; default: release when CMD ends)");
  run->add_option("command", a.command, "CMD [ARGS...] after --")->required();
  run->callback([&globals, &exit_status] { run_locked(globals, a, exit_status); });

  auto* list = lock->add_subcommand(
      "list",
      "Who holds what: name, state (held; expired: its lease ran out without a release; free), owner, token, "
      "expiry, renewals, waiters (registered for a release's wake-up; PostgreSQL), queued (--fair waiters in line)");
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
            {"queued", l.queued},
            {"release_reason", l.release_reason}},
           fmt::format("{:<30} {:<8} token {:<6} {} renewals {} waiters {} queued {}{}", l.name,
                       l.held      ? "held"
                       : l.expired ? "expired"
                                   : "free",
                       l.token,
                       l.held      ? fmt::format("expires in {} by {}",
                                                 format_duration(std::chrono::milliseconds(l.expires_in_ms)), l.owner)
                       : l.expired ? fmt::format("ran out unreleased, by {} (acquired {})", l.owner,
                                                 format_time(l.acquired_at_ms))
                                   : "",
                       l.renewals, l.waiters, l.queued,
                       l.release_reason.empty() ? "" : " (force-released: " + l.release_reason + ")"));
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

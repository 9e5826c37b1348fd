#include "cli.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <unistd.h>

#include <sys/wait.h>

extern char** environ;

namespace rowguard::cli {

Database open_database(const Globals& globals, SchemaNeed need) {
  Options options;
  options.table_prefix = globals.prefix;
  const auto timeout = parse_duration(globals.connect_timeout);
  options.connect_timeout = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  if (options.connect_timeout.count() < 1) options.connect_timeout = std::chrono::seconds(1);
  const auto network = parse_duration(globals.network_timeout);
  if (network.count() != 0 && network < std::chrono::seconds(2))
    throw Error(ErrorKind::invalid_argument, "--network-timeout must be 0s (the system's TCP defaults) or at least 2s");
  options.network_timeout = std::chrono::duration_cast<std::chrono::seconds>(network);
  options.create_if_missing = need == SchemaNeed::create;
  std::optional<Database> db;
  try {
    db.emplace(Database::open(globals.db, options));
  } catch (const Error& e) {
    // Only a missing SQLite file is not_found at open (Options::create_if_missing).
    if (e.kind() != ErrorKind::not_found) throw;
    throw Error(ErrorKind::schema_mismatch, fmt::format("{}; run `rowguard migrate` to create it", e.what()));
  }
  if (need == SchemaNeed::current) db->require_schema();
  return std::move(*db);
}

std::string json_line(const nlohmann::json& object) {
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {
// UTF-8 that JSON carries unchanged: a strict dump refuses anything else. NUL is left to base64
// too, as the library refuses it in text (names, keys, ids).
bool is_json_text(const std::string& bytes) {
  if (bytes.find('\0') != std::string::npos) return false;
  try {
    (void)nlohmann::json(bytes).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}
}  // namespace

void json_bytes(nlohmann::json& object, const std::string& name, const std::string& bytes) {
  if (bytes.empty() || is_json_text(bytes)) {
    object[name] = bytes;
    return;
  }
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto n = (std::uint32_t(std::uint8_t(bytes[i])) << 16) | (std::uint32_t(std::uint8_t(bytes[i + 1])) << 8) |
                   std::uint8_t(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += alphabet[(n >> shift) & 63];
  }
  if (const std::size_t rest = bytes.size() - i; rest > 0) {
    std::uint32_t n = std::uint32_t(std::uint8_t(bytes[i])) << 16;
    if (rest == 2) n |= std::uint32_t(std::uint8_t(bytes[i + 1])) << 8;
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += rest == 2 ? alphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  object[name + "_base64"] = out;
}

namespace {
// --json output not printed yet: the latest result, held back so a failure can join it.
struct HeldOutput {
  std::optional<nlohmann::json> last;
  int printed = 0;  // results printed before it
};
HeldOutput& held() {
  static HeldOutput out;
  return out;
}
}  // namespace

void emit(const Globals& globals, const nlohmann::json& object, const std::string& text) {
  if (!globals.json) {
    std::cout << text << '\n';
    return;
  }
  auto& out = held();
  if (out.last) {
    std::cout << json_line(*out.last) << '\n';
    ++out.printed;
  }
  out.last = object;
}

void flush_output() {
  auto& out = held();
  if (out.last) {
    std::cout << json_line(*out.last) << '\n';
    ++out.printed;
    out.last.reset();
  }
  std::cout.flush();
}

void emit_failure(const Globals& globals, std::string_view kind, const std::string& message, int exit_code) {
  if (!globals.json) return;
  const nlohmann::json error{{"kind", kind}, {"message", message}, {"exit_code", exit_code}};
  auto& out = held();
  // The command's only result, unless it has an "error" member of its own (a saga's step error).
  if (out.last && out.printed == 0 && out.last->is_object() && !out.last->contains("error")) {
    (*out.last)["error"] = error;
  } else {
    flush_output();
    out.last = nlohmann::json{{"error", error}};
  }
  flush_output();
}

std::string json_help() {
  return R"(With --json, stdout holds only JSON objects: one per result (commands that list items print one per
line), and a failure is one object too: {"error": {"kind": KIND, "message": TEXT, "exit_code": N}},
or the command's result with that "error" member added (a rejected transfer or hold, a ledger check
that found violations). KIND is an error kind (insufficient_funds, not_found, ...), "usage" when
the command line did not parse, or "command_failed" when a child's failure code passes through.
Commands that report an outcome through their exit code (saga run, saga recover, lock run) carry
it in their result instead. --help prints text.)";
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> child_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string_view entry(*e);
    bool replaced = false;
    for (const auto& x : extra)
      if (const auto eq = x.find('='); entry.substr(0, eq + 1) == std::string_view(x).substr(0, eq + 1))
        replaced = true;
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

int child_exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int run_shell(const std::string& command, const std::vector<std::string>& extra) {
  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> env_storage = child_environment(extra);
  std::vector<char*> envp = c_strings(env_storage);
  std::string sh = "/bin/sh", dash_c = "-c", cmd = command;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  std::cout.flush();
  const pid_t child = ::fork();
  if (child < 0) throw Error(ErrorKind::permanent, fmt::format("fork failed: {}", std::strerror(errno)));
  if (child == 0) {
    ::dup2(2, 1);
    ::execve(argv[0], argv, envp.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0)
    if (errno != EINTR) throw Error(ErrorKind::permanent, fmt::format("waitpid failed: {}", std::strerror(errno)));
  return child_exit_code(status);
}

StdoutToStderr::StdoutToStderr(bool on) {
  if (!on) return;
  std::cout.flush();
  saved_ = ::dup(STDOUT_FILENO);
  if (saved_ >= 0) ::dup2(STDERR_FILENO, STDOUT_FILENO);
}

StdoutToStderr::~StdoutToStderr() {
  if (saved_ < 0) return;
  ::dup2(saved_, STDOUT_FILENO);
  ::close(saved_);
}

int exit_code(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument:
      return 2;
    case ErrorKind::lock_busy:
      return 3;
    case ErrorKind::insufficient_funds:
      return 4;
    case ErrorKind::not_found:
      return 5;
    case ErrorKind::conflict:
      return 6;
    case ErrorKind::idempotency_mismatch:
      return 7;
    case ErrorKind::lock_lost:
      return 8;
    case ErrorKind::in_doubt:
      return 9;
    case ErrorKind::transient:
      return 10;
    case ErrorKind::schema_mismatch:
      return 11;
    case ErrorKind::currency_mismatch:
      return 12;
    case ErrorKind::hold_closed:
      return 13;
    case ErrorKind::permanent:
      return 1;
  }
  return 1;
}

namespace {
// The commands of app, comma-separated.
std::string command_names(const CLI::App& app) {
  std::string names;
  // Hidden commands (an empty group, as `manpage`) are not offered.
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App* c) { return !c->get_group().empty(); }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

bool looks_like_option(const std::string& word) {
  return word.size() > 1 && word[0] == '-' && !(word[1] >= '0' && word[1] <= '9');
}
}  // namespace

std::string usage_message(const CLI::App& app, const CLI::ParseError& error) {
  // The deepest command the line named: the word it missed was meant for that one.
  const CLI::App* at = &app;
  std::string path = "rowguard";
  for (auto named = at->get_subcommands(); !named.empty(); named = at->get_subcommands()) {
    at = named.front();
    path += " " + at->get_name();
  }
  const bool group = !at->get_subcommands([](const CLI::App*) { return true; }).empty();
  const std::vector<std::string> extra = app.remaining(true);
  if (!extra.empty()) {
    const std::string& word = extra.front();
    if (looks_like_option(word))
      return fmt::format("unknown option '{}' for {} (`{} --help` lists its options)", word.substr(0, word.find('=')),
                         path, path);
    if (group) return fmt::format("unknown command '{}' for {} (its commands: {})", word, path, command_names(*at));
    return fmt::format("unexpected argument '{}' for {} (`{} --help` lists what it takes)", word, path, path);
  }
  if (group && at->get_require_subcommand_min() > 0)
    return fmt::format("a command is needed after {}: {} (`{} --help` says what each does)", path, command_names(*at),
                       path);
  return error.what();
}

std::string exit_code_help() {
  return R"(Exit codes:
  0  ok                                   7  idempotency key reused with other parameters
  1  any other error (database, I/O)       8  lock lost while held
  2  usage or invalid argument             9  outcome in doubt (retry with the same key)
  3  lock busy / not acquired in time     10  database unreachable or transient failure
  4  insufficient funds                   11  schema version mismatch
  5  not found                            12  currency mismatch
  6  conflict after all retries         13  hold closed (voided, expired or captured)
Commands that run a child pass its exit code through (128+N when it dies from signal N).
2pc recover exits 9 while prepared transactions stay in doubt (undecided and younger than --grace,
busy, or on a participant it could not reach): run it again later.)";
}

}  // namespace rowguard::cli

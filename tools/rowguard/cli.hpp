#pragma once
// Shared pieces of the rowguard command-line tool: global options, output, exit codes.

#include <functional>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "rowguard/rowguard.hpp"

#include "args.hpp"

namespace rowguard::cli {

// Options every command sees.
struct Globals {
  std::string db;  // --db, else $ROWGUARD_DB, else sqlite:rowguard.db
  std::string prefix = "rowguard_";
  bool json = false;
  std::string connect_timeout = "10s";  // a duration: 250ms, 30s, 5m, 1h
  std::string network_timeout = "30s";  // a duration; 0s: the operating system's TCP defaults
};

// What a command needs of the database it opens.
enum class SchemaNeed {
  current,  // every command but these: the schema migrate makes, else exit 11 "run `rowguard migrate`"
  any,      // version --check-db, a --standby: whatever version the database holds
  create,   // migrate: a missing SQLite file is created
};

// Opens the database named by the global options. Only SchemaNeed::create makes a missing SQLite
// file; otherwise a missing one is Error(schema_mismatch) (exit 11) saying to run `rowguard migrate`.
// SchemaNeed::current also reads the schema version once (Database::require_schema), so that a
// database never migrated, or migrated by another rowguard version, answers exit 11 before the
// command runs instead of with "no such table".
Database open_database(const Globals& globals, SchemaNeed need = SchemaNeed::current);

// One JSON line. Invalid UTF-8 in a string (an echoed bad argument in an error message) becomes
// U+FFFD instead of aborting the dump: data that may be binary goes through json_bytes instead.
std::string json_line(const nlohmann::json& object);
// Sets object[name] to bytes when they are UTF-8 text, else object[name + "_base64"] to their
// base64 form, so a binary cache value is never altered in --json output.
void json_bytes(nlohmann::json& object, const std::string& name, const std::string& bytes);

// Prints one result: the JSON object with --json, else the text.
// With --json, stdout holds JSON objects only, one per result (one per line for commands that list
// items), and a failure is one object too (emit_failure). emit() holds the latest object back until
// the next one or the end of the command, so that a failure after it (a rejected transfer, a
// ledger check that found violations) joins it instead of printing a second object.
void emit(const Globals& globals, const nlohmann::json& object, const std::string& text);
// Prints what emit() held back, and flushes stdout: for commands that go on after their result
// (serve). main() calls it when a command succeeds.
void flush_output();
// A failure under --json: {"error": {"kind": KIND, "message": MESSAGE, "exit_code": N}}, or the
// command's one result with that "error" member added when it had printed exactly one. KIND is an
// ErrorKind's name (to_string), "usage" (the command line did not parse, exit 2) or
// "command_failed" (a child's failure code passed through). Prints nothing in text mode: the
// caller writes its own message to stderr.
void emit_failure(const Globals& globals, std::string_view kind, const std::string& message, int exit_code);
// The --json help text: the shape above, for --help.
std::string json_help();

// The CLI's ledger reads accounts through the cache table, and its changes drop the cached copies
// in their own transactions, so services that cache accounts (LedgerOptions::cache) never keep a
// balance an operator changed from the shell.
struct CachedLedger {
  Cache cache;
  Ledger ledger;
  explicit CachedLedger(Database& db) : cache(db), ledger(db, with_cache(cache)) {}
  static LedgerOptions with_cache(Cache& cache) {
    LedgerOptions options;
    options.cache = &cache;
    return options;
  }
};

// The --help text of an AMOUNT argument: amounts are typed in minor units, as --json prints them,
// while text output shows them in major units (format_money).
inline constexpr const char* amount_help = "Minor units (> 0): 1050 is 10.50 EUR, 500 is 500 JPY";

// --code, --reference, --metadata and --event-at of transfer, deposit, withdraw and hold: what
// they ask for as TransferDetails (the library checks the values: exit 2 for a bad one).
struct DetailsArgs {
  std::int64_t code = 0;
  std::string reference, metadata, event_at;
  void add_options(CLI::App* cmd);
  TransferDetails details() const;
};
// A transfer's or a hold's details as JSON fields: code, reference (null for none), metadata (the
// object, null for none), event_at (ISO 8601, null for none) and event_at_ms.
void add_details_json(nlohmann::json& j, const TransferDetails& d);
// " [code 7, reference order-42, metadata {...}, event at 2026-...]" for text output; "" for none.
std::string details_text(const TransferDetails& d);

// A new idempotency key for a command given none; printed so the user can retry with it.
std::string fresh_key();
// Prints a transfer's outcome; a rejection exits 4 like an insufficient_funds error.
// Prints a transfer's result (JSON: transfer_id, status, replayed, key, from_balance, to_balance,
// a balance null where the result has none). currency is asked only for the text, which shows the
// balances with format_money.
void report(const Globals& globals, const TransferResult& r, const std::string& key, std::string_view what,
            const std::function<std::string()>& currency);

// The environment for a child process: rowguard's own, with each "NAME=value" of extra replacing
// any entry of that name. Built before fork(), since the child may only make async-signal-safe calls.
std::vector<std::string> child_environment(const std::vector<std::string>& extra);
// An argv or envp for exec: pointers into strings (which must outlive it), then nullptr.
std::vector<char*> c_strings(std::vector<std::string>& strings);
// A waitpid() status as an exit code: the child's own, or 128+N when it died from signal N.
int child_exit_code(int status);

// Runs `/bin/sh -c command` with the environment plus `extra` ("NAME=value" entries, replacing
// any of the same name), its stdout sent to rowguard's stderr so --json output stays parseable;
// returns its exit code, or 128+N when it died from signal N.
int run_shell(const std::string& command, const std::vector<std::string>& extra);

// While it lives (when on), file descriptor 1 is stderr, so that a child started meanwhile writes
// its output there and stdout keeps only rowguard's JSON (as run_shell does for its child).
class StdoutToStderr {
 public:
  explicit StdoutToStderr(bool on);
  ~StdoutToStderr();
  StdoutToStderr(const StdoutToStderr&) = delete;
  StdoutToStderr& operator=(const StdoutToStderr&) = delete;

 private:
  int saved_ = -1;
};

// The exit code of an error of this kind (README: 1 permanent, 2 invalid_argument, 3 lock_busy, ...).
int exit_code(ErrorKind kind) noexcept;
// The exit-code table, printed once: by `rowguard --help` (and so the man page); each command's
// --help points there.
std::string exit_code_help();

// What a command line that did not parse (exit 2) gets told: the first word not understood, as
// "unknown option '--bogus' for rowguard lock acquire" or "unknown command 'frob' for rowguard lock
// (its commands: acquire, renew, ...)", the commands of a group named without one, else CLI11's
// own message. REQUIRES: app.parse() threw error.
std::string usage_message(const CLI::App& app, const CLI::ParseError& error);

// Registers each group of commands on the app; the callbacks run the command and may throw rowguard::Error.
void add_schema_commands(CLI::App& app, Globals& globals);
void add_demo_command(CLI::App& app, Globals& globals);
// exit_status: set by commands that pass a child's exit code through (lock run).
void add_lock_commands(CLI::App& app, Globals& globals, int& exit_status);
void add_ledger_commands(CLI::App& app, Globals& globals);
void add_reverse_command(CLI::App& app, Globals& globals);
// " (from the shell: rowguard reverse 'KEY' [AMOUNT] --key NEW_KEY)" for a captured hold, whose
// capture a reversal refunds: added to void's hold_closed message. Empty when it cannot be looked up.
std::string reversal_hint(Ledger& ledger, std::int64_t hold_id);
// exit_status: that of the first transfer that did not apply (transfer_commands.cpp says which).
void add_batch_command(CLI::App& app, Globals& globals, int& exit_status);
// ledger history|show|transfers|balance-at. REQUIRES: add_ledger_commands ran first (the ledger group).
void add_history_commands(CLI::App& app, Globals& globals);
void add_hold_commands(CLI::App& app, Globals& globals);
// ledger archive, ledger partitions. REQUIRES: add_ledger_commands ran first (it makes "ledger").
void add_archive_commands(CLI::App& app, Globals& globals);
void add_cache_commands(CLI::App& app, Globals& globals, int& exit_status);
// exit_status: 1 when a saga ended compensated or unresolved, 3 when recover left busy ones.
void add_saga_commands(CLI::App& app, Globals& globals, int& exit_status);
void add_two_phase_commands(CLI::App& app, Globals& globals);
void add_serve_command(CLI::App& app, Globals& globals);

}  // namespace rowguard::cli

// rowguard: the command-line tool. Exit codes are fixed for the whole tool (see exit_code_help()).
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "cli.hpp"
#include "completion_command.hpp"

namespace {
int run(int argc, char** argv) {
  using namespace rowguard;
  CLI::App app{"rowguard: leases, version-checked balances and a read-through cache on your SQL database"};
  // Each command inherits the footer it sees when it is added: the short one. The tables once, below.
  app.footer("Exit codes and --json output: see rowguard --help.");
  app.require_subcommand(1);
  app.fallthrough();
  // CLI11 runs its callback before it looks for the missing command: `rowguard --version` alone answers.
  app.set_version_flag("--version",
                       "rowguard " + std::string(version()) + " (schema version " +
                           std::to_string(Database::library_schema_version()) + ")",
                       "Print the library version and the schema version it migrates to, and exit");

  cli::Globals globals;
  if (const char* env = std::getenv("ROWGUARD_DB"); env && *env) globals.db = env;
  if (globals.db.empty()) globals.db = "sqlite:rowguard.db";
  app.add_option("--db", globals.db,
                 "Database URL: sqlite:PATH, sqlite::memory:, postgresql://..., soci+sqlite3:PATH, "
                 "soci+postgresql://... (default: $ROWGUARD_DB, else sqlite:rowguard.db)");
  app.add_option("--prefix", globals.prefix, "Table prefix (default: rowguard_)");
  app.add_flag("--json", globals.json, "Print one JSON object per result, failures included (see below)");
  app.add_option("--connect-timeout", globals.connect_timeout,
                 "How long connecting to PostgreSQL may take, e.g. 5s (default: 10s)");
  app.add_option("--network-timeout", globals.network_timeout,
                 "How long a PostgreSQL session waits on a network that stopped answering before it "
                 "fails (TCP keepalives and tcp_user_timeout, unless the URL sets them); 0s leaves the "
                 "system's defaults (default: 30s)");

  cli::add_schema_commands(app, globals);
  cli::add_demo_command(app, globals);
  int exit_status = 0;
  cli::add_lock_commands(app, globals, exit_status);
  cli::add_ledger_commands(app, globals);
  cli::add_reverse_command(app, globals);
  cli::add_batch_command(app, globals, exit_status);
  cli::add_history_commands(app, globals);
  cli::add_archive_commands(app, globals);  // under "ledger": after add_ledger_commands
  cli::add_hold_commands(app, globals);
  cli::add_cache_commands(app, globals, exit_status);
  cli::add_saga_commands(app, globals, exit_status);
  cli::add_two_phase_commands(app, globals);
  cli::add_serve_command(app, globals);
  cli::add_completion_command(app, globals);
  app.footer(cli::exit_code_help() + "\n\n" + cli::json_help());

  // CLI11 sets --json only once the command line has parsed: a usage error needs it earlier.
  for (int i = 1; i < argc && std::string_view(argv[i]) != "--"; ++i)
    if (std::string_view(argv[i]) == "--json") globals.json = true;

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const std::string message = cli::usage_message(app, e);
    std::cerr << "rowguard: " << message << '\n';
    cli::emit_failure(globals, "usage", message, 2);
    return 2;
  } catch (const Error& e) {
    std::cerr << "rowguard: " << to_string(e.kind()) << ": " << e.what() << '\n';
    cli::emit_failure(globals, to_string(e.kind()), e.what(), cli::exit_code(e.kind()));
    return cli::exit_code(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "rowguard: " << e.what() << '\n';
    cli::emit_failure(globals, to_string(ErrorKind::permanent), e.what(), 1);
    return 1;
  }
  cli::flush_output();
  return exit_status;
}
}  // namespace

int main(int argc, char** argv) {
  // run() answers every error of a command; what escapes it (building the command line, writing
  // the answer) still gets a message and exit 1, never std::terminate.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rowguard: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "rowguard: an unknown error\n");
  }
  return 1;
}

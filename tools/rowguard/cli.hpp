#pragma once
// Shared pieces of the rowguard command-line tool: global options, output, exit codes.

#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "args.hpp"
#include "rowguard/rowguard.hpp"

namespace rowguard::cli {

// Options every command sees.
struct Globals {
  std::string db;          // --db, else $ROWGUARD_DB, else sqlite:rowguard.db
  std::string prefix = "rowguard_";
  bool json = false;
  std::string connect_timeout = "10s";  // a duration: 250ms, 30s, 5m, 1h
};

// Opens the database named by the global options.
Database open_database(const Globals& globals);

// One JSON line. Invalid UTF-8 in a string (an echoed bad argument in an error message) becomes
// U+FFFD instead of aborting the dump: data that may be binary goes through json_bytes instead.
std::string json_line(const nlohmann::json& object);
// Sets object[name] to bytes when they are UTF-8 text, else object[name + "_base64"] to their
// base64 form, so a binary cache value is never altered in --json output.
void json_bytes(nlohmann::json& object, const std::string& name, const std::string& bytes);

// Prints one result: the JSON object with --json, else the text.
void emit(const Globals& globals, const nlohmann::json& object, const std::string& text);

// The exit-code table printed by --help.
std::string exit_code_help();

// Registers each group of commands on the app; the callbacks run the command and may throw rowguard::Error.
void add_schema_commands(CLI::App& app, Globals& globals);
void add_demo_command(CLI::App& app, Globals& globals);
// exit_status: set by commands that pass a child's exit code through (lock run).
void add_lock_commands(CLI::App& app, Globals& globals, int& exit_status);
void add_ledger_commands(CLI::App& app, Globals& globals);
void add_cache_commands(CLI::App& app, Globals& globals, int& exit_status);

}  // namespace rowguard::cli

#pragma once
// Shared pieces of the rowguard command-line tool: global options, output, exit codes.

#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

// Prints one result: the JSON object with --json, else the text.
void emit(const Globals& globals, const nlohmann::json& object, const std::string& text);

// Parses "250ms", "30s", "5m", "1h" (whole numbers); Error(invalid_argument) otherwise.
std::chrono::milliseconds parse_duration(const std::string& text);

// CLI11 would also read 0x10, 0b11, 1e3 or " 7" as numbers: amounts, tokens and counts are plain
// decimal digits (an optional '-'), within 64 bits, or a usage error (exit 2).
const CLI::Validator& decimal();

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

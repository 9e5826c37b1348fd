#pragma once
// rowguard completion bash, and the manual page: both generated from the CLI11 app itself (its
// subcommands, options and help texts), so neither can fall behind --help.

#include <CLI/CLI.hpp>

#include "cli.hpp"

namespace rowguard::cli {

// Registers `completion bash` (prints a bash completion script; under --json as {"shell": "bash",
// "script": TEXT}) and the hidden `manpage` (prints rowguard.1 in roff; the build runs it). Both
// walk the app when they run, so every command is in them wherever this is called.
void add_completion_command(CLI::App& app, const Globals& globals);

}  // namespace rowguard::cli

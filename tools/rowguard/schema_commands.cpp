// migrate, schema, version.
#include <iostream>

#include "rowguard/schema.hpp"

#include "cli.hpp"

namespace rowguard::cli {

void add_schema_commands(CLI::App& app, Globals& globals) {
  auto* migrate = app.add_subcommand(
      "migrate",
      "Apply the missing schema migrations (safe to run concurrently); the only command that creates a missing "
      "SQLite file");
  migrate->callback([&globals] {
    auto db = open_database(globals, SchemaNeed::create);
    const int applied = db.migrate();
    const int version = db.schema_version();
    emit(globals, {{"applied", applied}, {"schema_version", version}, {"backend", db.backend_name()}},
         fmt::format("applied {} migration(s); schema version {} ({})", applied, version, db.backend_name()));
  });

  auto* schema = app.add_subcommand("schema", "Print the schema DDL, as migrate would apply it");
  static std::string dialect = "sqlite";
  static bool roles = false;
  static bool partitioning = false;
  schema->add_option("--dialect", dialect, "sqlite or postgres (default: sqlite)")
      ->check(CLI::IsMember({"sqlite", "postgres"}));
  schema->add_flag("--roles", roles, "Print schema/postgres/roles.sql (least-privilege roles) instead");
  schema
      ->add_flag("--partitioning", partitioning,
                 "Print schema/postgres/partitioning.sql (monthly partitions of transfers and entries, a DBA "
                 "script; docs/operations.md) instead")
      ->excludes("--roles");
  schema->callback([&globals] {
    if ((roles || partitioning) && dialect != "postgres")
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--{} needs --dialect postgres", roles ? "roles" : "partitioning"));
    const SchemaPart part = roles          ? SchemaPart::roles
                            : partitioning ? SchemaPart::partitioning
                                           : SchemaPart::migrations;
    std::string out;
    try {
      out = schema_sql(dialect, part, globals.prefix);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::invalid_argument) throw;
      throw Error(ErrorKind::invalid_argument, fmt::format("--prefix '{}': {}", globals.prefix, e.what()));
    }
    if (globals.json)
      std::cout << json_line({{"dialect", dialect}, {"prefix", globals.prefix}, {"sql", out}}) << '\n';
    else
      std::cout << out;
  });

  auto* version = app.add_subcommand("version", "Print the library version and the schema versions");
  static bool with_db = false;
  version->add_flag("--check-db", with_db, "Also read the schema version of --db (exit 11 when it differs)");
  version->callback([&globals] {
    nlohmann::json out{{"version", std::string(rowguard::version())},
                       {"library_schema_version", Database::library_schema_version()}};
    std::string text =
        fmt::format("rowguard {} (schema version {})", rowguard::version(), Database::library_schema_version());
    if (with_db) {
      auto db = open_database(globals, SchemaNeed::any);
      const int found = db.schema_version();
      out["database_schema_version"] = found;
      text += fmt::format("; database schema version {}", found);
      emit(globals, out, text);
      db.require_schema();
      return;
    }
    emit(globals, out, text);
  });
}

}  // namespace rowguard::cli

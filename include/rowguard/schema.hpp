#pragma once
// The SQL of rowguard's schema, as Database::migrate() applies it and a DBA reviews it (the
// scripts of schema/, built into the library; `rowguard schema` prints them).

#include <string>
#include <string_view>

namespace rowguard {

enum class SchemaPart {
  migrations,    // the version table and every numbered migration, in order: what migrate() applies
  roles,         // PostgreSQL: the least-privilege roles (schema/postgres/roles.sql)
  partitioning,  // PostgreSQL: monthly partitions of transfers and entries, a DBA script (docs/operations.md)
};

// The script text for dialect "sqlite" or "postgres", with every table named by table_prefix
// (validated as Options::table_prefix). Error(invalid_argument) for another dialect, a bad prefix,
// or roles/partitioning asked of SQLite.
std::string schema_sql(std::string_view dialect, SchemaPart part = SchemaPart::migrations,
                       std::string_view table_prefix = "rowguard_");

}  // namespace rowguard

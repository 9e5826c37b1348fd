// Handing rowguard a SOCI session, a SOCI connection pool, or a libpqxx connection factory: each
// adapter's test is built when the build has it (rowguard/config.hpp).
#include "rowguard/config.hpp"

#if ROWGUARD_HAVE_POSTGRES
#include <pqxx/connection>
#endif
#if ROWGUARD_HAVE_SOCI
#include <soci/postgresql/soci-postgresql.h>
#include <soci/sqlite3/soci-sqlite3.h>
#endif

#include <catch2/catch.hpp>
#include <fmt/format.h>

#if ROWGUARD_HAVE_POSTGRES
#include "rowguard/postgres.hpp"
#endif
#if ROWGUARD_HAVE_SOCI
#include "rowguard/soci.hpp"
#endif
#include "core/schema_scripts.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::dialect_of;

#if ROWGUARD_HAVE_POSTGRES || ROWGUARD_HAVE_SOCI
namespace {
void exercise(Database& db) {
  CHECK(db.migrate() == static_cast<int>(detail::migrations(dialect_of(db).name()).size()));
  CHECK(db.schema_version() == Database::library_schema_version());
  auto tx = db.begin();
  tx.exec(fmt::format("INSERT INTO {}fences (resource, last_token, updated_at) VALUES ($1, $2, {})", db.table_prefix(),
                      dialect_of(db).ms_to_timestamp("0")),
          {std::string("r"), std::int64_t{7}});
  tx.commit();
  CHECK(db.exec(fmt::format("SELECT last_token FROM {}fences", db.table_prefix())).one().i64(0) == 7);
}

Options unique_prefix(const std::string& tag) {
  Options o;
  o.table_prefix = fmt::format("ad_{}_{}_", tag, ::getpid());
  return o;
}

#if ROWGUARD_HAVE_SOCI
// SOCI 4.0 mangles a bare URI ending in the database name; a query part keeps it intact.
std::string soci_pg_conninfo() { return rowguard::test::pg_url() + "?application_name=soci-adapter-test"; }
#endif
}  // namespace

#if ROWGUARD_HAVE_POSTGRES
TEST_CASE("adapters: libpqxx connections the service makes can be handed in", "[pg][direct]") {
  const std::string url = rowguard::test::pg_url();
  std::atomic<int> made{0};
  auto db = from_pqxx(
      [&] {
        ++made;
        return std::make_unique<pqxx::connection>(url);
      },
      unique_prefix("pqxx"));
  exercise(db);
  CHECK(made >= 1);
  CHECK(db.backend_name() == "postgres");
}
#endif

#if ROWGUARD_HAVE_SOCI
TEST_CASE("adapters: a SOCI session and a SOCI pool the service has can be handed in", "[backend]") {
  if (rowguard::test::can().shared_server) {
    soci::session session(soci::postgresql, soci_pg_conninfo());
    auto db = from_soci(session, unique_prefix("sess"));
    CHECK(db.options().pool_size == 1);
    exercise(db);
    soci::connection_pool pool(3);
    for (std::size_t i = 0; i < 3; ++i) pool.at(i).open(soci::postgresql, soci_pg_conninfo());
    auto pooled = from_soci(pool, 2, unique_prefix("pool"));
    CHECK(pooled.backend_name() == "soci+postgresql");
    exercise(pooled);
  } else {
    // SQLite backends: the SOCI adapter over the service's own sqlite3 session of a file.
    const auto path = (rowguard::test::scratch_dir() / "service.db").string();
    soci::session session(soci::sqlite3, "db=" + path);
    auto db = from_soci(session, unique_prefix("lite"));
    CHECK(db.backend_name() == "soci+sqlite3");
    exercise(db);
  }
}
#endif
#endif

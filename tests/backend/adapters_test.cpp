// Handing rowguard a SOCI session, a SOCI connection pool, or a libpqxx connection factory.
#include <pqxx/connection>
#include <soci/postgresql/soci-postgresql.h>
#include <soci/sqlite3/soci-sqlite3.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "rowguard/postgres.hpp"
#include "rowguard/soci.hpp"
#include "support/support.hpp"

using namespace rowguard;

namespace {
void exercise(Database& db) {
  CHECK(db.migrate() == Database::library_schema_version());
  CHECK(db.schema_version() == Database::library_schema_version());
  auto tx = db.begin();
  tx.exec(fmt::format("INSERT INTO {}fences (resource, last_token, updated_at) VALUES ($1, $2, {})", db.table_prefix(),
                      db.backend().dialect().ms_to_timestamp("0")),
          {std::string("r"), std::int64_t{7}});
  tx.commit();
  CHECK(db.exec(fmt::format("SELECT last_token FROM {}fences", db.table_prefix())).one().i64(0) == 7);
}

Options unique_prefix(const std::string& tag) {
  Options o;
  o.table_prefix = fmt::format("ad_{}_{}_", tag, ::getpid());
  return o;
}

// SOCI 4.0 mangles a bare URI ending in the database name; a query part keeps it intact.
std::string soci_pg_conninfo() { return rowguard::test::pg_url() + "?application_name=soci-adapter-test"; }
}  // namespace

TEST_CASE("the service's own connections can be handed in", "[backend]") {
  const std::string& b = rowguard::test::backend();
  if (b == "postgres") {
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
  } else if (b == "soci-postgresql") {
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

// quickstart: open a database from a URL, migrate rowguard's schema, and run a transaction.
// Build against the installed package:
//   find_package(rowguard CONFIG REQUIRED)
//   target_link_libraries(quickstart PRIVATE rowguard::rowguard)
// Run: ./quickstart sqlite:quickstart.db    (or postgresql://user@host/db)
#include <cstdio>

#include <rowguard/rowguard.hpp>

int main(int argc, char** argv) {
  const char* url = argc > 1 ? argv[1] : "sqlite:quickstart.db";
  try {
    auto db = rowguard::Database::open(url);
    const int applied = db.migrate();
    std::printf("%s (%s): schema version %d, %d step(s) applied now\n", db.display_url().c_str(),
                db.backend_name().data(), db.schema_version(), applied);

    // The service's own table, written in a rowguard transaction: $N placeholders, bound values.
    db.exec("CREATE TABLE IF NOT EXISTS quickstart_orders (id bigint PRIMARY KEY, amount_cents bigint NOT NULL)");
    auto tx = db.begin();
    tx.exec("DELETE FROM quickstart_orders");
    for (std::int64_t id = 1; id <= 3; ++id) tx.exec("INSERT INTO quickstart_orders VALUES ($1, $2)", {id, id * 1250});
    tx.commit();
    const auto total = db.exec("SELECT CAST(SUM(amount_cents) AS bigint) FROM quickstart_orders").one().i64(0);
    std::printf("3 orders worth %lld cents; database clock %lld ms since the epoch\n", static_cast<long long>(total),
                static_cast<long long>(db.now_ms()));
    return total == 7500 ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "quickstart: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

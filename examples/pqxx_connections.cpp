// pqxx_connections: rowguard over libpqxx connections the service makes itself (rowguard::postgres).
// Build against the installed package:
//   find_package(rowguard CONFIG REQUIRED)
//   target_link_libraries(pqxx_connections PRIVATE rowguard::postgres)
// Run: ./pqxx_connections "postgresql://user@host/db"    (a libpq connection string)
#include <cstdio>
#include <memory>
#include <string>

#include <pqxx/pqxx>
#include <rowguard/postgres.hpp>
#include <rowguard/rowguard.hpp>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: pqxx_connections POSTGRESQL-URL\n");
    return 2;
  }
  const std::string url = argv[1];
  try {
    // rowguard calls the factory whenever its pool needs another session.
    auto db = rowguard::from_pqxx([url] { return std::make_unique<pqxx::connection>(url); });
    db.migrate();
    rowguard::Locks locks(db);
    auto lease = locks.try_acquire("pqxx-example", std::chrono::seconds(10));
    if (!lease) {
      std::printf("someone else holds pqxx-example\n");
      return 0;
    }
    std::printf("holding pqxx-example with fencing token %lld on %s\n", static_cast<long long>(lease->token()),
                db.backend_name().data());
    lease->release();
    return 0;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "pqxx_connections: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

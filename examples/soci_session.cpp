// soci_session: rowguard over a SOCI session the service already has (rowguard::soci).
// Build against the installed package:
//   find_package(rowguard CONFIG REQUIRED)
//   target_link_libraries(soci_session PRIVATE rowguard::soci)
// Run: ./soci_session sqlite:orders.db    (the session is SOCI's sqlite3 backend on that file)
#include <cstdio>
#include <string>

#include <rowguard/rowguard.hpp>
#include <rowguard/soci.hpp>
#include <soci/soci.h>
#include <soci/sqlite3/soci-sqlite3.h>

int main(int argc, char** argv) {
  const std::string url = argc > 1 ? argv[1] : "sqlite:soci_session.db";
  const std::string path = url.rfind("sqlite:", 0) == 0 ? url.substr(7) : url;
  try {
    soci::session sql(*soci::factory_sqlite3(), path);  // the service's own session
    auto db = rowguard::from_soci(sql);                 // rowguard uses it one call at a time
    db.migrate();
    rowguard::Ledger ledger(db);
    if (ledger.list().empty()) {
      ledger.open("alice", "EUR");
      ledger.open("bob", "EUR");
      ledger.deposit("alice", 10'000, "soci-seed");
    }
    const auto r = ledger.transfer("alice", "bob", 2'500, "soci-order-1");
    const auto bob = ledger.get("bob");
    std::printf("transfer %lld %s%s; bob has %lld cents\n", static_cast<long long>(r.transfer_id),
                rowguard::to_string(r.status).data(), r.replayed ? " (replayed)" : "",
                static_cast<long long>(bob.balance));
    return r.ok() && bob.balance == 2'500 ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "soci_session: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  } catch (const soci::soci_error& e) {
    std::fprintf(stderr, "soci_session: %s\n", e.what());
    return 1;
  }
}

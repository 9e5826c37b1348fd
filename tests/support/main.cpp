// The test runner: Catch2 plus --backend NAME, which every [backend] test runs against.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "support/support.hpp"

int main(int argc, char** argv) {
  Catch::Session session;
  std::string backend;
  auto cli = session.cli() | Catch::clara::Opt(backend, "name")["--backend"](
                                 "sqlite-file, sqlite-memory, postgres, soci-sqlite3, soci-postgresql or pgbouncer");
  session.cli(cli);
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (!backend.empty() && !rowguard::test::set_backend(backend)) {
    std::fprintf(stderr, "unknown --backend '%s'\n", backend.c_str());
    return 2;
  }
  return session.run();
}

#include "support/replication.hpp"

#include <cstdlib>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/support.hpp"

namespace rowguard::test {

std::string replicated_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0')
    FAIL(
        fmt::format("{} is not set: the failover tests run only under their own scripts/pg-replicated.sh "
                    "(ctest -L failover)",
                    name));
  return value;
}

namespace {
std::string same_engine(const std::string& url, const std::string& target) {
  return (url.rfind("soci+", 0) == 0 ? "soci+" : "") + target;
}
}  // namespace

std::string multi_host(const std::string& url) { return same_engine(url, replicated_env("ROWGUARD_TEST_PG_MULTI")); }

std::string standby_url(const std::string& url) { return same_engine(url, replicated_env("ROWGUARD_TEST_PG_STANDBY")); }

std::string failover(const std::string& action) {
  const std::string command = replicated_env("ROWGUARD_PG_FAILOVER") + " " + action + " 2>&1";
  std::string out;
  const int status = run_command(command, &out);
  INFO(command << ": " << out);
  REQUIRE(status == 0);
  return out;
}

}  // namespace rowguard::test

// The rowguard CLI: commands, JSON output and the fixed exit codes.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "support.hpp"

using namespace rowguard;
using rowguard::test::run_cli;
using rowguard::test::TestDb;

TEST_CASE("cli: migrate and version --check-db", "[backend]") {
  TestDb t;
  std::string out;
  const std::string prefix = t.db().table_prefix();
  REQUIRE(run_cli({"--db", t.url(), "--prefix", prefix, "--json", "migrate"}, &out) == 0);
  const auto json = nlohmann::json::parse(out);
  CHECK(json.at("schema_version") == Database::library_schema_version());
  if (rowguard::test::is_memory()) return;  // the CLI's in-memory database vanished with it
  CHECK(json.at("applied") == Database::library_schema_version());
  CHECK(t.db().schema_version() == Database::library_schema_version());
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "version", "--check-db"}) == 0);
  t.db().exec(fmt::format("INSERT INTO {}schema_version (version, name) VALUES (999, 'future')", prefix));
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "version", "--check-db"}) == 11);
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "migrate"}) == 11);
}

TEST_CASE("cli: usage errors exit 2, an unreachable server 10", "[unit]") {
  std::string out;
  CHECK(run_cli({"--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("Exit codes") && Catch::Contains("lock lost while held"));
  CHECK(run_cli({}) == 2);
  CHECK(run_cli({"frobnicate"}) == 2);
  CHECK(run_cli({"--db", "mysql://x/y", "migrate"}) == 2);
  CHECK(run_cli({"--db", "sqlite::memory:", "--prefix", "Bad-Prefix", "migrate"}) == 2);
  CHECK(run_cli({"--db", "sqlite::memory:", "--connect-timeout", "soon", "migrate"}) == 2);
  CHECK(run_cli({"--db", "postgresql://u:pw@127.0.0.1:1/db", "--connect-timeout", "2s", "--json", "migrate"}, &out) ==
        10);
  CHECK(nlohmann::json::parse(out).at("error") == "transient");
  CHECK(out.find("pw@") == std::string::npos);
}

TEST_CASE("cli: schema prints either dialect with any prefix", "[unit]") {
  std::string out;
  REQUIRE(run_cli({"schema", "--dialect", "postgres", "--prefix", "pay_"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("CREATE TABLE pay_locks") && Catch::Contains("fillfactor"));
  CHECK(out.find("rowguard_locks") == std::string::npos);
  REQUIRE(run_cli({"schema"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("CREATE TABLE rowguard_accounts") && Catch::Contains("BIGINT"));
  REQUIRE(run_cli({"schema", "--dialect", "postgres", "--roles"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("rowguard_app"));
  CHECK(run_cli({"schema", "--dialect", "oracle"}) == 2);
  CHECK(run_cli({"--prefix", "x y", "schema"}) == 2);
  REQUIRE(run_cli({"--json", "version"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("library_schema_version") == Database::library_schema_version());
}

TEST_CASE("cli: the demo runs on an SQLite file", "[unit]") {
  const auto path = (rowguard::test::scratch_dir() / "demo.db").string();
  std::string out;
  REQUIRE(run_cli({"--db", "sqlite:" + path, "--json", "demo"}, &out) == 0);
  const auto json = nlohmann::json::parse(out);
  CHECK(json.at("schema_version") == Database::library_schema_version());
  CHECK(json.at("ok") == true);
  CHECK(json.at("lease_turns") == 20);
  CHECK(json.at("tokens_strictly_increasing") == true);
}

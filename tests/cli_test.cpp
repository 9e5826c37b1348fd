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
  for (const char* bad : {"soon", "500ms", "1s", "2h"})
    CHECK(run_cli({"--db", "sqlite::memory:", "--network-timeout", bad, "migrate"}) == 2);
  CHECK(run_cli({"--db", "sqlite::memory:", "--network-timeout", "0s", "migrate"}) == 0);
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

TEST_CASE("cli: the demo runs on an SQLite file and its invariants hold, also when rerun", "[unit]") {
  const auto path = (rowguard::test::scratch_dir() / "demo.db").string();
  for (int run = 0; run < 2; ++run) {
    std::string out;
    REQUIRE(run_cli({"--db", "sqlite:" + path, "--json", "demo", "--seconds", "1", "--accounts", "6"}, &out) == 0);
    const auto json = nlohmann::json::parse(out);
    CHECK(json.at("ok") == true);
    CHECK(json.at("ledger_ok") == true);
    CHECK(json.at("transfers_ok").get<std::int64_t>() > 0);
    CHECK(json.at("lease_tokens_increasing") == true);
    CHECK(json.at("total_balance") == 6 * 100'000);
  }
}

TEST_CASE("cli: ledger commands and their exit codes", "[backend]") {
  if (!rowguard::test::processes_share_database()) return;
  TestDb t;
  t.db().migrate();
  const std::vector<std::string> base = {"--db", t.url(), "--prefix", t.db().table_prefix(), "--json"};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), base.begin(), base.end());
    return run_cli(args, out);
  };
  std::string out;
  CHECK(cli({"account", "open", "alice"}) == 0);
  CHECK(cli({"account", "open", "bob", "--currency", "EUR", "--min-balance", "-100"}) == 0);
  CHECK(cli({"account", "open", "yen", "--currency", "JPY"}) == 0);
  CHECK(cli({"account", "open", "bad", "--currency", "euro"}) == 2);
  CHECK(cli({"deposit", "alice", "1000", "--key", "d1"}) == 0);
  REQUIRE(cli({"transfer", "alice", "bob", "250"}, &out) == 0);
  const auto generated = nlohmann::json::parse(out);
  CHECK(generated.at("key").get<std::string>().rfind("cli-", 0) == 0);  // a key was made and printed
  CHECK(cli({"transfer", "alice", "bob", "250", "--key", generated.at("key")}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == true);
  CHECK(cli({"transfer", "alice", "bob", "99999"}) == 4);
  CHECK(cli({"withdraw", "alice", "99999"}) == 4);
  CHECK(cli({"transfer", "alice", "nobody", "1"}) == 5);
  CHECK(cli({"account", "show", "nobody"}) == 5);
  CHECK(cli({"transfer", "alice", "bob", "251", "--key", generated.at("key")}) == 7);
  CHECK(cli({"transfer", "alice", "yen", "1"}) == 12);
  CHECK(cli({"transfer", "alice", "bob", "0"}) == 2);
  CHECK(cli({"transfer", "alice", "bob", "1.5"}) == 2);
  REQUIRE(cli({"account", "show", "alice"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("balance") == 750);
  REQUIRE(cli({"ledger", "check"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("ok") == true);
  CHECK(cli({"ledger", "prune-keys", "--older-than", "90d"}) == 0);  // at least 24h (ledger_test checks the floor)
  // Break an invariant behind the library's back: check reports it and exits 1.
  t.db().exec(fmt::format("UPDATE {}accounts SET balance = balance + 1 WHERE id = 'bob'", t.db().table_prefix()));
  REQUIRE(cli({"ledger", "check"}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("balance_mismatch"));
}

TEST_CASE("cli: hold, capture and void with their exit codes", "[backend][holds]") {
  if (!rowguard::test::processes_share_database()) return;
  TestDb t;
  t.db().migrate();
  const std::vector<std::string> base = {"--db", t.url(), "--prefix", t.db().table_prefix()};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr, bool json = true) {
    args.insert(args.begin(), base.begin(), base.end());
    if (json) args.insert(args.begin(), "--json");
    return run_cli(args, out);
  };
  std::string out;
  REQUIRE(cli({"account", "open", "card"}) == 0);
  REQUIRE(cli({"account", "open", "shop"}) == 0);
  REQUIRE(cli({"deposit", "card", "1000", "--key", "d"}) == 0);
  REQUIRE(cli({"hold", "card", "shop", "600", "--key", "auth", "--timeout", "10m"}, &out) == 0);
  const std::int64_t id = nlohmann::json::parse(out).at("hold_id");
  REQUIRE(cli({"hold", "card", "shop", "600", "--key", "auth", "--timeout", "10m"}, &out, false) == 0);
  CHECK(out == fmt::format("{}\n", id));  // without --json: the id alone, for scripts
  CHECK(cli({"hold", "card", "shop", "401", "--key", "short", "--timeout", "10m"}) == 4);
  CHECK(cli({"transfer", "card", "shop", "401"}) == 4);  // below the available amount: exit 4
  CHECK(cli({"hold", "card", "shop", "1", "--timeout", "0s"}) == 2);
  CHECK(cli({"hold", "card", "shop", "1"}) == 2);  // --timeout is required
  CHECK(cli({"hold", "card", "shop", "0x10", "--timeout", "1m"}) == 2);
  CHECK(cli({"hold", "card", "nobody", "1", "--timeout", "1m"}) == 5);
  REQUIRE(cli({"account", "show", "card"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("available") == 400);
  CHECK(cli({"capture", std::to_string(id), "601"}) == 2);
  REQUIRE(cli({"capture", std::to_string(id), "500"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("status") == "ok");
  REQUIRE(cli({"capture", std::to_string(id), "500"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == true);
  CHECK(cli({"capture", std::to_string(id), "400"}) == 7);
  CHECK(cli({"void", std::to_string(id)}) == 13);
  CHECK(cli({"capture", "999999"}) == 5);
  REQUIRE(cli({"hold", "card", "shop", "100", "--key", "v", "--timeout", "10m"}, &out) == 0);
  const std::string voided = std::to_string(nlohmann::json::parse(out).at("hold_id").get<std::int64_t>());
  REQUIRE(cli({"void", voided}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("state") == "voided");
  CHECK(cli({"void", voided}) == 0);
  CHECK(cli({"capture", voided}) == 13);
  REQUIRE(cli({"hold-show", voided}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("state") == "voided");
  REQUIRE(cli({"ledger", "sweep-holds"}, &out) == 0);
  REQUIRE(cli({"ledger", "check"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("ok") == true);
  REQUIRE(cli({"account", "show", "shop"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("balance") == 500);
}

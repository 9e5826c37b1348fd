// The rowguard CLI: commands, JSON output and the fixed exit codes.
#include "cli.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <signal.h>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "core/schema_scripts.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::run_cli;
using rowguard::test::TestDb;

TEST_CASE("cli: migrate and version --check-db", "[backend][shared-db][threads]") {
  TestDb t;
  std::string out;
  const std::string prefix = t.db().table_prefix();
  // Before migrate: exit 11 with what to do, not "no such table".
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "account", "list"}, &out, true) == 11);
  CHECK_THAT(out, Catch::Contains("run `rowguard migrate`"));
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "--json", "lock", "list"}, &out) == 11);
  CHECK(nlohmann::json::parse(out).at("error").at("kind") == "schema_mismatch");
  REQUIRE(run_cli({"--db", t.url(), "--prefix", prefix, "--json", "migrate"}, &out) == 0);
  const auto json = nlohmann::json::parse(out);
  CHECK(json.at("schema_version") == Database::library_schema_version());
  CHECK(json.at("applied") == rowguard::detail::migrations("sqlite").size());
  CHECK(t.db().schema_version() == Database::library_schema_version());
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "version", "--check-db"}) == 0);
  t.db().exec(fmt::format("INSERT INTO {}schema_version (version, name) VALUES (999, 'future')", prefix));
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "version", "--check-db"}) == 11);
  CHECK(run_cli({"--db", t.url(), "--prefix", prefix, "migrate"}) == 11);
}

TEST_CASE("cli: usage errors exit 2, an unreachable server 10", "[unit][threads]") {
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
  CHECK(nlohmann::json::parse(out).at("error").at("kind") == "transient");
  CHECK(out.find("pw@") == std::string::npos);
}

TEST_CASE("cli: an unknown option or command is named, with exit 2, also under --json", "[unit][threads]") {
  std::string out;
  CHECK(run_cli({"--bogus"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("unknown option '--bogus' for rowguard"));
  CHECK(run_cli({"frobnicate"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("unknown command 'frobnicate' for rowguard (its commands: migrate, schema"));
  CHECK(run_cli({"lock", "frob"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("unknown command 'frob' for rowguard lock (its commands: acquire, renew"));
  CHECK(run_cli({"lock", "acquire", "--bogus=3", "name"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("unknown option '--bogus' for rowguard lock acquire"));
  CHECK(run_cli({"lock", "acquire", "--bogus"}, &out, true) == 2);  // before the missing NAME
  CHECK_THAT(out, Catch::Contains("unknown option '--bogus' for rowguard lock acquire"));
  CHECK(run_cli({"account", "list", "extra"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("unexpected argument 'extra' for rowguard account list"));
  CHECK(run_cli({"lock"}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("a command is needed after rowguard lock: acquire, renew"));
  CHECK(run_cli({}, &out, true) == 2);
  CHECK_THAT(out, Catch::Contains("a command is needed after rowguard: migrate"));
  // Under --json stdout holds the failure object, its message the same.
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--json", "frobnicate"},
                                               {"lock", "acquire", "--bogus", "--json"},
                                               {"--json", "--bogus"}}) {
    REQUIRE(run_cli(args, &out) == 2);
    const auto error = nlohmann::json::parse(out).at("error");
    CHECK(error.at("kind") == "usage");
    CHECK(error.at("exit_code") == 2);
    CHECK_THAT(error.at("message").get<std::string>(), Catch::Contains("unknown"));
  }
  // Words after -- are the child's, however they look.
  const std::string db = "sqlite:" + (rowguard::test::scratch_dir() / "unknown.db").string();
  REQUIRE(run_cli({"--db", db, "migrate"}) == 0);
  CHECK(run_cli({"--db", db, "lock", "run", "l", "--", "sh", "-c", "exit 5", "--bogus"}) == 5);
}

TEST_CASE("cli: the exit-code table is in rowguard --help once, and each command points there", "[unit][threads]") {
  std::string out;
  REQUIRE(run_cli({"--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("Exit codes:") && Catch::Contains("11  schema version mismatch"));
  CHECK(out.find("Exit codes:") == out.rfind("Exit codes:"));
  for (const std::vector<std::string>& command : {std::vector<std::string>{"lock", "acquire"}, {"lock"}, {"deposit"}}) {
    auto args = command;
    args.push_back("--help");
    REQUIRE(run_cli(args, &out) == 0);
    CHECK(out.find("Exit codes:") == std::string::npos);
    CHECK_THAT(out, Catch::Contains("see rowguard --help"));
  }
  // The help says what is accepted.
  REQUIRE(run_cli({"ledger", "prune-keys", "--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("90d"));
  REQUIRE(run_cli({"2pc", "prune", "--help"}, &out) == 0);
  CHECK(out.find("--grace TEXT") == std::string::npos);  // not an option of prune
  REQUIRE(run_cli({"2pc", "recover", "--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("--grace TEXT"));
  REQUIRE(run_cli({"deposit", "--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("Minor units"));
}

TEST_CASE("cli: a database without the schema answers exit 11, and only migrate creates an SQLite file",
          "[unit][threads]") {
  const auto dir = rowguard::test::scratch_dir();
  const auto path = dir / "new.db";
  std::string out;
  std::vector<std::string> urls = {"sqlite:" + path.string()};
#if ROWGUARD_HAVE_SOCI
  urls.push_back("soci+sqlite3:" + path.string());
#endif
  for (const auto& url : urls) {
    INFO(url);
    CHECK(run_cli({"--db", url, "account", "list"}, &out, true) == 11);
    CHECK_THAT(out, Catch::Contains("does not exist") && Catch::Contains("run `rowguard migrate`"));
    CHECK(run_cli({"--db", url, "--json", "deposit", "a", "1"}, &out) == 11);
    CHECK(nlohmann::json::parse(out).at("error").at("kind") == "schema_mismatch");
    CHECK(run_cli({"--db", url, "version", "--check-db"}) == 11);
    CHECK_FALSE(std::filesystem::exists(path));
  }
  // A file without rowguard's tables (an empty one, another application's): exit 11 too.
  const auto empty = dir / "empty.db";
  { auto db = Database::open("sqlite:" + empty.string()); }
  REQUIRE(std::filesystem::exists(empty));
  CHECK(run_cli({"--db", "sqlite:" + empty.string(), "lock", "list"}, &out, true) == 11);
  CHECK_THAT(out, Catch::Contains("schema is version 0") && Catch::Contains("run `rowguard migrate`"));
  CHECK(run_cli({"--db", "sqlite:" + path.string(), "migrate"}) == 0);
  CHECK(std::filesystem::exists(path));
  CHECK(run_cli({"--db", "sqlite:" + path.string(), "account", "list"}) == 0);
}

TEST_CASE("cli: durations read as durations", "[unit][cli]") {
  using rowguard::format_duration;
  using std::chrono::milliseconds;
  CHECK(format_duration(milliseconds(0)) == "0ms");
  CHECK(format_duration(milliseconds(574)) == "574ms");
  CHECK(format_duration(milliseconds(-574)) == "-574ms");
  CHECK(format_duration(milliseconds(1'000)) == "1s");
  CHECK(format_duration(milliseconds(1'500)) == "1.5s");
  CHECK(format_duration(milliseconds(12'300)) == "12s");
  CHECK(format_duration(milliseconds(120'000)) == "2m");
  CHECK(format_duration(milliseconds(134'999)) == "2m 14s");
  CHECK(format_duration(milliseconds(-134'000)) == "-2m 14s");
  CHECK(format_duration(milliseconds(3'600'000)) == "1h");
  CHECK(format_duration(milliseconds(18'120'000)) == "5h 2m");
  CHECK(format_duration(milliseconds(3 * 86'400'000LL)) == "3d");
  CHECK(format_duration(milliseconds(3 * 86'400'000LL + 4 * 3'600'000LL)) == "3d 4h");
  CHECK(format_duration(milliseconds(std::numeric_limits<std::int64_t>::min())) == "-106751991167d 7h");
  CHECK(rowguard::format_time(0) == "1970-01-01T00:00:00.000Z");
}

TEST_CASE("cli: schema prints either dialect with any prefix", "[unit][threads]") {
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

TEST_CASE("cli: the demo runs on an SQLite file and its invariants hold, also when rerun", "[unit][threads]") {
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

TEST_CASE("cli: ledger commands and their exit codes", "[backend][shared-db][threads]") {
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
  // Opening again: fine with the same currency and minimum, exit 7 naming the difference otherwise.
  REQUIRE(cli({"account", "open", "bob", "--min-balance", "-100"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("opened") == false);
  REQUIRE(cli({"account", "open", "alice", "--currency", "USD"}, &out) == 7);
  const auto mismatch = nlohmann::json::parse(out).at("error");
  CHECK(mismatch.at("kind") == "idempotency_mismatch");
  CHECK(mismatch.at("message") == "account 'alice' is open with currency EUR, not USD");
  REQUIRE(run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "account", "open", "yen", "--currency", "JPY"},
                  &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("already open: yen in JPY"));
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

TEST_CASE("cli: hold, capture and void with their exit codes", "[backend][holds][shared-db][threads]") {
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

TEST_CASE("cli: text output shows amounts in major units, times in ISO 8601 and durations as durations",
          "[backend][holds][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const std::vector<std::string> base = {"--db", t.url(), "--prefix", t.db().table_prefix()};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), base.begin(), base.end());
    return run_cli(args, out, true);
  };
  const std::regex iso(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
  std::string out;
  REQUIRE(cli({"account", "open", "eur", "--min-balance", "-5000"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("opened eur in EUR (min -50.00 EUR)"));
  REQUIRE(cli({"account", "open", "shop"}) == 0);
  REQUIRE(cli({"account", "open", "yen", "--currency", "JPY"}) == 0);
  REQUIRE(cli({"deposit", "eur", "500000", "--key", "d1"}) == 0);
  REQUIRE(cli({"deposit", "yen", "500", "--key", "d2"}) == 0);
  REQUIRE(cli({"account", "show", "eur"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("eur 5000.00 EUR (held 0.00 EUR, available 5000.00 EUR, min -50.00 EUR"));
  REQUIRE(cli({"account", "show", "yen"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("yen 500 JPY"));
  REQUIRE(cli({"account", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("5000.00 EUR") && Catch::Contains("500 JPY"));
  REQUIRE(cli({"ledger", "check"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("totals 5000.00 EUR, 500 JPY"));
  REQUIRE(cli({"ledger", "history", "eur"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("+5000.00 EUR") && Catch::Contains("deposit 5000.00 EUR (outside) -> eur"));
  CHECK(std::regex_search(out, iso));
  REQUIRE(cli({"ledger", "show", "--key", "d2"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("deposit 500 JPY") && Catch::Contains("entry") && Catch::Contains("+500 JPY"));
  REQUIRE(cli({"ledger", "transfers"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("5000.00 EUR") && Catch::Contains("500 JPY"));
  REQUIRE(cli({"ledger", "balance-at", "eur", "2999-01-01"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("eur 5000.00 EUR at 2999-01-01T00:00:00.000Z"));

  // A hold: its amount, its timeout as a time and how long until it, then after it.
  std::string id;
  REQUIRE(cli({"hold", "eur", "shop", "1234", "--key", "h1", "--timeout", "1s"}, &id) == 0);
  id.pop_back();
  REQUIRE(cli({"hold-show", id}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("12.34 EUR eur -> shop, held, expires at ") && Catch::Contains("(in "));
  CHECK(std::regex_search(out, iso));
  std::this_thread::sleep_for(std::chrono::milliseconds(1'300));
  REQUIRE(cli({"hold-show", id}, &out) == 0);
  INFO(out);
  CHECK_THAT(out, Catch::Contains(", expired at ") && Catch::Contains(" ago)"));
  CHECK(std::regex_search(out, iso));
  CHECK(out.find("expires in") == std::string::npos);
  CHECK(out.find("(-") == std::string::npos);  // no negative duration
  REQUIRE(cli({"hold", "eur", "shop", "99", "--key", "h2", "--timeout", "1h"}, &id) == 0);
  id.pop_back();
  REQUIRE(cli({"void", id}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("voided (0.99 EUR released)"));
  REQUIRE(cli({"account", "open", "yen-shop", "--currency", "JPY"}) == 0);
  REQUIRE(cli({"hold", "yen", "yen-shop", "501", "--timeout", "1h"}, &out) == 4);
  CHECK_THAT(out, Catch::Contains("has less than 501 JPY available"));
  REQUIRE(cli({"hold", "eur", "shop", "600", "--key", "h3", "--timeout", "1h"}, &id) == 0);
  id.pop_back();
  REQUIRE(cli({"capture", id, "601"}, &out) == 2);
  CHECK_THAT(out, Catch::Contains("reserves 6.00 EUR: cannot capture 6.01 EUR"));

  // The archive's refusal names times in ISO 8601.
  REQUIRE(cli({"ledger", "archive", "--before", "2999-01-01"}, &out) == 2);
  CHECK_THAT(out, Catch::Contains("archive cutoff 2999-01-01T00:00:00.000Z is later than") &&
                      Catch::Contains("minus min_age 30d"));
  CHECK(out.find("epoch") == std::string::npos);

  // Locks: a lease that ran out unreleased is expired, not free; a held one says when it ends.
  REQUIRE(cli({"lock", "acquire", "short", "--ttl", "1s"}) == 0);
  REQUIRE(cli({"lock", "acquire", "long", "--ttl", "1h"}) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1'300));
  REQUIRE(cli({"lock", "list"}, &out) == 0);
  CHECK(std::regex_search(out, std::regex(R"(long +held +token \d+ +expires in 59m \d+s by )")));
  CHECK(std::regex_search(out, std::regex(R"(short +expired +token \d+ +ran out unreleased, by .* \(acquired )")));
  CHECK(out.find("free") == std::string::npos);
  REQUIRE(cli({"--json", "lock", "list"}, &out) == 0);
  std::istringstream lines(out);
  std::map<std::string, nlohmann::json> rows;
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    rows[j.at("name")] = j;
  }
  CHECK(rows.at("short").at("expired") == true);
  CHECK(rows.at("short").at("held") == false);
  CHECK(rows.at("long").at("expired") == false);
}

namespace {

// The leaf commands `rowguard --help` lists, as "lock acquire", "ledger check", ... (groups are
// expanded through their own --help).
std::vector<std::string> leaf_commands(const std::string& group = {}) {
  std::vector<std::string> args;
  if (!group.empty()) {
    std::istringstream words(group);
    for (std::string w; words >> w;) args.push_back(w);
  }
  args.push_back("--help");
  std::string help;
  REQUIRE(run_cli(args, &help) == 0);
  std::vector<std::string> leaves;
  const auto at = help.find("\nSubcommands:\n");
  if (at == std::string::npos) return {group};
  std::istringstream lines(help.substr(at + 14));
  for (std::string line; std::getline(lines, line) && !line.empty();) {
    std::istringstream words(line);
    std::string name;
    words >> name;
    const auto below = leaf_commands(group.empty() ? name : group + " " + name);
    leaves.insert(leaves.end(), below.begin(), below.end());
  }
  return leaves;
}

// What one CLI run printed on stdout under --json, each line parsed.
struct JsonRun {
  int code = 0;
  std::vector<nlohmann::json> objects;
};

// one: the whole stdout is one object; items: one object per line; outcome: one object that
// carries the command's outcome, also when it exits non-zero (saga run), without an "error".
enum class Shape { one, items, outcome };

// Runs `rowguard --json ARGS`, expects exit `code`, and checks stdout: JSON objects only, in shape,
// and a failure's object carries {"error": {"kind", "message", "exit_code"}} with the exit code.
JsonRun json_run(std::vector<std::string> args, int code, Shape shape = Shape::one) {
  args.insert(args.begin(), "--json");
  std::string out;
  JsonRun r;
  r.code = run_cli(args, &out);
  std::string shown;
  for (const auto& a : args) shown += " " + a;
  INFO("rowguard" << shown << "\nexit " << r.code << ", stdout:\n" << out);
  CHECK(r.code == code);
  CHECK(!out.empty());
  if (out.empty()) return r;
  CHECK(out.back() == '\n');
  // The whole output parses as one object (or each line as one): nothing before or after it.
  auto parse = [&](const std::string& text) {
    try {
      const auto j = nlohmann::json::parse(text);
      CHECK(j.is_object());
      r.objects.push_back(j);
    } catch (const nlohmann::json::exception& e) {
      FAIL_CHECK("not one JSON object: " << e.what());
    }
  };
  if (shape == Shape::items) {
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) parse(line);
  } else {
    parse(out);
  }
  if (r.code != 0 && code != 0 && shape != Shape::outcome && !r.objects.empty()) {
    const auto& last = r.objects.back();
    const bool error_object = last.contains("error") && last.at("error").is_object();
    CHECK(error_object);
    if (error_object) {
      CHECK(last.at("error").value("exit_code", -1) == r.code);
      CHECK(last.at("error").value("kind", "").size() > 0);
      CHECK(last.at("error").value("message", "").size() > 0);
    }
  }
  return r;
}

// A field of the run's (last) object, null when there is none.
nlohmann::json field(const JsonRun& r, const char* name) {
  return r.objects.empty() ? nlohmann::json() : r.objects.back().value(name, nlohmann::json());
}

// The kind of the run's error, empty when it has none.
std::string kind(const JsonRun& r) {
  const auto error = field(r, "error");
  return error.is_object() ? error.value("kind", "") : std::string();
}

// The cases below, one per group of commands (each test case a process of its own: split to stay
// well inside the unit tests' timeout, also under TSan), and the leaf commands each one runs.
const std::map<std::string, std::vector<std::string>>& json_cases() {
  static const std::map<std::string, std::vector<std::string>> cases{
      {"ledger",
       {"(none)",
        "(unknown)",
        "migrate",
        "schema",
        "version",
        "demo",
        "account open",
        "account show",
        "account list",
        "deposit",
        "withdraw",
        "transfer",
        "ledger check",
        "ledger sweep-holds",
        "ledger prune-keys",
        "ledger history",
        "ledger show",
        "ledger transfers",
        "ledger balance-at",
        "ledger archive",
        "ledger partitions"}},
      {"holds, cache, locks",
       {"hold", "hold-show", "capture", "void", "cache put", "cache get", "cache invalidate", "cache fetch",
        "cache stats", "cache sweep", "lock acquire", "lock renew", "lock list", "lock run", "lock release",
        "lock force-release", "lock sweep"}},
      {"reverse, batch", {"reverse", "batch"}},
      {"sagas, 2pc, serve",
       {"saga run", "saga list", "saga show", "saga recover", "2pc transfer", "2pc recover", "2pc prune", "serve",
        "ledger check", "completion bash"}},
  };
  return cases;
}

// One group's runs: json_run on its own SQLite file (unless args name a database), checking at the
// end that it ran exactly the commands json_cases() gives it.
class JsonCase {
 public:
  explicit JsonCase(std::string group) : group_(std::move(group)), dir_(rowguard::test::scratch_dir()) {
    db_ = "sqlite:" + (dir_ / "json.db").string();
    REQUIRE(run_cli({"--db", db_, "migrate"}) == 0);
  }
  ~JsonCase() {
    const auto& want = json_cases().at(group_);
    CHECK(covered_ == std::set<std::string>(want.begin(), want.end()));
  }
  JsonRun operator()(const std::string& command, std::vector<std::string> args, int code, Shape shape = Shape::one) {
    covered_.insert(command);
    if (std::find(args.begin(), args.end(), "--db") == args.end()) args.insert(args.begin(), {"--db", db_});
    return json_run(args, code, shape);
  }
  const std::string& db() const { return db_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::string group_;
  std::filesystem::path dir_;
  std::string db_;
  std::set<std::string> covered_;
};

// A field as command-line text: a string as it is, a number in digits.
std::string arg(const JsonRun& r, const char* name) {
  const auto j = field(r, name);
  return j.is_string() ? j.get<std::string>() : j.dump();
}

constexpr Shape items = Shape::items, outcome = Shape::outcome;

}  // namespace

TEST_CASE("cli: under --json every command the tool lists has a case below", "[unit][threads]") {
  std::set<std::string> cased;
  for (const auto& [group, commands] : json_cases()) cased.insert(commands.begin(), commands.end());
  for (const auto& command : leaf_commands()) {
    INFO(command);
    CHECK(cased.count(command) == 1);
  }
}

TEST_CASE("cli: under --json ledger commands print one JSON object per result, failures included", "[unit][threads]") {
  JsonCase run("ledger");  // run(COMMAND, ARGS, EXIT_CODE[, SHAPE])
  const auto& dir = run.dir();
  // Usage errors, before any command runs.
  CHECK(kind(run("(none)", {}, 2)) == "usage");
  CHECK(kind(run("(unknown)", {"frobnicate"}, 2)) == "usage");

  run("migrate", {"migrate"}, 0);
  run("migrate", {"--db", "sqlite:" + (dir / "no" / "such" / "dir.db").string(), "migrate"}, 10);
  run("schema", {"schema"}, 0);
  CHECK(kind(run("schema", {"schema", "--dialect", "oracle"}, 2)) == "usage");
  run("version", {"version", "--check-db"}, 0);
  run("version", {"version", "--bogus"}, 2);
  run("demo", {"--db", "sqlite:" + (dir / "demo.db").string(), "demo", "--seconds", "1", "--accounts", "4"}, 0);
  run("demo", {"demo", "--seconds", "soon"}, 2);

  run("account open", {"account", "open", "alice"}, 0);
  run("account open", {"account", "open", "bob"}, 0);
  CHECK(kind(run("account open", {"account", "open", "euro", "--currency", "euro"}, 2)) == "invalid_argument");
  CHECK(kind(run("account open", {"account", "open"}, 2)) == "usage");  // a missing argument
  run("account show", {"account", "show", "alice"}, 0);
  CHECK(kind(run("account show", {"account", "show", "nobody"}, 5)) == "not_found");
  CHECK(run("account list", {"account", "list"}, 0, items).objects.size() == 2);
  run("account list", {"account", "list", "extra"}, 2);
  run("deposit", {"deposit", "alice", "1000", "--key", "d1"}, 0);
  run("deposit", {"deposit", "nobody", "1000"}, 5);
  run("withdraw", {"withdraw", "alice", "100", "--key", "w1"}, 0);
  // A rejection is one object: the result (its status and key) with the error joined to it.
  const auto short_withdrawal = run("withdraw", {"withdraw", "alice", "99999", "--key", "w2"}, 4);
  CHECK(field(short_withdrawal, "status") == "insufficient_funds");
  CHECK(kind(short_withdrawal) == "insufficient_funds");
  const auto paid = run("transfer", {"transfer", "alice", "bob", "250", "--key", "t1"}, 0);
  CHECK(field(paid, "status") == "ok");
  CHECK_FALSE(paid.objects.back().contains("error"));
  const auto rejected = run("transfer", {"transfer", "alice", "bob", "99999", "--key", "t2"}, 4);
  CHECK(field(rejected, "status") == "insufficient_funds");
  CHECK(field(rejected, "key") == "t2");
  CHECK(kind(rejected) == "insufficient_funds");
  CHECK(kind(run("transfer", {"transfer", "alice", "bob", "0x10"}, 2)) == "usage");

  run("ledger check", {"ledger", "check"}, 0);
  run("ledger check", {"ledger", "check", "extra"}, 2);
  run("ledger sweep-holds", {"ledger", "sweep-holds"}, 0);
  run("ledger sweep-holds", {"ledger", "sweep-holds", "extra"}, 2);
  run("ledger prune-keys", {"ledger", "prune-keys", "--older-than", "2160h"}, 0);
  run("ledger prune-keys", {"ledger", "prune-keys", "--older-than", "soon"}, 2);
  run("ledger history", {"ledger", "history", "alice"}, 0);
  run("ledger history", {"ledger", "history", "alice", "--since", "yesterday"}, 2);
  run("ledger show", {"ledger", "show", "--key", "t1"}, 0);
  run("ledger show", {"ledger", "show", "--key", "no-such-key"}, 5);
  run("ledger transfers", {"ledger", "transfers"}, 0);
  run("ledger transfers", {"ledger", "transfers", "--limit", "many"}, 2);
  run("ledger balance-at", {"ledger", "balance-at", "alice", "@0"}, 0);
  run("ledger balance-at", {"ledger", "balance-at", "nobody", "@0"}, 5);
  run("ledger archive", {"ledger", "archive", "--before", "2000-01-01", "--dry-run"}, 0);
  run("ledger archive", {"ledger", "archive", "--before", "2000-02-30"}, 2);
  // SQLite has no partitions: its failure is the case here (the [pg] partition tests cover success).
  run("ledger partitions", {"ledger", "partitions", "--ahead", "1"}, 2);
  run("ledger partitions", {"ledger", "partitions", "--ahead", "lots"}, 2);
}

TEST_CASE("cli: under --json hold, cache and lock commands print one JSON object per result, failures included",
          "[unit][threads]") {
  JsonCase run("holds, cache, locks");  // run(COMMAND, ARGS, EXIT_CODE[, SHAPE])
  REQUIRE(run_cli({"--db", run.db(), "account", "open", "alice"}) == 0);
  REQUIRE(run_cli({"--db", run.db(), "account", "open", "bob"}) == 0);
  REQUIRE(run_cli({"--db", run.db(), "deposit", "alice", "1000"}) == 0);
  const auto held = run("hold", {"hold", "alice", "bob", "100", "--key", "h1", "--timeout", "10m"}, 0);
  const std::string hold_id = arg(held, "hold_id");
  const auto short_hold = run("hold", {"hold", "alice", "bob", "99999", "--key", "h2", "--timeout", "10m"}, 4);
  CHECK(field(short_hold, "status") == "insufficient_funds");
  run("hold-show", {"hold-show", hold_id}, 0);
  run("hold-show", {"hold-show", "999999"}, 5);
  run("capture", {"capture", hold_id, "60"}, 0);
  run("capture", {"capture", "999999"}, 5);
  run("void", {"void", hold_id}, 13);
  const auto second = run("hold", {"hold", "alice", "bob", "10", "--key", "h3", "--timeout", "10m"}, 0);
  run("void", {"void", arg(second, "hold_id")}, 0);

  run("cache put", {"cache", "put", "k", "v"}, 0);
  run("cache put", {"cache", "put", "k", "v", "--ttl", "forever"}, 2);
  run("cache get", {"cache", "get", "k"}, 0);
  run("cache get", {"cache", "get", "absent"}, 5);
  run("cache invalidate", {"cache", "invalidate", "k"}, 0);
  run("cache invalidate", {"cache", "invalidate"}, 2);
  CHECK(field(run("cache fetch", {"cache", "fetch", "f", "--", "echo", "loaded"}, 0), "value") == "loaded\n");
  // The loader's failure code passes through, as one object.
  CHECK(kind(run("cache fetch", {"cache", "fetch", "g", "--", "sh", "-c", "echo partial; exit 3"}, 3)) ==
        "command_failed");
  run("cache stats", {"cache", "stats"}, 0);
  run("cache stats", {"cache", "stats", "extra"}, 2);
  run("cache sweep", {"cache", "sweep"}, 0);
  run("cache sweep", {"cache", "sweep", "--batch", "x"}, 2);

  const auto lease = run("lock acquire", {"lock", "acquire", "l", "--ttl", "1h"}, 0);
  const std::string owner = arg(lease, "owner"), token = arg(lease, "token");
  CHECK(kind(run("lock acquire", {"lock", "acquire", "l"}, 3)) == "lock_busy");
  run("lock renew", {"lock", "renew", "l", "--owner", owner, "--token", token}, 0);
  CHECK(kind(run("lock renew", {"lock", "renew", "l", "--owner", "other", "--token", token}, 8)) == "lock_lost");
  run("lock list", {"lock", "list"}, 0, items);
  run("lock list", {"lock", "list", "extra"}, 2);
  // CMD's own output goes to stderr: stdout holds rowguard's object only.
  CHECK(field(run("lock run", {"lock", "run", "m", "--", "echo", "from the command"}, 0), "exit_code") == 0);
  CHECK(kind(run("lock run", {"lock", "run", "l", "--", "true"}, 3)) == "lock_busy");
  run("lock release", {"lock", "release", "l", "--owner", "other", "--token", token}, 8);
  run("lock release", {"lock", "release", "l", "--owner", owner, "--token", token}, 0);
  run("lock force-release", {"lock", "force-release", "l", "--reason", "test"}, 0);
  run("lock force-release", {"lock", "force-release", "nothing", "--reason", "test"}, 5);
  run("lock sweep", {"lock", "sweep"}, 0);
  run("lock sweep", {"lock", "sweep", "--older-than", "x"}, 2);
}

TEST_CASE("cli: under --json saga, 2pc and serve commands print one JSON object per result, failures included",
          "[unit][threads]") {
  JsonCase run("sagas, 2pc, serve");  // run(COMMAND, ARGS, EXIT_CODE[, SHAPE])
  const std::string& db = run.db();
  REQUIRE(run_cli({"--db", db, "account", "open", "alice"}) == 0);
  REQUIRE(run_cli({"--db", db, "account", "open", "bob"}) == 0);
  CHECK(field(run("saga run", {"saga", "run", "s1", "--step", "a=echo step a"}, 0), "state") == "completed");
  // A compensated saga exits 1; its object carries the outcome.
  CHECK(field(run("saga run", {"saga", "run", "s2", "--step", "a=exit 1"}, 1, outcome), "state") == "compensated");
  run("saga run", {"saga", "run", "s3"}, 2);
  run("saga list", {"saga", "list"}, 0, items);
  run("saga list", {"saga", "list", "--limit", "x"}, 2);
  run("saga show", {"saga", "show", "s1"}, 0);
  run("saga show", {"saga", "show", "nobody"}, 5);
  run("saga recover", {"saga", "recover"}, 0);
  run("saga recover", {"saga", "recover", "extra"}, 2);

  // SQLite has no prepared transactions: the 2pc failures here, their successes in the [pg] test below.
  const std::string participant = "a=" + db;
  CHECK(kind(run("2pc transfer", {"2pc", "transfer", "a:alice", "a:bob", "1", "--participant", participant}, 2)) ==
        "invalid_argument");
  run("2pc transfer", {"2pc", "transfer", "a:alice"}, 2);
  run("2pc recover", {"2pc", "recover", "--participant", participant}, 2);
  run("2pc recover", {"2pc", "recover"}, 2);
  run("2pc prune", {"2pc", "prune", "--participant", participant}, 2);
  run("2pc prune", {"2pc", "prune", "--participant", participant, "--older-than", "x"}, 2);

  run("serve", {"serve", "--listen", "localhost"}, 2);  // serve's success is in the serve tests
  // The script as one string (the package's test drives it in bash).
  CHECK(arg(run("completion bash", {"completion", "bash"}, 0), "script")
            .find("complete -o default -F _rowguard rowguard") != std::string::npos);
  run("completion bash", {"completion", "bash", "extra"}, 2);

  // A ledger check that finds a violation: its report and the error are one object.
  {
    auto check_db = Database::open(db);
    check_db.exec("UPDATE rowguard_accounts SET balance = balance + 1 WHERE id = 'bob'");
  }
  const auto broken = run("ledger check", {"ledger", "check"}, 1);
  CHECK(field(broken, "ok") == false);
  CHECK(kind(broken) == "permanent");
}

TEST_CASE("cli: 2pc under --json prints one object per result, a rejection and recovery in doubt included",
          "[pg][threads]") {
  TestDb t;
  t.db().migrate();
  const std::string url_b = rowguard::test::own_database(t.url(), "rowguard_2pc_b");
  auto b = Database::open(url_b, t.options());
  b.migrate();
  Ledger la(t.db()), lb(b);
  la.open("alice", "EUR");
  lb.open("bob", "EUR");
  la.deposit("alice", 1'000, "seed");
  const std::string log = "cli" + std::to_string(::getpid());
  auto run = [&](std::vector<std::string> args, int code) {
    args.insert(args.begin(), {"--db", t.url(), "--prefix", t.db().table_prefix()});
    for (const std::string& p : {"a=" + t.url(), "b=" + url_b}) args.insert(args.end(), {"--participant", p});
    args.insert(args.end(), {"--log-name", log});
    return json_run(args, code);
  };
  CHECK(field(run({"2pc", "transfer", "a:alice", "b:bob", "250", "--key", "j1"}, 0), "status") == "ok");
  const auto rejected = run({"2pc", "transfer", "a:alice", "b:bob", "5000", "--key", "j2"}, 4);
  CHECK(field(rejected, "status") == "insufficient_funds");
  CHECK(kind(rejected) == "insufficient_funds");
  CHECK(kind(run({"2pc", "transfer", "alice", "b:bob", "5"}, 2)) == "invalid_argument");
  // A coordinator that stops after its PREPAREs leaves both legs in doubt until the grace passes:
  // recover's report and its error are one object.
  TwoPhaseOptions o;
  o.log_name = log;
  o.on_step = [](TwoPhaseStep s, const std::string&) {
    if (s == TwoPhaseStep::prepared) throw std::runtime_error("stopped");
  };
  CHECK_THROWS(TwoPhase(t.db(), {{"a", &t.db()}, {"b", &b}}, o).transfer("a", "alice", "b", "bob", 100, "j3"));
  const auto doubt = run({"2pc", "recover"}, 9);
  CHECK(field(doubt, "in_doubt") == 2);
  CHECK(kind(doubt) == "in_doubt");
  CHECK(field(run({"2pc", "recover", "--grace", "0s"}, 0), "rolled_back") == 2);
  run({"2pc", "prune", "--older-than", "168h"}, 0);
  CHECK(kind(run({"2pc", "prune", "--older-than", "soon"}, 2)) == "invalid_argument");
}

TEST_CASE("every error kind has its fixed exit code in the CLI", "[unit][cli]") {
  using cli::exit_code;
  CHECK(exit_code(ErrorKind::permanent) == 1);
  CHECK(exit_code(ErrorKind::invalid_argument) == 2);
  CHECK(exit_code(ErrorKind::lock_busy) == 3);
  CHECK(exit_code(ErrorKind::insufficient_funds) == 4);
  CHECK(exit_code(ErrorKind::not_found) == 5);
  CHECK(exit_code(ErrorKind::conflict) == 6);
  CHECK(exit_code(ErrorKind::idempotency_mismatch) == 7);
  CHECK(exit_code(ErrorKind::lock_lost) == 8);
  CHECK(exit_code(ErrorKind::in_doubt) == 9);
  CHECK(exit_code(ErrorKind::transient) == 10);
  CHECK(exit_code(ErrorKind::schema_mismatch) == 11);
  CHECK(exit_code(ErrorKind::currency_mismatch) == 12);
  CHECK(exit_code(ErrorKind::hold_closed) == 13);
  CHECK(to_string(ErrorKind::in_doubt) == "in_doubt");
}

namespace {
// rowguard --db URL --prefix P ARGS... on t's database.
int lock_cli(TestDb& t, std::vector<std::string> args, std::string* out = nullptr, bool with_stderr = false) {
  args.insert(args.begin(), {"--db", t.url(), "--prefix", t.db().table_prefix()});
  return run_cli(args, out, with_stderr);
}
}  // namespace

TEST_CASE(
    "cli: lock run exits with --conflict-exit-code when busy and --lost-exit-code when the lease is lost, and the "
    "command's own 3 passes through",
    "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  std::string out;
  CHECK(lock_cli(t, {"lock", "run", "own", "--", "sh", "-c", "exit 3"}) == 3);  // the command's 3, not busy
  CHECK(lock_cli(t, {"lock", "run", "own", "-E", "75", "--", "sh", "-c", "exit 8"}) == 8);
  REQUIRE(lock_cli(t, {"lock", "acquire", "taken", "--ttl", "1h"}) == 0);
  CHECK(lock_cli(t, {"lock", "run", "taken", "--", "true"}) == 3);
  CHECK(lock_cli(t, {"lock", "run", "taken", "--conflict-exit-code", "75", "--", "true"}, &out, true) == 75);
  CHECK_THAT(out, Catch::Contains("rowguard: lock_busy: lock 'taken' was not acquired"));
  CHECK(lock_cli(t, {"lock", "run", "taken", "-E", "0", "-w", "100ms", "--", "false"}) == 0);
  CHECK(lock_cli(t, {"--json", "lock", "run", "taken", "-n", "-E", "75", "--", "true"}, &out) == 75);
  const auto busy = nlohmann::json::parse(out);
  CHECK(busy.at("error").at("kind") == "lock_busy");
  CHECK(busy.at("error").at("exit_code") == 75);
  // Usage errors exit 2 and take no lock.
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"-E", "256"},
                                              {"-E", "-1"},
                                              {"-E", "x"},
                                              {"--lost-exit-code", "300"},
                                              {"--hold-at-least", "25h"},
                                              {"--hold-at-least", "-1s"},
                                              {"--hold-at-least", "soon"},
                                              {"-n", "--wait", "1s"}}) {
    std::vector<std::string> args{"lock", "run", "usage"};
    args.insert(args.end(), bad.begin(), bad.end());
    args.insert(args.end(), {"--", "true"});
    CHECK(lock_cli(t, args) == 2);
  }
  Locks locks(t.db());
  for (const auto& l : locks.list()) CHECK(l.name != "usage");

  // Lost while the command runs: the heartbeat finds the token raised.
  const pid_t holder = rowguard::test::start_cli_holding(
      t, {"lock", "run", "lost", "--ttl", "1s", "--lost-exit-code", "77", "--", "sleep", "30"}, "lost");
  locks.force_release("lost", "test");
  int status = 0;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (::waitpid(holder, &status, WNOHANG) != holder && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (std::chrono::steady_clock::now() >= give_up) ::kill(holder, SIGKILL);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 77));
}

TEST_CASE(
    "cli: lock run says why a command cannot run and exits 127 when it is not found, 126 when it cannot be "
    "executed, and releases the lease",
    "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const auto dir = rowguard::test::scratch_dir();
  const std::string plain = (dir / "not-executable").string();
  std::ofstream(plain) << "#!/bin/sh\nexit 0\n";
  std::string out;
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--", "/nonexistent/command"}, &out, true) == 127);
  CHECK_THAT(out, Catch::Contains("rowguard: cannot run '/nonexistent/command': No such file or directory"));
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--", "no-such-command-on-the-path"}, &out, true) == 127);
  CHECK_THAT(out, Catch::Contains("rowguard: cannot run 'no-such-command-on-the-path': No such file or directory"));
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--", plain}, &out, true) == 126);
  CHECK_THAT(out, Catch::Contains(fmt::format("rowguard: cannot run '{}': Permission denied", plain)));
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--", dir.string()}, &out, true) == 126);
  CHECK_THAT(out, Catch::Contains(fmt::format("rowguard: cannot run '{}': Is a directory", dir.string())));
  // Even with a window: a command that never ran keeps nobody out.
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--hold-at-least", "1h", "--", "/nonexistent/command"}) == 127);
  CHECK(lock_cli(t, {"lock", "run", "cmd", "--", "true"}) == 0);  // not busy: released every time
  // When the database refuses that release too, the caller hears of it, and the code stays 127.
  {
    rowguard::test::RefusedUpdates refused(t.db(), "locks");
    CHECK(lock_cli(t, {"lock", "run", "refused", "--ttl", "1h", "--", "/nonexistent/command"}, &out, true) == 127);
    CHECK_THAT(out, Catch::Contains("rowguard: cannot run '/nonexistent/command'") &&
                        Catch::Contains("rowguard: the lease on 'refused' (token ") &&
                        Catch::Contains("could not be released") &&
                        Catch::Contains("the lock stays taken until its ttl (1h) runs out"));
    REQUIRE(lock_cli(t, {"--json", "lock", "run", "refused-json", "--", "/nonexistent/command"}, &out) == 127);
    CHECK(nlohmann::json::parse(out).at("released") == false);
  }
  CHECK(lock_cli(t, {"lock", "run", "refused", "--", "true"}) == 3);  // still taken: busy
  CHECK(lock_cli(t, {"--json", "lock", "run", "cmd", "--", "/nonexistent/command"}, &out) == 127);
  CHECK_FALSE(nlohmann::json::parse(out).contains("released"));  // released as usual
  REQUIRE(lock_cli(t, {"lock", "run", "--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("--conflict-exit-code") && Catch::Contains("--lost-exit-code") &&
                      Catch::Contains("--hold-at-least") && Catch::Contains("128+N") &&
                      Catch::Contains("CMD's own 3 or 8"));
}

TEST_CASE(
    "cli: lock run --hold-at-least keeps a fast job's lock until its window ends, so a second run right after it "
    "is busy and one after the window runs",
    "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  std::string out;
  REQUIRE(lock_cli(t, {"--json", "lock", "run", "fast", "--hold-at-least", "1500ms", "--", "true"}, &out) == 0);
  const auto ended = std::chrono::steady_clock::now();
  const auto first = nlohmann::json::parse(out);
  CHECK(first.at("exit_code") == 0);
  const auto held_for = std::chrono::milliseconds(first.at("held_for_ms").get<std::int64_t>());
  CHECK(held_for > std::chrono::milliseconds(0));
  CHECK(held_for <= std::chrono::milliseconds(1500));
  const int second = lock_cli(t, {"lock", "run", "fast", "--", "true"});
  if (std::chrono::steady_clock::now() - ended < held_for - std::chrono::milliseconds(200))
    CHECK(second == 3);
  else
    WARN("the second run started too late to find the window open");
  std::this_thread::sleep_for(held_for);
  CHECK(lock_cli(t, {"lock", "run", "fast", "--", "true"}) == 0);

  // A ttl shorter than the window: renewed while the command runs, then only the window holds it.
  // The command's own exit code passes through.
  REQUIRE(lock_cli(t,
                   {"--json", "lock", "run", "slow", "--ttl", "600ms", "--hold-at-least", "2s", "--", "sh", "-c",
                    "sleep 0.8; exit 5"},
                   &out) == 5);
  const auto slow = nlohmann::json::parse(out);
  CHECK(slow.at("exit_code") == 5);
  CHECK(slow.at("held_for_ms").get<std::int64_t>() > 0);
  CHECK(lock_cli(t, {"lock", "run", "slow", "--wait", "5s", "--", "true"}) == 0);  // waits for the window's end
}

namespace {
// The CLI on t's database: --db, --prefix (and --json unless json is false), then args.
struct TestCli {
  rowguard::test::TestDb& t;
  int operator()(std::vector<std::string> args, std::string* out = nullptr, bool json = true) const {
    args.insert(args.begin(), {"--db", t.url(), "--prefix", t.db().table_prefix()});
    if (json) args.insert(args.begin(), "--json");
    return run_cli(args, out);
  }
  // The same with stderr after stdout, for messages.
  int with_stderr(std::vector<std::string> args, std::string* out) const {
    args.insert(args.begin(), {"--db", t.url(), "--prefix", t.db().table_prefix()});
    return run_cli(args, out, true);
  }
};

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// A file of the given lines in a new scratch directory.
std::string lines_file(const std::vector<std::string>& lines, const std::string& name = "batch.jsonl") {
  const auto path = rowguard::test::scratch_dir() / name;
  std::ofstream out(path);
  for (const auto& l : lines) out << l << '\n';
  return path.string();
}

// The account's balance, read by the library.
std::int64_t balance(rowguard::test::TestDb& t, const std::string& id) { return Ledger(t.db()).get(id).balance; }
}  // namespace

TEST_CASE("cli: reverse refunds a transfer whole or in part, with the exit codes of transfer",
          "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  for (const char* id : {"alice", "bob", "carol"}) REQUIRE(cli({"account", "open", id}) == 0);
  REQUIRE(cli({"deposit", "alice", "1000", "--key", "d1"}) == 0);
  REQUIRE(cli({"transfer", "alice", "bob", "400", "--key", "t1"}) == 0);
  REQUIRE(cli({"transfer", "alice", "bob", "100", "--key", "t2"}) == 0);
  REQUIRE(cli({"transfer", "alice", "bob", "99999", "--key", "rejected"}) == 4);

  REQUIRE(cli({"reverse", "t1", "150", "--key", "r1"}, &out) == 0);
  const auto first = nlohmann::json::parse(out);
  CHECK(first.at("status") == "ok");
  CHECK(first.at("replayed") == false);
  CHECK(first.at("key") == "r1");
  CHECK(balance(t, "alice") == 650);
  CHECK(balance(t, "bob") == 350);
  // The same command again replays: the same result, nothing moved.
  REQUIRE(cli({"reverse", "t1", "150", "--key", "r1"}, &out) == 0);
  auto again = nlohmann::json::parse(out);
  CHECK(again.at("replayed") == true);
  again["replayed"] = false;
  CHECK(again == first);
  CHECK(balance(t, "alice") == 650);
  CHECK(cli({"reverse", "t1", "151", "--key", "r1"}) == 7);          // the key with another amount
  CHECK(cli({"reverse", "t2", "150", "--key", "r1"}) == 7);          // or another transfer
  REQUIRE(cli({"reverse", "t1", "300", "--key", "r2"}, &out) == 2);  // 150 + 300 > 400
  CHECK(nlohmann::json::parse(out).at("error").at("kind") == "invalid_argument");
  CHECK(cli({"reverse", "t1", "250", "--key", "r2"}) == 0);  // exactly the rest
  CHECK(cli({"reverse", "t1", "1", "--key", "r3"}) == 2);
  // Without AMOUNT: the whole transfer, so a retry asks for the same amount and replays.
  REQUIRE(cli({"reverse", "t2", "--key", "r4"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == false);
  REQUIRE(cli({"reverse", "t2", "--key", "r4"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == true);
  CHECK(balance(t, "alice") == 1000);
  CHECK(balance(t, "bob") == 0);
  CHECK(cli({"reverse", "no-such-key", "--key", "r5"}) == 5);
  CHECK(cli({"reverse", "rejected", "--key", "r5"}) == 5);  // no applied transfer has it
  CHECK(cli({"reverse", "d1", "--key", "r5"}) == 5);        // a deposit is not a transfer between accounts
  CHECK(cli({"reverse", "t1"}) == 2);                       // --key is required
  CHECK(cli({"reverse", "t1", "0", "--key", "r5"}) == 2);
  CHECK(cli({"reverse", "t1", "1.5", "--key", "r5"}) == 2);
  // A destination that spent the money: the refund is rejected and recorded, exit 4 like transfer.
  REQUIRE(cli({"transfer", "alice", "carol", "100", "--key", "t3"}) == 0);
  REQUIRE(cli({"withdraw", "carol", "100", "--key", "w1"}) == 0);
  REQUIRE(cli({"reverse", "t3", "--key", "r6"}, &out) == 4);
  CHECK(nlohmann::json::parse(out).at("status") == "insufficient_funds");
  CHECK(nlohmann::json::parse(out).at("error").at("kind") == "insufficient_funds");
  // Text for people: the amount in major units.
  REQUIRE(cli({"transfer", "alice", "bob", "850", "--key", "t4"}) == 0);
  REQUIRE(cli({"reverse", "t4", "805", "--key", "r7"}, &out, false) == 0);
  CHECK_THAT(out, Catch::Contains("reversal of 8.05 EUR of transfer") && Catch::Contains("key r7"));

  // Voiding a captured hold names the reversal that refunds it, and that command works.
  REQUIRE(cli({"hold", "alice", "bob", "300", "--key", "h1", "--timeout", "10m"}, &out) == 0);
  const std::string hold = std::to_string(nlohmann::json::parse(out).at("hold_id").get<std::int64_t>());
  REQUIRE(cli({"capture", hold}) == 0);
  REQUIRE(cli.with_stderr({"void", hold}, &out) == 13);
  const std::string command = fmt::format("rowguard reverse 'hold:{}:capture' [AMOUNT] --key NEW_KEY", hold);
  CHECK_THAT(out, Catch::Contains(command));
  CHECK(cli({"reverse", fmt::format("hold:{}:capture", hold), "--key", "r8"}) == 0);
  REQUIRE(cli({"ledger", "check"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("ok") == true);
}

TEST_CASE("cli: batch runs JSON Lines in one transaction, linked chains whole or not at all",
          "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  for (const char* id : {"a", "b", "c"}) REQUIRE(cli({"account", "open", id}) == 0);
  REQUIRE(cli({"account", "open", "yen", "--currency", "JPY"}) == 0);
  REQUIRE(cli({"deposit", "a", "1000", "--key", "d1"}) == 0);
  const std::string file = lines_file({
      R"({"from": "a", "to": "b", "amount": 100, "key": "k1"})",
      R"({"from": "a", "to": "c", "amount": 50, "key": "k2", "linked": true})",  // a chain that applies:
      R"({"from": "c", "to": "b", "amount": 50, "key": "k3"})",                  // c pays what it got
      R"({"from": "b", "to": "c", "amount": 10, "key": "k4", "linked": true})",  // a chain that fails:
      R"({"from": "c", "to": "a", "amount": 99999, "key": "k5", "linked": false})", "",
      R"({"from": "a", "to": "b", "amount": 5, "key": "k6"})",
      R"({"from": "a", "to": "yen", "amount": 1, "key": "k7"})",
      R"({"from": "b", "to": "a", "amount": 99999, "key": "k8"})",  // rejected alone: recorded
  });
  // Exit 4: the first transfer that did not apply is line 4, failed with its chain for want of funds.
  REQUIRE(cli({"batch", file}, &out, false) == 4);
  const auto results = json_lines(out);
  REQUIRE(results.size() == 8);
  const std::vector<std::size_t> lines{1, 2, 3, 4, 5, 7, 8, 9};
  const std::vector<std::string> statuses{"ok", "ok", "ok", "failed", "failed", "ok", "failed", "insufficient_funds"};
  for (std::size_t i = 0; i < results.size(); ++i) {
    INFO(results[i].dump());
    CHECK(results[i].at("line") == lines[i]);
    CHECK(results[i].at("item") == i);
    CHECK(results[i].at("status") == statuses[i]);
    CHECK(results[i].at("replayed") == false);
    CHECK(results[i].at("transfer_id").is_null() == (statuses[i] == "failed"));
    CHECK(results[i].contains("error") == (statuses[i] == "failed"));
  }
  CHECK(results[3].at("error").at("kind") == "insufficient_funds");
  CHECK(results[3].at("error").at("exit_code") == 4);
  CHECK(results[4].at("error").at("kind") == "insufficient_funds");
  CHECK(results[6].at("error").at("kind") == "currency_mismatch");
  CHECK(results[6].at("error").at("exit_code") == 12);
  CHECK(balance(t, "a") == 845);
  CHECK(balance(t, "b") == 155);
  CHECK(balance(t, "c") == 0);
  // The whole file again: every result the same, the applied and rejected ones replayed, nothing moved.
  REQUIRE(cli({"batch", file}, &out, false) == 4);
  const auto replay = json_lines(out);
  REQUIRE(replay.size() == results.size());
  for (std::size_t i = 0; i < replay.size(); ++i) {
    auto same = replay[i];
    CHECK(same.at("replayed") == (statuses[i] != "failed"));
    same["replayed"] = false;
    CHECK(same == results[i]);
  }
  CHECK(balance(t, "a") == 845);
  CHECK(balance(t, "b") == 155);
  // The message on stderr names the first line that did not apply.
  REQUIRE(cli.with_stderr({"batch", file}, &out) == 4);
  CHECK_THAT(out, Catch::Contains("line 4 (key k4)") && Catch::Contains("4 of 8 transfers did not apply"));
  // Under --json stdout holds the item lines only, as without it.
  REQUIRE(cli({"batch", file}, &out) == 4);
  CHECK(json_lines(out).size() == 8);

  // The first failing line decides the exit code: a key reused with another amount (7), an unknown
  // account (5); 0 when everything applied or was replayed as applied.
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 101, "key": "k1"})",
                                  R"({"from": "a", "to": "nobody", "amount": 1, "key": "k9"})"})}) == 7);
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "nobody", "amount": 1, "key": "k9"})",
                                  R"({"from": "a", "to": "b", "amount": 101, "key": "k1"})"})}) == 5);
  REQUIRE(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 100, "key": "k1"})",
                                    R"({"from": "b", "to": "c", "amount": 1, "key": "k10"})"})},
              &out) == 0);
  const auto fine = json_lines(out);
  REQUIRE(fine.size() == 2);
  CHECK(fine[0].at("replayed") == true);
  CHECK(fine[1].at("replayed") == false);

  // stdin, with FILE absent or "-".
  const std::string base =
      fmt::format("'{}' --db '{}' --prefix '{}' batch", ROWGUARD_CLI, t.url(), t.db().table_prefix());
  const std::string one = lines_file({R"({"from": "a", "to": "b", "amount": 7, "key": "k11"})"});
  REQUIRE(rowguard::test::run_command(fmt::format("{} < '{}' 2>/dev/null", base, one), &out) == 0);
  REQUIRE(json_lines(out).size() == 1);
  CHECK(json_lines(out)[0].at("replayed") == false);
  REQUIRE(rowguard::test::run_command(fmt::format("cat '{}' | {} - 2>/dev/null", one, base), &out) == 0);
  CHECK(json_lines(out)[0].at("replayed") == true);
  // An empty input sends nothing and says so.
  REQUIRE(rowguard::test::run_command(fmt::format("{} < /dev/null 2>&1", base), &out) == 0);
  CHECK_THAT(out, Catch::Contains("no transfers; nothing was sent"));
  CHECK(balance(t, "a") == 838);
  CHECK(balance(t, "b") == 161);
  REQUIRE(cli({"ledger", "check"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("ok") == true);
}

TEST_CASE("cli: batch checks every line before it sends any, naming the bad line", "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  REQUIRE(cli({"account", "open", "a"}) == 0);
  REQUIRE(cli({"account", "open", "b"}) == 0);
  REQUIRE(cli({"deposit", "a", "1000", "--key", "d1"}) == 0);
  const std::string good = R"({"from": "a", "to": "b", "amount": 100, "key": "g1"})";
  // (bad third line, what its message says)
  const std::vector<std::pair<std::string, std::string>> bad{
      {R"({"from": "a", "to": "b", "amount": 1.5, "key": "x"})", "JSON integer"},
      {R"({"from": "a", "to": "b", "amount": 100.0, "key": "x"})", "JSON integer"},
      {R"({"from": "a", "to": "b", "amount": 1e2, "key": "x"})", "JSON integer"},
      {R"({"from": "a", "to": "b", "amount": "100", "key": "x"})", "JSON integer"},
      {R"({"from": "a", "to": "b", "amount": 9223372036854775808, "key": "x"})", "within 64 bits"},
      {R"({"from": "a", "to": "b", "amount": 0, "key": "x"})", "must be > 0"},
      {R"({"from": "a", "to": "b", "amount": 1, "key": "x", "memo": "hi"})", "unknown field \"memo\""},
      {R"({"from": "a", "to": "b", "amount": 1})", "\"key\" is missing"},
      {R"({"from": "a", "to": "b", "amount": 1, "key": 7})", "\"key\" must be a JSON string"},
      {R"({"from": "a", "to": "b", "amount": 1, "key": "x", "linked": "yes"})", "\"linked\" must be true or false"},
      {R"({"from": "a", "to": "b", "amount": 1, "amount": 2, "key": "x"})", "appears twice"},
      {R"({"from": "a", "to": "b", "amount": 1, "key": "x"} trailing)", "not JSON"},
      {R"([{"from": "a", "to": "b", "amount": 1, "key": "x"}])", "expected a JSON object"},
      {R"({"from": "a", "to": "b", "amount": 1, "key": "x", "linked": true})", "linked to nothing"},
  };
  for (const auto& [line, says] : bad) {
    INFO(line);
    REQUIRE(cli({"batch", lines_file({good, "", line})}, &out) == 2);
    const auto error = nlohmann::json::parse(out).at("error");
    CHECK(error.at("kind") == "invalid_argument");
    CHECK_THAT(error.at("message").get<std::string>(), Catch::StartsWith("line 3: ") && Catch::Contains(says));
  }
  // More transfers than one batch takes: refused at the first one too many, nothing sent.
  std::vector<std::string> many(max_batch_items + 1, good);
  REQUIRE(cli({"batch", lines_file(many)}, &out) == 2);
  CHECK_THAT(nlohmann::json::parse(out).at("error").at("message").get<std::string>(),
             Catch::StartsWith(fmt::format("line {}: more than {} transfers", max_batch_items + 1, max_batch_items)));
  CHECK(cli({"batch", (rowguard::test::scratch_dir() / "absent.jsonl").string()}) == 1);
  // Nothing was sent: no transfer has the good line's key, the balances are as they were.
  CHECK(cli({"ledger", "show", "--key", "g1"}) == 5);
  CHECK(balance(t, "a") == 1000);
  CHECK(balance(t, "b") == 0);
}

TEST_CASE("cli: ledger transfers --since and --until bound the creation time", "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  Ledger ledger(t.db());
  ledger.open("a", "EUR");
  ledger.open("b", "EUR");
  ledger.deposit("a", 1'000, "d");
  std::vector<std::int64_t> ids;  // three transfers, each created at least 3 ms after the one before
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    ids.push_back(ledger.transfer("a", "b", 10 + i, fmt::format("t{}", i)).transfer_id);
  }
  const std::int64_t second = ledger.find_transfer(ids[1]).created_at_ms;
  const std::int64_t third = ledger.find_transfer(ids[2]).created_at_ms;
  REQUIRE(second < third);
  auto listed = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"ledger", "transfers"});
    std::vector<std::int64_t> got;
    if (cli(args, &out) != 0) return std::vector<std::int64_t>{-1};
    const auto page = nlohmann::json::parse(out);
    for (const auto& item : page.at("items")) got.push_back(item.at("id"));
    return got;
  };
  const std::string since = "@" + std::to_string(second), until = "@" + std::to_string(third);
  // --since is inclusive, --until exclusive.
  CHECK(listed({"--since", since, "--until", until}) == std::vector<std::int64_t>{ids[1]});
  CHECK(nlohmann::json::parse(out).at("since") == rowguard::format_time(second));
  CHECK(nlohmann::json::parse(out).at("until") == rowguard::format_time(third));
  CHECK(listed({"--since", since}) == std::vector<std::int64_t>{ids[2], ids[1]});
  CHECK(listed({"--since", since, "--account", "b", "--entries"}) == std::vector<std::int64_t>{ids[2], ids[1]});
  CHECK(listed({"--since", since, "--limit", "1"}) == std::vector<std::int64_t>{ids[2]});
  CHECK(listed({"--since", since, "--limit", "1", "--before", std::to_string(ids[2])}) ==
        std::vector<std::int64_t>{ids[1]});
  CHECK(listed({"--until", until}).size() == 3);  // the deposit too
  CHECK(listed({"--since", until, "--until", until}).empty());
  // ISO 8601, and durations meaning that long before now on the database clock.
  CHECK(listed({"--since", rowguard::format_time(second)}) == std::vector<std::int64_t>{ids[2], ids[1]});
  CHECK(listed({"--since", "2000-01-01T00:00:00+02:00"}).size() == 4);
  CHECK(listed({"--since", "1h"}).size() == 4);
  CHECK(listed({"--until", "1h"}).empty());
  CHECK(listed({"--since", "1h", "--account", "a"}).size() == 4);
  CHECK(cli({"ledger", "transfers", "--since", until, "--until", since}) == 2);  // since after until
  CHECK(cli({"ledger", "transfers", "--since", "yesterday"}) == 2);
  CHECK(cli({"ledger", "transfers", "--until", "2026-02-30"}) == 2);
  CHECK(cli({"ledger", "transfers", "--since", "1h", "--account", "nobody"}) == 5);
  // history takes the same times.
  REQUIRE(cli({"ledger", "history", "b", "--since", "1h", "--until", until}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("items").size() == 2);
}

TEST_CASE("cli: under --json reverse and batch print one JSON object per result, failures included",
          "[unit][threads]") {
  JsonCase run("reverse, batch");  // run(COMMAND, ARGS, EXIT_CODE[, SHAPE])
  const std::string& db = run.db();
  REQUIRE(run_cli({"--db", db, "account", "open", "alice"}) == 0);
  REQUIRE(run_cli({"--db", db, "account", "open", "bob"}) == 0);
  REQUIRE(run_cli({"--db", db, "deposit", "alice", "1000"}) == 0);
  REQUIRE(run_cli({"--db", db, "transfer", "alice", "bob", "100", "--key", "t1"}) == 0);
  CHECK(field(run("reverse", {"reverse", "t1", "40", "--key", "r1"}, 0), "status") == "ok");
  CHECK(kind(run("reverse", {"reverse", "t1", "61", "--key", "r2"}, 2)) == "invalid_argument");
  CHECK(kind(run("reverse", {"reverse", "t1", "--key", "r1"}, 7)) == "idempotency_mismatch");
  CHECK(kind(run("reverse", {"reverse", "nothing", "--key", "r3"}, 5)) == "not_found");
  CHECK(kind(run("reverse", {"reverse", "t1"}, 2)) == "usage");
  const auto file = (run.dir() / "b.jsonl").string();
  std::ofstream(file) << R"({"from": "alice", "to": "bob", "amount": 1, "key": "b1"})" << '\n'
                      << R"({"from": "bob", "to": "alice", "amount": 2, "key": "b2"})" << '\n';
  CHECK(run("batch", {"batch", file}, 0, items).objects.size() == 2);
  std::ofstream(file) << R"({"from": "bob", "to": "alice", "amount": 99999, "key": "b3"})" << '\n';
  // A batch carries each transfer's outcome in its line: a rejection exits 4 without another object.
  CHECK(field(run("batch", {"batch", file}, 4, outcome), "status") == "insufficient_funds");
  std::ofstream(file) << R"({"from": "bob", "to": "alice", "amount": 1.5, "key": "b4"})" << '\n';
  CHECK(kind(run("batch", {"batch", file}, 2)) == "invalid_argument");
}

TEST_CASE("cli: results print from_balance and to_balance, history the running balance, check the chain",
          "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  auto json = [&] { return nlohmann::json::parse(out); };
  for (const char* id : {"a", "b"}) REQUIRE(cli({"account", "open", id}) == 0);
  REQUIRE(cli({"deposit", "a", "1000", "--key", "d1"}, &out) == 0);
  CHECK(json().at("from_balance").is_null());
  CHECK(json().at("to_balance") == 1000);
  REQUIRE(cli({"transfer", "a", "b", "250", "--key", "t1"}, &out) == 0);
  CHECK(json().at("from_balance") == 750);
  CHECK(json().at("to_balance") == 250);
  REQUIRE(cli({"withdraw", "b", "50", "--key", "w1"}, &out) == 0);
  CHECK(json().at("from_balance") == 200);
  CHECK(json().at("to_balance").is_null());
  REQUIRE(cli({"transfer", "a", "b", "250", "--key", "t1"}, &out) == 0);  // a replay: the original's
  CHECK(json().at("replayed") == true);
  CHECK(json().at("from_balance") == 750);
  CHECK(json().at("to_balance") == 250);
  REQUIRE(cli({"reverse", "t1", "100", "--key", "r1"}, &out) == 0);
  CHECK(json().at("from_balance") == 100);
  CHECK(json().at("to_balance") == 850);
  REQUIRE(cli({"hold", "a", "b", "300", "--key", "h1", "--timeout", "1h"}, &out) == 0);
  const std::string hold_id = std::to_string(json().at("hold_id").get<std::int64_t>());
  REQUIRE(cli({"capture", hold_id, "200"}, &out) == 0);
  CHECK(json().at("from_balance") == 650);
  CHECK(json().at("to_balance") == 300);
  // The text shows them as money.
  REQUIRE(cli({"transfer", "b", "a", "1", "--key", "t2"}, &out, false) == 0);
  CHECK_THAT(out, Catch::Contains("from balance 2.99 EUR") && Catch::Contains("to balance 6.51 EUR"));
  const auto file = (rowguard::test::scratch_dir() / (t.db().table_prefix() + "balances.jsonl")).string();
  std::ofstream(file) << R"({"from": "a", "to": "b", "amount": 1, "key": "b1"})" << '\n';
  REQUIRE(cli({"batch", file}, &out) == 0);
  CHECK(json().at("from_balance") == 650);
  CHECK(json().at("to_balance") == 300);
  REQUIRE(cli({"ledger", "history", "a", "--oldest-first"}, &out) == 0);
  std::int64_t running = 0;
  const nlohmann::json history = json();  // kept: a range-for over a temporary's member would dangle
  for (const auto& item : history.at("items")) {
    running += item.at("change").get<std::int64_t>();
    CHECK(item.at("balance_after") == running);
  }
  CHECK(running == 650);
  REQUIRE(cli({"ledger", "history", "a"}, &out, false) == 0);
  CHECK_THAT(out, Catch::Contains("(balance 6.50 EUR)"));
  CHECK(cli({"ledger", "check"}) == 0);
  t.db().exec(fmt::format("UPDATE {}entries SET balance_after = balance_after + 7", t.db().table_prefix()));
  CHECK(cli({"ledger", "check"}, &out) != 0);
  CHECK_THAT(out, Catch::Contains("balance_after_mismatch"));
}

TEST_CASE("cli: --code, --reference, --metadata and --event-at are recorded, shown, compared and queried",
          "[backend][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  const TestCli cli{t};
  std::string out;
  for (const char* id : {"a", "b"}) REQUIRE(cli({"account", "open", id}) == 0);
  REQUIRE(cli({"deposit", "a", "1000", "--key", "d1", "--code", "1", "--reference", "wire-9", "--metadata",
               R"({"bank":"x"})", "--event-at", "2026-01-31T12:30:00Z"}) == 0);
  REQUIRE(cli({"transfer", "a", "b", "100", "--key", "t1", "--code", "7", "--reference", "order-42", "--metadata",
               R"({"shop":"eu","n":1})"}) == 0);
  REQUIRE(cli({"withdraw", "b", "10", "--key", "w1", "--reference", "payout-1"}) == 0);
  REQUIRE(
      cli({"hold", "a", "b", "50", "--key", "h1", "--timeout", "1h", "--code", "9", "--metadata", R"({"card":"visa"})"},
          &out) == 0);
  const std::int64_t hold_id = nlohmann::json::parse(out).at("hold_id");
  // The same key with the same details replays (metadata compared as JSON); another field exits 7 naming it.
  REQUIRE(cli({"transfer", "a", "b", "100", "--key", "t1", "--code", "7", "--reference", "order-42", "--metadata",
               R"({ "n": 1.0, "shop": "eu" })"},
              &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == true);
  REQUIRE(cli({"transfer", "a", "b", "100", "--key", "t1", "--code", "7", "--reference", "order-43", "--metadata",
               R"({"shop":"eu","n":1})"},
              &out) == 7);
  CHECK_THAT(nlohmann::json::parse(out).at("error").at("message").get<std::string>(),
             Catch::Contains("reference differs"));
  CHECK(cli({"transfer", "a", "b", "100", "--key", "t1", "--code", "8", "--reference", "order-42", "--metadata",
             R"({"shop":"eu","n":1})"}) == 7);
  CHECK(cli({"transfer", "a", "b", "100", "--key", "t1"}) == 7);
  CHECK(cli({"deposit", "a", "1000", "--key", "d1", "--code", "1", "--reference", "wire-9", "--metadata",
             R"({"bank":"x"})"}) == 7);  // without its event time
  CHECK(cli({"hold", "a", "b", "50", "--key", "h1", "--timeout", "1h", "--code", "9"}) == 7);
  // Bad input exits 2.
  CHECK(cli({"transfer", "a", "b", "1", "--code", "65536"}) == 2);
  CHECK(cli({"transfer", "a", "b", "1", "--code", "x"}) == 2);
  CHECK(cli({"transfer", "a", "b", "1", "--metadata", "[1]"}) == 2);
  CHECK(cli({"transfer", "a", "b", "1", "--metadata", "{"}) == 2);
  CHECK(cli({"transfer", "a", "b", "1", "--reference", std::string(129, 'r')}) == 2);
  CHECK(cli({"deposit", "a", "1", "--event-at", "yesterday"}) == 2);
  CHECK(cli({"ledger", "transfers", "--metadata", R"({"a":[1]})"}) == 2);
  CHECK(cli({"ledger", "transfers", "--code", "0"}) == 2);
  // Shown in JSON and in text.
  REQUIRE(cli({"ledger", "show", "d1"}, &out) == 0);
  const auto d1 = nlohmann::json::parse(out);
  CHECK(d1.at("code") == 1);
  CHECK(d1.at("reference") == "wire-9");
  CHECK(d1.at("metadata") == nlohmann::json{{"bank", "x"}});
  CHECK(d1.at("event_at") == "2026-01-31T12:30:00.000Z");
  CHECK(d1.at("event_at_ms") == rowguard::cli::parse_time("2026-01-31T12:30:00Z"));
  REQUIRE(cli({"ledger", "show", "w1"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("metadata").is_null());
  CHECK(nlohmann::json::parse(out).at("code") == 0);
  REQUIRE(cli({"ledger", "show", "t1"}, &out, false) == 0);
  CHECK_THAT(out, Catch::Contains("[code 7, reference order-42, metadata "));
  REQUIRE(cli({"hold-show", std::to_string(hold_id)}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("code") == 9);
  CHECK(nlohmann::json::parse(out).at("metadata") == nlohmann::json{{"card", "visa"}});
  REQUIRE(cli({"ledger", "history", "b"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("items").at(1).at("reference") == "order-42");
  // Batch lines take them too.
  const std::string file = lines_file({
      R"({"from": "a", "to": "b", "amount": 5, "key": "bt1", "code": 3, "reference": "order-50", "metadata": {"shop": "us"}, "event_at": "@1000"})",
      R"({"from": "a", "to": "b", "amount": 6, "key": "bt2", "reference": "order-51"})",
  });
  REQUIRE(cli({"batch", file}, &out, false) == 0);
  REQUIRE(cli({"ledger", "show", "bt1"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("event_at_ms") == 1000);
  CHECK(nlohmann::json::parse(out).at("metadata") == nlohmann::json{{"shop", "us"}});
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 5, "key": "bt1", "code": 4})"})}, &out,
            false) == 7);
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 5, "key": "x", "code": "3"})"})}) == 2);
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 5, "key": "x", "metadata": "{}"})"})}) == 2);
  // A line's metadata goes as the line spells it: a number beyond a double's precision keeps its
  // digits (the same key through transfer replays), and two equal keys inside it are refused.
  REQUIRE(
      cli({"batch",
           lines_file(
               {R"({"from": "a", "to": "b", "amount": 5, "key": "bt3", "metadata": {"id": 12345678901234567890123, "s": "a,}\"]"}})"})},
          &out, false) == 0);
  CHECK(cli({"transfer", "a", "b", "5", "--key", "bt3", "--metadata", R"({"s":"a,}\"]","id":12345678901234567890123})"},
            &out) == 0);
  CHECK(nlohmann::json::parse(out).at("replayed") == true);
  CHECK(cli({"batch",
             lines_file({R"({"from": "a", "to": "b", "amount": 5, "key": "bt4", "metadata": {"a": 1, "a": 2}})"})},
            &out, false) == 2);
  CHECK(cli({"batch", lines_file({R"({"from": "a", "to": "b", "amount": 5, "key": "x", "event_at": "soon"})"})}) == 2);
  // Queried.
  auto listed = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"ledger", "transfers"});
    std::vector<std::string> keys;
    if (cli(args, &out) != 0) return std::vector<std::string>{"(failed)"};
    // The parsed document in a variable of its own: a range-for over parse(out).at("items") walks a
    // temporary destroyed before the loop (its emptiness once looked like a filter that found nothing).
    const auto listing = nlohmann::json::parse(out);
    for (const auto& item : listing.at("items")) keys.push_back(item.at("key"));
    return keys;
  };
  CHECK(listed({"--code", "7"}) == std::vector<std::string>{"t1"});
  CHECK(listed({"--reference", "order-51"}) == std::vector<std::string>{"bt2"});
  CHECK(listed({"--metadata", R"({"shop":"eu"})"}) == std::vector<std::string>{"t1"});
  CHECK(listed({"--metadata", R"({"shop":"us"})", "--account", "a", "--since", "1h"}) ==
        std::vector<std::string>{"bt1"});
  CHECK(listed({"--code", "3", "--reference", "order-51"}).empty());
}

// Secrets stay secret: a password in the database URL appears in no output, error or JSON of the
// library and the CLI, successful or failing. Owner ids, the credential of a lease, are 128 random bits.
#include <set>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support.hpp"

using namespace rowguard;
using namespace rowguard::test;

namespace {
constexpr const char* secret = "Zq7-S3cr3t-pw";

// The URL of this backend's server with the password added (trust authentication ignores it).
std::string with_password(const std::string& url) {
  std::string u = url;
  const auto at = u.find("postgres@");
  REQUIRE(at != std::string::npos);
  u.replace(at, std::string("postgres@").size(), fmt::format("postgres:{}@", secret));
  return u;
}

// Runs the CLI with stdout and stderr together.
std::string cli_output(const std::vector<std::string>& args) {
  std::string output;
  run_cli(args, &output, true);
  return output;
}
}  // namespace

TEST_CASE("security: the URL's password is in no CLI output, error or JSON, nor in library errors", "[pg]") {
  TestDb t;
  const std::string url = with_password(t.url());
  const std::string prefix = t.db().table_prefix();
  const std::vector<std::vector<std::string>> commands{
      {"migrate"},
      {"version"},
      {"account", "open", "sec-a", "--currency", "EUR"},
      {"account", "open", "sec-b", "--currency", "EUR"},
      {"deposit", "sec-a", "500", "--key", "sec-dep"},
      {"transfer", "sec-a", "sec-b", "100", "--key", "sec-t1"},
      {"transfer", "sec-a", "sec-b", "100000", "--key", "sec-t2"},  // insufficient funds
      {"account", "show", "sec-nobody"},                            // not found
      {"lock", "acquire", "sec-lock", "--ttl", "10s"},
      {"lock", "list"},
      {"ledger", "check"},
      {"cache", "put", "sec-k", "v", "--ttl", "10s"},
      {"cache", "get", "sec-k"},
      {"account", "open", "sec-a", "--currency", "nope"},  // invalid argument
  };
  std::string all;
  for (const bool json : {false, true})
    for (const auto& c : commands) {
      std::vector<std::string> args{"--db", url, "--prefix", prefix};
      if (json) args.push_back("--json");
      args.insert(args.end(), c.begin(), c.end());
      all += cli_output(args);
    }
  // Failures that print the URL: an unreachable server, in URI and keyword form, and a bad option.
  all += cli_output({"--db", fmt::format("postgresql://postgres:{}@127.0.0.1:1/x", secret), "--json", "lock", "list"});
  all += cli_output({"--db", fmt::format("host=127.0.0.1 port=1 password={} dbname=x", secret), "lock", "list"});
  all += cli_output({"--db", fmt::format("postgresql://postgres:{}@127.0.0.1:1/x?bogus=1", secret), "lock", "list"});
  // The CLI did run against this server (the checks below would pass vacuously otherwise).
  CHECK(all.find("sec-lock") != std::string::npos);
  CHECK(all.find("\"token\"") != std::string::npos);
  CHECK(all.find(secret) == std::string::npos);

  // The library's own messages.
  std::string messages;
  for (const std::string& bad : {fmt::format("postgresql://postgres:{}@127.0.0.1:1/x", secret),
                                 fmt::format("postgresql://postgres:{}@127.0.0.1:1/x?bogus=1", secret),
                                 fmt::format("host=127.0.0.1 port=1 password='{}' dbname=x", secret)}) {
    try {
      Options o;
      o.connect_timeout = std::chrono::seconds(2);
      auto db = Database::open(bad, o);
      db.migrate();
    } catch (const Error& e) {
      messages += e.what();
    }
  }
  auto db = Database::open(url, t.options());
  messages += db.display_url();
  try {
    db.exec("SELECT * FROM no_such_table_here");
  } catch (const Error& e) {
    messages += e.what();
  }
  CHECK(messages.find("127.0.0.1") != std::string::npos);
  CHECK(messages.find(secret) == std::string::npos);
}

TEST_CASE("security: owner ids carry 128 random bits and never repeat", "[backend]") {
  TestDb t;
  Locks locks(t.db());
  std::set<std::string> seen;
  for (int i = 0; i < 20'000; ++i) {
    const std::string id = locks.new_owner();
    const auto colon = id.rfind(':');
    REQUIRE(colon != std::string::npos);
    REQUIRE(id.size() - colon - 1 == 32);  // 128 bits in hex
    seen.insert(id.substr(colon + 1));
  }
  CHECK(seen.size() == 20'000);
}

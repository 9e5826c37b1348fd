// Secrets stay secret: a password in the database URL appears in no output, error or JSON of the
// library and the CLI, successful or failing. Owner ids, the credential of a lease, are 128 random bits.
#if ROWGUARD_TEST_LIBPQ
#include <libpq-fe.h>
#endif

#include <algorithm>
#include <set>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "backend/url.hpp"

#include "support/support.hpp"

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

TEST_CASE("security: the URL's secrets are in no CLI output, error or JSON, nor in library errors, in every URL form",
          "[pg][threads]") {
  TestDb t;
  const std::string url = with_password(t.url());
  // The keyword form, as a SOCI URL too (soci+postgresql:password=... host=...: shown verbatim once).
  const std::string keywords =
      rowguard::test::keyword_form(t.url(), fmt::format("password='{0}' sslpassword={0}", secret));
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
  for (const std::string& db : {url, keywords})
    for (const bool json : {false, true})
      for (const auto& c : commands) {
        std::vector<std::string> args{"--db", db, "--prefix", prefix};
        if (json) args.push_back("--json");
        args.insert(args.end(), c.begin(), c.end());
        all += cli_output(args);
      }
  // Failures that print the URL: an unreachable server in every form, and a bad option.
  const std::vector<std::string> unreachable{
      fmt::format("postgresql://postgres:{}@127.0.0.1:1/x", secret),
      fmt::format("postgresql://postgres:{}?#x@127.0.0.1:1/x", secret),  // libpq: the password runs to the '@'
      fmt::format("postgresql://postgres:{}@127.0.0.1:1/x?bogus=1", secret),
      fmt::format("postgresql://postgres@127.0.0.1:1,127.0.0.1:2/x?sslpassword={}&password={}", secret, secret),
      fmt::format("host=127.0.0.1 port=1 password={} dbname=x", secret),
      fmt::format("host=127.0.0.1 port=1 password='{} x\\'y' sslpassword={} dbname=x", secret, secret),
      fmt::format("soci+postgresql:password={} host=127.0.0.1 port=1 dbname=x", secret),
      fmt::format("soci+postgresql:host=127.0.0.1 port=1 dbname=x sslpassword='{}'", secret),
      fmt::format("soci+postgresql://postgres:{}@127.0.0.1:1/x?application_name=a", secret),
  };
  for (const auto& bad : unreachable) {
    all += cli_output({"--db", bad, "--json", "lock", "list"});
    all += cli_output({"--db", bad, "lock", "list"});
  }
  // The CLI did run against this server (the checks below would pass vacuously otherwise).
  CHECK(all.find("sec-lock") != std::string::npos);
  CHECK(all.find("\"token\"") != std::string::npos);
  CHECK(all.find("127.0.0.1") != std::string::npos);
  CHECK(all.find(secret) == std::string::npos);

  // The library's own messages.
  std::string messages;
  for (const std::string& bad : unreachable) {
    try {
      Options o;
      o.connect_timeout = std::chrono::seconds(2);
      auto db = Database::open(bad, o);
      db.migrate();
      FAIL("opened " << bad);
    } catch (const Error& e) {
      messages += e.what();
    }
  }
  for (const std::string& u : {url, keywords}) {
    auto db = Database::open(u, t.options());
    messages += db.display_url();
    try {
      db.exec("SELECT * FROM no_such_table_here");
    } catch (const Error& e) {
      messages += e.what();
    }
  }
  INFO(messages);
  CHECK(messages.find("127.0.0.1") != std::string::npos);
  CHECK(messages.find("password=***") != std::string::npos);
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

TEST_CASE("security: password and sslpassword are hidden in every accepted URL form", "[unit]") {
  const std::string s = "Zq7-S3cr3t";
  struct Case {
    std::string url;
    std::vector<std::string> hidden;  // must not appear in the display form
    std::vector<std::string> shown;   // the rest stays readable
  };
  const std::vector<Case> cases{
      {"postgresql://app:" + s + "@db.example/pay", {s}, {"app", "db.example/pay"}},
      {"postgres://app:" + s + "@h1:5432,h2:5433/pay?target_session_attrs=read-write",
       {s},
       {"h1:5432,h2:5433/pay", "target_session_attrs=read-write"}},
      {"postgresql://app:" + s + "%3F%40%26x@db/pay", {s, "%3F%40%26x"}, {"db/pay"}},
      // libpq ends the user information at the first '@' before a '/': '?' and '#' belong to it.
      {"postgresql://app:" + s + "?x#y@db/pay", {s, "?x#y"}, {"db/pay"}},
      {"postgresql://db/pay?user=app&password=" + s + "&sslmode=prefer", {s}, {"user=app", "sslmode=prefer"}},
      {"postgresql://db/pay?sslpassword=" + s + "&sslkey=/keys/app.key", {s}, {"sslkey=/keys/app.key"}},
      {"postgresql://db/pay?%70assword=" + s + "&application_name=x", {s}, {"application_name=x"}},
      {"postgresql://db/pay?password=" + s + "#frag&application_name=x", {s, "#frag"}, {"application_name=x"}},
      {"host=db password=" + s + " dbname=pay", {s}, {"host=db", "dbname=pay"}},
      {"host=db password = '" + s + " it\\'s' dbname=pay", {s, "it\\'s"}, {"dbname=pay"}},
      {"host=db sslpassword=" + s + " user=app", {s}, {"user=app"}},
      {"host=db password=" + s + "\\ more dbname=pay", {s, "more"}, {"dbname=pay"}},
      {"host=db\tpassword=" + s + "\tdbname=pay", {s}, {"dbname=pay"}},
      {"host=db PASSWORD=" + s, {s}, {"host=db"}},
      {"soci+postgresql:password=" + s + " host=db dbname=pay", {s}, {"host=db", "dbname=pay"}},
      {"soci+postgresql:host=db sslpassword='" + s + "'", {s}, {"host=db"}},
      {"soci+postgres://app:" + s + "@db/pay?sslpassword=" + s + "2", {s}, {"soci+postgres://app:", "db/pay"}},
      {"soci+postgresql://app@db/pay?application_name=x&password=" + s, {s}, {"application_name=x"}},
  };
  for (const auto& c : cases) {
    INFO(c.url);
    const auto parsed = detail::parse_url(c.url);
    INFO(parsed.display);
    CHECK(detail::redact(c.url) == parsed.display);
    for (const auto& h : c.hidden) CHECK(parsed.display.find(h) == std::string::npos);
    for (const auto& v : c.shown) CHECK(parsed.display.find(v) != std::string::npos);
    // A message that echoes the URL (libpq quotes a malformed URI whole) is scrubbed of every secret.
    const std::string echoed = detail::scrub("cannot use \"" + c.url + "\"", parsed.secrets);
    for (const auto& h : c.hidden) CHECK(echoed.find(h) == std::string::npos);
#if ROWGUARD_TEST_LIBPQ
    // Every secret libpq itself reads from the string is among the secrets, as libpq reads it.
    if (PQconninfoOption* options = PQconninfoParse(parsed.target.c_str(), nullptr)) {
      for (const PQconninfoOption* o = options; o->keyword; ++o)
        if (o->val && *o->val && detail::is_secret_parameter(o->keyword)) {
          INFO(o->keyword);
          CHECK(std::count(parsed.secrets.begin(), parsed.secrets.end(), o->val) == 1);
        }
      PQconninfoFree(options);
    }
#endif
  }
#if ROWGUARD_TEST_LIBPQ
  // Every parameter that libpq hides ("*") is a secret to rowguard.
  PQconninfoOption* defaults = PQconndefaults();
  REQUIRE(defaults);
  int hidden_by_libpq = 0;
  for (const PQconninfoOption* o = defaults; o->keyword; ++o)
    if (std::string_view(o->dispchar) == "*") {
      INFO(o->keyword);
      CHECK(detail::is_secret_parameter(o->keyword));
      ++hidden_by_libpq;
    }
  PQconninfoFree(defaults);
  CHECK(hidden_by_libpq >= 2);  // password, sslpassword
#endif
}

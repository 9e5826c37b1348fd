// Tests that need no database server: URL parsing, redaction, SQL text helpers, exit codes, options.
#include <cctype>
#include <cstdint>

#include <catch2/catch.hpp>

#include "rowguard/config.hpp"
#include "rowguard/money.hpp"
#include "rowguard/schema.hpp"

#include "base/sql_text.hpp"
#if ROWGUARD_HAVE_POSTGRES || ROWGUARD_HAVE_SOCI
#include "backend/postgres/engine.hpp"
#endif
#include "backend/sqlite/engine.hpp"
#include "backend/url.hpp"

#include "core/schema_scripts.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::detail::PlaceholderStyle;
using rowguard::test::kind_of;

namespace {
ErrorKind kind_of_open(const std::string& url, Options options = {}) {
  try {
    Database::open(url, options);
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("open(" << url << ") succeeded");
  return ErrorKind::permanent;
}

std::string message_of_open(const std::string& url) {
  try {
    Database::open(url);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST_CASE("placeholders are rewritten outside literals and comments", "[unit]") {
  const std::string sql = "SELECT $1, '$2', \"$3\" -- $4\n, /* $5 */ $12 FROM t WHERE a = $2";
  CHECK(detail::rewrite_placeholders(sql, PlaceholderStyle::question_numbered) ==
        "SELECT ?1, '$2', \"$3\" -- $4\n, /* $5 */ ?12 FROM t WHERE a = ?2");
  CHECK(detail::rewrite_placeholders(sql, PlaceholderStyle::colon_named) ==
        "SELECT :p1, '$2', \"$3\" -- $4\n, /* $5 */ :p12 FROM t WHERE a = :p2");
  CHECK(detail::rewrite_placeholders("SELECT 'it''s $1', $1", PlaceholderStyle::question_numbered) ==
        "SELECT 'it''s $1', ?1");
  CHECK(detail::rewrite_placeholders(sql, PlaceholderStyle::dollar) == sql);
}

TEST_CASE("statement effects decide what a lost connection means", "[unit]") {
  using detail::StatementEffect;
  CHECK(detail::effect_of("  select 1") == StatementEffect::read);
  CHECK(detail::effect_of("-- note\nSELECT 1") == StatementEffect::read);
  CHECK(detail::effect_of(std::string(detail::plan_each_call_marker) + "SELECT 1") == StatementEffect::read);
  CHECK(detail::effect_of("/* unterminated SELECT 1") != StatementEffect::read);
  CHECK(detail::effect_of("UPDATE t SET a = 1") == StatementEffect::write);
  CHECK(detail::effect_of("WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x") == StatementEffect::write);
  CHECK(detail::effect_of("COMMIT") == StatementEffect::commit);
  // A prepared transaction outlives its connection: a lost PREPARE or COMMIT PREPARED is in doubt.
  CHECK(detail::effect_of("PREPARE TRANSACTION 'g'") == StatementEffect::commit);
  CHECK(detail::effect_of("COMMIT PREPARED 'g'") == StatementEffect::commit);
  // The calls of the schema's functions write (a transfer, a lease) though they are SELECTs.
  CHECK(detail::effect_of(std::string(detail::writes_marker) + "SELECT * FROM rowguard_apply_transfer($1)") ==
        StatementEffect::write);
}

TEST_CASE("global transaction ids are checked strictly, since they are spliced into the statement", "[unit]") {
  CHECK_NOTHROW(detail::check_gid("rowguard:default:0123abcdef:eu-1_x"));
  CHECK_NOTHROW(detail::check_gid(std::string(200, 'a')));
  for (const std::string& bad : {std::string(), std::string(201, 'a'), std::string("a'b"), std::string("a b"),
                                 std::string("a\\b"), std::string("a;b"), std::string("\xc3\xa9")})
    CHECK_THROWS_AS(detail::check_gid(bad), Error);
}

TEST_CASE("hex encoding round-trips every byte and rejects garbage", "[unit]") {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  CHECK(detail::from_hex(detail::to_hex(all)) == all);
  CHECK(detail::from_hex("\\x00ff") == std::string("\0\xff", 2));
  CHECK_THROWS_AS(detail::from_hex("abc"), Error);
  CHECK_THROWS_AS(detail::from_hex("zz"), Error);
  CHECK(detail::from_hex("ABcd09") == std::string("\xab\xcd\x09", 3));
  // Every byte that is no hex digit is refused, in either place of a pair, wherever the pair is.
  for (int c = 0; c < 256; ++c) {
    if (std::isxdigit(c)) continue;
    const std::string bad(1, static_cast<char>(c));
    CHECK_THROWS_AS(detail::from_hex("00" + bad + "0"), Error);
    CHECK_THROWS_AS(detail::from_hex("000" + bad), Error);
    CHECK_THROWS_AS(detail::from_hex(bad + "000"), Error);
  }
}

TEST_CASE("passwords are redacted from every URL form", "[unit]") {
  CHECK(detail::redact("postgresql://app:s3cret@db:5432/pay") == "postgresql://app:***@db:5432/pay");
  CHECK(detail::redact("postgresql://db/pay?user=app&password=s3cret&sslmode=require") ==
        "postgresql://db/pay?user=app&password=***&sslmode=require");
  CHECK(detail::redact("host=db password=s3cret dbname=pay") == "host=db password=*** dbname=pay");
  CHECK(detail::redact("host=db password='s3 cret' dbname=pay") == "host=db password=*** dbname=pay");
  CHECK(detail::redact("host=db password=*s3cret dbname=pay") == "host=db password=*** dbname=pay");  // fuzz find
  CHECK(detail::redact("soci+postgresql://app:s3cret@db/pay") == "soci+postgresql://app:***@db/pay");
  CHECK(detail::parse_url("postgresql://app:s%33cret@db/pay").secrets == detail::Secrets{"s%33cret", "s3cret"});
  CHECK(detail::scrub("failed for s3cret at s3cret", {"s3cret"}) == "failed for *** at ***");
}

TEST_CASE("URLs select the engine", "[unit]") {
  using detail::Engine;
  CHECK(detail::parse_url("sqlite::memory:").memory);
  CHECK(detail::parse_url("sqlite:/tmp/a.db").target == "/tmp/a.db");
  CHECK(detail::parse_url("sqlite:///tmp/a.db").target == "/tmp/a.db");
  CHECK(detail::parse_url("postgres://h/db").engine == Engine::postgres);
  CHECK(detail::parse_url("host=/tmp dbname=x").engine == Engine::postgres);
  CHECK(detail::parse_url("soci+sqlite3:/tmp/a.db").engine == Engine::soci_sqlite3);
  CHECK(detail::parse_url("soci+postgresql://h/db").target == "postgresql://h/db");
  CHECK(detail::parse_url("soci+postgresql:host=h dbname=db").target == "host=h dbname=db");
}

TEST_CASE("rowguard_pooling=transaction is taken out of the URL before libpq sees it", "[unit]") {
  const auto uri = detail::parse_url("postgresql://app@db:6432/pay?sslmode=require&rowguard_pooling=transaction&x=1");
  CHECK(uri.transaction_pooling);
  CHECK(uri.target == "postgresql://app@db:6432/pay?sslmode=require&x=1");
  const auto only = detail::parse_url("postgresql://db/pay?rowguard_pooling=transaction");
  CHECK(only.transaction_pooling);
  CHECK(only.target == "postgresql://db/pay");
  const auto keywords = detail::parse_url("host=db rowguard_pooling=transaction dbname=pay");
  CHECK(keywords.transaction_pooling);
  CHECK(keywords.target == "host=db  dbname=pay");
  const auto session = detail::parse_url("postgresql://db/pay?rowguard_pooling=session");
  CHECK_FALSE(session.transaction_pooling);
  CHECK(session.target == "postgresql://db/pay");
  CHECK_FALSE(detail::parse_url("postgresql://db/pay").transaction_pooling);
  std::string message;
  CHECK(test::kind_of([] { detail::parse_url("postgresql://db/pay?rowguard_pooling=statement"); }, &message) ==
        ErrorKind::invalid_argument);
  CHECK(message.find("'session' or 'transaction'") != std::string::npos);
  // SOCI prepares named statements, which a transaction pooler loses between transactions.
  CHECK(test::kind_of([] { detail::parse_url("soci+postgresql://db/pay?rowguard_pooling=transaction"); }, &message) ==
        ErrorKind::invalid_argument);
}

TEST_CASE("bad URLs and options are invalid_argument", "[unit]") {
  CHECK(kind_of_open("") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("mysql://localhost/db") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("sqlite:") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("soci+sqlite3::memory:") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("postgresql://localhost/db?no_such_option=1") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("postgresql://[::1/db") == ErrorKind::invalid_argument);
  CHECK(kind_of_open("soci+postgresql:not a url") == ErrorKind::invalid_argument);
  for (const char* prefix :
       {"", "Bad_", "1abc_", "a-b_", "x;drop table y;", "abcdefghijklmnopqrstuvwxyzabcdefghijklmno"}) {
    Options options;
    options.table_prefix = prefix;
    INFO("prefix '" << prefix << "'");
    CHECK(kind_of_open("sqlite::memory:", options) == ErrorKind::invalid_argument);
  }
  Options zero;
  zero.pool_size = 0;
  CHECK(kind_of_open("sqlite::memory:", zero) == ErrorKind::invalid_argument);
  Options app;
  app.application_name = "bad\nname";
  CHECK(kind_of_open("sqlite::memory:", app) == ErrorKind::invalid_argument);
  for (const auto seconds : {1, 3601, -5}) {
    Options network;
    network.network_timeout = std::chrono::seconds(seconds);
    INFO("network_timeout " << seconds << "s");
    CHECK(kind_of_open("sqlite::memory:", network) == ErrorKind::invalid_argument);
  }
}

TEST_CASE("sessions get TCP keepalives and tcp_user_timeout from network_timeout unless the URL sets them", "[unit]") {
  Options options;  // network_timeout 30s, connect_timeout 10s
  CHECK(detail::with_session_defaults("postgresql://db/pay", options) ==
        "postgresql://db/pay?application_name=rowguard&connect_timeout=10&keepalives=1&keepalives_idle=10"
        "&keepalives_interval=5&keepalives_count=3&tcp_user_timeout=30000");
  // The URL's own values win, key by key, in both connection-string forms.
  CHECK(detail::with_session_defaults("postgresql://db/pay?tcp_user_timeout=0&keepalives_idle=60", options) ==
        "postgresql://db/pay?tcp_user_timeout=0&keepalives_idle=60&application_name=rowguard&connect_timeout=10"
        "&keepalives=1&keepalives_interval=5&keepalives_count=3");
  CHECK(detail::with_session_defaults("host=db keepalives=0", options) ==
        "host=db keepalives=0 application_name='rowguard' connect_timeout='10' keepalives_idle='10' "
        "keepalives_interval='5' keepalives_count='3' tcp_user_timeout='30000'");
  options.network_timeout = std::chrono::seconds(0);  // the system's TCP defaults
  CHECK(detail::with_session_defaults("postgresql://db/pay", options) ==
        "postgresql://db/pay?application_name=rowguard&connect_timeout=10");
  options.network_timeout = std::chrono::seconds(2);
  CHECK(detail::with_session_defaults("postgresql://db/pay", options)
            .find("keepalives_idle=1&keepalives_interval=1&keepalives_count=3&tcp_user_timeout=2000") !=
        std::string::npos);
}

TEST_CASE("an unreachable server is transient and never shows the password", "[unit]") {
  std::vector<std::string> urls;  // through each PostgreSQL driver this build has
#if ROWGUARD_HAVE_POSTGRES
  urls.push_back("postgresql://app:s3cretpw@127.0.0.1:1/db?connect_timeout=2");
  urls.push_back("host=127.0.0.1 port=1 user=app password=s3cretpw connect_timeout=2");
#endif
#if ROWGUARD_HAVE_SOCI
  urls.push_back("soci+postgresql://app:s3cretpw@127.0.0.1:1/db?connect_timeout=2");
#endif
  for (const auto& url : urls) {
    INFO(url);
    CHECK(kind_of_open(url) == ErrorKind::transient);
    const std::string message = message_of_open(url);
    CHECK_FALSE(message.empty());
    CHECK(message.find("s3cretpw") == std::string::npos);
  }
#if !ROWGUARD_HAVE_POSTGRES && !ROWGUARD_HAVE_SOCI
  // Without a PostgreSQL driver such a URL is refused as such, still without its password.
  const std::string url = "postgresql://app:s3cretpw@127.0.0.1:1/db";
  CHECK(kind_of_open(url) == ErrorKind::invalid_argument);
  CHECK(message_of_open(url).find("s3cretpw") == std::string::npos);
#endif
}

TEST_CASE("SQLite files: a missing directory and a read-only file", "[unit]") {
  CHECK(kind_of_open("sqlite:/nonexistent-rowguard-dir/x.db") == ErrorKind::transient);
  const auto path = (rowguard::test::scratch_dir() / "ro.db").string();
  Database::open("sqlite:" + path).migrate();
  auto ro = Database::open("sqlite:file:" + path + "?mode=ro");
  CHECK(ro.schema_version() == Database::library_schema_version());
  try {
    ro.exec("INSERT INTO rowguard_fences (resource, last_token, updated_at) VALUES ($1, 1, 0)", {std::string("r")});
    FAIL("a write to a read-only database succeeded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::permanent);
    CHECK(e.sqlstate() == "25006");
  }
}

TEST_CASE("schema scripts: both dialects have the same steps, and prefixes replace whole identifiers", "[unit]") {
  const auto lite = detail::migrations("sqlite");
  const auto pg = detail::migrations("postgres");
  REQUIRE(lite.size() == pg.size());
  for (std::size_t i = 0; i < lite.size(); ++i) {
    // 1, 2, 3, ... without a gap: a database at N has every step up to N.
    CHECK(lite[i].version == static_cast<int>(i + 1));
    CHECK(lite[i].script->name == pg[i].script->name);
  }
  REQUIRE_FALSE(lite.empty());
  CHECK(Database::library_schema_version() == lite.back().version);
  CHECK(detail::with_prefix("CREATE TABLE rowguard_locks (x_rowguard_y int); -- rowguard_ ", "app_") ==
        "CREATE TABLE app_locks (x_rowguard_y int); -- app_ ");
  for (const char* table : {"schema_version", "locks", "fences", "accounts", "transfers", "entries", "cache"}) {
    bool found = false;
    for (const auto& script : detail::schema_scripts())
      found = found || script.sql.find(std::string("rowguard_") + table + " (") != std::string_view::npos;
    CHECK(found);
  }
}

TEST_CASE("schema_sql: a script per dialect and part, prefixed, and other dialects, parts and prefixes are refused",
          "[unit]") {
  const std::string pg = schema_sql("postgres", SchemaPart::migrations, "acme_");
  CHECK_THAT(pg, Catch::Contains("acme_accounts"));
  CHECK_THAT(pg, !Catch::Contains("rowguard_accounts"));
  CHECK_THAT(pg, Catch::Contains("FUNCTION acme_apply_transfer("));  // the server-side statements too
  CHECK_THAT(schema_sql("sqlite"), Catch::Contains("rowguard_locks"));
  CHECK_THAT(schema_sql("postgres", SchemaPart::roles), Catch::Contains("rowguard_app"));
  std::string message;
  CHECK(kind_of([] { (void)schema_sql("mysql"); }, &message) == ErrorKind::invalid_argument);
  CHECK_THAT(message, Catch::Contains("mysql"));
  CHECK(kind_of([] { (void)schema_sql("sqlite", SchemaPart::roles); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([] { (void)schema_sql("sqlite", SchemaPart::partitioning); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([] { (void)schema_sql("postgres", SchemaPart::migrations, "bad prefix;"); }) ==
        ErrorKind::invalid_argument);
}

#if ROWGUARD_HAVE_POSTGRES || ROWGUARD_HAVE_SOCI  // the PostgreSQL engine is built with either driver
TEST_CASE(
    "error tables: SQLSTATEs map onto kinds, and a lost connection leaves a commit or an autocommit write in doubt",
    "[unit]") {
  const std::vector<std::pair<std::string, ErrorKind>> states = {
      {"40001", ErrorKind::conflict},  {"40P01", ErrorKind::conflict},  {"55P03", ErrorKind::conflict},
      {"40003", ErrorKind::in_doubt},  {"08006", ErrorKind::transient}, {"08001", ErrorKind::transient},
      {"57P01", ErrorKind::transient}, {"57P03", ErrorKind::transient}, {"53300", ErrorKind::transient},
      {"57014", ErrorKind::transient}, {"23505", ErrorKind::permanent}, {"42501", ErrorKind::permanent},
      {"42P01", ErrorKind::permanent}, {"25006", ErrorKind::transient}, {"22003", ErrorKind::permanent}};
  for (const auto& [state, kind] : states) {
    INFO(state);
    CHECK(detail::kind_for_sqlstate(state) == kind);
  }
  CHECK(detail::outcome_unknown(detail::StatementEffect::commit, true));
  CHECK(detail::outcome_unknown(detail::StatementEffect::write, false));
  CHECK_FALSE(detail::outcome_unknown(detail::StatementEffect::write, true));
  CHECK_FALSE(detail::outcome_unknown(detail::StatementEffect::read, false));
}
#endif

TEST_CASE("error tables: SQLite codes map onto kinds and SQLSTATEs", "[unit]") {
  // SQLite extended result codes (sqlite3.h): BUSY 5, LOCKED 6, READONLY 8, CANTOPEN 14,
  // CONSTRAINT_UNIQUE 2067, CONSTRAINT_PRIMARYKEY 1555, CONSTRAINT_FOREIGNKEY 787, CONSTRAINT_CHECK 275.
  CHECK(detail::kind_for_sqlite(5) == ErrorKind::conflict);
  CHECK(detail::kind_for_sqlite(6) == ErrorKind::conflict);
  CHECK(detail::kind_for_sqlite(8) == ErrorKind::permanent);
  CHECK(detail::kind_for_sqlite(14) == ErrorKind::transient);
  CHECK(detail::kind_for_sqlite(2067) == ErrorKind::permanent);
  CHECK(detail::sqlstate_for_sqlite(2067) == "23505");
  CHECK(detail::sqlstate_for_sqlite(1555) == "23505");
  CHECK(detail::sqlstate_for_sqlite(787) == "23503");
  CHECK(detail::sqlstate_for_sqlite(275) == "23514");
  CHECK(detail::sqlstate_for_sqlite(8) == "25006");
}

TEST_CASE("amounts for people are in major units by the currency's ISO 4217 exponent", "[unit]") {
  CHECK(format_money(123456, "EUR") == "1234.56 EUR");
  CHECK(format_money(500000, "EUR") == "5000.00 EUR");
  CHECK(format_money(5, "EUR") == "0.05 EUR");
  CHECK(format_money(0, "USD") == "0.00 USD");
  CHECK(format_money(-5, "EUR") == "-0.05 EUR");
  CHECK(format_money(500, "JPY") == "500 JPY");
  CHECK(format_money(-500, "KRW") == "-500 KRW");
  CHECK(format_money(1234, "BHD") == "1.234 BHD");
  CHECK(format_money(7, "KWD") == "0.007 KWD");
  CHECK(format_money(12345, "CLF") == "1.2345 CLF");
  CHECK(format_money(100, "ZZZ") == "1.00 ZZZ");  // not in the table: the usual 2
  CHECK(format_money(INT64_MAX, "EUR") == "92233720368547758.07 EUR");
  CHECK(format_money(INT64_MIN, "EUR") == "-92233720368547758.08 EUR");
  CHECK(format_money(INT64_MIN, "JPY") == "-9223372036854775808 JPY");
  CHECK(currency_exponent("JPY") == 0);
  CHECK(currency_exponent("TND") == 3);
  CHECK(currency_exponent("EUR") == 2);
}

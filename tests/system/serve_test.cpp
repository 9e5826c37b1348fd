// rowguard serve: /metrics in Prometheus text format, /healthz, and the status page as headless
// Chromium renders it. The server runs in this process (so every backend, in-memory SQLite too,
// is served); one CLI test runs `rowguard serve` itself.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <httplib.h>
#include <map>
#include <regex>
#include <signal.h>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "ledger/ledger_sql.hpp"
#include "locks/locks_sql.hpp"
#include "status_server.hpp"
#include "support/fault_proxy.hpp"
#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::backend_of;
using rowguard::test::dialect_of;
using namespace std::chrono_literals;
using rowguard::test::TestDb;

namespace {

// A StatusServer on a free loopback port, serving from its own thread for the test's lifetime.
struct RunningServer {
  cli::StatusServer server;
  int port = 0;
  std::thread thread;
  RunningServer(Database& db, cli::StatusOptions options = {}) : server(db, options) {
    port = server.bind("127.0.0.1", 0);
    thread = std::thread([this] { server.run(); });
  }
  ~RunningServer() {
    server.stop();
    thread.join();
  }
  std::string url() const { return fmt::format("http://127.0.0.1:{}/", port); }
};

httplib::Result get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(30, 0);
  return client.Get(path.c_str());
}

// One sample of the exposition: name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses Prometheus text format 0.0.4 strictly enough to catch what a scraper rejects: every
// sample belongs to a family announced by HELP and TYPE lines before it, names and label names
// are valid, label values are quoted with only \\, \" and \n escapes, and values are numbers.
std::vector<Sample> parse_exposition(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*)");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+))");
  static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)\",?)");
  std::map<std::string, std::string> types;
  std::set<std::string> helped;
  std::vector<Sample> samples;
  std::istringstream lines(text);
  std::string line;
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  while (std::getline(lines, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      CHECK(helped.insert(m[1]).second);  // one HELP per family
      continue;
    }
    if (std::regex_match(line, m, type)) {
      CHECK(helped.count(m[1]) == 1);
      CHECK(types.emplace(m[1], m[2]).second);
      continue;
    }
    INFO(line);
    REQUIRE(std::regex_match(line, m, sample));
    Sample s;
    s.name = m[1];
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!types.count(family) && family.size() > std::strlen(suffix) &&
          family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family = family.substr(0, family.size() - std::strlen(suffix));
    CHECK(types.count(family) == 1);  // announced before its first sample
    std::string labels = m[3];
    std::smatch lm;
    while (!labels.empty()) {
      REQUIRE(std::regex_search(labels, lm, label, std::regex_constants::match_continuous));
      s.labels[lm[1]] = lm[2];
      labels = lm.suffix();
    }
    const std::string value = m[4];
    if (value != "+Inf" && value != "-Inf" && value != "NaN") {
      std::size_t used = 0;
      s.value = std::stod(value, &used);
      CHECK(used == value.size());
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

double value_of(const std::vector<Sample>& samples, const std::string& name,
                const std::map<std::string, std::string>& labels = {}) {
  for (const auto& s : samples)
    if (s.name == name && s.labels == labels) return s.value;
  FAIL("no sample " << name);
  return 0;
}

// Fills t's database with something of everything the page shows: a held lock with a hostile
// name and owner, an expired one, a released one, transfers and a cache row.
void populate(Database& db, Locks& locks, std::optional<Lease>& held) {
  Ledger ledger(db);
  ledger.open("alice", "EUR");
  ledger.open("bob", "EUR");
  ledger.open("carol", "USD");
  ledger.deposit("alice", 10'000, "dep-1");
  ledger.deposit("carol", 700, "dep-2");
  ledger.transfer("alice", "bob", 2'500, "pay-1");
  CHECK(ledger.transfer("bob", "alice", 99'999, "pay-2").status == TransferStatus::insufficient_funds);
  held = locks.try_acquire("<script>alert(1)</script>", 60s, "<b>owner</b>");
  REQUIRE(held);
  auto expiring = locks.try_acquire("nightly-payout", 50ms);
  REQUIRE(expiring);
  expiring->detach();
  locks.try_acquire("released-one", 60s)->release();
  Cache cache(db);
  cache.put("fx:EURUSD", "1.0842", 1h);
  const auto start = db.now_ms();
  while (db.now_ms() < start + 120) std::this_thread::sleep_for(10ms);  // the 50 ms lease runs out
}

// A migrated database with the rows populate() writes; `held` keeps its lease for the test.
struct Populated {
  TestDb t;
  std::optional<Locks> locks;
  std::optional<Lease> held;
  Populated() {
    t.db().migrate();
    locks.emplace(t.db());
    populate(t.db(), *locks, held);
  }
};

}  // namespace

TEST_CASE("serve: /metrics is Prometheus text with this process's counters and the database-wide view",
          "[backend][serve][threads]") {
  Populated p;
  auto& t = p.t;
  RunningServer server(t.db());

  auto res = get(server.port, "/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  const auto samples = parse_exposition(res->body);
  CHECK(value_of(samples, "rowguard_db_up") == 1);
  CHECK(value_of(samples, "rowguard_db_schema_version") == Database::library_schema_version());
  CHECK(value_of(samples, "rowguard_db_locks", {{"state", "held"}}) == 1);
  CHECK(value_of(samples, "rowguard_db_locks", {{"state", "expired"}}) == 1);
  CHECK(value_of(samples, "rowguard_db_locks", {{"state", "released"}}) == 1);
  CHECK(value_of(samples, "rowguard_db_accounts", {{"currency", "EUR"}}) == 2);
  CHECK(value_of(samples, "rowguard_db_balance_minor_units", {{"currency", "EUR"}}) == 10'000);
  CHECK(value_of(samples, "rowguard_db_balance_minor_units", {{"currency", "USD"}}) == 700);
  CHECK(value_of(samples, "rowguard_db_ledger_check_ok") == 1);
  CHECK(value_of(samples, "rowguard_db_ledger_entries") == 4);
  CHECK(value_of(samples, "rowguard_db_cache_rows", {{"state", "live"}}) == 1);
  CHECK(value_of(samples, "rowguard_db_cache_bytes") == 6);

  // A broken invariant shows at the next check, by kind (check_every is 1s here).
  RunningServer fresh(t.db(), cli::StatusOptions{.check_every = 1s});
  CHECK(value_of(parse_exposition(get(fresh.port, "/metrics")->body), "rowguard_db_ledger_check_ok") == 1);
  t.db().exec(fmt::format("UPDATE {}accounts SET balance = balance + 1 WHERE id = 'bob'", t.db().table_prefix()));
  std::this_thread::sleep_for(1100ms);
  const auto broken = parse_exposition(get(fresh.port, "/metrics")->body);
  CHECK(value_of(broken, "rowguard_db_ledger_check_ok") == 0);
  CHECK(value_of(broken, "rowguard_db_ledger_check_violations", {{"kind", "balance_mismatch"}}) == 1);

  // Only GET, and only these paths.
  httplib::Client client("127.0.0.1", server.port);
  CHECK(client.Post("/metrics", "x", "text/plain")->status >= 400);
  CHECK(get(server.port, "/../etc/passwd")->status == 404);
}

TEST_CASE("serve: /healthz is 200 on a current schema and 503 when the database is newer",
          "[backend][serve][threads]") {
  TestDb t;
  t.db().migrate();
  RunningServer server(t.db());
  auto ok = get(server.port, "/healthz");
  REQUIRE(ok);
  CHECK(ok->status == 200);
  const auto body = nlohmann::json::parse(ok->body);
  CHECK(body.at("status") == "ok");
  CHECK(body.at("schema_version") == Database::library_schema_version());

  t.db().exec(
      fmt::format("INSERT INTO {}schema_version (version, name) VALUES (999, 'future')", t.db().table_prefix()));
  auto bad = get(server.port, "/healthz");
  REQUIRE(bad);
  CHECK(bad->status == 503);
  CHECK(nlohmann::json::parse(bad->body).at("error") == "schema_mismatch");
}

TEST_CASE("serve: the status page and /healthz never show the URL's secrets", "[pg][serve][threads]") {
  // Issue 21: a keyword-form SOCI URL's password showed verbatim here, and sslpassword everywhere.
  constexpr const char* secret = "Zq7-S3rve-pw";
  std::unique_ptr<rowguard::test::FaultProxy> proxy;  // taken away below: the database becomes unreachable
  TestDb t(Options{}, [&](const std::string& url) {
    proxy = std::make_unique<rowguard::test::FaultProxy>(rowguard::test::port_of(url));
    return rowguard::test::keyword_form(rowguard::test::via_port(url, proxy->port()),
                                        fmt::format("password='{0}' sslpassword={0}", secret));
  });
  t.db().migrate();
  RunningServer server(t.db());
  std::string shown = get(server.port, "/")->body + get(server.port, "/healthz")->body;
  CHECK(shown.find("password=***") != std::string::npos);  // the page shows the URL, masked
  proxy.reset();
  for (int i = 0; i < 5 && shown.find("cannot") == std::string::npos; ++i) {
    const auto health = get(server.port, "/healthz");
    REQUIRE(health);
    CHECK(health->status == 503);
    shown += health->body + get(server.port, "/")->body;
  }
  INFO(shown);
  CHECK(shown.find("cannot") != std::string::npos);  // a failed connection, which names the URL, was shown
  CHECK(shown.find(secret) == std::string::npos);
}

TEST_CASE("serve: the status page in headless Chromium shows locks, the ledger, recent transfers and the cache",
          "[backend][serve][threads]") {
  Populated p;
  RunningServer server(p.t.db(), cli::StatusOptions{.refresh = 7s});

  // --dump-dom prints the DOM after the page has loaded: what a browser shows, scripts included.
  const auto profile = rowguard::test::scratch_dir() / "chromium";
  const std::string command = fmt::format(
      "timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir='{}' "
      "--dump-dom '{}' 2>/dev/null",
      profile.string(), server.url());
  std::string dom;
  const int status = rowguard::test::run_command(command, &dom);
  INFO(dom);
  REQUIRE(status == 0);  // 127: chromium is not installed (scripts/install-deps.sh)

  CHECK_THAT(dom, Catch::Contains("<title>rowguard status</title>"));
  CHECK_THAT(dom, Catch::Contains(R"(<meta http-equiv="refresh" content="7">)"));
  CHECK_THAT(dom, Catch::Contains("database up"));
  CHECK_THAT(dom, Catch::Contains(R"(class="ok">ledger check: ok (3 accounts, 4 entries)"));
  // Locks: the held one first; the hostile name and owner are text, never markup.
  CHECK_THAT(dom, Catch::Contains("1 held, 1 expired, 3 rows"));
  CHECK_THAT(
      dom, Catch::Contains("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>held</td><td>&lt;b&gt;owner&lt;/b&gt;"));
  CHECK_THAT(dom, Catch::Contains("<td>nightly-payout</td><td>expired</td>"));
  CHECK(dom.find("<script>alert") == std::string::npos);
  CHECK(dom.find("released-one") == std::string::npos);  // released locks are only counted
  // Recent transfers, newest first: the rejected one, the transfer, the deposits.
  const auto rejected = dom.find("<td>bob</td><td>alice</td><td class=\"n\">99999 EUR</td><td>insufficient_funds</td>");
  const auto paid = dom.find("<td>alice</td><td>bob</td><td class=\"n\">2500 EUR</td><td>ok</td>");
  CHECK(rejected != std::string::npos);
  CHECK(paid != std::string::npos);
  CHECK(rejected < paid);
  CHECK_THAT(dom, Catch::Contains("<td>outside</td><td>carol</td><td class=\"n\">700 USD</td>"));
  CHECK_THAT(dom, Catch::Contains("1 rows: 1 live, 0 expired; 6 bytes"));
}

// Not on sqlite::memory: (tagged [shared-db]): the in-process server tests cover that backend.
TEST_CASE("cli: rowguard serve prints its address, answers, and stops on SIGTERM",
          "[backend][serve][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  int out[2];
  REQUIRE(::pipe(out) == 0);
  std::vector<std::string> args{ROWGUARD_CLI, "--db",  t.url(),    "--prefix",   t.db().table_prefix(),
                                "--json",     "serve", "--listen", "127.0.0.1:0"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  std::string line;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  INFO(line);
  const auto url = nlohmann::json::parse(line).at("listening").get<std::string>();
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  auto health = get(port, "/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  ::kill(child, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);

  // Usage errors exit 2: a malformed address, a port already taken.
  const std::vector<std::string> base{"--db", t.url(), "--prefix", t.db().table_prefix(), "serve"};
  auto with = [&](std::vector<std::string> extra) {
    auto all = base;
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  };
  CHECK(rowguard::test::run_cli(with({"--listen", "localhost"})) == 2);
  CHECK(rowguard::test::run_cli(with({"--listen", "127.0.0.1:99999"})) == 2);
  CHECK(rowguard::test::run_cli(with({"--refresh", "0s"})) == 2);
  RunningServer taken(t.db());
  CHECK(rowguard::test::run_cli(with({"--listen", fmt::format("127.0.0.1:{}", taken.port)})) == 2);
}

TEST_CASE("serve: with 100,000 accounts and lock rows the page reads a bounded number of rows, totals per currency",
          "[backend][serve][threads]") {
  TestDb t;
  t.db().migrate();
  auto& db = t.db();
  const auto& d = dialect_of(db);
  const std::string p = db.table_prefix();
  // One statement each. Account i has balance i, in USD when i is a multiple of 10, else EUR; an
  // opening balance and the archived totals say where the money came from, so the ledger check holds.
  const std::string numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) ";
  const std::string currency = "CASE WHEN i % 10 = 0 THEN 'USD' ELSE 'EUR' END";
  db.exec(
      fmt::format("INSERT INTO {}accounts (id, currency, balance, created_at, updated_at) {}SELECT 'acct-' || "
                  "CAST(i AS text), {}, i, {}, {} FROM n",
                  p, numbers, currency, d.now_timestamp(), d.now_timestamp()));
  db.exec(
      fmt::format("INSERT INTO {}opening_balances (account_id, balance, entries, as_of) SELECT id, balance, 0, {} "
                  "FROM {}accounts",
                  p, d.ms_to_timestamp("0"), p));
  db.exec(
      fmt::format("INSERT INTO {}archived_totals (currency, deposits, withdrawals) SELECT currency, "
                  "CAST(SUM(balance) AS bigint), 0 FROM {}accounts GROUP BY currency",
                  p, p));
  // Lock rows: i % 4 == 0 held (acquired i ms before the epoch + 10^12, so lock 4 is the longest
  // held), 1 expired (the higher i, the more recently), 2 released, 3 released but waited for.
  const std::int64_t now = db.now_ms();
  db.exec(fmt::format("INSERT INTO {}locks (name, owner, token, acquired_at, expires_at, waiters) {}SELECT 'lock-' || "
                      "CAST(i AS text), "
                      "'owner', 1, CASE WHEN i % 4 < 2 THEN {} END, CASE i % 4 WHEN 0 THEN {} WHEN 1 THEN {} END, "
                      "CASE WHEN i % 4 = 3 THEN 1 ELSE 0 END FROM n",
                      p, numbers, d.ms_to_timestamp("CAST($1 AS bigint) + i"), d.ms_to_timestamp("CAST($2 AS bigint)"),
                      d.ms_to_timestamp("CAST($3 AS bigint) + i")),
          {now - 1'000'000, now + 3'600'000, now - 3'600'000});
  REQUIRE(rowguard::test::rows_in(db, "accounts") == 100'000);
  REQUIRE(rowguard::test::rows_in(db, "locks") == 100'000);
  REQUIRE(Ledger(db).check().ok());

  cli::StatusOptions options;
  options.largest_accounts = 7;
  options.locks_shown = 9;
  options.recent_transfers = 5;
  RunningServer server(db, options);
  auto res = get(server.port, "/");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const std::string& page = res->body;
  INFO(page.substr(0, 6000));
  // Totals and counts by currency, never one total of EUR and USD.
  CHECK_THAT(page, Catch::Contains("<tr><td>EUR</td><td class=\"n\">90000</td><td class=\"n\">4500000000</td>"));
  CHECK_THAT(page, Catch::Contains("<tr><td>USD</td><td class=\"n\">10000</td><td class=\"n\">500050000</td>"));
  CHECK(page.find("5000050000") == std::string::npos);
  // The largest balances: 7 rows, the largest first.
  CHECK_THAT(page, Catch::Contains("the 7 largest balances of 100000 accounts"));
  const auto largest = page.substr(page.find("<table id=\"largest\">"));
  CHECK(largest.find("<td>acct-100000</td><td class=\"n\">100000 USD</td>") < largest.find("<td>acct-99999</td>"));
  CHECK_THAT(largest, Catch::Contains("<td>acct-99994</td>"));
  CHECK(largest.find("<td>acct-99993</td>") == std::string::npos);
  // Locks: counted by state, 9 shown, the longest held first; released ones are only counted.
  CHECK_THAT(page, Catch::Contains("25000 held, 25000 expired, 100000 rows"));
  CHECK_THAT(page, Catch::Contains("showing 9 of 50000 held or expired"));
  const auto locks = page.substr(page.find("<section id=\"locks\">"),
                                 page.find("<section id=\"transfers\">") - page.find("<section id=\"locks\">"));
  std::size_t rows = 0;
  for (auto at = locks.find("<tr><td>"); at != std::string::npos; at = locks.find("<tr><td>", at + 1)) ++rows;
  CHECK(rows == 9);
  CHECK(locks.find("<td>lock-4</td><td>held</td>") < locks.find("<td>lock-8</td><td>held</td>"));
  CHECK(locks.find("expired") == locks.find("expired, "));  // 9 held rows come before any expired one
  // The ledger check ran (it scans, at most every check_every) and holds.
  CHECK_THAT(page, Catch::Contains("ledger check: ok (100000 accounts"));
  // What the request read: the aggregates' rows and the lists' LIMITs, not the tables.
  // (No transfers yet: the recent list, LIMIT 5, is empty.)
  const std::int64_t read = 1 /* lock counts */ + 1 /* cache stats */ + 2 /* currencies */ + 9 /* locks */ + 7;
  CHECK_THAT(page, Catch::Contains(fmt::format("<p id=\"footer\">{} rows read", read)));
  // The statements behind the page besides Ledger::transfers (LIMIT) and Cache::table_stats (an aggregate).
  const detail::LockStatements lock_sql(backend_of(db), "channel");
  const detail::AccountStatements account_sql(backend_of(db));
  for (const auto& sql : {lock_sql.counts, lock_sql.active, account_sql.currencies, account_sql.largest}) {
    INFO(sql);
    const bool limited = sql.find(" LIMIT $") != std::string::npos;
    const bool aggregate = sql.rfind("SELECT count(*)", 0) == 0 || sql.find("GROUP BY") != std::string::npos;
    CHECK((limited || aggregate));
  }
  // /metrics reads only the aggregates; /healthz the clock and the schema version.
  const auto samples = parse_exposition(get(server.port, "/metrics")->body);
  CHECK(value_of(samples, "rowguard_db_scrape_rows") == 1 + 1 + 2);
  CHECK(value_of(samples, "rowguard_db_accounts", {{"currency", "USD"}}) == 10'000);
  CHECK(value_of(samples, "rowguard_db_locks", {{"state", "released"}}) == 50'000);
  CHECK(value_of(samples, "rowguard_db_lock_waiters") == 25'000);
  CHECK(get(server.port, "/healthz")->status == 200);
}

TEST_CASE("serve: a request body over the limit is answered 413 and not kept", "[backend][serve][threads]") {
  TestDb t;
  t.db().migrate();
  RunningServer server(t.db(), cli::StatusOptions{.max_request_body = 4096});
  httplib::Client client("127.0.0.1", server.port);
  client.set_read_timeout(30, 0);
  for (const char* path : {"/", "/metrics", "/healthz"}) {
    INFO(path);
    const auto big = client.Post(path, std::string(8 << 20, 'x'), "text/plain");
    REQUIRE(big);
    CHECK(big->status == 413);
    const auto small = client.Post(path, "x", "text/plain");
    REQUIRE(small);
    CHECK(small->status >= 400);
    CHECK(small->status != 413);
  }
  CHECK(get(server.port, "/healthz")->status == 200);  // and the server goes on
}

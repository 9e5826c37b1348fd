// rowguard serve: /metrics in Prometheus text format, /healthz, and the status page as headless
// Chromium renders it. The server runs in this process (so every backend, in-memory SQLite too,
// is served); one CLI test runs `rowguard serve` itself.
#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <httplib.h>
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

// A screenshot's pixels as RGB. Chromium writes 8-bit RGB or RGBA PNGs, not interlaced: this reads
// just that, inflating with cpp-httplib's zlib decompressor (which detects the zlib header), so
// the test needs no image library.
struct Image {
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  std::vector<std::array<std::uint8_t, 3>> pixels;  // row by row
};

Image read_png(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(data.size() > 33);
  REQUIRE(data.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0);
  const auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(data[at + i]);
    return v;
  };
  Image image;
  int depth = 0, color_type = 0, interlace = 0;
  std::string compressed;
  for (std::size_t at = 8; at + 12 <= data.size();) {
    const std::uint32_t length = be32(at);
    const std::string type = data.substr(at + 4, 4);
    REQUIRE(at + 12 + length <= data.size());
    if (type == "IHDR") {
      image.width = be32(at + 8);
      image.height = be32(at + 12);
      depth = static_cast<std::uint8_t>(data[at + 16]);
      color_type = static_cast<std::uint8_t>(data[at + 17]);
      interlace = static_cast<std::uint8_t>(data[at + 20]);
    } else if (type == "IDAT") {
      compressed.append(data, at + 8, length);
    } else if (type == "IEND") {
      break;
    }
    at += 12 + length;
  }
  REQUIRE(depth == 8);
  REQUIRE((color_type == 2 || color_type == 6));
  REQUIRE(interlace == 0);
  std::string raw;
  httplib::detail::gzip_decompressor inflater;
  REQUIRE(inflater.is_valid());
  // A few bytes at a time: each call's output then fits the decompressor's 16 KiB buffer, which
  // it needs (it gives up on a call that consumes no input).
  bool inflated = true;
  for (std::size_t at = 0; inflated && at < compressed.size(); at += 4)
    inflated = inflater.decompress(compressed.data() + at, std::min<std::size_t>(4, compressed.size() - at),
                                   [&](const char* bytes, std::size_t n) {
                                     raw.append(bytes, n);
                                     return true;
                                   });
  REQUIRE(inflated);
  const std::size_t channels = color_type == 6 ? 4 : 3;
  const std::size_t stride = image.width * channels;
  REQUIRE(raw.size() == image.height * (stride + 1));
  std::vector<std::uint8_t> previous(stride, 0), row(stride);
  image.pixels.reserve(static_cast<std::size_t>(image.width) * image.height);
  for (std::size_t y = 0; y < image.height; ++y) {
    const auto* line = reinterpret_cast<const std::uint8_t*>(raw.data()) + y * (stride + 1);
    const int filter = line[0];
    for (std::size_t i = 0; i < stride; ++i) {
      const int a = i >= channels ? row[i - channels] : 0, b = previous[i],
                c = i >= channels ? previous[i - channels] : 0;
      int predicted = 0;
      switch (filter) {
        case 0:
          break;
        case 1:
          predicted = a;
          break;
        case 2:
          predicted = b;
          break;
        case 3:
          predicted = (a + b) / 2;
          break;
        case 4: {  // Paeth
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default:
          FAIL("PNG filter " << filter);
      }
      row[i] = static_cast<std::uint8_t>(line[1 + i] + predicted);
    }
    for (std::size_t x = 0; x < image.width; ++x)
      image.pixels.push_back({row[x * channels], row[x * channels + 1], row[x * channels + 2]});
    std::swap(previous, row);
  }
  return image;
}

// Pixels of exactly this colour ("#rrggbb"), and the rows they span.
struct ColourCount {
  std::size_t pixels = 0;
  std::uint32_t first_row = 0;
  std::uint32_t last_row = 0;
};
ColourCount count_colour(const Image& image, const std::string& hex) {
  const auto channel = [&](int i) {
    return static_cast<std::uint8_t>(std::stoi(hex.substr(1 + 2 * i, 2), nullptr, 16));
  };
  const std::array<std::uint8_t, 3> wanted{channel(0), channel(1), channel(2)};
  ColourCount out;
  for (std::size_t i = 0; i < image.pixels.size(); ++i) {
    if (image.pixels[i] != wanted) continue;
    const auto y = static_cast<std::uint32_t>(i / image.width);
    if (out.pixels++ == 0) out.first_row = y;
    out.last_row = y;
  }
  return out;
}

// The points a chart of the page drew: series -> (ISO minute -> value), from its <circle>s.
std::map<std::string, std::map<std::string, std::int64_t>> chart_points(const std::string& svg) {
  static const std::regex point(R"re(<circle class="point (\w+)"[^>]*data-minute="([^"]+)" data-value="(\d+)")re");
  std::map<std::string, std::map<std::string, std::int64_t>> out;
  for (std::sregex_iterator it(svg.begin(), svg.end(), point), end; it != end; ++it)
    out[(*it)[1]][(*it)[2]] = std::stoll((*it)[3]);
  return out;
}

// The <svg id="ID"> element of a page, or "" when it has none.
std::string svg_of(const std::string& page, const std::string& id) {
  const auto at = page.find("<svg id=\"" + id + "\"");
  if (at == std::string::npos) return {};
  return page.substr(at, page.find("</svg>", at) + 6 - at);
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string iso_minute(std::int64_t minute) {
  const std::time_t t = static_cast<std::time_t>(minute * 60);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%MZ", &tm);
  return text;
}

// Headless Chromium on url: the DOM after load (--dump-dom), or a screenshot into png.
std::string chromium(const std::string& url, const std::string& what) {
  const auto profile = rowguard::test::scratch_dir() / "chromium";
  const std::string command = fmt::format(
      "timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars "
      "--force-device-scale-factor=1 --window-size=1000,1400 --user-data-dir='{}' {} '{}' 2>/dev/null",
      profile.string(), what, url);
  std::string out;
  const int status = rowguard::test::run_command(command, &out);
  INFO(command);
  REQUIRE(status == 0);  // 127: chromium is not installed (scripts/install-deps.sh)
  return out;
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

  // rowguard's version and the schema it expects, as Prometheus' build_info convention has it.
  CHECK(value_of(samples, "rowguard_build_info",
                 {{"version", std::string(rowguard::version())},
                  {"schema", std::to_string(Database::library_schema_version())}}) == 1);
  CHECK_THAT(res->body, Catch::Contains(fmt::format("rowguard_build_info{{version=\"{}\",schema=\"{}\"}} 1\n",
                                                    rowguard::version(), Database::library_schema_version())));

  // Only GET (and HEAD), and only these paths: another method is 405 and says which ones work.
  httplib::Client client("127.0.0.1", server.port);
  for (const char* path : {"/metrics", "/", "/healthz"}) {
    INFO(path);
    const auto post = client.Post(path, "x", "text/plain");
    REQUIRE(post);
    CHECK(post->status == 405);
    CHECK(post->get_header_value("Allow") == "GET, HEAD");
    CHECK(client.Delete(path)->status == 405);
    CHECK(client.Put(path, "x", "text/plain")->status == 405);
  }
  const auto head = client.Head("/metrics");
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->body.empty());
  CHECK(get(server.port, "/../etc/passwd")->status == 404);
  CHECK(client.Post("/nowhere", "x", "text/plain")->status == 404);
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
  // Money in major units by the currency's exponent, times in ISO 8601 to the millisecond and
  // lengths of time as the CLI writes them (rowguard/time_text.hpp).
  const auto rejected =
      dom.find("<td>bob</td><td>alice</td><td class=\"n\">999.99 EUR</td><td>insufficient_funds</td>");
  const auto paid = dom.find("<td>alice</td><td>bob</td><td class=\"n\">25.00 EUR</td><td>ok</td>");
  CHECK(rejected != std::string::npos);
  CHECK(paid != std::string::npos);
  CHECK(rejected < paid);
  CHECK_THAT(dom, Catch::Contains("<td>outside</td><td>carol</td><td class=\"n\">7.00 USD</td>"));
  CHECK(std::regex_search(
      dom, std::regex(R"(<td class="n">\d+</td><td>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z</td><td>deposit)")));
  CHECK_THAT(dom, Catch::Contains("<tr><td>EUR</td><td class=\"n\">2</td><td class=\"n\">100.00 EUR</td>"));
  // The expired lease says expired (never free), the held one how long it has left.
  CHECK(std::regex_search(
      dom,
      std::regex(
          R"(<td>nightly-payout</td><td>expired</td><td>[^<]*</td><td class="n">1</td><td>\d{4}-\d\d-\d\dT[^<]*Z</td><td class="n">-</td><td class="n">ran out</td>)")));
  CHECK(std::regex_search(
      dom,
      std::regex(
          R"(<td>held</td><td>[^<]*</td><td class="n">1</td><td>[^<]+</td><td class="n">[^<]+</td><td class="n">\d\ds</td>)")));
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
  CHECK_THAT(page, Catch::Contains("<tr><td>EUR</td><td class=\"n\">90000</td><td class=\"n\">45000000.00 EUR</td>"));
  CHECK_THAT(page, Catch::Contains("<tr><td>USD</td><td class=\"n\">10000</td><td class=\"n\">5000500.00 USD</td>"));
  CHECK(page.find("50000500.00") == std::string::npos);
  // The largest balances: 7 rows, the largest first.
  CHECK_THAT(page, Catch::Contains("the 7 largest balances of 100000 accounts"));
  const auto largest = page.substr(page.find("<table id=\"largest\">"));
  CHECK(largest.find("<td>acct-100000</td><td class=\"n\">1000.00 USD</td>") < largest.find("<td>acct-99999</td>"));
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

TEST_CASE("serve: the status page charts the last hour's transfers and locks per minute as the database counts them",
          "[backend][serve][threads]") {
  Populated p;
  auto& db = p.t.db();
  const auto& d = dialect_of(db);
  const std::string prefix = db.table_prefix();
  Ledger ledger(db);
  // Transfers in three earlier minutes (one more than an hour ago, which the chart leaves out),
  // moved there after the fact; populate()'s four are in this minute.
  const std::int64_t now_minute = db.now_ms() / 60'000;
  const auto at_minute = [&](const std::string& key, std::int64_t minutes_ago) {
    db.exec(fmt::format("UPDATE {}transfers SET created_at = {} WHERE idempotency_key = $2", prefix,
                        d.ms_to_timestamp("$1")),
            {(now_minute - minutes_ago) * 60'000 + 30'000, key});
  };
  for (int i = 0; i < 3; ++i) {
    REQUIRE(ledger.deposit("alice", 100 + i, fmt::format("d50-{}", i)).ok());
    at_minute(fmt::format("d50-{}", i), 50);
  }
  CHECK_FALSE(ledger.transfer("bob", "alice", 5'000'000, "r50").ok());
  at_minute("r50", 50);
  for (int i = 0; i < 2; ++i) {
    ledger.deposit("bob", 7, fmt::format("d20-{}", i));
    at_minute(fmt::format("d20-{}", i), 20);
  }
  ledger.deposit("bob", 9, "d70");
  at_minute("d70", 70);

  // The lock chart counts from its first sample on: wait for it, then acquire, wait and force-release.
  RunningServer server(db, cli::StatusOptions{.refresh = 30s, .lock_sample_every = 100ms});
  const auto tokens = [&] {
    return db.exec(fmt::format("SELECT CAST(COALESCE(SUM(token), 0) AS bigint) FROM {}locks", prefix)).one().i64(0);
  };
  for (int i = 0; i < 100 && server.server.status_page().find("acquisitions since ") == std::string::npos; ++i)
    std::this_thread::sleep_for(50ms);
  const std::int64_t tokens_before = tokens();
  std::vector<Lease> jobs;
  for (const char* name : {"job-a", "job-b", "job-c"}) jobs.push_back(*p.locks->try_acquire(name, 60s));
  std::thread waiter([&] {
    try {
      Locks(db).acquire("<script>alert(1)</script>", 60s, 1200ms);
    } catch (const Error&) {
      // lock_busy: it waited the whole time, which is all it is here for
    }
  });
  waiter.join();
  p.locks->force_release("<script>alert(1)</script>", "stuck <job>");
  std::this_thread::sleep_for(400ms);  // a few samples after the last change
  const std::int64_t acquired = tokens() - tokens_before;
  CHECK(acquired == 4);  // three leases and the force-release

  const std::string dom = chromium(server.url(), "--dump-dom");
  INFO(dom.substr(0, 12000));

  // The transfers chart: one line per series through all 60 minutes, a point on each minute with
  // transfers, and each point's number equal to the database's count for that minute.
  const std::string transfers_svg = svg_of(dom, "transfers-chart");
  REQUIRE(!transfers_svg.empty());
  CHECK_THAT(transfers_svg, Catch::Contains("<title id=\"transfers-chart-title\">Transfers per minute"));
  CHECK(occurrences(transfers_svg, "<polyline class=\"line applied\"") == 1);
  CHECK(occurrences(transfers_svg, "<polyline class=\"line rejected\"") == 1);
  std::smatch line;
  REQUIRE(std::regex_search(transfers_svg, line, std::regex(R"re(class="line applied"[^>]*points="([^"]*)")re")));
  CHECK(occurrences(line[1].str(), ",") == 60);
  CHECK(occurrences(transfers_svg, "<text") >= 6 + 2);  // ticks: the time every 10 minutes, counts, axis names
  const std::int64_t first_minute = now_minute - 59;
  const std::string minute_sql = fmt::format("{} / 60000", d.timestamp_to_ms("created_at"));
  std::map<std::string, std::map<std::string, std::int64_t>> expected;
  std::int64_t applied_sum = 0, rejected_sum = 0;
  for (const auto& row : db.exec(fmt::format("SELECT {0}, SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), "
                                             "SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END) FROM {1}transfers "
                                             "WHERE {0} >= $1 GROUP BY {0}",
                                             minute_sql, prefix),
                                 {first_minute})
                             .rows) {
    if (row.i64(1) > 0) expected["applied"][iso_minute(row.i64(0))] = row.i64(1);
    if (row.i64(2) > 0) expected["rejected"][iso_minute(row.i64(0))] = row.i64(2);
    applied_sum += row.i64(1);
    rejected_sum += row.i64(2);
  }
  CHECK(expected["applied"].size() == 3);  // 50 and 20 minutes ago, and now
  CHECK(chart_points(transfers_svg) == expected);
  CHECK(applied_sum == 3 + 3 + 2);
  CHECK_THAT(dom, Catch::Contains(fmt::format("{} applied, {} rejected in the last hour", applied_sum, rejected_sum)));

  // The locks chart: the acquisitions it counted are the tokens the database issued meanwhile;
  // waiters, where the database records them (PostgreSQL, a waiter that can LISTEN).
  const std::string locks_svg = svg_of(dom, "locks-chart");
  REQUIRE(!locks_svg.empty());
  CHECK(occurrences(locks_svg, "<polyline class=\"line acquired\"") >= 1);
  const auto lock_points = chart_points(locks_svg);
  std::int64_t charted = 0;
  if (lock_points.count("acquired"))
    for (const auto& [minute, n] : lock_points.at("acquired")) charted += n;
  CHECK(charted == acquired);
  CHECK_THAT(dom, Catch::Contains(fmt::format("{} acquisitions", acquired)));
  if (rowguard::test::can().timestamptz) {
    CHECK(occurrences(locks_svg, "<polyline class=\"line waiting\"") >= 1);
  } else {
    CHECK(locks_svg.find("class=\"line waiting\"") == std::string::npos);
    CHECK_THAT(dom, Catch::Contains("SQLite records no waiters in the database"));
  }
  // A waiter registers in the waiters column only when it can LISTEN: not behind a transaction pooler.
  const bool waiter_recorded = rowguard::test::can().notify && !rowguard::test::can().transaction_pooler;
  if (waiter_recorded) {
    REQUIRE(lock_points.count("waiting") == 1);
    std::int64_t peak = 0;
    for (const auto& [minute, n] : lock_points.at("waiting")) peak = std::max(peak, n);
    CHECK(peak == 1);
    CHECK_THAT(dom, Catch::Contains("at most 1 waiting at once"));
  }
  // Lease rows: the force-released one with whom it was taken from and why; the expired one as expired.
  CHECK(std::regex_search(
      dom,
      std::regex(
          R"re(<td>&lt;script&gt;alert\(1\)&lt;/script&gt;</td><td>&lt;b&gt;owner&lt;/b&gt;</td><td class="n">\d+</td><td>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z</td><td class="n">[0-9.]+m?s</td><td>stuck &lt;job&gt;</td>)re")));
  CHECK_THAT(dom, Catch::Contains("<td>nightly-payout</td><td>expired</td>"));
  CHECK_THAT(dom, Catch::Contains("<td>job-a</td><td>held</td>"));

  // The screenshot: every series' colour is drawn (points and lines), inside the charts at the top.
  const auto png = rowguard::test::scratch_dir() / "status.png";
  chromium(server.url(), fmt::format("--screenshot='{}'", png.string()));
  const Image image = read_png(png);
  CHECK(image.width == 1000);
  CHECK(image.height == 1400);
  std::vector<std::string> colours{"#1a7f37", "#cf222e", "#0969da"};  // applied, rejected, acquired
  if (waiter_recorded) colours.push_back("#bf8700");                  // waiting
  for (const auto& colour : colours) {
    const auto counted = count_colour(image, colour);
    INFO(colour << ": " << counted.pixels << " pixels in rows " << counted.first_row << " to " << counted.last_row);
    CHECK(counted.pixels >= 30);
    CHECK(counted.last_row < 1000);  // the charts come first on the page
  }
  std::size_t background = 0;
  for (const auto& px : image.pixels) background += px == std::array<std::uint8_t, 3>{255, 255, 255} ? 1 : 0;
  CHECK(background < image.pixels.size());  // not blank
}

TEST_CASE("serve: docs/operations.md's metric tables list every family /metrics emits, with the label values it emits",
          "[backend][serve][threads]") {
  TestDb t;
  t.db().migrate();
  RunningServer server(t.db());
  const auto res = get(server.port, "/metrics");
  REQUIRE(res);
  const auto samples = parse_exposition(res->body);
  // What /metrics emits: each family's type (from its TYPE line, so a family with no series yet
  // counts too) and the values each label took.
  std::map<std::string, std::string> emitted_types;
  {
    static const std::regex type(R"(# TYPE (\S+) (\S+))");
    std::istringstream lines(res->body);
    std::string l;
    std::smatch m;
    while (std::getline(lines, l))
      if (std::regex_match(l, m, type)) emitted_types[m[1]] = m[2];
  }
  std::map<std::string, std::map<std::string, std::set<std::string>>> emitted_labels;
  for (const auto& s : samples) {
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!emitted_types.count(family) && family.size() > std::strlen(suffix) &&
          family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family = family.substr(0, family.size() - std::strlen(suffix));
    for (const auto& [name, value] : s.labels)
      if (name != "le") emitted_labels[family][name].insert(value);
  }

  // The docs: each table row "| `name` | type | labels | meaning |", labels as
  // "`label`=`v1`\|`v2`; `other`" (a label without values takes values not known in advance).
  // __FILE__ is as the compiler was given it: absolute, or relative to the directory it ran in,
  // which is the test binary's (tests/ of the build tree).
  const auto docs = std::filesystem::canonical("/proc/self/exe").parent_path() /
                    std::filesystem::path(__FILE__).parent_path() / "../../docs/operations.md";
  std::ifstream in(docs);
  REQUIRE(in);
  std::map<std::string, std::string> documented_types;
  std::map<std::string, std::map<std::string, std::set<std::string>>> documented_labels;
  std::string l;
  while (std::getline(in, l)) {
    if (l.rfind("| `rowguard_", 0) != 0) continue;
    std::vector<std::string> cells{""};
    for (std::size_t i = 1; i < l.size(); ++i) {
      if (l[i] == '\\' && i + 1 < l.size() && l[i + 1] == '|') {
        cells.back() += '|';
        ++i;
      } else if (l[i] == '|') {
        cells.emplace_back();
      } else {
        cells.back() += l[i];
      }
    }
    INFO(l);
    REQUIRE(cells.size() >= 4);
    const std::string name = cells[0].substr(cells[0].find('`') + 1, cells[0].rfind('`') - cells[0].find('`') - 1);
    documented_types[name] = std::regex_replace(cells[1], std::regex(R"(\s)"), "");
    auto& labels = documented_labels[name];
    std::istringstream parts(cells[2]);
    std::string part;
    static const std::regex label(R"(^\s*`([a-z_]+)`\s*(=\s*(.*))?$)");
    static const std::regex value("`([^`]+)`");
    while (std::getline(parts, part, ';')) {
      if (std::regex_match(part, std::regex(R"(\s*)"))) continue;
      std::smatch m;
      REQUIRE(std::regex_match(part, m, label));
      auto& values = labels[m[1]];
      const std::string listed = m[3];
      for (std::sregex_iterator it(listed.begin(), listed.end(), value), end; it != end; ++it) values.insert((*it)[1]);
    }
  }
  REQUIRE(documented_types.size() > 30);

  for (const auto& [name, type] : emitted_types) {
    INFO("emitted " << name);
    CHECK(documented_types.count(name) == 1);
  }
  for (const auto& [name, type] : documented_types) {
    INFO("documented " << name);
    REQUIRE(emitted_types.count(name) == 1);
    CHECK(emitted_types.at(name) == type);
    if (!emitted_labels.count(name)) continue;  // no series yet (violations by kind, when there are none)
    std::set<std::string> documented_names, emitted_names;
    for (const auto& [label, values] : documented_labels[name]) documented_names.insert(label);
    for (const auto& [label, values] : emitted_labels.at(name)) emitted_names.insert(label);
    CHECK(emitted_names == documented_names);
    for (const auto& [label, values] : documented_labels[name]) {
      INFO("label " << label);
      if (!values.empty() && emitted_labels.at(name).count(label)) CHECK(emitted_labels.at(name).at(label) == values);
    }
  }
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

// rowguard serve: what an operator sees of one database, over HTTP.
#include "status_server.hpp"

#include <algorithm>
#include <httplib.h>
#include <map>
#include <mutex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>

#include "rowguard/metrics.hpp"

namespace rowguard::cli {

namespace {

// The last ledger check, shared by scrapes until it is check_every old.
struct CheckSnapshot {
  std::chrono::steady_clock::time_point taken;
  std::int64_t taken_ms = 0;  // database clock
  std::optional<CheckReport> report;
  std::string error;  // why the check could not run
};

struct CurrencyTotals {
  std::int64_t accounts = 0;
  std::int64_t balance = 0;
  std::int64_t held = 0;
};

// Everything one request shows, read from the database when the request arrives: totals and
// counts by aggregates, lists with a LIMIT, so the rows read are bounded whatever the tables hold.
struct View {
  bool up = false;
  std::string error;  // why the database could not be read (up == false)
  int schema_version = 0;
  std::int64_t now_ms = 0;
  LockCounts lock_counts;
  std::vector<LockInfo> locks;   // the page's: at most locks_shown
  std::vector<Account> largest;  // the page's: at most largest_accounts
  CacheTableStats cache;
  std::map<std::string, CurrencyTotals> currencies;
  std::vector<TransferRecord> recent;
  std::shared_ptr<const CheckSnapshot> check;
  std::int64_t rows_read = 0;  // rows the statements of this request returned
};

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string utc_time(std::int64_t ms) {
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
}

MetricFamily gauge(std::string name, std::string help) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = MetricType::gauge;
  return family;
}

void add(MetricFamily& family, double value, MetricLabels labels = {}) {
  MetricSeries series;
  series.labels = std::move(labels);
  series.value = value;
  family.series.push_back(std::move(series));
}

}  // namespace

struct StatusServer::Impl {
  Database& db;
  StatusOptions options;
  Locks locks;
  Cache cache;
  Ledger ledger;
  httplib::Server server;

  std::mutex check_mutex;  // one check at a time; guards last_check
  std::shared_ptr<const CheckSnapshot> last_check;

  Impl(Database& d, StatusOptions o) : db(d), options(o), locks(d), cache(d), ledger(d) {
    if (options.refresh < std::chrono::seconds(1) || options.check_every < std::chrono::seconds(1))
      throw Error(ErrorKind::invalid_argument, "serve: --refresh and --check-every must be at least 1s");
    if (options.recent_transfers < 1 || options.recent_transfers > 1000)
      throw Error(ErrorKind::invalid_argument, "serve: recent transfers shown must be 1 to 1000");
    if (options.locks_shown < 1 || options.locks_shown > 10'000 || options.largest_accounts < 1 ||
        options.largest_accounts > 10'000)
      throw Error(ErrorKind::invalid_argument, "serve: locks and largest accounts shown must be 1 to 10000");
  }

  std::shared_ptr<const CheckSnapshot> current_check() {
    std::lock_guard lock(check_mutex);
    const auto now = std::chrono::steady_clock::now();
    if (last_check && now - last_check->taken < options.check_every) return last_check;
    auto snapshot = std::make_shared<CheckSnapshot>();
    snapshot->taken = now;
    try {
      snapshot->taken_ms = db.now_ms();
      snapshot->report = ledger.check();
    } catch (const std::exception& e) {
      snapshot->error = e.what();
    }
    last_check = snapshot;
    return last_check;
  }

  // for_page: also the lists the page shows; /metrics needs only the aggregates.
  View collect(bool for_page) {
    View view;
    try {
      view.now_ms = db.now_ms();
      view.schema_version = db.schema_version();
      // Every row a statement returns counts as read: one per aggregate, the lists' LIMITs.
      view.lock_counts = locks.counts(view.now_ms);
      view.rows_read += 1;
      view.cache = cache.table_stats();
      view.rows_read += 1;
      for (auto& c : ledger.currencies()) {
        view.currencies[c.currency] = {c.accounts, c.balance, c.held};
        view.rows_read += 1;
      }
      if (for_page) {
        view.locks = locks.active(view.now_ms, options.locks_shown);
        view.largest = ledger.largest_accounts(options.largest_accounts);
        view.rows_read += static_cast<std::int64_t>(view.locks.size() + view.largest.size());
        TransferQuery query;
        query.limit = static_cast<int>(options.recent_transfers);
        view.recent = ledger.transfers(query).items;
        view.rows_read += static_cast<std::int64_t>(view.recent.size());
      }
      view.up = true;
    } catch (const std::exception& e) {
      view.error = e.what();
      return view;
    }
    view.check = current_check();
    return view;
  }
};

StatusServer::StatusServer(Database& db, StatusOptions options) : impl_(std::make_unique<Impl>(db, options)) {
  auto& server = impl_->server;
  // cpp-httplib's default options add SO_REUSEPORT, with which a second server binds a port another
  // one listens on and the two split its connections: SO_REUSEADDR alone (a restart can rebind at
  // once) makes a port in use an error.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // Nothing here is meant to be framed, cached or run as script.
  // No route takes a body: a larger one is answered 413 and skipped, never kept in memory.
  server.set_payload_max_length(impl_->options.max_request_body);
  server.set_default_headers({{"Cache-Control", "no-store"},
                              {"X-Content-Type-Options", "nosniff"},
                              {"X-Frame-Options", "DENY"},
                              {"Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"}});
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    auto [status, body] = health();
    res.status = status;
    res.set_content(body, "application/json");
  });
  server.Get("/", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(status_page(), "text/html; charset=utf-8");
  });
}

StatusServer::~StatusServer() { stop(); }

int StatusServer::bind(const std::string& host, int port) {
  const int bound =
      port == 0 ? impl_->server.bind_to_any_port(host) : (impl_->server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("serve: cannot listen on {}:{} (in use, or not an address of this host)", host, port));
  return bound;
}

void StatusServer::run() { impl_->server.listen_after_bind(); }

void StatusServer::stop() { impl_->server.stop(); }

std::pair<int, std::string> StatusServer::health() {
  nlohmann::json body{{"backend", std::string(impl_->db.backend_name())}};
  try {
    body["database_time_ms"] = impl_->db.now_ms();
    impl_->db.require_schema();
    body["schema_version"] = Database::library_schema_version();
    body["status"] = "ok";
    return {200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  } catch (const Error& e) {
    body["status"] = "unavailable";
    body["error"] = to_string(e.kind());
    body["message"] = e.what();
    return {503, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  }
}

std::string StatusServer::metrics_text() {
  const auto started = std::chrono::steady_clock::now();
  const View view = impl_->collect(false);
  MetricsSnapshot snapshot = metrics();
  auto& out = snapshot.families;

  auto up = gauge("rowguard_db_up", "1 when the database answered this scrape, else 0");
  add(up, view.up ? 1 : 0);
  out.push_back(std::move(up));
  if (view.up) {
    auto schema = gauge("rowguard_db_schema_version", "schema version recorded in the database");
    add(schema, view.schema_version);
    out.push_back(std::move(schema));

    const auto& counts = view.lock_counts;
    auto locks = gauge("rowguard_db_locks",
                       "lock rows by state: held (unexpired lease), expired (ran out unreleased), released");
    add(locks, static_cast<double>(counts.held), {{"state", "held"}});
    add(locks, static_cast<double>(counts.expired), {{"state", "expired"}});
    add(locks, static_cast<double>(counts.rows - counts.held - counts.expired), {{"state", "released"}});
    out.push_back(std::move(locks));
    auto contended_locks = gauge("rowguard_db_locks_contended", "held locks that someone is waiting for");
    add(contended_locks, static_cast<double>(counts.contended));
    out.push_back(std::move(contended_locks));
    auto waiting = gauge("rowguard_db_lock_waiters", "processes waiting for a lock (blocking acquires)");
    add(waiting, static_cast<double>(counts.waiters));
    out.push_back(std::move(waiting));

    auto accounts = gauge("rowguard_db_accounts", "accounts by currency");
    auto balance =
        gauge("rowguard_db_balance_minor_units", "sum of balances by currency, in minor units (exact up to 2^53)");
    auto held_money = gauge("rowguard_db_held_minor_units", "sum of live holds by currency, in minor units");
    for (const auto& [currency, totals] : view.currencies) {
      add(accounts, static_cast<double>(totals.accounts), {{"currency", currency}});
      add(balance, static_cast<double>(totals.balance), {{"currency", currency}});
      add(held_money, static_cast<double>(totals.held), {{"currency", currency}});
    }
    out.push_back(std::move(accounts));
    out.push_back(std::move(balance));
    out.push_back(std::move(held_money));

    if (view.check) {
      const auto& check = *view.check;
      auto ok = gauge("rowguard_db_ledger_check_ok",
                      "1 when the last ledger check found no violation, 0 when it found one or could not run");
      add(ok, check.report && check.report->ok() ? 1 : 0);
      out.push_back(std::move(ok));
      auto violations = gauge("rowguard_db_ledger_check_violations", "violations the last ledger check found, by kind");
      std::map<std::string, int> by_kind;
      if (check.report)
        for (const auto& v : check.report->violations) ++by_kind[v.what];
      for (const auto& [kind, n] : by_kind) add(violations, n, {{"kind", kind}});
      out.push_back(std::move(violations));
      auto age = gauge("rowguard_db_ledger_check_age_seconds", "how old the ledger check these figures come from is");
      add(age, std::chrono::duration<double>(std::chrono::steady_clock::now() - check.taken).count());
      out.push_back(std::move(age));
      if (check.report) {
        auto entries = gauge("rowguard_db_ledger_entries", "journal entries in the live tables at the last check");
        add(entries, static_cast<double>(check.report->entries));
        out.push_back(std::move(entries));
      }
    }

    auto cache_rows = gauge("rowguard_db_cache_rows", "cache table rows: live, or expired and not yet swept");
    add(cache_rows, static_cast<double>(view.cache.live_rows), {{"state", "live"}});
    add(cache_rows, static_cast<double>(view.cache.rows - view.cache.live_rows), {{"state", "expired"}});
    out.push_back(std::move(cache_rows));
    auto cache_bytes = gauge("rowguard_db_cache_bytes", "bytes of cached values in the cache table");
    add(cache_bytes, static_cast<double>(view.cache.bytes));
    out.push_back(std::move(cache_bytes));
  }
  auto rows = gauge("rowguard_db_scrape_rows", "rows the statements of this scrape returned (aggregates: bounded)");
  add(rows, static_cast<double>(view.rows_read));
  out.push_back(std::move(rows));
  auto took = gauge("rowguard_db_scrape_seconds", "how long reading the database-wide figures of this scrape took");
  add(took, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  out.push_back(std::move(took));

  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return to_prometheus(snapshot);
}

std::string StatusServer::status_page() {
  const auto& options = impl_->options;
  const View view = impl_->collect(true);
  std::string page = fmt::format(
      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta http-equiv=\"refresh\" content=\"{}\"><title>rowguard status</title><style>"
      "body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}"
      "td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}td.n{{text-align:right}}"
      ".ok{{color:#176f2c}}.bad{{color:#b00020;font-weight:bold}}</style></head><body>\n"
      "<h1>rowguard status</h1>\n<p id=\"database\">{} &middot; {} &middot; refreshes every {}s</p>\n",
      options.refresh.count(), html_escape(impl_->db.backend_name()), html_escape(impl_->db.display_url()),
      options.refresh.count());
  if (!view.up) {
    page += fmt::format("<p id=\"health\" class=\"bad\">database unavailable: {}</p>\n</body></html>\n",
                        html_escape(view.error));
    return page;
  }
  page += fmt::format(
      "<p id=\"health\" class=\"ok\">database up &middot; schema version {} &middot; database clock {}</p>\n",
      view.schema_version, utc_time(view.now_ms));

  // Ledger: the invariant first, then the totals per currency.
  page += "<section id=\"ledger\"><h2>Ledger</h2>\n";
  if (view.check && view.check->report) {
    const auto& report = *view.check->report;
    page += fmt::format(
        "<p id=\"ledger-check\" class=\"{}\">ledger check: {} ({} accounts, {} entries, checked at {})</p>\n",
        report.ok() ? "ok" : "bad",
        report.ok() ? std::string("ok") : fmt::format("{} violations", report.violations.size()), report.accounts,
        report.entries, utc_time(view.check->taken_ms));
    if (!report.ok()) {
      page += "<table id=\"violations\"><tr><th>kind</th><th>account</th><th>detail</th></tr>\n";
      for (std::size_t i = 0; i < report.violations.size() && i < options.violations_shown; ++i) {
        const auto& v = report.violations[i];
        page += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n", html_escape(v.what), html_escape(v.account),
                            html_escape(v.detail));
      }
      page += "</table>\n";
      if (report.violations.size() > options.violations_shown)
        page += fmt::format("<p id=\"violations-more\">and {} more: run rowguard ledger check</p>\n",
                            report.violations.size() - options.violations_shown);
    }
  } else if (view.check) {
    page += fmt::format("<p id=\"ledger-check\" class=\"bad\">ledger check could not run: {}</p>\n",
                        html_escape(view.check->error));
  }
  // Totals per currency: balances of different currencies are never added together.
  page += "<table id=\"currencies\"><tr><th>currency</th><th>accounts</th><th>balance</th><th>held</th></tr>\n";
  for (const auto& [currency, totals] : view.currencies)
    page += fmt::format("<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                        html_escape(currency), totals.accounts, totals.balance, totals.held);
  page += "</table>\n";
  std::int64_t accounts = 0;
  for (const auto& [currency, totals] : view.currencies) accounts += totals.accounts;
  page += fmt::format(
      "<p id=\"largest-summary\">the {} largest balances of {} accounts (minor units of each "
      "account's currency)</p>\n<table id=\"largest\"><tr><th>account</th><th>balance</th><th>held</th></tr>\n",
      view.largest.size(), accounts);
  for (const auto& a : view.largest)
    page += fmt::format("<tr><td>{}</td><td class=\"n\">{} {}</td><td class=\"n\">{}</td></tr>\n", html_escape(a.id),
                        a.balance, html_escape(a.currency), a.held);
  page += "</table></section>\n";

  // Locks worth a look, as the statement orders them: held (the longest held first), expired
  // unreleased (the most recent first), released but waited for; the rest are only counted.
  const auto& counts = view.lock_counts;
  page += fmt::format("<section id=\"locks\"><h2>Locks</h2>\n<p id=\"lock-summary\">{} held, {} expired, {} rows</p>\n",
                      counts.held, counts.expired, counts.rows);
  page +=
      "<table><tr><th>name</th><th>state</th><th>owner</th><th>token</th><th>expires in</th><th>waiters</th></tr>\n";
  for (const auto& lock : view.locks)
    page += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td "
        "class=\"n\">{}</td></tr>\n",
        html_escape(lock.name),
        lock.held      ? "held"
        : lock.expired ? "expired"
                       : "released",
        html_escape(lock.owner), lock.token,
        lock.held ? fmt::format("{:.1f}s", static_cast<double>(lock.expires_in_ms) / 1000.0) : std::string("-"),
        lock.waiters);
  page += "</table>\n";
  if (static_cast<std::int64_t>(view.locks.size()) < counts.held + counts.expired)
    page += fmt::format("<p id=\"locks-more\">showing {} of {} held or expired</p>\n", view.locks.size(),
                        counts.held + counts.expired);
  page += "</section>\n";

  page +=
      "<section id=\"transfers\"><h2>Recent transfers</h2>\n<table><tr><th>id</th><th>time</th><th>kind</th>"
      "<th>from</th><th>to</th><th>amount</th><th>outcome</th></tr>\n";
  for (const auto& t : view.recent)
    page += fmt::format(
        "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{} "
        "{}</td><td>{}</td></tr>\n",
        t.id, utc_time(t.created_at_ms), html_escape(std::string(to_string(t.kind))),
        html_escape(t.from.value_or("outside")), html_escape(t.to.value_or("outside")), t.amount,
        html_escape(t.currency), html_escape(t.outcome));
  page += "</table></section>\n";

  page += fmt::format(
      "<section id=\"cache\"><h2>Cache</h2>\n<p id=\"cache-summary\">{} rows: {} live, {} expired; {} "
      "bytes</p></section>\n",
      view.cache.rows, view.cache.live_rows, view.cache.rows - view.cache.live_rows, view.cache.bytes);
  page += fmt::format(
      "<p id=\"footer\">{} rows read &middot; <a href=\"/metrics\">/metrics</a> &middot; "
      "<a href=\"/healthz\">/healthz</a></p>\n</body></html>\n",
      view.rows_read);
  return page;
}

}  // namespace rowguard::cli

// rowguard serve: what an operator sees of one database, over HTTP.
#include "status_server.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <httplib.h>
#include <map>
#include <mutex>
#include <stop_token>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>

#include "rowguard/metrics.hpp"
#include "rowguard/time_text.hpp"

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

// A lock whose last lease an operator force-released (and nobody has taken since).
struct ForceReleased {
  std::string name;
  std::string owner;  // the holder it was taken from
  std::int64_t token = 0;
  std::int64_t released_at_ms = 0;
  std::string reason;
};

// One reading of the locks table by the sampler: the fencing tokens issued so far (each new lease
// and each force-release raises its lock's token by one, and rows are never deleted, so the sum
// only grows) and the processes waiting at that moment.
struct LockSample {
  std::int64_t at_ms = 0;  // database clock
  std::int64_t tokens = 0;
  std::int64_t waiters = 0;
};

// The lock chart's figures for one minute that has samples.
struct LockMinute {
  std::int64_t acquired = 0;
  std::int64_t peak_waiting = 0;
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
  std::map<std::int64_t, std::pair<std::int64_t, std::int64_t>> transfer_minutes;  // minute -> (applied, rejected)
  std::vector<ForceReleased> force_released;
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

std::tm utc_tm(std::int64_t ms) {
  const auto seconds = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  return tm;
}

// A minute since the epoch, ISO 8601 to the minute: 2026-12-05T04:31Z.
std::string iso_minute(std::int64_t minute) {
  const std::tm tm = utc_tm(minute * 60'000);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min);
}

// A length of time between two readings of the database clock, never shown below zero (the two
// readings may cross by a few ms).
std::string for_people(std::int64_t ms) {
  return format_duration(std::chrono::milliseconds(std::max<std::int64_t>(ms, 0)));
}

constexpr std::int64_t minute_ms = 60'000;
constexpr int chart_minutes = 60;  // the charts' window: this minute and the 59 before it

// How this database family writes a stored time as epoch milliseconds and back. The tool sees only
// the public API, which has no dialect: PostgreSQL stores timestamptz, SQLite epoch milliseconds.
struct TimeSql {
  std::string_view to_ms;    // {} is a column
  std::string_view from_ms;  // {} is a bound parameter
};
TimeSql time_sql(std::string_view backend_name) {
  if (backend_name.find("postgres") != std::string_view::npos)
    return {"CAST(floor(EXTRACT(EPOCH FROM {}) * 1000) AS bigint)",
            "(TIMESTAMPTZ 'epoch' + CAST({} AS bigint) * INTERVAL '1 millisecond')"};
  return {"({})", "({})"};
}

// The statements of the page's charts and force-released list, built once from constants, the
// table prefix (validated when the database was opened) and the family's time spelling.
struct PageStatements {
  // $1 first minute's start, ms -> (minute since the epoch, applied, rejected) for each minute with
  // transfers. A range on created_at (index rowguard_transfers_created_at, schema step 005), so it
  // reads the last hour's rows only; grouped in the database, so it returns at most 60 rows.
  std::string transfers_per_minute;
  // $1 since ms, $2 limit -> (name, owner, token, released_at ms, reason), the most recent first.
  std::string force_released;
  // -> (tokens issued, processes waiting): one aggregate over the locks table.
  std::string lock_sample;

  explicit PageStatements(Database& db) {
    const auto time = time_sql(db.backend_name());
    const std::string& p = db.table_prefix();
    const auto to_ms = [&](std::string_view column) { return fmt::format(fmt::runtime(time.to_ms), column); };
    const auto from_ms = [&](std::string_view param) { return fmt::format(fmt::runtime(time.from_ms), param); };
    transfers_per_minute = fmt::format(
        "SELECT {} / {} AS minute, CAST(SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS bigint), "
        "CAST(SUM(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS bigint) FROM {}transfers WHERE created_at >= {} "
        "GROUP BY 1 ORDER BY 1",
        to_ms("created_at"), minute_ms, p, from_ms("$1"));
    force_released = fmt::format(
        "SELECT name, COALESCE(owner, ''), token, {}, release_reason FROM {}locks "
        "WHERE release_reason IS NOT NULL AND released_at >= {} ORDER BY released_at DESC, name LIMIT $2",
        to_ms("released_at"), p, from_ms("$1"));
    lock_sample = fmt::format(
        "SELECT CAST(COALESCE(SUM(token), 0) AS bigint), CAST(COALESCE(SUM(waiters), 0) AS bigint) FROM {}locks", p);
  }
};

// One series of a chart: a value for each minute of the window, or none where there is no data.
struct ChartSeries {
  std::string name;   // also its CSS class: applied, rejected, acquired, waiting
  std::string color;  // stroke and fill; distinct per series so a screenshot can be checked by colour
  std::vector<std::optional<std::int64_t>> values;
};

// The largest axis value: 1, 2 or 5 times a power of ten, in steps so that at most 5 ticks fit.
std::pair<std::int64_t, std::int64_t> axis_top_and_step(std::int64_t largest) {
  const std::int64_t wanted = std::max<std::int64_t>(largest, 1);
  for (std::int64_t magnitude = 1;; magnitude *= 10)
    for (const std::int64_t m : {1, 2, 5}) {
      const std::int64_t step = m * magnitude;
      if (step * 5 >= wanted) return {(wanted + step - 1) / step * step, step};
    }
}

// An inline SVG line chart over the window's minutes: axes with ticks (the count per minute, the
// time every 10 minutes), a line per series through its minutes with data, and a point with a
// tooltip (<title>) on every minute whose value is not 0. Drawn here: no script, nothing fetched.
std::string svg_chart(std::string_view id, std::string_view title, std::string_view y_label, std::int64_t first_minute,
                      const std::vector<ChartSeries>& series) {
  constexpr double width = 720, height = 220, left = 52, right = 12, top = 12, bottom = 36;
  constexpr double plot_w = width - left - right, plot_h = height - top - bottom;
  std::int64_t largest = 0;
  for (const auto& s : series)
    for (const auto& v : s.values)
      if (v) largest = std::max(largest, *v);
  const auto [y_top, y_step] = axis_top_and_step(largest);
  const auto x_of = [&](std::size_t i) { return left + plot_w * static_cast<double>(i) / (chart_minutes - 1); };
  const auto y_of = [&, y_top = y_top](std::int64_t v) {
    return top + plot_h - plot_h * static_cast<double>(v) / static_cast<double>(y_top);
  };

  std::string svg = fmt::format(
      "<svg id=\"{0}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{1}\" height=\"{2}\" "
      "viewBox=\"0 0 {1} {2}\" role=\"img\" aria-labelledby=\"{0}-title\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<title id=\"{0}-title\">{3}</title>\n"
      "<rect x=\"{4}\" y=\"{5}\" width=\"{6}\" height=\"{7}\" fill=\"#fcfcfc\" stroke=\"#bbb\"/>\n",
      id, width, height, html_escape(title), left, top, plot_w, plot_h);
  for (std::int64_t v = 0; v <= y_top; v += y_step) {
    const double y = y_of(v);
    svg += fmt::format(
        "<line class=\"tick\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e3e3e3\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
        left, left + plot_w, y, y, left - 6, y + 4, v);
  }
  for (std::size_t i = 0; i < chart_minutes; ++i) {
    const std::int64_t minute = first_minute + static_cast<std::int64_t>(i);
    if (minute % 10 != 0) continue;
    const double x = x_of(i);
    const std::tm tm = utc_tm(minute * minute_ms);
    svg += fmt::format(
        "<line class=\"tick\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#888\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#555\">{:02}:{:02}</text>\n",
        x, x, top + plot_h, top + plot_h + 5, x, top + plot_h + 17, tm.tm_hour, tm.tm_min);
  }
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#555\">minute (UTC), the last hour</text>\n"
      "<text transform=\"translate(12 {:.1f}) rotate(-90)\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
      left + plot_w / 2, height - 4, top + plot_h / 2, html_escape(y_label));
  for (const auto& s : series) {
    // A line through each run of consecutive minutes that have data: a gap stays a gap.
    std::string points;
    const auto flush = [&] {
      if (!points.empty())
        svg +=
            fmt::format("<polyline class=\"line {}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
                        s.name, s.color, points);
      points.clear();
    };
    for (std::size_t i = 0; i < s.values.size(); ++i) {
      if (!s.values[i]) {
        flush();
        continue;
      }
      if (!points.empty()) points += ' ';
      points += fmt::format("{:.1f},{:.1f}", x_of(i), y_of(*s.values[i]));
    }
    flush();
    for (std::size_t i = 0; i < s.values.size(); ++i) {
      if (!s.values[i] || *s.values[i] == 0) continue;
      const std::string minute = iso_minute(first_minute + static_cast<std::int64_t>(i));
      svg += fmt::format(
          "<circle class=\"point {0}\" cx=\"{1:.1f}\" cy=\"{2:.1f}\" r=\"4\" fill=\"{3}\" data-minute=\"{4}\" "
          "data-value=\"{5}\"><title>{4}: {5} {0}</title></circle>\n",
          s.name, x_of(i), y_of(*s.values[i]), s.color, minute, *s.values[i]);
    }
  }
  svg += "</svg>\n<p class=\"legend\">";
  for (const auto& s : series)
    svg += fmt::format("<span class=\"key\" style=\"background:{}\"></span>{} ", s.color, s.name);
  svg += "</p>\n";
  return svg;
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

// The lock counts, the lease rows worth a look and the recently force-released ones.
std::string locks_html(const View& view) {
  std::string page;
  // Locks worth a look, as the statement orders them: held (the longest held first), expired
  // unreleased (the most recent first), released but waited for; the rest are only counted.
  const auto& counts = view.lock_counts;
  page += fmt::format("<section id=\"locks\"><h2>Locks</h2>\n<p id=\"lock-summary\">{} held, {} expired, {} rows</p>\n",
                      counts.held, counts.expired, counts.rows);
  page +=
      "<table id=\"lock-rows\"><tr><th>name</th><th>state</th><th>owner</th><th>token</th><th>acquired</th>"
      "<th>held for</th><th>expires in</th><th>waiters</th></tr>\n";
  for (const auto& lock : view.locks) {
    const bool leased = lock.held || lock.expired;
    page += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>"
        "<td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
        html_escape(lock.name),
        lock.held      ? "held"
        : lock.expired ? "expired"
                       : "released",
        html_escape(lock.owner), lock.token, leased && lock.acquired_at_ms > 0 ? format_time(lock.acquired_at_ms) : "-",
        lock.held && lock.acquired_at_ms > 0 ? for_people(view.now_ms - lock.acquired_at_ms) : "-",
        lock.held      ? for_people(lock.expires_in_ms)
        : lock.expired ? "ran out"
                       : "-",
        lock.waiters);
  }
  page += "</table>\n";
  if (static_cast<std::int64_t>(view.locks.size()) < counts.held + counts.expired)
    page += fmt::format("<p id=\"locks-more\">showing {} of {} held or expired</p>\n", view.locks.size(),
                        counts.held + counts.expired);
  if (!view.force_released.empty()) {
    page +=
        "<h3>Force-released in the last hour</h3>\n<table id=\"force-released\"><tr><th>name</th><th>taken from"
        "</th><th>token</th><th>released</th><th>ago</th><th>reason</th></tr>\n";
    for (const auto& f : view.force_released)
      page += fmt::format(
          "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
          html_escape(f.name), html_escape(f.owner), f.token, format_time(f.released_at_ms),
          for_people(view.now_ms - f.released_at_ms), html_escape(f.reason));
    page += "</table>\n";
  }
  page += "</section>\n";

  return page;
}

}  // namespace

struct StatusServer::Impl {
  Database& db;
  StatusOptions options;
  Locks locks;
  Cache cache;
  Ledger ledger;
  PageStatements statements;
  httplib::Server server;

  std::mutex check_mutex;  // one check at a time; guards last_check
  std::shared_ptr<const CheckSnapshot> last_check;

  std::mutex samples_mutex;        // guards samples and sample_error
  std::deque<LockSample> samples;  // the last hour's, oldest first
  std::string sample_error;        // why the latest sample failed; empty when it did not
  std::mutex sampler_mutex;        // the sampler sleeps on wake between samples
  std::condition_variable_any wake;

  Impl(Database& d, StatusOptions o) : db(d), options(o), locks(d), cache(d), ledger(d), statements(d) {
    if (options.refresh < std::chrono::seconds(1) || options.check_every < std::chrono::seconds(1))
      throw Error(ErrorKind::invalid_argument, "serve: --refresh and --check-every must be at least 1s");
    if (options.recent_transfers < 1 || options.recent_transfers > 1000)
      throw Error(ErrorKind::invalid_argument, "serve: recent transfers shown must be 1 to 1000");
    if (options.locks_shown < 1 || options.locks_shown > 10'000 || options.largest_accounts < 1 ||
        options.largest_accounts > 10'000)
      throw Error(ErrorKind::invalid_argument, "serve: locks and largest accounts shown must be 1 to 10000");
    if (options.lock_sample_every < std::chrono::milliseconds(100) ||
        options.lock_sample_every > std::chrono::seconds(60))
      throw Error(ErrorKind::invalid_argument, "serve: the lock sample interval must be 100ms to 60s");
  }

  void sample_locks() {
    LockSample sample;
    try {
      const Result r = db.exec(statements.lock_sample);
      sample.tokens = r.one().i64(0);
      sample.waiters = r.one().i64(1);
      sample.at_ms = db.now_ms();
    } catch (const std::exception& e) {
      std::lock_guard lock(samples_mutex);
      sample_error = e.what();
      return;
    }
    std::lock_guard lock(samples_mutex);
    sample_error.clear();
    samples.push_back(sample);
    // One sample before the window stays: the first minute's acquisitions are counted from it.
    while (samples.size() > 1 && samples[1].at_ms < sample.at_ms - (chart_minutes + 1) * minute_ms) samples.pop_front();
  }

  // Samples until stop is requested (StatusServer::run's thread); a failed sample leaves a gap.
  void sample_until(const std::stop_token& stop) {
    while (!stop.stop_requested()) {
      sample_locks();
      std::unique_lock lock(sampler_mutex);
      wake.wait_for(lock, stop, options.lock_sample_every, [] { return false; });
    }
  }

  // The charts of the last hour, minute by minute, on the database clock (the current minute last).
  std::string activity_html(const View& view) {
    std::string page;
    const std::int64_t first_minute = view.now_ms / minute_ms - (chart_minutes - 1);
    {
      ChartSeries applied{"applied", "#1a7f37", {}};
      ChartSeries rejected{"rejected", "#cf222e", {}};
      std::int64_t applied_total = 0, rejected_total = 0, busiest = -1, busiest_count = 0;
      for (std::int64_t m = first_minute; m < first_minute + chart_minutes; ++m) {
        const auto it = view.transfer_minutes.find(m);
        const auto [a, r] =
            it == view.transfer_minutes.end() ? std::pair<std::int64_t, std::int64_t>{0, 0} : it->second;
        applied.values.emplace_back(a);
        rejected.values.emplace_back(r);
        applied_total += a;
        rejected_total += r;
        if (a + r > busiest_count) {
          busiest_count = a + r;
          busiest = m;
        }
      }
      page += "<section id=\"activity\"><h2>The last hour</h2>\n<h3>Transfers per minute</h3>\n";
      page += svg_chart("transfers-chart", "Transfers per minute, applied and rejected, the last hour",
                        "transfers per minute", first_minute, {applied, rejected});
      page += fmt::format("<p id=\"transfers-summary\">{} applied, {} rejected in the last hour", applied_total,
                          rejected_total);
      if (busiest >= 0) page += fmt::format("; busiest minute {}: {} transfers", iso_minute(busiest), busiest_count);
      page +=
          "</p>\n<p class=\"note\">From the journal: rows of the transfers table (every kind: transfers, deposits, "
          "withdrawals, reversals) by the minute they were created; applied: outcome ok, rejected: any other "
          "outcome (insufficient funds).</p>\n";
    }
    {
      std::int64_t since_ms = 0;
      std::string sample_error;
      const auto minutes = lock_minutes(&since_ms, &sample_error);
      // Only PostgreSQL records waiters in the database (they register there for NOTIFY).
      const bool records_waiters = db.backend_name().find("postgres") != std::string_view::npos;
      ChartSeries acquired{"acquired", "#0969da", {}};
      ChartSeries waiting{"waiting", "#bf8700", {}};
      std::int64_t acquired_total = 0, peak_waiting = 0;
      for (std::int64_t m = first_minute; m < first_minute + chart_minutes; ++m) {
        const auto it = minutes.find(m);
        if (it == minutes.end()) {
          acquired.values.emplace_back();
          waiting.values.emplace_back();
          continue;
        }
        acquired.values.emplace_back(it->second.acquired);
        waiting.values.emplace_back(it->second.peak_waiting);
        acquired_total += it->second.acquired;
        peak_waiting = std::max(peak_waiting, it->second.peak_waiting);
      }
      std::vector<ChartSeries> series{acquired};
      if (records_waiters) series.push_back(waiting);
      page += records_waiters ? "<h3>Lock acquisitions and processes waiting</h3>\n" : "<h3>Lock acquisitions</h3>\n";
      page += svg_chart("locks-chart",
                        records_waiters ? "Lock acquisitions per minute and processes waiting, the last hour"
                                        : "Lock acquisitions per minute, the last hour",
                        "per minute", first_minute, series);
      page += fmt::format("<p id=\"locks-activity-summary\">{} acquisitions", acquired_total);
      if (records_waiters) page += fmt::format(", at most {} waiting at once", peak_waiting);
      page += since_ms > 0 ? fmt::format(" since {} (sampled every {})", format_time(since_ms),
                                         format_duration(options.lock_sample_every))
                           : std::string(" (no sample yet)");
      page += "</p>\n";
      if (!sample_error.empty())
        page += fmt::format("<p id=\"locks-sample-error\" class=\"bad\">the last lock sample failed: {}</p>\n",
                            html_escape(sample_error));
      page +=
          "<p class=\"note\">The database keeps no history of lock acquisitions, so this server samples the "
          "locks "
          "table while it runs: acquisitions are the fencing tokens issued between samples (one per new lease, "
          "and one per force-release), counted in the minute of the later sample; minutes before this server "
          "started have no data. ";
      page += records_waiters
                  ? "Waiting: the most processes one sample found waiting for a lock (the waiters column, where only "
                    "waiters that can LISTEN register: none through a transaction pooler such as PgBouncer). "
                  : "SQLite records no waiters in the database, so waits are not charted here. ";
      page +=
          "How many acquires waited, and for how long, each process counts itself: rowguard_lock_waits_total "
          "and rowguard_lock_wait_seconds on the /metrics of the services that use the locks.</p>\n</section>\n";
    }

    return page;
  }

  // The lock chart's minutes with samples: tokens issued between consecutive samples, counted in
  // the later one's minute, and the most processes one sample saw waiting.
  std::map<std::int64_t, LockMinute> lock_minutes(std::int64_t* since_ms, std::string* error) {
    std::lock_guard lock(samples_mutex);
    std::map<std::int64_t, LockMinute> out;
    *since_ms = samples.empty() ? 0 : samples.front().at_ms;
    *error = sample_error;
    for (std::size_t i = 0; i < samples.size(); ++i) {
      auto& m = out[samples[i].at_ms / minute_ms];
      m.peak_waiting = std::max(m.peak_waiting, samples[i].waiters);
      // Tokens never go down unless rows were deleted by hand; such a step counts as none.
      if (i > 0) m.acquired += std::max<std::int64_t>(0, samples[i].tokens - samples[i - 1].tokens);
    }
    return out;
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
        const std::int64_t first_minute = view.now_ms / minute_ms - (chart_minutes - 1);
        for (const auto& row : db.exec(statements.transfers_per_minute, {first_minute * minute_ms}).rows) {
          view.transfer_minutes[row.i64(0)] = {row.i64(1), row.i64(2)};
          view.rows_read += 1;
        }
        for (const auto& row : db.exec(statements.force_released, {view.now_ms - chart_minutes * minute_ms,
                                                                   static_cast<std::int64_t>(options.locks_shown)})
                                   .rows) {
          view.force_released.push_back({row.text(0), row.text(1), row.i64(2), row.i64(3), row.text(4)});
          view.rows_read += 1;
        }
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
  // Every path here only answers GET (and HEAD, which cpp-httplib routes to the GET handler):
  // other methods get 405 and the methods that work, as RFC 9110 asks; other paths stay 404.
  const auto not_allowed = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
  };
  const char* paths = "/|/metrics|/healthz";
  server.Post(paths, not_allowed);
  server.Put(paths, not_allowed);
  server.Patch(paths, not_allowed);
  server.Delete(paths, not_allowed);
  server.Options(paths, not_allowed);
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

void StatusServer::run() {
  // The sampler lives as long as the server answers: its destructor stops and joins it.
  std::jthread sampler([this](const std::stop_token& stop) { impl_->sample_until(stop); });
  impl_->server.listen_after_bind();
}

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
      "td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;white-space:nowrap}}td.n{{text-align:right}}"
      ".ok{{color:#176f2c}}.bad{{color:#b00020;font-weight:bold}}.note{{color:#555;max-width:720px}}"
      ".chart{{display:block}}.legend{{margin:.2em 0 1em}}"
      ".key{{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 .8em}}</style></head><body>\n"
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
      view.schema_version, format_time(view.now_ms));

  page += impl_->activity_html(view);

  // Ledger: the invariant first, then the totals per currency.
  page += "<section id=\"ledger\"><h2>Ledger</h2>\n";
  if (view.check && view.check->report) {
    const auto& report = *view.check->report;
    page += fmt::format(
        "<p id=\"ledger-check\" class=\"{}\">ledger check: {} ({} accounts, {} entries, checked at {})</p>\n",
        report.ok() ? "ok" : "bad",
        report.ok() ? std::string("ok") : fmt::format("{} violations", report.violations.size()), report.accounts,
        report.entries, format_time(view.check->taken_ms));
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
                        html_escape(currency), totals.accounts, html_escape(format_money(totals.balance, currency)),
                        html_escape(format_money(totals.held, currency)));
  page += "</table>\n";
  std::int64_t accounts = 0;
  for (const auto& [currency, totals] : view.currencies) accounts += totals.accounts;
  page += fmt::format(
      "<p id=\"largest-summary\">the {} largest balances of {} accounts (each in its own currency)</p>\n"
      "<table id=\"largest\"><tr><th>account</th><th>balance</th><th>held</th></tr>\n",
      view.largest.size(), accounts);
  for (const auto& a : view.largest)
    page +=
        fmt::format("<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n", html_escape(a.id),
                    html_escape(format_money(a.balance, a.currency)), html_escape(format_money(a.held, a.currency)));
  page += "</table></section>\n";

  page += locks_html(view);

  page +=
      "<section id=\"transfers\"><h2>Recent transfers</h2>\n<table><tr><th>id</th><th>time</th><th>kind</th>"
      "<th>from</th><th>to</th><th>amount</th><th>outcome</th></tr>\n";
  for (const auto& t : view.recent)
    page += fmt::format(
        "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>"
        "<td>{}</td></tr>\n",
        t.id, format_time(t.created_at_ms), html_escape(std::string(to_string(t.kind))),
        html_escape(t.from.value_or("outside")), html_escape(t.to.value_or("outside")),
        html_escape(format_money(t.amount, t.currency)), html_escape(t.outcome));
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

// rowguard ledger history|show|transfers|balance-at: read-only queries over the journal.
#include <algorithm>
#include <iostream>
#include <regex>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct HistoryArgs {
  std::string id, id_or_key, key, since, until, time, account, reference, metadata;
  std::int64_t code = 0;
  int limit = 100;
  std::int64_t cursor = 0;
  bool oldest_first = false;
  bool entries = false;
  std::string standby, max_staleness = "1s";  // --standby URL, --max-staleness DUR
};

// --standby and --max-staleness of history and transfers.
void standby_options(CLI::App* cmd, HistoryArgs& a) {
  cmd->add_option("--standby", a.standby,
                  "Read from this PostgreSQL standby when it is at most --max-staleness behind the primary, "
                  "else from --db");
  cmd->add_option("--max-staleness", a.max_staleness, "How far behind the primary the standby may be (default 1s)");
}

// A ledger on db that reads history from the --standby database when one was given (kept in standby).
Ledger history_ledger(const Globals& globals, Database& db, const HistoryArgs& a, std::optional<Database>& standby) {
  if (a.standby.empty()) return Ledger(db);
  Globals on_standby = globals;
  on_standby.db = a.standby;
  try {
    // Not SchemaNeed::current: a standby that is not PostgreSQL is the library's usage error (exit 2) first.
    standby.emplace(open_database(on_standby, SchemaNeed::any));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::transient) throw;
    // An unreachable standby is what the primary is there for.
    std::cerr << "rowguard: the standby is unreachable, reading the primary: " << e.what() << '\n';
    return Ledger(db);
  }
  LedgerOptions options;
  options.standby = StandbyReads{&*standby, parse_duration(a.max_staleness)};
  return Ledger(db, options);
}

nlohmann::json opt_json(const std::optional<std::string>& s) { return s ? nlohmann::json(*s) : nlohmann::json(); }
nlohmann::json opt_json(const std::optional<std::int64_t>& n) { return n ? nlohmann::json(*n) : nlohmann::json(); }

nlohmann::json transfer_json(const TransferRecord& t, bool with_entries) {
  nlohmann::json j = {{"id", t.id},
                      {"key", opt_json(t.key)},
                      {"kind", std::string(to_string(t.kind))},
                      {"from", opt_json(t.from)},
                      {"to", opt_json(t.to)},
                      {"amount", t.amount},
                      {"currency", t.currency},
                      {"outcome", t.outcome},
                      {"reverses", opt_json(t.reverses)},
                      {"hold_id", opt_json(t.hold_id)},
                      {"global_txid", opt_json(t.global_txid)},
                      {"created_at", format_time(t.created_at_ms)},
                      {"created_at_ms", t.created_at_ms}};
  add_details_json(j, t.details);
  if (with_entries) {
    nlohmann::json entries = nlohmann::json::array();
    for (const auto& e : t.entries)
      entries.push_back({{"id", e.id},
                         {"account", e.account},
                         {"amount", e.amount},
                         {"balance_after", opt_json(e.balance_after)},
                         {"account_version", opt_json(e.account_version)}});
    j["entries"] = std::move(entries);
  }
  return j;
}

// A change of a balance: "+25.00 EUR", "-25.00 EUR".
std::string signed_money(std::int64_t minor, std::string_view currency) {
  return (minor > 0 ? "+" : "") + format_money(minor, currency);
}

// "2026-01-31T12:30:00.250Z  #42 transfer 25.00 EUR alice -> bob ok (key order-77)"
std::string transfer_line(const TransferRecord& t) {
  return fmt::format("{}  #{} {} {} {} -> {} {}{}", format_time(t.created_at_ms), t.id, to_string(t.kind),
                     format_money(t.amount, t.currency), t.from.value_or("(outside)"), t.to.value_or("(outside)"),
                     t.outcome, t.key ? fmt::format(" (key {})", *t.key) : std::string()) +
         details_text(t.details);
}

std::string entries_lines(const TransferRecord& t) {
  std::string text;
  for (const auto& e : t.entries)
    text += fmt::format("\n    entry {} {} {}{}", e.id, e.account, signed_money(e.amount, t.currency),
                        e.balance_after ? " -> " + format_money(*e.balance_after, t.currency) : std::string());
  return text;
}

std::string next_line(const std::optional<std::int64_t>& next, std::string_view option) {
  return next ? fmt::format("\nmore: {} {}", option, *next) : std::string("\n(end)");
}

// A --since or --until value, parsed before connecting (a bad one exits 2 at once): a time
// parse_time reads, or a duration (90m, 1h, 7d) meaning that long before now on the database
// clock, the clock that stamps the transfers, read by resolve().
class TimeArg {
 public:
  explicit TimeArg(const std::string& text) {
    static const std::regex ago(R"(^[0-9]+(ms|s|m|h|d)$)");
    if (std::regex_match(text, ago))
      ago_ms_ = parse_duration(text).count();
    else
      at_ms_ = absolute(text);
  }
  std::int64_t resolve(Database& db) const {
    if (at_ms_) return *at_ms_;
    // No overflow (a span is at most 2^63 - 1, now is positive); at the earliest year 1, as parse_time.
    return std::max(db.now_ms() - ago_ms_, parse_time("0001-01-01"));
  }

 private:
  static std::int64_t absolute(const std::string& text) {
    try {
      return parse_time(text);
    } catch (const Error& e) {
      throw Error(ErrorKind::invalid_argument, fmt::format("{}, or a duration before now (90m, 1h, 7d)", e.what()));
    }
  }
  std::optional<std::int64_t> at_ms_;
  std::int64_t ago_ms_ = 0;
};

// Both bounds of a window, parsed (absent when not given), then resolved into the query.
struct Window {
  std::optional<TimeArg> since, until;
  Window(const std::string& since_text, const std::string& until_text) {
    if (!since_text.empty()) since.emplace(since_text);
    if (!until_text.empty()) until.emplace(until_text);
  }
  template <typename Query>
  void resolve(Database& db, Query& q) const {
    if (since) q.since_ms = since->resolve(db);
    if (until) q.until_ms = until->resolve(db);
  }
};

// The window as resolved, "since" and "until" in ISO 8601 when given: a duration means a moment
// before this call, and the next page asks for the same window by these times.
void add_window(nlohmann::json& result, const std::optional<std::int64_t>& since,
                const std::optional<std::int64_t>& until) {
  if (since) result["since"] = format_time(*since);
  if (until) result["until"] = format_time(*until);
}

// The --since/--until help of history and transfers.
constexpr const char* since_help =
    "Only transfers created at or after TIME (inclusive): 2026-01-31, 2026-01-31T12:30:00Z, an offset instead of Z, "
    "@epoch-ms, or a duration (90m, 1h, 7d) meaning that long before now on the database clock (resolved once: "
    "--json prints the window as \"since\"/\"until\", to page it with)";
constexpr const char* until_help = "Only transfers created before TIME (exclusive), written as for --since";

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}
}  // namespace

void add_history_commands(CLI::App& app, Globals& globals) {
  static HistoryArgs a;
  auto* ledger = app.get_subcommand("ledger");
  // --limit and the cursor option of a paged command; returns the cursor's option (set or not).
  auto paged = [](CLI::App* cmd, const std::string& cursor) {
    cmd->add_option("--limit", a.limit, "Items per page, 1 to 1000 (default 100)")
        ->check(decimal())
        ->check(CLI::Range(1, 1000));
    return cmd->add_option(cursor, a.cursor, "Cursor: the 'next' of the previous page")->check(decimal());
  };

  auto* history = ledger->add_subcommand(
      "history",
      "ID's transfers that moved its balance, newest first, one page, each with ID's balance after it "
      "(balance_after) (exit 5 when there is no such account)");
  history->add_option("id", a.id, "Account id")->required();
  history->add_option("--since", a.since, since_help);
  history->add_option("--until", a.until, until_help);
  auto* after = paged(history, "--after");
  history->add_flag("--oldest-first", a.oldest_first, "Oldest first instead");
  standby_options(history, a);
  history->callback([&globals, after] {
    HistoryQuery q;
    q.limit = a.limit;
    q.order = a.oldest_first ? HistoryOrder::oldest_first : HistoryOrder::newest_first;
    if (after->count()) q.after = a.cursor;
    const Window window(a.since, a.until);
    auto db = open_database(globals);
    window.resolve(db, q);
    std::optional<Database> standby;
    const HistoryPage page = history_ledger(globals, db, a, standby).history(a.id, q);
    nlohmann::json items = nlohmann::json::array();
    std::string text = fmt::format("history of {} ({} item(s))", a.id, page.items.size());
    for (const auto& item : page.items) {
      auto j = transfer_json(item.transfer, true);
      j["change"] = item.change;
      j["balance_after"] = opt_json(item.balance_after);
      items.push_back(std::move(j));
      text += fmt::format("\n{} {}{}", signed_money(item.change, item.transfer.currency),
                          item.balance_after
                              ? "(balance " + format_money(*item.balance_after, item.transfer.currency) + ") "
                              : std::string(),
                          transfer_line(item.transfer));
    }
    nlohmann::json result{{"account", a.id}, {"items", items}, {"next", opt_json(page.next)}};
    add_window(result, q.since_ms, q.until_ms);
    emit(globals, result, text + next_line(page.next, "--after"));
  });

  auto* show = ledger->add_subcommand(
      "show", "One transfer with its entries, by id (digits) or idempotency key (exit 5 when there is none)");
  auto* positional = show->add_option("id_or_key", a.id_or_key, "Transfer id, or its idempotency key");
  auto* by_key = show->add_option("--key", a.key, "Look up this idempotency key (even one made of digits)");
  positional->excludes(by_key);
  show->callback([&globals, positional, by_key] {
    if (!positional->count() && !by_key->count())
      throw Error(ErrorKind::invalid_argument, "ledger show needs a transfer id, a key, or --key KEY");
    auto db = open_database(globals);
    Ledger ledger(db);
    const TransferRecord t = by_key->count()           ? ledger.find_transfer_by_key(a.key)
                             : all_digits(a.id_or_key) ? ledger.find_transfer(std::stoll(a.id_or_key))
                                                       : ledger.find_transfer_by_key(a.id_or_key);
    emit(globals, transfer_json(t, true), transfer_line(t) + entries_lines(t));
  });

  auto* transfers = ledger->add_subcommand(
      "transfers",
      "The ledger's transfers, rejected ones too, newest first, one page (exit 5 for an unknown --account)");
  transfers->add_option("--account", a.account, "Only transfers from or to this account");
  transfers->add_option("--since", a.since, since_help);
  transfers->add_option("--until", a.until, until_help);
  auto* code = transfers->add_option("--code", a.code, "Only transfers with this code (1 to 65535)")->check(decimal());
  auto* reference = transfers->add_option("--reference", a.reference, "Only transfers with exactly this reference");
  auto* metadata = transfers->add_option(
      "--metadata", a.metadata,
      "Only transfers whose metadata contains this JSON object: a flat object of strings, numbers, true or false "
      "under keys of [A-Za-z0-9_-], e.g. '{\"shop\":\"eu-1\"}' (jsonb @> on PostgreSQL, json_extract per key on "
      "SQLite)");
  auto* before = paged(transfers, "--before");
  transfers->add_flag("--entries", a.entries, "With each transfer's journal entries");
  standby_options(transfers, a);
  transfers->callback([&globals, before, code, reference, metadata] {
    TransferQuery q;
    q.limit = a.limit;
    q.include_entries = a.entries;
    if (before->count()) q.before = a.cursor;
    if (!a.account.empty()) q.account = a.account;
    if (code->count()) {
      if (a.code < 1 || a.code > max_transfer_code)
        throw Error(ErrorKind::invalid_argument, fmt::format("--code is 1 to {}, got {}", max_transfer_code, a.code));
      q.code = static_cast<int>(a.code);
    }
    if (reference->count()) q.reference = a.reference;
    if (metadata->count()) q.metadata = a.metadata;
    const Window window(a.since, a.until);
    auto db = open_database(globals);
    window.resolve(db, q);
    std::optional<Database> standby;
    const TransferPage page = history_ledger(globals, db, a, standby).transfers(q);
    nlohmann::json items = nlohmann::json::array();
    std::string text = fmt::format("{} transfer(s)", page.items.size());
    for (const auto& t : page.items) {
      items.push_back(transfer_json(t, a.entries));
      text += "\n" + transfer_line(t) + (a.entries ? entries_lines(t) : std::string());
    }
    nlohmann::json result{{"items", items}, {"next", opt_json(page.next)}};
    add_window(result, q.since_ms, q.until_ms);
    emit(globals, result, text + next_line(page.next, "--before"));
  });

  auto* balance_at = ledger->add_subcommand(
      "balance-at", "ID's balance just before TIME, from its opening balance and journal (exit 5 for no such account)");
  balance_at->add_option("id", a.id, "Account id")->required();
  balance_at->add_option("time", a.time, "2026-01-31, 2026-01-31T12:30:00Z, an offset instead of Z, or @epoch-ms")
      ->required();
  balance_at->callback([&globals] {
    const std::int64_t at = parse_time(a.time);
    auto db = open_database(globals);
    Ledger ledger(db);
    const std::int64_t balance = ledger.balance_at(a.id, at);
    emit(globals, {{"account", a.id}, {"at", format_time(at)}, {"at_ms", at}, {"balance", balance}},
         fmt::format("{} {} at {}", a.id, format_money(balance, ledger.get(a.id).currency), format_time(at)));
  });
}

}  // namespace rowguard::cli

// Ledger history, transfer lookup and point-in-time balances, checked against a model of what
// the test applied.
#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::kind_of;
using rowguard::test::rows_in;
using rowguard::test::TestDb;

namespace {
// One applied or rejected request, as the test saw it.
struct Done {
  std::int64_t id = 0;
  bool ok = false;
  std::map<std::string, std::int64_t> changes;  // per account, for an applied one
};

// Three accounts and a known mix: deposits, transfers both ways, rejections, a withdrawal, a
// reversal and a hold's capture, with short pauses so some have distinct creation times.
struct Bank {
  TestDb t;
  Ledger ledger;
  std::vector<Done> done;  // in the order applied (ids grow)
  // Indexes into done of the requests made right after a pause: every earlier row (transfer or
  // entry) was written at least 3 ms before theirs.
  std::vector<std::size_t> after_pause;

  Bank() : ledger((t.db().migrate(), t.db())) {
    ledger.open("a", "EUR");
    ledger.open("b", "EUR");
    ledger.open("c", "EUR");
    add(ledger.deposit("a", 1'000, "dep-a"), {{"a", 1'000}});
    add(ledger.deposit("b", 500, "dep-b"), {{"b", 500}});
    for (int i = 0; i < 24; ++i) {
      if (i % 6 == 0) pause();
      const std::string from = i % 3 == 0 ? "b" : "a";
      const std::string to = i % 2 == 0 ? "c" : (from == "a" ? "b" : "a");
      const std::int64_t amount = 10 + i;
      add(ledger.transfer(from, to, amount, fmt::format("t-{}", i)), {{from, -amount}, {to, amount}});
      if (i % 8 == 0)  // far more than anyone has: recorded under its key, no entries
        add(ledger.transfer(from, to, 1'000'000, fmt::format("big-{}", i)), {});
    }
    pause();
    add(ledger.withdraw("c", 7, "wd-c"), {{"c", -7}});
    add(ledger.reverse("t-1", 5, "refund-t-1"), {{"b", -5}, {"a", 5}});  // t-1 went a -> b
    const HoldResult h = ledger.hold("a", "c", 40, "hold-1", std::chrono::minutes(10));
    REQUIRE(h.ok());
    pause();
    add(ledger.capture(h.hold_id, 30), {{"a", -30}, {"c", 30}});
  }

  void pause() {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    after_pause.push_back(done.size());
  }

  void add(const TransferResult& r, std::map<std::string, std::int64_t> changes) {
    REQUIRE(!r.replayed);
    done.push_back({r.transfer_id, r.ok(), r.ok() ? std::move(changes) : std::map<std::string, std::int64_t>{}});
  }

  // The applied transfers that moved the account, oldest first: (id, change).
  std::vector<std::pair<std::int64_t, std::int64_t>> moved(const std::string& account) const {
    std::vector<std::pair<std::int64_t, std::int64_t>> out;
    for (const auto& d : done)
      if (d.ok && d.changes.count(account)) out.emplace_back(d.id, d.changes.at(account));
    return out;
  }

  // Every page of the account's history, concatenated.
  std::vector<HistoryItem> all_pages(const std::string& account, HistoryQuery q) {
    std::vector<HistoryItem> items;
    for (int pages = 0; pages < 1000; ++pages) {
      HistoryPage page = ledger.history(account, q);
      CHECK(page.items.size() <= static_cast<std::size_t>(q.limit));
      if (page.next) CHECK(page.items.size() == static_cast<std::size_t>(q.limit));
      items.insert(items.end(), page.items.begin(), page.items.end());
      if (!page.next) return items;
      q.after = page.next;
    }
    FAIL("history never reached its end");
    return items;
  }
};
}  // namespace

TEST_CASE("history: pages cover every applied transfer exactly once, in order, both ways", "[backend][history]") {
  Bank b;
  for (const std::string account : {"a", "b", "c"}) {
    const auto expected = b.moved(account);
    REQUIRE(expected.size() >= 10);
    for (const int limit : {1, 3, 7, 1000}) {
      for (const auto order : {HistoryOrder::newest_first, HistoryOrder::oldest_first}) {
        HistoryQuery q;
        q.limit = limit;
        q.order = order;
        const auto items = b.all_pages(account, q);
        auto want = expected;
        if (order == HistoryOrder::newest_first) std::reverse(want.begin(), want.end());
        REQUIRE(items.size() == want.size());
        std::set<std::int64_t> seen;
        std::int64_t balance_change = 0;
        for (std::size_t i = 0; i < items.size(); ++i) {
          const auto& item = items[i];
          INFO(fmt::format("account {} limit {} item {}", account, limit, i));
          CHECK(item.transfer.id == want[i].first);
          CHECK(item.change == want[i].second);
          CHECK(item.transfer.outcome == "ok");
          CHECK(seen.insert(item.transfer.id).second);
          // With all its entries: the account's own among them, and a transfer's adding up to 0.
          std::int64_t sum = 0, own = 0;
          for (const auto& e : item.transfer.entries) {
            sum += e.amount;
            if (e.account == account) own += e.amount;
          }
          CHECK(own == item.change);
          const auto kind = item.transfer.kind;
          CHECK(item.transfer.entries.size() ==
                (kind == TransferKind::deposit || kind == TransferKind::withdrawal ? 1u : 2u));
          if (kind == TransferKind::transfer || kind == TransferKind::reversal) CHECK(sum == 0);
          balance_change += item.change;
        }
        CHECK(balance_change == b.ledger.get(account).balance);
      }
    }
  }
  // The special kinds carry their links.
  const auto a_items = b.all_pages("a", HistoryQuery{});
  const auto& newest = a_items.front().transfer;
  CHECK(newest.hold_id.has_value());
  CHECK(newest.key == std::optional<std::string>(fmt::format("hold:{}:capture", *newest.hold_id)));
  const auto reversal = std::find_if(a_items.begin(), a_items.end(),
                                     [](const HistoryItem& i) { return i.transfer.kind == TransferKind::reversal; });
  REQUIRE(reversal != a_items.end());
  CHECK(reversal->transfer.reverses == b.ledger.find_transfer_by_key("t-1").id);
  CHECK(to_string(TransferKind::reversal) == "reversal");
}

TEST_CASE("history: since and until bound the creation time, and bad queries are refused", "[backend][history]") {
  Bank b;
  auto& l = b.ledger;
  // Creation times as recorded, then bounds between them.
  std::vector<std::pair<std::int64_t, std::int64_t>> times;  // (created_at_ms, id) of a's history
  for (const auto& [id, change] : b.moved("a")) times.emplace_back(l.find_transfer(id).created_at_ms, id);
  std::set<std::int64_t> distinct;
  for (const auto& [ms, id] : times) distinct.insert(ms);
  REQUIRE(distinct.size() >= 3);  // the pauses made some
  const std::int64_t since = *std::next(distinct.begin());
  const std::int64_t until = *std::prev(distinct.end());
  for (const auto order : {HistoryOrder::newest_first, HistoryOrder::oldest_first}) {
    HistoryQuery q;
    q.limit = 2;
    q.order = order;
    q.since_ms = since;
    q.until_ms = until;
    std::set<std::int64_t> got;
    for (const auto& item : b.all_pages("a", q)) {
      CHECK(item.transfer.created_at_ms >= since);
      CHECK(item.transfer.created_at_ms < until);
      got.insert(item.transfer.id);
    }
    std::set<std::int64_t> want;
    for (const auto& [ms, id] : times)
      if (ms >= since && ms < until) want.insert(id);
    CHECK(got == want);
    CHECK(!want.empty());
  }
  // Bounds far outside any timestamp are clamped, not an overflow.
  HistoryQuery wide;
  wide.since_ms = std::numeric_limits<std::int64_t>::min();
  wide.until_ms = std::numeric_limits<std::int64_t>::max();
  CHECK(b.all_pages("a", wide).size() == times.size());
  HistoryQuery none;
  none.until_ms = std::numeric_limits<std::int64_t>::min();
  CHECK(l.history("a", none).items.empty());

  HistoryQuery bad;
  bad.limit = 0;
  CHECK(kind_of([&] { l.history("a", bad); }) == ErrorKind::invalid_argument);
  bad.limit = 1001;
  CHECK(kind_of([&] { l.history("a", bad); }) == ErrorKind::invalid_argument);
  bad.limit = 10;
  bad.after = -1;
  CHECK(kind_of([&] { l.history("a", bad); }) == ErrorKind::invalid_argument);
  bad.after.reset();
  bad.since_ms = 10;
  bad.until_ms = 5;
  CHECK(kind_of([&] { l.history("a", bad); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.history("nobody"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.history(""); }) == ErrorKind::invalid_argument);
}

TEST_CASE("history: find_transfer by id and key, rejected ones too", "[backend][history]") {
  Bank b;
  auto& l = b.ledger;
  const TransferRecord t = l.find_transfer_by_key("t-1");
  CHECK(t.kind == TransferKind::transfer);
  CHECK(t.from == std::optional<std::string>("a"));
  CHECK(t.to == std::optional<std::string>("b"));
  CHECK(t.amount == 11);
  CHECK(t.currency == "EUR");
  CHECK(t.outcome == "ok");
  REQUIRE(t.entries.size() == 2);
  CHECK(t.entries[0].account == "a");
  CHECK(t.entries[0].amount == -11);
  CHECK(t.entries[1].account == "b");
  CHECK(t.entries[1].amount == 11);
  const TransferRecord by_id = l.find_transfer(t.id);
  CHECK(by_id.key == t.key);
  CHECK(by_id.created_at_ms == t.created_at_ms);
  CHECK(by_id.entries.size() == 2);
  const TransferRecord dep = l.find_transfer_by_key("dep-a");
  CHECK(dep.kind == TransferKind::deposit);
  CHECK(!dep.from);
  CHECK(dep.to == std::optional<std::string>("a"));
  const TransferRecord rejected = l.find_transfer_by_key("big-0");
  CHECK(rejected.outcome == "insufficient_funds");
  CHECK(rejected.entries.empty());
  CHECK(kind_of([&] { l.find_transfer(99'999'999); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.find_transfer_by_key("no-such-key"); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { l.find_transfer(0); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { l.find_transfer_by_key(""); }) == ErrorKind::invalid_argument);
}

TEST_CASE("history: balance_at equals the balance replayed by hand", "[backend][history]") {
  Bank b;
  auto& l = b.ledger;
  // balance_at counts entries by their own creation time, a moment after their transfer's: the
  // points checked are where no row was written in the 3 ms before (right after a pause), before
  // the first request, and long after the last.
  std::vector<std::int64_t> points = {std::numeric_limits<std::int64_t>::min(), 0};
  const std::int64_t first = l.find_transfer(b.done.front().id).created_at_ms;
  const std::int64_t last = l.find_transfer(b.done.back().id).created_at_ms;
  points.push_back(first - 1);
  points.push_back(first);
  for (const std::size_t i : b.after_pause) points.push_back(l.find_transfer(b.done.at(i).id).created_at_ms);
  points.push_back(last + 60'000);
  points.push_back(std::numeric_limits<std::int64_t>::max());
  REQUIRE(b.after_pause.size() >= 5);
  for (const std::string account : {"a", "b", "c"}) {
    for (const std::int64_t at : points) {
      std::int64_t replayed = 0;  // the changes of the requests made before `at`, by hand
      for (const auto& d : b.done)
        if (d.ok && d.changes.count(account) && l.find_transfer(d.id).created_at_ms < at)
          replayed += d.changes.at(account);
      INFO(fmt::format("{} at {}", account, at));
      CHECK(l.balance_at(account, at) == replayed);
    }
    CHECK(l.balance_at(account, first) == 0);                               // before the first transfer
    CHECK(l.balance_at(account, last + 60'000) == l.get(account).balance);  // after the last
  }
  CHECK(kind_of([&] { l.balance_at("nobody", 0); }) == ErrorKind::not_found);
  // An opening balance (archive) counts, and before its as_of nothing is known.
  const std::string ob = b.t.db().table_prefix() + "opening_balances";
  if (rowguard::test::can().timestamptz)
    b.t.db().exec(
        fmt::format("INSERT INTO {} (account_id, balance, entries, as_of) VALUES ('a', 100, 1, "
                    "TIMESTAMPTZ 'epoch' + CAST({} AS bigint) * INTERVAL '1 millisecond')",
                    ob, last - 100'000));
  else
    b.t.db().exec(fmt::format("INSERT INTO {} (account_id, balance, entries, as_of) VALUES ('a', 100, 1, {})", ob,
                              last - 100'000));
  CHECK(l.balance_at("a", last + 60'000) == l.get("a").balance + 100);
  CHECK(l.balance_at("a", last - 100'000) == 100 + 0);
  CHECK(kind_of([&] { l.balance_at("a", last - 100'001); }) == ErrorKind::invalid_argument);
}

TEST_CASE("history: transfers() lists the ledger and one account, rejections included", "[backend][history]") {
  Bank b;
  auto& l = b.ledger;
  auto all = [&](TransferQuery q) {
    std::vector<TransferRecord> items;
    for (int pages = 0; pages < 1000; ++pages) {
      TransferPage page = l.transfers(q);
      CHECK(page.items.size() <= static_cast<std::size_t>(q.limit));
      items.insert(items.end(), page.items.begin(), page.items.end());
      if (!page.next) return items;
      q.before = page.next;
    }
    FAIL("transfers never reached its end");
    return items;
  };
  TransferQuery q;
  q.limit = 4;
  const auto everything = all(q);
  CHECK(static_cast<std::int64_t>(everything.size()) == rows_in(b.t.db(), "transfers"));
  CHECK(everything.size() == b.done.size());
  for (std::size_t i = 0; i < everything.size(); ++i) {
    CHECK(everything[i].id == b.done[b.done.size() - 1 - i].id);  // newest first
    CHECK(everything[i].entries.empty());                         // not asked for
  }
  for (const std::string account : {"a", "b", "c"}) {
    TransferQuery by;
    by.account = account;
    by.limit = 3;
    by.include_entries = true;
    std::vector<std::int64_t> want;  // every request from or to it, rejected ones too
    for (auto it = b.done.rbegin(); it != b.done.rend(); ++it) {
      const TransferRecord t = l.find_transfer(it->id);
      if (t.from == account || t.to == account) want.push_back(t.id);
    }
    std::vector<std::int64_t> got;
    bool rejected = false;
    for (const auto& t : all(by)) {
      got.push_back(t.id);
      CHECK((t.from == account || t.to == account));
      CHECK(t.entries.size() == (t.outcome == "ok" ? (t.from && t.to ? 2u : 1u) : 0u));
      rejected |= t.outcome != "ok";
    }
    CHECK(got == want);
    if (account != "c") CHECK(rejected);
  }
  TransferQuery unknown;
  unknown.account = "nobody";
  CHECK(kind_of([&] { l.transfers(unknown); }) == ErrorKind::not_found);
  TransferQuery bad;
  bad.limit = 0;
  CHECK(kind_of([&] { l.transfers(bad); }) == ErrorKind::invalid_argument);
}

TEST_CASE("history: transfers() since and until bound the creation time on every page", "[backend][history]") {
  Bank b;
  auto& l = b.ledger;
  std::vector<TransferRecord> every;  // newest first, rejections included
  for (auto it = b.done.rbegin(); it != b.done.rend(); ++it) every.push_back(l.find_transfer(it->id));
  std::set<std::int64_t> distinct;
  for (const auto& t : every) distinct.insert(t.created_at_ms);
  REQUIRE(distinct.size() >= 3);  // the pauses made some
  const std::int64_t since = *std::next(distinct.begin());
  const std::int64_t until = *std::prev(distinct.end());
  auto pages = [&](TransferQuery q) {
    std::vector<std::int64_t> ids;
    for (int n = 0; n < 1000; ++n) {
      const TransferPage page = l.transfers(q);
      CHECK(page.items.size() <= static_cast<std::size_t>(q.limit));
      for (const auto& t : page.items) {
        ids.push_back(t.id);
        if (q.since_ms) CHECK(t.created_at_ms >= *q.since_ms);
        if (q.until_ms) CHECK(t.created_at_ms < *q.until_ms);
        if (q.include_entries && t.outcome == "ok") CHECK(!t.entries.empty());
      }
      if (!page.next) return ids;
      q.before = page.next;
    }
    FAIL("transfers never reached its end");
    return ids;
  };
  for (const auto& account : {std::optional<std::string>(), std::optional<std::string>("a")})
    for (const bool entries : {false, true}) {
      INFO("account " << account.value_or("(all)") << ", entries " << entries);
      TransferQuery q;
      q.limit = 2;
      q.account = account;
      q.include_entries = entries;
      auto want = [&](std::optional<std::int64_t> from, std::optional<std::int64_t> to) {
        std::vector<std::int64_t> ids;  // newest first, as the pages come
        for (const auto& t : every)
          if ((!account || t.from == account || t.to == account) && (!from || t.created_at_ms >= *from) &&
              (!to || t.created_at_ms < *to))
            ids.push_back(t.id);
        return ids;
      };
      q.since_ms = since;  // inclusive
      q.until_ms = until;  // exclusive
      const auto both = pages(q);
      CHECK(both == want(since, until));
      CHECK(!both.empty());
      q.until_ms.reset();
      CHECK(pages(q) == want(since, std::nullopt));
      q.since_ms.reset();
      q.until_ms = until;
      CHECK(pages(q) == want(std::nullopt, until));
      q.since_ms = q.until_ms = since;  // an empty window
      CHECK(pages(q).empty());
    }
  // Bounds far outside any timestamp are clamped, not an overflow.
  TransferQuery wide;
  wide.since_ms = std::numeric_limits<std::int64_t>::min();
  wide.until_ms = std::numeric_limits<std::int64_t>::max();
  wide.limit = 1000;
  CHECK(l.transfers(wide).items.size() == every.size());
  TransferQuery none;
  none.until_ms = std::numeric_limits<std::int64_t>::min();
  CHECK(l.transfers(none).items.empty());
  TransferQuery bad;
  bad.since_ms = 10;
  bad.until_ms = 5;
  CHECK(kind_of([&] { l.transfers(bad); }) == ErrorKind::invalid_argument);
  TransferQuery unknown;
  unknown.account = "nobody";
  unknown.since_ms = since;
  CHECK(kind_of([&] { l.transfers(unknown); }) == ErrorKind::not_found);
}

TEST_CASE("cli: ledger history, show, transfers and balance-at", "[backend][history][shared-db][threads][cli]") {
  Bank b;
  const std::vector<std::string> base = {"--db", b.t.url(), "--prefix", b.t.db().table_prefix(), "--json"};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), base.begin(), base.end());
    return rowguard::test::run_cli(args, out);
  };
  std::string out;
  REQUIRE(cli({"ledger", "history", "a", "--limit", "3"}, &out) == 0);
  auto page = nlohmann::json::parse(out);
  REQUIRE(page.at("items").size() == 3);
  const auto newest = b.moved("a").back();
  CHECK(page.at("items")[0].at("id") == newest.first);
  CHECK(page.at("items")[0].at("change") == newest.second);
  CHECK(page.at("items")[0].at("entries").size() == 2);
  const std::int64_t next = page.at("next");
  REQUIRE(cli({"ledger", "history", "a", "--limit", "1000", "--after", std::to_string(next)}, &out) == 0);
  page = nlohmann::json::parse(out);
  CHECK(page.at("items").size() + 3 == b.moved("a").size());
  CHECK(page.at("next").is_null());
  REQUIRE(cli({"ledger", "history", "a", "--oldest-first", "--limit", "1"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("items")[0].at("kind") == "deposit");

  REQUIRE(cli({"ledger", "show", "t-1"}, &out) == 0);
  const auto shown = nlohmann::json::parse(out);
  CHECK(shown.at("amount") == 11);
  CHECK(shown.at("from") == "a");
  CHECK(shown.at("entries").size() == 2);
  const std::int64_t id = shown.at("id");
  REQUIRE(cli({"ledger", "show", std::to_string(id)}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("key") == "t-1");
  REQUIRE(cli({"ledger", "show", "--key", "dep-a"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("kind") == "deposit");
  CHECK(nlohmann::json::parse(out).at("from").is_null());
  CHECK(cli({"ledger", "show", "no-such-key"}) == 5);
  CHECK(cli({"ledger", "show", "99999999"}) == 5);
  CHECK(cli({"ledger", "show"}) == 2);

  REQUIRE(cli({"ledger", "transfers", "--account", "b", "--limit", "2", "--entries"}, &out) == 0);
  page = nlohmann::json::parse(out);
  CHECK(page.at("items").size() == 2);
  CHECK(!page.at("next").is_null());
  CHECK(cli({"ledger", "transfers", "--account", "nobody"}) == 5);

  REQUIRE(cli({"ledger", "balance-at", "a", "@1"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("balance") == 0);
  CHECK(nlohmann::json::parse(out).at("at") == "1970-01-01T00:00:00.001Z");
  REQUIRE(cli({"ledger", "balance-at", "a", "9999-12-31"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("balance") == b.ledger.get("a").balance);
  CHECK(cli({"ledger", "balance-at", "a", "yesterday"}) == 2);
  CHECK(cli({"ledger", "balance-at", "a", "2026-13-01"}) == 2);
  CHECK(cli({"ledger", "history", "a", "--since", "soon"}) == 2);
  CHECK(cli({"ledger", "history", "a", "--limit", "0"}) == 2);
  CHECK(cli({"ledger", "history", "a", "--limit", "0x10"}) == 2);
  CHECK(cli({"ledger", "balance-at", "nobody", "2026-01-01"}) == 5);
  CHECK(cli({"ledger", "history", "nobody"}) == 5);
}

// Not run by default: `rowguard_tests "[history-bench]" --backend postgres` under
// scripts/pg-throwaway.sh. 200k transfers over 1000 accounts, written by one bulk SQL insert (with
// their entries and matching balances), one hot account in about 10% of them; then each query is
// timed over repeated runs. The figures are in docs/ledger.md.
TEST_CASE("history: query cost on 200k transfers (PostgreSQL)", "[.][history-bench]") {
  if (!rowguard::test::can().timestamptz) return;  // the script below is PostgreSQL's
  TestDb t;
  t.db().migrate();
  const std::string p = t.db().table_prefix();
  const auto started = std::chrono::steady_clock::now();
  t.db().exec(
      fmt::format("INSERT INTO {p}accounts (id, currency, balance, min_balance, version, created_at, updated_at) "
                  "SELECT 'acc' || g, 'EUR', 0, -9000000000000, 0, now(), now() FROM generate_series(1, 1000) g",
                  fmt::arg("p", p)));
  t.db().exec(fmt::format(
      "INSERT INTO {p}transfers (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, "
      "created_at) SELECT g, 'k' || g, 'transfer', 'acc' || f, 'acc' || ((f + g % 999) % 1000 + 1), 1 + g % 100, "
      "'EUR', CASE WHEN g % 50 = 0 THEN 'insufficient_funds' ELSE 'ok' END, "
      "now() - (200000 - g) * INTERVAL '10 milliseconds' "
      "FROM (SELECT g, CASE WHEN g % 10 = 0 THEN 1 ELSE 1 + (g * 7919) % 1000 END AS f "
      "FROM generate_series(1, 200000) g) s",
      fmt::arg("p", p)));
  t.db().exec(fmt::format("SELECT setval(pg_get_serial_sequence('{p}transfers', 'id'), 200000)", fmt::arg("p", p)));
  t.db().exec(fmt::format(
      "INSERT INTO {p}entries (transfer_id, account_id, amount, created_at) SELECT id, a, m, c FROM ("
      "SELECT id, from_account AS a, -amount AS m, created_at AS c, 0 AS side FROM {p}transfers WHERE outcome = 'ok' "
      "UNION ALL SELECT id, to_account, amount, created_at, 1 FROM {p}transfers WHERE outcome = 'ok') x "
      "ORDER BY id, side",
      fmt::arg("p", p)));
  t.db().exec(fmt::format(
      "UPDATE {p}accounts a SET balance = s.total FROM (SELECT account_id, SUM(amount) AS total FROM {p}entries "
      "GROUP BY account_id) s WHERE s.account_id = a.id",
      fmt::arg("p", p)));
  for (const char* table : {"accounts", "transfers", "entries"}) t.db().exec(fmt::format("ANALYZE {}{}", p, table));
  const auto loaded = std::chrono::steady_clock::now();
  Ledger l(t.db());
  REQUIRE(l.check().ok());
  const std::int64_t hot_entries =
      t.db().exec(fmt::format("SELECT count(*) FROM {}entries WHERE account_id = 'acc1'", p)).one().i64(0);
  // A cursor deep in the hot account's history: the entry 10 000 from its newest.
  const std::int64_t deep = t.db()
                                .exec(fmt::format("SELECT id FROM {}entries WHERE account_id = 'acc1' ORDER BY id DESC "
                                                  "LIMIT 1 OFFSET 10000",
                                                  p))
                                .one()
                                .i64(0);
  const std::int64_t now_ms = l.find_transfer(200'000).created_at_ms + 1;
  auto time = [&](const char* what, const std::function<void()>& f) {
    constexpr int runs = 200;
    f();  // prepared and cached
    std::vector<double> us;
    for (int i = 0; i < runs; ++i) {
      const auto s = std::chrono::steady_clock::now();
      f();
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s).count());
    }
    std::sort(us.begin(), us.end());
    WARN(fmt::format("{:<52} median {:>8.0f} us   p90 {:>8.0f} us", what, us[runs / 2], us[runs * 9 / 10]));
  };
  HistoryQuery first;
  HistoryQuery deep_page;
  deep_page.after = deep;
  HistoryQuery windowed;
  windowed.since_ms = now_ms - 1'000'000;  // the last 1000 s: the newest half
  windowed.until_ms = now_ms - 500'000;
  TransferQuery by_hot;
  by_hot.account = "acc1";
  TransferQuery by_hot_deep = by_hot;
  by_hot_deep.before = 100'000;
  TransferQuery by_cold;
  by_cold.account = "acc500";
  TransferQuery everything;
  everything.include_entries = true;
  WARN(fmt::format("setup: 200000 transfers, 1000 accounts, acc1 has {} entries; bulk load took {} ms", hot_entries,
                   std::chrono::duration_cast<std::chrono::milliseconds>(loaded - started).count()));
  time("history acc1, first page of 100", [&] { CHECK(l.history("acc1", first).items.size() == 100); });
  time("history acc1, page of 100 after 10000 entries",
       [&] { CHECK(l.history("acc1", deep_page).items.size() == 100); });
  time("history acc1, 100 in a window 500 s back", [&] { CHECK(l.history("acc1", windowed).items.size() == 100); });
  time("history acc500 (cold), first page of 100", [&] { CHECK(!l.history("acc500", first).items.empty()); });
  time("transfers --account acc1, first page of 100", [&] { CHECK(l.transfers(by_hot).items.size() == 100); });
  time("transfers --account acc1, page before id 100000", [&] { CHECK(l.transfers(by_hot_deep).items.size() == 100); });
  time("transfers --account acc500 (cold), first page", [&] { CHECK(!l.transfers(by_cold).items.empty()); });
  time("transfers, whole ledger, 100 with entries", [&] { CHECK(l.transfers(everything).items.size() == 100); });
  time("find_transfer_by_key", [&] { CHECK(l.find_transfer_by_key("k123456").id == 123456); });
  time("balance_at acc1 (hot), now", [&] { CHECK(l.balance_at("acc1", now_ms) == l.get("acc1").balance); });
  time("balance_at acc1 (hot), 1000 s back", [&] { l.balance_at("acc1", now_ms - 1'000'000); });
  time("balance_at acc500 (cold), now", [&] { CHECK(l.balance_at("acc500", now_ms) == l.get("acc500").balance); });
}

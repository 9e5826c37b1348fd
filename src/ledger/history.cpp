// Ledger history, transfer lookup and point-in-time balances: read-only queries over the journal.
// Every call is one statement (one round trip, one snapshot), keyset-paginated where it pages.
// history() and transfers() read from a standby when LedgerOptions::standby allows it.
#include <algorithm>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "rowguard/ledger.hpp"
#include "rowguard/money.hpp"

#include "base/json_text.hpp"

#include "core/standby_route.hpp"

#include "ledger/ledger_impl.hpp"

namespace rowguard {

using namespace detail::ledger;

std::string_view to_string(TransferKind kind) noexcept {
  switch (kind) {
    case TransferKind::deposit:
      return "deposit";
    case TransferKind::withdrawal:
      return "withdrawal";
    case TransferKind::reversal:
      return "reversal";
    case TransferKind::transfer:
      break;
  }
  return "transfer";
}

namespace {
constexpr int max_page = 1000;
// Years 1 to 9999 in epoch ms: any bound outside is clamped first, so a PostgreSQL timestamp built
// from it can never overflow (and SQLite compares the same range).
constexpr std::int64_t min_time_ms = -62'135'596'800'000;  // 0001-01-01T00:00:00Z
constexpr std::int64_t max_time_ms = 253'402'300'799'999;  // 9999-12-31T23:59:59.999Z

std::int64_t clamp_time(std::int64_t ms) { return std::clamp(ms, min_time_ms, max_time_ms); }

void check_limit(int limit) {
  if (limit < 1 || limit > max_page)
    throw Error(ErrorKind::invalid_argument, fmt::format("a page holds 1 to {} items, asked for {}", max_page, limit));
}

void check_cursor(const std::optional<std::int64_t>& cursor) {
  if (cursor && *cursor < 1)
    throw Error(ErrorKind::invalid_argument, fmt::format("a cursor is a positive id, got {}", *cursor));
}

// The bounds of a time window, clamped (an unset since is the first millisecond, an unset until
// one past the last). Error(invalid_argument) when since is after until.
std::pair<std::int64_t, std::int64_t> time_window(const std::optional<std::int64_t>& since_ms,
                                                  const std::optional<std::int64_t>& until_ms) {
  if (since_ms && until_ms && *since_ms > *until_ms)
    throw Error(ErrorKind::invalid_argument, fmt::format("since ({}) is after until ({})", *since_ms, *until_ms));
  return {clamp_time(since_ms.value_or(min_time_ms)),
          std::clamp(until_ms.value_or(max_time_ms + 1), min_time_ms, max_time_ms + 1)};
}

TransferKind kind_of(const std::string& kind) {
  if (kind == "deposit") return TransferKind::deposit;
  if (kind == "withdrawal") return TransferKind::withdrawal;
  if (kind == "reversal") return TransferKind::reversal;
  return TransferKind::transfer;
}

// The columns of a transfer at the start of a HistoryStatements row.
constexpr std::size_t transfer_columns = 16;

// A transfer from the first transfer_columns columns of a HistoryStatements row.
TransferRecord record_of(const Row& r) {
  TransferRecord t;
  t.id = r.i64(0);
  t.key = r.opt_text(1);
  t.kind = kind_of(r.text(2));
  t.from = r.opt_text(3);
  t.to = r.opt_text(4);
  t.amount = r.i64(5);
  t.currency = r.text(6);
  t.outcome = r.text(7);
  t.reverses = r.opt_i64(8);
  t.hold_id = r.opt_i64(9);
  t.global_txid = r.opt_text(10);
  t.created_at_ms = r.i64(11);
  t.details = details_of(r, 12);
  return t;
}

// Appends the entry in columns first.. (id, account, amount, balance_after, account_version) when
// the row has one (LEFT JOIN).
void add_entry(TransferRecord& t, const Row& r, std::size_t first) {
  if (!r.is_null(first))
    t.entries.push_back(
        {r.i64(first), r.text(first + 1), r.i64(first + 2), r.opt_i64(first + 3), r.opt_i64(first + 4)});
}

// Rows of transfers with their entries, one or more per transfer in transfer order.
std::vector<TransferRecord> records_of(const Result& result, bool with_entries) {
  std::vector<TransferRecord> out;
  for (const auto& row : result.rows) {
    if (out.empty() || out.back().id != row.i64(0)) out.push_back(record_of(row));
    if (with_entries) add_entry(out.back(), row, transfer_columns);
  }
  return out;
}

// The members of a metadata filter (TransferQuery::metadata); Error(invalid_argument) for one that
// is not a flat object of scalars under plain keys, which every backend answers alike.
std::vector<detail::JsonText::Member> metadata_filter(const std::string& text) {
  std::string why;
  const auto json =
      text.size() <= max_metadata_bytes && detail::is_text(text) ? detail::parse_json(text, &why) : std::nullopt;
  if (!json || !json->is_object || json->members.empty())
    throw Error(ErrorKind::invalid_argument,
                fmt::format("a metadata filter is a non-empty JSON object of at most {} bytes{}", max_metadata_bytes,
                            why.empty() ? std::string() : ": " + why));
  for (const auto& m : json->members) {
    const bool plain = !m.key.empty() && m.key.size() <= 64 && std::all_of(m.key.begin(), m.key.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
    if (!plain)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("a metadata filter's keys are 1 to 64 bytes of [A-Za-z0-9_-], got \"{}\"", m.key));
    if (!m.scalar)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("a metadata filter's values are strings, numbers, true or false; \"{}\" is not", m.key));
  }
  return json->members;
}

}  // namespace

HistoryPage Ledger::history(std::string_view account, const HistoryQuery& query) {
  check_text(account, "account id", max_id_bytes);
  check_limit(query.limit);
  check_cursor(query.after);
  const auto [since, until] = time_window(query.since_ms, query.until_ms);
  const bool newest = query.order == HistoryOrder::newest_first;
  const std::int64_t cursor = query.after.value_or(newest ? std::numeric_limits<std::int64_t>::max() : 0);
  const detail::HistoryStatements& sql = impl_->history_sql;
  // One row more than the page: whether there is a next page, without a count.
  const std::int64_t fetch = static_cast<std::int64_t>(query.limit) + 1;
  const bool window = query.since_ms || query.until_ms;
  std::vector<Value> params{std::string(account), cursor};
  if (window) params.insert(params.end(), {since, until});
  params.emplace_back(fetch);
  HistoryPage page;
  bool missing = false;  // no such account, as far as this session's snapshot knows
  const auto read = [&](detail::Session& session) {
    page = HistoryPage{};
    const Result result = session.exec(sql.history(newest, window), params);
    std::int64_t last_entry = 0;
    for (const auto& row : result.rows) {
      const std::int64_t entry = row.i64(transfer_columns);
      if (page.items.empty() || entry != last_entry) {
        if (page.items.size() == static_cast<std::size_t>(query.limit)) {
          page.next = last_entry;  // the limit+1st exists: the page ends at the last one kept
          break;
        }
        page.items.push_back({record_of(row), row.i64(transfer_columns + 1), row.opt_i64(transfer_columns + 2)});
        last_entry = entry;
      }
      add_entry(page.items.back().transfer, row, transfer_columns + 3);
    }
    missing = page.items.empty() && session.exec(sql.account_exists, {std::string(account)}).one().i64(0) == 0;
  };
  // An account the standby does not know yet may exist on the primary: that answer comes from there.
  if (!impl_->standby.run(read) || missing) read(**impl_->backend->borrow());
  if (missing) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", account));
  return page;
}

TransferRecord Ledger::find_transfer(std::int64_t id) {
  if (id < 1) throw Error(ErrorKind::invalid_argument, fmt::format("a transfer id is positive, got {}", id));
  auto session = impl_->backend->borrow();
  auto found = records_of((*session)->exec(impl_->history_sql.find_by_id, {id}), true);
  if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no transfer {}", id));
  return std::move(found.front());
}

TransferRecord Ledger::find_transfer_by_key(std::string_view key) {
  check_text(key, "idempotency key", max_key_bytes);
  auto session = impl_->backend->borrow();
  auto found = records_of((*session)->exec(impl_->history_sql.find_by_key, {std::string(key)}), true);
  if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("no transfer has the key '{}'", key));
  return std::move(found.front());
}

TransferPage Ledger::transfers(const TransferQuery& query) {
  check_limit(query.limit);
  check_cursor(query.before);
  if (query.account) check_text(*query.account, "account id", max_id_bytes);
  const auto [since, until] = time_window(query.since_ms, query.until_ms);
  if (query.code && (*query.code < 1 || *query.code > max_transfer_code))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("a code filter is 1 to {}, got {}", max_transfer_code, *query.code));
  if (query.reference) {
    TransferDetails probe;
    probe.reference = *query.reference;
    if (probe.reference.empty())
      throw Error(ErrorKind::invalid_argument, "a reference filter is 1 or more bytes (an empty one matches nothing)");
    check_details(probe);
  }
  const auto members = query.metadata ? metadata_filter(*query.metadata) : std::vector<detail::JsonText::Member>{};
  detail::TransferFilter filter;
  filter.by_account = query.account.has_value();
  filter.with_entries = query.include_entries;
  filter.window = query.since_ms || query.until_ms;
  filter.code = query.code.has_value();
  filter.reference = query.reference.has_value();
  const detail::HistoryStatements& sql = impl_->history_sql;
  const bool containment = impl_->backend->dialect().has_json_containment();
  filter.metadata_keys = containment ? (members.empty() ? 0 : 1) : members.size();
  std::vector<Value> params{query.before.value_or(std::numeric_limits<std::int64_t>::max()),
                            static_cast<std::int64_t>(query.limit) + 1};
  if (query.account) params.emplace_back(*query.account);
  if (filter.window) params.insert(params.end(), {since, until});
  if (query.code) params.emplace_back(static_cast<std::int64_t>(*query.code));
  if (query.reference) params.emplace_back(*query.reference);
  if (containment && !members.empty()) params.emplace_back(*query.metadata);
  if (!containment)
    for (const auto& m : members) params.insert(params.end(), {fmt::format("$.\"{}\"", m.key), m.raw});
  const std::string statement = sql.transfers(filter);
  TransferPage page;
  bool missing = false;
  const auto read = [&](detail::Session& session) {
    page = TransferPage{};
    page.items = records_of(session.exec(statement, params), query.include_entries);
    if (page.items.size() > static_cast<std::size_t>(query.limit)) {
      page.items.resize(query.limit);
      page.next = page.items.back().id;
    }
    missing =
        page.items.empty() && query.account && session.exec(sql.account_exists, {*query.account}).one().i64(0) == 0;
  };
  if (!impl_->standby.run(read) || missing) read(**impl_->backend->borrow());
  if (missing) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *query.account));
  return page;
}

std::int64_t Ledger::balance_at(std::string_view account, std::int64_t at_ms) {
  check_text(account, "account id", max_id_bytes);
  // Past year 9999 every live entry counts: the clamped bound is one past the last millisecond.
  const std::int64_t at = at_ms > max_time_ms ? max_time_ms + 1 : clamp_time(at_ms);
  auto session = impl_->backend->borrow();
  const Row row = (*session)->exec(impl_->history_sql.balance_at, {std::string(account), at}).one();
  if (row.i64(0) == 0) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", account));
  const std::int64_t opening = row.opt_i64(1).value_or(0);
  if (const auto as_of = row.opt_i64(2); as_of && at_ms < *as_of)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("the history of '{}' before {} ms was archived: balances before it are not known", account,
                            *as_of));
  const auto balance = checked_add(opening, row.i64(3));
  if (!balance)
    throw Error(ErrorKind::permanent,
                fmt::format("the balance of '{}' at {} overflows a 64-bit integer", account, at_ms));
  return *balance;
}

}  // namespace rowguard

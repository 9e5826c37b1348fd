#pragma once
// Ledger::Impl, shared by the files of the ledger (ledger.cpp: accounts and transfers; holds.cpp:
// holds). Internal: included only from src/core.

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "rowguard/cache.hpp"
#include "rowguard/ledger.hpp"

#include "base/sql_text.hpp"
#include "obs/instruments.hpp"

#include "backend/backend.hpp"

#include "core/retrying.hpp"
#include "core/standby_route.hpp"

#include "cache/cache_sql.hpp"
#include "ledger/ledger_sql.hpp"

namespace rowguard {
namespace detail::ledger {
inline constexpr std::size_t max_id_bytes = 128;
inline constexpr std::size_t max_key_bytes = 255;

inline void check_text(std::string_view value, std::string_view what, std::size_t max) {
  if (value.empty() || value.size() > max || !detail::is_text(value))
    throw Error(ErrorKind::invalid_argument, fmt::format("{} must be 1 to {} bytes of UTF-8 without NUL", what, max));
}

inline void check_currency(std::string_view currency) {
  const bool ok = currency.size() == 3 &&
                  std::all_of(currency.begin(), currency.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
  if (!ok)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("currency '{}' is not an ISO 4217 code (three capital letters, e.g. EUR)", currency));
}

inline void check_amount(std::int64_t amount) {
  if (amount <= 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("amount must be a positive number of minor units, got {}", amount));
}

// What a keyed request asks for; compared field by field with the record of its key (replay_of).
// Fields a request does not have are left at their defaults and must be absent from the record too.
struct Request {
  std::string kind;  // transfer, deposit, withdrawal, reversal, or hold
  std::optional<std::string> from;
  std::optional<std::string> to;
  std::int64_t amount = 0;
  std::string key;
  std::int64_t reverses = 0;  // for a reversal: the transfer it refunds
  // Set for a leg of a two-phase transfer. Whether a request is a leg is compared, not the id
  // itself: the id names the coordinator's attempt (TwoPhase retries one transfer under fresh ids).
  std::optional<std::string> global_txid = std::nullopt;
  std::int64_t hold_id = 0;                               // for a capture: the hold it captures
  std::optional<std::int64_t> timeout_ms = std::nullopt;  // for a hold
};

// The record of an idempotency key, wherever it is: one row of the columns
//   id, kind, from_account, to_account, amount, outcome, global_txid, reverses, hold_id, timeout_ms
// from <prefix>transfers, or from <prefix>holds with kind 'hold' and the hold's state as outcome.
// Transfers and holds share one namespace of keys. $1 is the key (param names another placeholder).
std::string key_record_sql(const detail::Backend& backend, std::string_view param = "$1");
inline constexpr std::size_t key_record_columns = 10;

// Error(idempotency_mismatch) naming the first difference between the key record in r (columns
// from `first` on, key_record_sql's layout) and the request: the operation (a transfer, a capture,
// a two-phase leg, ...), then from, to, amount, the refunded transfer, the hold, the timeout.
void require_same(const Row& r, const Request& request, std::size_t first = 0);

// A new transfer's or entry's id (`table` is "transfers" or "entries"), above every id the table
// ever had: ids never go back, so an exported statement or a reversal's reference names one
// transfer forever. SQLite's next_id is MAX(id) + 1 over the table given: here over the live rows
// and the high-water mark archive() records in <prefix>id_high_water before it moves rows out
// (two index lookups), so emptying the archive tables cannot bring an id back. PostgreSQL's
// sequence never goes back anyway.
inline std::string next_id_above_high_water(const detail::Backend& backend, const std::string& table) {
  return backend.dialect().next_id(
      fmt::format("(SELECT MAX(id) AS id FROM {} UNION ALL SELECT last_id FROM {} WHERE name = '{}')",
                  backend.table(table), backend.table("id_high_water"), table));
}

// Counts one ledger request in rowguard_ledger_requests_total{kind,outcome} and times it in
// rowguard_ledger_request_seconds{kind}: `return measure(result);` records its outcome; leaving
// any other way (an exception) records outcome="error".
class Measure {
 public:
  using Kind = detail::instruments::LedgerKind;
  using Outcome = detail::instruments::LedgerOutcome;
  explicit Measure(Kind kind) : kind_(kind), started_(std::chrono::steady_clock::now()) {}
  Measure(const Measure&) = delete;
  Measure& operator=(const Measure&) = delete;
  ~Measure() {
    if (!done_) record(Outcome::error);
  }
  template <class R>
  R operator()(R result) {
    if constexpr (requires {
                    result.replayed;
                    result.ok();
                  })
      record(result.replayed ? Outcome::replayed : result.ok() ? Outcome::ok : Outcome::insufficient_funds);
    else
      record(Outcome::ok);
    return result;
  }

 private:
  void record(Outcome o) noexcept {
    done_ = true;
    const auto& m = detail::instruments::ledger();
    m.seconds_of(kind_).observe_since(started_);
    m.requests_of(kind_, o).add();
  }
  Kind kind_;
  std::chrono::steady_clock::time_point started_;
  bool done_ = false;
};

// A bound value, or NULL for the outside world.
inline Value opt(const std::optional<std::string>& s) { return s ? Value(*s) : Value(nullptr); }

// The record of a key (key_record_sql's columns, from `first` on) answering a new request with that
// key: the original result, or Error(idempotency_mismatch) naming the first difference.
TransferResult replay_of(const Row& r, const Request& request, std::size_t first = 0);
}  // namespace detail::ledger

struct Ledger::Impl {
  using Request = detail::ledger::Request;
  std::shared_ptr<detail::Backend> backend;
  LedgerOptions options;
  detail::StandbyRoute standby;  // history() and transfers()
  // find_key_sql: key_record_sql, the record of a key in either table.
  detail::AccountStatements accounts_sql;
  std::string find_key_sql, lock_one_sql, lock_two_sql, debit_sql, credit_sql, record_sql, entry_sql, lock_original_sql,
      refunded_sql, update_sql, prune_sql;
  // Holds (holds.cpp): expire_sql closes an account's holds past their timeout, unhold_sql takes
  // what they counted out of accounts.held.
  std::string expire_sql, unhold_sql, hold_read_sql, hold_lock_sql, hold_insert_sql, hold_add_sql, hold_close_sql,
      capture_debit_sql, capture_record_sql, expired_accounts_sql;
  // PostgreSQL: a whole transfer as one statement, one round trip (empty elsewhere).
  std::string one_statement_transfer_sql;
  mutable std::mutex stats_mutex;
  LedgerStats stats;

  Impl(std::shared_ptr<detail::Backend> b, LedgerOptions o);
  void init_hold_statements();  // holds.cpp

  // One data-modifying statement: replay check, both rows locked in key order, a debit whose own
  // WHERE holds the funds condition (numeric, so no overflow can raise), a credit only if the debit
  // happened, the record of the outcome under the key, and the entries only for an ok record.
  // (A first version decided funds from the locked CTE's values and broke the CHECK constraint
  // under concurrency: decide where the row is written.) $1 from, $2 to, $3 amount, $4 key.
  // prior: the key's record (key_record_sql on $4). extra_ctes: more data-modifying CTEs, each
  // starting with ", name AS (".
  static std::string one_statement_transfer(const std::string& acc, const std::string& tr, const std::string& en,
                                            const std::string& prior, const std::string& extra_ctes);

  // The cache key of an account's cached copy.
  static std::string cache_key(std::string_view id) { return fmt::format("ledger:account:{}", id); }
  // Drops the cached copies of accounts this transaction changes, when it commits.
  void invalidate(Transaction& tx, const std::optional<std::string>& id) {
    if (options.cache && id) options.cache->invalidate(tx, cache_key(*id));
  }
  // The account row itself, never a cached copy.
  std::optional<Account> read(std::string_view id);

  // The one-statement transfer (PostgreSQL): on its own, as one autocommit round trip, or inside a
  // batch's transaction. A refused request (unknown account, currency, overflow) writes nothing.
  // Empty when the source is short only while it has holds: those may have expired, which the
  // statement does not look at, so the caller decides it with apply_in() (which closes them first).
  std::optional<TransferResult> transfer_in_one_statement(const Request& request);
  std::optional<TransferResult> transfer_in_one_statement(Transaction& tx, const Request& request);
  std::vector<Value> one_statement_params(const Request& request) const;
  std::optional<TransferResult> one_statement_outcome(const Row& row, const Request& request);

  // Closes the account's holds past their timeout on the database clock (state expired) and takes
  // them out of its held amount. REQUIRES: the account row is locked by tx. Returns the amount, and
  // how many holds it closed in *closed.
  std::int64_t release_expired(Transaction& tx, const std::string& account, std::int64_t* closed = nullptr);
  // Whether `balance - amount - held` stays at or above min_balance, in checked arithmetic.
  static bool fits(std::int64_t balance, std::int64_t held, std::int64_t min_balance, std::int64_t amount);

  template <class F>
  void count(F&& f) {
    std::lock_guard lock(stats_mutex);
    f(stats);
  }

  // One request inside the caller's transaction: replay, or lock, check, move and record.
  TransferResult apply_in(Transaction& tx, const Request& request);
  // apply_in in a transaction of its own, under the retry policy.
  TransferResult apply(const Request& request);
  std::optional<TransferResult> replay(Transaction& tx, const Request& request);
  template <class Op>
  auto retrying(Op&& op) {
    // The key makes retries safe even when a commit's outcome was lost: the retry finds the record.
    // A unique violation on the key means a concurrent request with it won: retry to read its record.
    return detail::with_retries(
        options.retry, detail::RetryIn::conflicts_and_in_doubt,
        [&] {
          try {
            return op();
          } catch (const Error& e) {
            if (e.sqlstate() == "23505") throw Error(ErrorKind::conflict, e.what(), e.sqlstate());
            throw;
          }
        },
        [&](const Error&) {
          count([](LedgerStats& st) { ++st.conflicts, ++st.retries; });
          detail::instruments::ledger().conflicts.add();
          detail::instruments::ledger().retries.add();
        });
  }
};

}  // namespace rowguard

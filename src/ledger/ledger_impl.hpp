#pragma once
// Ledger::Impl, shared by the files of the ledger (ledger.cpp: accounts, transfers and check();
// holds.cpp, history.cpp, archive.cpp), with the statements of ledger_sql.hpp it holds. Internal:
// included only from src/ledger, and from src/two_phase for the ledger's argument checks.

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

#include "core/standby_route.hpp"

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

// Error(idempotency_mismatch) naming the first difference between the key record in r (columns
// from `first` on, as detail::key_record_columns lists them) and the request: the operation (a transfer, a capture,
// a two-phase leg, ...), then from, to, amount, the refunded transfer, the hold, the timeout.
void require_same(const Row& r, const Request& request, std::size_t first = 0);

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

// The record of a key (detail::key_record_columns, from `first` on) answering a new request with that
// key: the original result, or Error(idempotency_mismatch) naming the first difference.
TransferResult replay_of(const Row& r, const Request& request, std::size_t first = 0);
}  // namespace detail::ledger

struct Ledger::Impl {
  using Request = detail::ledger::Request;
  std::shared_ptr<detail::Backend> backend;
  LedgerOptions options;
  detail::StandbyRoute standby;  // history() and transfers()
  detail::AccountStatements accounts_sql;
  detail::TransferStatements transfers_sql;
  detail::HoldStatements holds_sql;
  detail::HistoryStatements history_sql;
  detail::ArchiveStatements archive_sql;
  detail::CheckStatements check_sql;
  mutable std::mutex stats_mutex;
  LedgerStats stats;

  Impl(std::shared_ptr<detail::Backend> b, LedgerOptions o);

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
  // transfer_batch's parts, inside its transaction; each fills results for the items it decided
  // and returns the index of the first item it did not. On the client: the chain that starts at
  // `start`, statement by statement. On the server (TransferStatements::batch): every item from
  // `first` on in one call, stopping at a chain the client must decide.
  std::size_t batch_chain_on_client(Transaction& tx, const std::vector<BatchItem>& items, std::size_t start,
                                    std::vector<BatchResult>& results);
  std::size_t batch_on_server(Transaction& tx, const std::vector<BatchItem>& items, std::size_t first,
                              std::vector<BatchResult>& results);

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

  // An account as a request reads it before it writes: under its row lock, or under the database's
  // write lock where there is one writer.
  struct Party {
    std::string currency;
    std::int64_t balance = 0, min_balance = 0, held = 0;
  };
  // What apply_in reads before it writes: the key's earlier outcome, or the request's accounts
  // (absent: no such account) and, where the dialect has a single writer, the next ids. One
  // statement there (TransferStatements::lookup); the key, then the rows locked in key order elsewhere.
  struct Reading {
    std::optional<TransferResult> earlier;
    std::optional<Party> from, to;
    std::optional<std::int64_t> transfer_id, entry_id;
  };
  Reading read_for(Transaction& tx, const Request& request);
  // Drops the cached copies of a request's accounts when tx commits: one statement for both.
  void invalidate_accounts(Transaction& tx, const Request& request);

  // One request inside the caller's transaction: replay, or read, check, move and record. A request
  // refused (not found, currency mismatch, overflow, idempotency mismatch) has written nothing: every
  // check comes before the first write, so transfer_batch needs no savepoint for a standalone item.
  // A statement that fails after a write spoils tx (Transaction::commit refuses).
  TransferResult apply_in(Transaction& tx, const Request& request);
  // A hold and a capture inside the caller's transaction (their public calls add the retries and
  // the commit). REQUIRES: the request's arguments were checked.
  HoldResult hold_in(Transaction& tx, const Request& request);
  TransferResult capture_in(Transaction& tx, std::int64_t hold_id, std::optional<std::int64_t> amount,
                            const std::string& key);
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

// Holds: authorise now (reserve part of the available amount), capture or void later.
//
// Lock order, the same everywhere so nothing deadlocks: the account row(s) first, in key order,
// then the hold rows. A hold's state changes only under its source account's row lock, so once a
// capture or void holds that lock it reads the hold's state as final.
//
// Two forms of each operation, one set of decisions: where the dialect has server-side statements
// (PostgreSQL), a hold, a capture and a void are each one call of a function of schema step 009
// (HoldStatements::apply_*), one round trip and one commit, which answers with the rows the
// statements below would have read; elsewhere (SQLite, in process) the same work runs as
// statements in a transaction. Both hand what they read to the same checks, so results, error
// kinds and messages are the same.
#include <fmt/format.h>

#include "rowguard/money.hpp"

#include "core/database_gate.hpp"

#include "ledger/ledger_impl.hpp"

namespace rowguard {

using namespace detail::ledger;

std::string_view to_string(HoldState state) noexcept {
  switch (state) {
    case HoldState::held:
      return "held";
    case HoldState::captured:
      return "captured";
    case HoldState::voided:
      return "voided";
    case HoldState::expired:
      return "expired";
    case HoldState::rejected:
      return "rejected";
  }
  return "held";
}

namespace {
constexpr auto max_hold_timeout = std::chrono::hours(24 * 366);

HoldState hold_state(const std::string& s) {
  for (auto state : {HoldState::held, HoldState::captured, HoldState::voided, HoldState::expired, HoldState::rejected})
    if (to_string(state) == s) return state;
  throw Error(ErrorKind::permanent, fmt::format("a hold has the unknown state '{}'", s));
}

// The columns of a hold as HoldStatements::read lists them, from `first` on (the hold functions
// answer with the same columns).
constexpr std::size_t hold_columns = 14;
Hold hold_of(const Row& r, std::size_t first = 0) {
  Hold h;
  h.id = r.i64(first);
  h.key = r.opt_text(first + 1).value_or("");
  h.from = r.text(first + 2);
  h.to = r.text(first + 3);
  h.amount = r.i64(first + 4);
  h.currency = r.text(first + 5);
  h.state = hold_state(r.text(first + 6));
  h.captured = r.i64(first + 7);
  h.transfer_id = r.is_null(first + 8) ? 0 : r.i64(first + 8);
  h.expires_in_ms = r.i64(first + 9);
  h.details = details_of(r, first + 10);
  return h;
}

// Open by state, closed in fact: past its timeout on the database clock.
bool past_timeout(const Hold& h) { return h.state == HoldState::held && h.expires_in_ms <= 0; }

void check_hold_id(std::int64_t id) {
  if (id <= 0) throw Error(ErrorKind::invalid_argument, fmt::format("a hold id is a positive number, got {}", id));
}

// The checks of hold(), in their order: the key's record (replayed or idempotency_mismatch), both
// accounts (the source's currency, then the destination's: empty when it does not exist), the
// source's held amount in int64.
HoldResult replayed_hold(const Row& r, const Request& request) {
  require_same(r, request);
  HoldResult replayed;
  replayed.hold_id = r.i64(0);
  replayed.replayed = true;
  replayed.status = r.text(5) == "rejected" ? TransferStatus::insufficient_funds : TransferStatus::ok;
  return replayed;
}

void require_hold_accounts(const Request& request, const std::optional<std::string>& from_currency,
                           const std::optional<std::string>& to_currency) {
  if (!from_currency) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.from));
  if (!to_currency) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.to));
  if (*from_currency != *to_currency)
    throw Error(ErrorKind::currency_mismatch, fmt::format("account '{}' is in {} and '{}' in {}", *request.from,
                                                          *from_currency, *request.to, *to_currency));
}

void require_held_fits(const Request& request, bool overflows) {
  if (overflows)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("the amount held on '{}' would overflow int64", *request.from));
}

// The checks of capture(), in their order. What it takes of the hold as first read: the amount
// asked, or the whole hold; a rejected hold has nothing to capture.
std::int64_t capture_amount(const Hold& h, std::optional<std::int64_t> amount) {
  if (h.state == HoldState::rejected)
    throw Error(ErrorKind::not_found,
                fmt::format("hold {} was rejected for insufficient funds: nothing to capture", h.id));
  const std::int64_t take = amount.value_or(h.amount);
  if (take > h.amount)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("hold {} reserves {}: cannot capture {}", h.id, format_money(h.amount, h.currency),
                            format_money(take, h.currency)));
  return take;
}

// With the hold read under its source's lock and the key's record (in *prior from column `first`
// on; null when the key is new): the replay of an earlier capture of it under this key, or nothing
// when the capture goes ahead; idempotency_mismatch, hold_closed or permanent otherwise.
std::optional<TransferResult> earlier_capture(const Hold& h, const Row* prior, std::size_t first,
                                              const Request& request) {
  if (h.state == HoldState::captured) {
    if (!prior)
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("hold {} was captured already by transfer {}, not under the key '{}'", h.id,
                              h.transfer_id, request.key));
    TransferResult replayed = replay_of(*prior, request, first);
    if (replayed.transfer_id != h.transfer_id)
      throw Error(ErrorKind::permanent, fmt::format("hold {} was captured by transfer {}, but its key '{}' names "
                                                    "transfer {}",
                                                    h.id, h.transfer_id, request.key, replayed.transfer_id));
    return replayed;
  }
  if (h.state == HoldState::voided || h.state == HoldState::expired || past_timeout(h))
    throw Error(ErrorKind::hold_closed, fmt::format("hold {} {}: it no longer reserves anything to capture", h.id,
                                                    h.state == HoldState::voided ? "was voided" : "has expired"));
  if (prior) {
    require_same(*prior, request, first);  // throws: this hold has no capture yet
    throw Error(ErrorKind::permanent,
                fmt::format("the key '{}' records a capture of hold {}, which is not captured", request.key, h.id));
  }
  return std::nullopt;
}

// The last checks before the capture writes: the destination exists, its balance stays in int64,
// and the source holds the hold (which cannot fail: held counts every open hold).
void require_capturable(const Hold& h, bool to_exists, bool overflows, bool short_of_hold) {
  if (!to_exists) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", h.to));
  if (overflows)
    throw Error(ErrorKind::invalid_argument, fmt::format("the balance of '{}' would overflow a 64-bit integer", h.to));
  if (short_of_hold)
    throw Error(ErrorKind::permanent, fmt::format("account '{}' holds less than its open hold {}", h.from, h.id));
}

// void_hold() on the hold read under its source's lock: true when it is open (voided, or closed
// as expired when past its timeout), false when it was released already; throws for a rejected or
// captured hold.
bool voidable(const Hold& h) {
  switch (h.state) {
    case HoldState::rejected:
      throw Error(ErrorKind::not_found,
                  fmt::format("hold {} was rejected for insufficient funds: nothing to void", h.id));
    case HoldState::captured:
      throw Error(
          ErrorKind::hold_closed,
          fmt::format("hold {} was captured by transfer {}: refund it with a reversal instead", h.id, h.transfer_id));
    case HoldState::voided:
    case HoldState::expired:
      return false;  // released already: voiding again changes nothing
    case HoldState::held:
      break;
  }
  return true;
}

// One call of a hold function (HoldStatements::apply_*) as its own autocommit statement: one round
// trip, one commit. The call drops the database's cached copies of the accounts it changes;
// CachedCopies drops this process's once it returns.
Row call_in_one_statement(detail::Backend& backend, const std::string& sql, const std::vector<Value>& params) {
  auto session = backend.borrow();
  return (*session)->exec(sql, params).one();
}

// The ledger's cached copies of accounts, for the hold functions: the key of account X is
// prefix + X (Ledger::Impl::cache_key), as the functions build it from the prefix.
struct CachedCopies {
  Cache* cache;
  std::string prefix;
  Value param() const { return cache ? Value(prefix) : Value(nullptr); }  // NULL without a cache
  void forget_local(const std::string& account) const {
    if (cache) cache->forget_local(prefix + account);
  }
};
}  // namespace

std::int64_t Ledger::Impl::release_expired(Transaction& tx, const std::string& account, std::int64_t* closed) {
  std::int64_t released = 0;
  const Result rows = tx.exec(holds_sql.expire, {account});
  if (closed) *closed = static_cast<std::int64_t>(rows.rows.size());
  for (const auto& row : rows.rows) {
    const auto sum = checked_add(released, row.i64(0));
    if (!sum) throw Error(ErrorKind::permanent, fmt::format("the expired holds of '{}' overflow int64", account));
    released = *sum;
  }
  if (released > 0) tx.exec(holds_sql.unhold, {account, released});
  return released;
}

namespace {
// The arguments of a hold as a keyed request; Error(invalid_argument) for a bad one.
Request hold_request(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key,
                     std::chrono::milliseconds timeout, const TransferDetails& details) {
  check_text(from, "source account id", max_id_bytes);
  check_text(to, "destination account id", max_id_bytes);
  if (from == to) throw Error(ErrorKind::invalid_argument, fmt::format("a hold from '{}' to itself", from));
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  if (timeout.count() <= 0 || timeout > max_hold_timeout)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("a hold's timeout must be more than 0 and at most 366 days, got {} ms", timeout.count()));
  check_details(details);
  Request request{"hold", std::string(from), std::string(to), amount, std::string(key)};
  request.timeout_ms = static_cast<std::int64_t>(timeout.count());
  request.details = details;
  return request;
}

// The key of a capture (default "hold:<id>:capture"); Error(invalid_argument) for bad arguments.
std::string capture_key(std::int64_t hold_id, std::optional<std::int64_t> amount, std::string_view key) {
  check_hold_id(hold_id);
  if (amount) check_amount(*amount);
  std::string k = key.empty() ? fmt::format("hold:{}:capture", hold_id) : std::string(key);
  check_text(k, "idempotency key", max_key_bytes);
  return k;
}

// What is asked of the hold h: a capture of take under k, compared with the key's record.
Request capture_request(const Hold& h, std::int64_t take, const std::string& k) {
  Request request{"transfer", h.from, h.to, take, k};
  request.hold_id = h.id;
  request.details = h.details;  // the capture's transfer carries the hold's details
  return request;
}

std::vector<Value> hold_params(const Request& request, const CachedCopies& cached) {
  std::vector<Value> params{*request.from, *request.to,         request.amount,
                            request.key,   *request.timeout_ms, cached.param()};
  for (auto& v : detail_params(request.details)) params.push_back(std::move(v));
  return params;
}

std::vector<Value> capture_params(std::int64_t hold_id, std::optional<std::int64_t> amount, const std::string& k,
                                  const CachedCopies& cached) {
  return {hold_id, amount ? Value(*amount) : Value(nullptr), k, cached.param()};
}

// The row of HoldStatements::apply_hold as the hold's result: the key's record, then the
// currencies, the overflow flag, the new hold's id and state.
HoldResult hold_called(const Row& row, const Request& request) {
  if (!row.is_null(0)) return replayed_hold(row, request);
  constexpr std::size_t c = detail::key_record_columns;
  require_hold_accounts(request, row.opt_text(c), row.opt_text(c + 1));
  require_held_fits(request, row.i64(c + 2) != 0);
  HoldResult r;
  r.hold_id = row.i64(c + 3);
  r.status = row.text(c + 4) == "held" ? TransferStatus::ok : TransferStatus::insufficient_funds;
  return r;
}

// The row of HoldStatements::apply_capture as the capture's result, with the hold it read under
// its accounts' locks: the hold's columns, the key's record, the flags and the capture's transfer id.
struct CaptureCall {
  Hold hold;
  TransferResult result;
};
CaptureCall capture_called(const Row& row, std::int64_t hold_id, std::optional<std::int64_t> amount,
                           const std::string& k) {
  if (row.is_null(0)) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
  const Hold h = hold_of(row);
  const Request request = capture_request(h, capture_amount(h, amount), k);
  constexpr std::size_t prior = hold_columns, c = hold_columns + detail::key_record_columns;
  if (auto earlier = earlier_capture(h, row.is_null(prior) ? nullptr : &row, prior, request)) return {h, *earlier};
  require_capturable(h, row.i64(c) != 0, row.i64(c + 1) != 0, row.i64(c + 2) != 0);
  TransferResult r;
  r.transfer_id = row.i64(c + 3);
  r.from_balance = row.opt_i64(c + 4);
  r.to_balance = row.opt_i64(c + 5);
  return {h, r};
}
}  // namespace

HoldResult Ledger::Impl::hold_in(Transaction& tx, const Request& request) {
  if (!holds_sql.apply_hold.empty()) {
    const CachedCopies cached{options.cache, cache_key("")};
    const Row row = tx.exec(holds_sql.apply_hold, hold_params(request, cached)).one();
    if (options.cache) tx.on_commit([cached, source = *request.from] { cached.forget_local(source); });
    return hold_called(row, request);
  }
  const std::string& source = *request.from;
  const std::string& destination = *request.to;
  const std::int64_t amount = request.amount;
  // The key's record, a hold's or a transfer's (one namespace): the same hold replays its outcome.
  if (const Result prior = tx.exec(transfers_sql.find_key, {request.key}); !prior.empty())
    return replayed_hold(prior.rows[0], request);
  // Only the source is locked: many holds towards one merchant account must not queue on it.
  const Result locked = tx.exec(transfers_sql.lock_one, {source});
  const Result target = locked.empty() ? Result{} : tx.exec(accounts_sql.get, {destination});
  require_hold_accounts(request, locked.empty() ? std::nullopt : std::optional(locked.rows[0].text(1)),
                        target.empty() ? std::nullopt : std::optional(target.rows[0].text(1)));
  const Row& src = locked.rows[0];
  std::int64_t held = src.i64(4);
  require_held_fits(request, !checked_add(held, amount));
  bool funded = Impl::fits(src.i64(2), held, src.i64(3), amount);
  if (!funded && held > 0) funded = Impl::fits(src.i64(2), held - release_expired(tx, source), src.i64(3), amount);
  if (funded) tx.exec(holds_sql.add, {source, amount});
  HoldResult r;
  r.status = funded ? TransferStatus::ok : TransferStatus::insufficient_funds;
  std::vector<Value> params{
      request.key,        source, destination, amount, src.text(1), std::string(funded ? "held" : "rejected"),
      *request.timeout_ms};
  for (auto& v : detail_params(request.details)) params.push_back(std::move(v));
  r.hold_id = tx.exec(holds_sql.insert, params).one().i64(0);
  if (funded) invalidate(tx, source);
  return r;
}

HoldResult Ledger::hold(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key,
                        std::chrono::milliseconds timeout, const TransferDetails& details) {
  const Request request = hold_request(from, to, amount, key, timeout, details);
  auto& impl = *impl_;
  const CachedCopies cached{impl.options.cache, Impl::cache_key("")};
  Measure measure(Measure::Kind::hold);
  HoldResult result = impl.retrying([&] {
    if (!impl.holds_sql.apply_hold.empty()) {
      // One autocommit call: one round trip, one commit.
      std::optional<Row> row;
      try {
        row = call_in_one_statement(*impl.backend, impl.holds_sql.apply_hold, hold_params(request, cached));
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::in_doubt) cached.forget_local(*request.from);  // it may have committed
        throw;
      }
      cached.forget_local(*request.from);
      return hold_called(*row, request);
    }
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    HoldResult r = impl.hold_in(tx, request);
    tx.commit();
    return r;
  });
  if (!result.replayed) impl.count([&](LedgerStats& st) { ++(result.ok() ? st.holds_ok : st.holds_rejected); });
  return measure(result);
}

HoldResult Ledger::hold(Transaction& tx, std::string_view from, std::string_view to, std::int64_t amount,
                        std::string_view key, std::chrono::milliseconds timeout, const TransferDetails& details) {
  const Request request = hold_request(from, to, amount, key, timeout, details);
  Measure measure(Measure::Kind::hold);
  return measure(impl_->hold_in(tx, request));
}

TransferResult Ledger::Impl::capture_in(Transaction& tx, std::int64_t hold_id, std::optional<std::int64_t> amount,
                                        const std::string& k) {
  if (!holds_sql.apply_capture.empty()) {
    const CachedCopies cached{options.cache, cache_key("")};
    CaptureCall call = capture_called(
        tx.exec(holds_sql.apply_capture, capture_params(hold_id, amount, k, cached)).one(), hold_id, amount, k);
    original_balances(tx, call.result);
    if (options.cache)
      tx.on_commit([cached, from = call.hold.from, to = call.hold.to] {
        cached.forget_local(from);
        cached.forget_local(to);
      });
    if (call.result.replayed) count([](LedgerStats& st) { ++st.replays; });
    return call.result;
  }
  const Result found = tx.exec(holds_sql.read, {hold_id});
  if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
  const Hold first = hold_of(found.rows[0]);
  const std::int64_t take = capture_amount(first, amount);
  // Accounts first (key order), then the hold: its state is final once its source is locked.
  const Result locked = tx.exec(transfers_sql.lock_two, {first.from, first.to});
  const Hold h = hold_of(tx.exec(holds_sql.lock, {hold_id}).one());
  const Request request = capture_request(h, take, k);
  // The key's record, in the transfers or the holds: a capture of this hold by this amount replays;
  // anything else recorded under the key (another hold's capture, a transfer, a hold) is a mismatch.
  const Result prior = tx.exec(transfers_sql.find_key, {k});
  if (auto earlier = earlier_capture(h, prior.empty() ? nullptr : &prior.rows[0], 0, request)) {
    count([](LedgerStats& st) { ++st.replays; });
    original_balances(tx, *earlier);
    return *earlier;
  }
  const Row* to = nullptr;
  const Row* from = nullptr;
  for (const auto& row : locked.rows) {
    if (row.text(0) == h.to) to = &row;
    if (row.text(0) == h.from) from = &row;
  }
  require_capturable(h, to != nullptr, to && !checked_add(to->i64(2), take), !from || from->i64(4) < h.amount);
  // The capture pays from what the hold reserved: the whole hold leaves held, take leaves the balance.
  if (tx.exec(holds_sql.capture_debit, {h.from, take, h.amount}).affected != 1)
    throw Error(ErrorKind::permanent, fmt::format("account '{}' holds less than its open hold {}", h.from, hold_id));
  tx.exec(transfers_sql.credit, {h.to, take});
  TransferResult r;
  // As the entries below record them: the rows were read under their locks.
  r.from_balance = from->i64(2) - take;
  r.to_balance = to->i64(2) + take;
  r.transfer_id = tx.exec(holds_sql.capture_record, {k, h.from, h.to, take, h.currency, hold_id}).one().i64(0);
  tx.exec(transfers_sql.entry, {r.transfer_id, h.from, -take});
  tx.exec(transfers_sql.entry, {r.transfer_id, h.to, take});
  if (tx.exec(holds_sql.close, {hold_id, std::string("captured"), take, r.transfer_id}).affected != 1)
    throw Error(ErrorKind::conflict, fmt::format("hold {} changed under its account's lock", hold_id));
  invalidate(tx, h.from);
  invalidate(tx, h.to);
  return r;
}

TransferResult Ledger::capture(std::int64_t hold_id, std::optional<std::int64_t> amount, std::string_view key) {
  const std::string k = capture_key(hold_id, amount, key);
  auto& impl = *impl_;
  const CachedCopies cached{impl.options.cache, Impl::cache_key("")};
  Measure measure(Measure::Kind::capture);
  TransferResult result = impl.retrying([&] {
    if (!impl.holds_sql.apply_capture.empty()) {
      // One autocommit call: one round trip, one commit.
      CaptureCall call = capture_called(call_in_one_statement(*impl.backend, impl.holds_sql.apply_capture,
                                                              capture_params(hold_id, amount, k, cached)),
                                        hold_id, amount, k);
      if (call.result.replayed) impl.original_balances(**impl.backend->borrow(), call.result);
      cached.forget_local(call.hold.from);
      cached.forget_local(call.hold.to);
      if (call.result.replayed) impl.count([](LedgerStats& st) { ++st.replays; });
      return call.result;
    }
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    TransferResult r = impl.capture_in(tx, hold_id, amount, k);
    tx.commit();
    return r;
  });
  if (!result.replayed) impl.count([](LedgerStats& st) { ++st.transfers_ok; });
  return measure(result);
}

TransferResult Ledger::capture(Transaction& tx, std::int64_t hold_id, std::optional<std::int64_t> amount,
                               std::string_view key) {
  const std::string k = capture_key(hold_id, amount, key);
  Measure measure(Measure::Kind::capture);
  return measure(impl_->capture_in(tx, hold_id, amount, k));
}

Hold Ledger::void_hold(std::int64_t hold_id) {
  check_hold_id(hold_id);
  auto& impl = *impl_;
  const CachedCopies cached{impl.options.cache, Impl::cache_key("")};
  Measure measure(Measure::Kind::void_hold);
  return measure(impl.retrying([&] {
    if (!impl.holds_sql.apply_void.empty()) {
      const Row row = call_in_one_statement(*impl.backend, impl.holds_sql.apply_void, {hold_id, cached.param()});
      if (row.is_null(0)) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
      Hold h = hold_of(row);  // as read under its source's lock, before the call changed it
      cached.forget_local(h.from);
      if (voidable(h)) h.state = past_timeout(h) ? HoldState::expired : HoldState::voided;
      return h;
    }
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    const Result found = tx.exec(impl.holds_sql.read, {hold_id});
    if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
    const std::string from = found.rows[0].text(2);
    tx.exec(impl.transfers_sql.lock_one, {from});
    Hold h = hold_of(tx.exec(impl.holds_sql.lock, {hold_id}).one());
    if (!voidable(h)) return h;
    // A hold past its timeout had stopped reserving money before this call: record that truth.
    const bool expired = past_timeout(h);
    if (expired) {
      impl.release_expired(tx, from);
    } else {
      tx.exec(impl.holds_sql.close, {hold_id, std::string("voided"), std::int64_t{0}, Value(nullptr)});
      tx.exec(impl.holds_sql.add, {from, -h.amount});
      impl.invalidate(tx, from);
    }
    tx.commit();
    h.state = expired ? HoldState::expired : HoldState::voided;
    return h;
  }));
}

Hold Ledger::get_hold(std::int64_t hold_id) {
  check_hold_id(hold_id);
  auto session = impl_->backend->borrow();
  const Result found = (*session)->exec(impl_->holds_sql.read, {hold_id});
  if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
  Hold h = hold_of(found.rows[0]);
  if (past_timeout(h)) h.state = HoldState::expired;  // as it stands, whether or not a sweep closed it
  return h;
}

std::int64_t Ledger::sweep_holds() {
  auto& impl = *impl_;
  std::vector<std::string> accounts;
  {
    auto session = impl.backend->borrow();
    for (const auto& row : (*session)->exec(impl.holds_sql.expired_accounts, {}).rows) accounts.push_back(row.text(0));
  }
  std::int64_t closed = 0;
  for (const auto& account : accounts) {
    closed += impl.retrying([&] {
      Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
      tx.exec(impl.transfers_sql.lock_one, {account});
      std::int64_t n = 0;
      impl.release_expired(tx, account, &n);
      tx.commit();
      return n;
    });
  }
  return closed;
}

}  // namespace rowguard

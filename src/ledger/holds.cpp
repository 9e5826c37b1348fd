// Holds: authorise now (reserve part of the available amount), capture or void later.
//
// Lock order, the same everywhere so nothing deadlocks: the account row(s) first, in key order,
// then the hold rows. A hold's state changes only under its source account's row lock, so once a
// capture or void holds that lock it reads the hold's state as final.
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

// A row of HoldStatements::read.
Hold hold_of(const Row& r) {
  Hold h;
  h.id = r.i64(0);
  h.key = r.opt_text(1).value_or("");
  h.from = r.text(2);
  h.to = r.text(3);
  h.amount = r.i64(4);
  h.currency = r.text(5);
  h.state = hold_state(r.text(6));
  h.captured = r.i64(7);
  h.transfer_id = r.is_null(8) ? 0 : r.i64(8);
  h.expires_in_ms = r.i64(9);
  return h;
}

// Open by state, closed in fact: past its timeout on the database clock.
bool past_timeout(const Hold& h) { return h.state == HoldState::held && h.expires_in_ms <= 0; }

void check_hold_id(std::int64_t id) {
  if (id <= 0) throw Error(ErrorKind::invalid_argument, fmt::format("a hold id is a positive number, got {}", id));
}
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
                     std::chrono::milliseconds timeout) {
  check_text(from, "source account id", max_id_bytes);
  check_text(to, "destination account id", max_id_bytes);
  if (from == to) throw Error(ErrorKind::invalid_argument, fmt::format("a hold from '{}' to itself", from));
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  if (timeout.count() <= 0 || timeout > max_hold_timeout)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("a hold's timeout must be more than 0 and at most 366 days, got {} ms", timeout.count()));
  Request request{"hold", std::string(from), std::string(to), amount, std::string(key)};
  request.timeout_ms = static_cast<std::int64_t>(timeout.count());
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
}  // namespace

HoldResult Ledger::Impl::hold_in(Transaction& tx, const Request& request) {
  const std::string& source = *request.from;
  const std::string& destination = *request.to;
  const std::string& k = request.key;
  const std::int64_t amount = request.amount;
  // The key's record, a hold's or a transfer's (one namespace): the same hold replays its outcome.
  if (const Result prior = tx.exec(transfers_sql.find_key, {k}); !prior.empty()) {
    const Row& r = prior.rows[0];
    require_same(r, request);
    HoldResult replayed;
    replayed.hold_id = r.i64(0);
    replayed.replayed = true;
    replayed.status = r.text(5) == "rejected" ? TransferStatus::insufficient_funds : TransferStatus::ok;
    return replayed;
  }
  // Only the source is locked: many holds towards one merchant account must not queue on it.
  const Result locked = tx.exec(transfers_sql.lock_one, {source});
  if (locked.empty()) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", source));
  const Result target = tx.exec(accounts_sql.get, {destination});
  if (target.empty()) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", destination));
  const Row& src = locked.rows[0];
  if (src.text(1) != target.rows[0].text(1))
    throw Error(ErrorKind::currency_mismatch, fmt::format("account '{}' is in {} and '{}' in {}", source, src.text(1),
                                                          destination, target.rows[0].text(1)));
  std::int64_t held = src.i64(4);
  if (!checked_add(held, amount))
    throw Error(ErrorKind::invalid_argument, fmt::format("the amount held on '{}' would overflow int64", source));
  bool funded = Impl::fits(src.i64(2), held, src.i64(3), amount);
  if (!funded && held > 0) funded = Impl::fits(src.i64(2), held - release_expired(tx, source), src.i64(3), amount);
  if (funded) tx.exec(holds_sql.add, {source, amount});
  HoldResult r;
  r.status = funded ? TransferStatus::ok : TransferStatus::insufficient_funds;
  r.hold_id = tx.exec(holds_sql.insert, {k, source, destination, amount, src.text(1),
                                         std::string(funded ? "held" : "rejected"), *request.timeout_ms})
                  .one()
                  .i64(0);
  if (funded) invalidate(tx, source);
  return r;
}

HoldResult Ledger::hold(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key,
                        std::chrono::milliseconds timeout) {
  const Request request = hold_request(from, to, amount, key, timeout);
  auto& impl = *impl_;
  Measure measure(Measure::Kind::hold);
  HoldResult result = impl.retrying([&] {
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    HoldResult r = impl.hold_in(tx, request);
    tx.commit();
    return r;
  });
  if (!result.replayed) impl.count([&](LedgerStats& st) { ++(result.ok() ? st.holds_ok : st.holds_rejected); });
  return measure(result);
}

HoldResult Ledger::hold(Transaction& tx, std::string_view from, std::string_view to, std::int64_t amount,
                        std::string_view key, std::chrono::milliseconds timeout) {
  const Request request = hold_request(from, to, amount, key, timeout);
  Measure measure(Measure::Kind::hold);
  return measure(impl_->hold_in(tx, request));
}

TransferResult Ledger::Impl::capture_in(Transaction& tx, std::int64_t hold_id, std::optional<std::int64_t> amount,
                                        const std::string& k) {
  const Result found = tx.exec(holds_sql.read, {hold_id});
  if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
  const Hold first = hold_of(found.rows[0]);
  if (first.state == HoldState::rejected)
    throw Error(ErrorKind::not_found,
                fmt::format("hold {} was rejected for insufficient funds: nothing to capture", hold_id));
  const std::int64_t take = amount.value_or(first.amount);
  if (take > first.amount)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("hold {} reserves {}: cannot capture {}", hold_id, first.amount, take));
  // Accounts first (key order), then the hold: its state is final once its source is locked.
  const Result locked = tx.exec(transfers_sql.lock_two, {first.from, first.to});
  const Hold h = hold_of(tx.exec(holds_sql.lock, {hold_id}).one());
  Request request{"transfer", h.from, h.to, take, k};
  request.hold_id = hold_id;
  // The key's record, in the transfers or the holds: a capture of this hold by this amount replays;
  // anything else recorded under the key (another hold's capture, a transfer, a hold) is a mismatch.
  const Result prior = tx.exec(transfers_sql.find_key, {k});
  if (h.state == HoldState::captured) {
    if (prior.empty())
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("hold {} was captured already by transfer {}, not under the key '{}'", hold_id,
                              h.transfer_id, k));
    TransferResult replayed = replay_of(prior.rows[0], request);
    if (replayed.transfer_id != h.transfer_id)
      throw Error(ErrorKind::permanent, fmt::format("hold {} was captured by transfer {}, but its key '{}' names "
                                                    "transfer {}",
                                                    hold_id, h.transfer_id, k, replayed.transfer_id));
    count([](LedgerStats& st) { ++st.replays; });
    return replayed;
  }
  if (h.state == HoldState::voided || h.state == HoldState::expired || past_timeout(h))
    throw Error(ErrorKind::hold_closed, fmt::format("hold {} {}: it no longer reserves anything to capture", hold_id,
                                                    h.state == HoldState::voided ? "was voided" : "has expired"));
  if (!prior.empty()) {
    require_same(prior.rows[0], request);  // throws: this hold has no capture yet
    throw Error(ErrorKind::permanent,
                fmt::format("the key '{}' records a capture of hold {}, which is not captured", k, hold_id));
  }
  const Row* to = nullptr;
  for (const auto& row : locked.rows)
    if (row.text(0) == h.to) to = &row;
  if (!to) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", h.to));
  if (!checked_add(to->i64(2), take))
    throw Error(ErrorKind::invalid_argument, fmt::format("the balance of '{}' would overflow a 64-bit integer", h.to));
  // The capture pays from what the hold reserved: the whole hold leaves held, take leaves the balance.
  if (tx.exec(holds_sql.capture_debit, {h.from, take, h.amount}).affected != 1)
    throw Error(ErrorKind::permanent, fmt::format("account '{}' holds less than its open hold {}", h.from, hold_id));
  tx.exec(transfers_sql.credit, {h.to, take});
  TransferResult r;
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
  Measure measure(Measure::Kind::capture);
  TransferResult result = impl.retrying([&] {
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
  Measure measure(Measure::Kind::void_hold);
  return measure(impl.retrying([&] {
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    const Result found = tx.exec(impl.holds_sql.read, {hold_id});
    if (found.empty()) throw Error(ErrorKind::not_found, fmt::format("there is no hold {}", hold_id));
    const std::string from = found.rows[0].text(2);
    tx.exec(impl.transfers_sql.lock_one, {from});
    Hold h = hold_of(tx.exec(impl.holds_sql.lock, {hold_id}).one());
    switch (h.state) {
      case HoldState::rejected:
        throw Error(ErrorKind::not_found,
                    fmt::format("hold {} was rejected for insufficient funds: nothing to void", hold_id));
      case HoldState::captured:
        throw Error(ErrorKind::hold_closed,
                    fmt::format("hold {} was captured by transfer {}: refund it with a reversal instead", hold_id,
                                h.transfer_id));
      case HoldState::voided:
      case HoldState::expired:
        return h;  // released already: voiding again changes nothing
      case HoldState::held:
        break;
    }
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

#include "rowguard/ledger.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <mutex>

#include <fmt/format.h>

#include "rowguard/money.hpp"

#include "core/database_gate.hpp"

#include "ledger/ledger_impl.hpp"

namespace rowguard {

using namespace detail::ledger;

std::string_view to_string(TransferStatus status) noexcept {
  return status == TransferStatus::ok ? "ok" : "insufficient_funds";
}

Ledger::Impl::Impl(std::shared_ptr<detail::Backend> b, LedgerOptions o)
    : backend(std::move(b)),
      options(o),
      standby(*backend, options.standby, "LedgerOptions::standby"),
      accounts_sql(*backend),
      transfers_sql(*backend),
      holds_sql(*backend),
      history_sql(*backend),
      archive_sql(*backend),
      check_sql(*backend) {
  detail::validate(options.retry);
  if (options.cache_ttl.count() <= 0)
    throw Error(ErrorKind::invalid_argument, "LedgerOptions::cache_ttl must be positive");
}

namespace {
Account account_of(const Row& r) { return Account{r.text(0), r.text(1), r.i64(2), r.i64(3), r.i64(4), r.i64(5)}; }
}  // namespace

namespace detail::ledger {
namespace {
// What a request or a record is, as a person would name it.
std::string operation(std::string_view kind, bool leg, bool capture) {
  if (kind == "hold") return "hold";
  if (capture) return "capture";
  if (kind == "reversal") return "refund";
  return leg ? fmt::format("two-phase {} leg", kind) : std::string(kind);
}
}  // namespace

void require_same(const Row& r, const Request& request, std::size_t first) {
  if (r.size() < first + key_record_columns)
    throw Error(ErrorKind::permanent, "a key record needs the columns of key_record_sql");
  auto differs = [&](std::string_view field, const std::string& stored, const std::string& asked) {
    throw Error(ErrorKind::idempotency_mismatch,
                fmt::format("idempotency key '{}' was used for another request: {} differs (recorded {}, asked {})",
                            request.key, field, stored, asked));
  };
  auto show = [](const std::optional<std::string>& s) { return s ? "'" + *s + "'" : std::string("outside"); };
  auto number = [](std::int64_t n) { return n ? std::to_string(n) : std::string("none"); };
  const auto from = r.opt_text(first + 2), to = r.opt_text(first + 3);
  const std::int64_t amount = r.i64(first + 4);
  const std::int64_t reverses = r.opt_i64(first + 7).value_or(0), hold = r.opt_i64(first + 8).value_or(0);
  const auto timeout = r.opt_i64(first + 9);
  const std::string recorded = operation(r.text(first + 1), !r.is_null(first + 6), hold != 0);
  const std::string asked = operation(request.kind, request.global_txid.has_value(), request.hold_id != 0);
  if (recorded != asked) differs("operation", recorded, asked);
  if (from != request.from) differs("from", show(from), show(request.from));
  if (to != request.to) differs("to", show(to), show(request.to));
  if (amount != request.amount) differs("amount", std::to_string(amount), std::to_string(request.amount));
  if (reverses != request.reverses) differs("refunded transfer", number(reverses), number(request.reverses));
  if (hold != request.hold_id) differs("hold", number(hold), number(request.hold_id));
  // A hold recorded before schema step 007 has no timeout to compare.
  if (timeout && request.timeout_ms && *timeout != *request.timeout_ms)
    differs("timeout", fmt::format("{} ms", *timeout), fmt::format("{} ms", *request.timeout_ms));
}

TransferResult replay_of(const Row& r, const Request& request, std::size_t first) {
  require_same(r, request, first);
  TransferResult result;
  result.transfer_id = r.i64(first);
  result.replayed = true;
  result.status = r.text(first + 5) == "ok" ? TransferStatus::ok : TransferStatus::insufficient_funds;
  return result;
}
}  // namespace detail::ledger

std::optional<TransferResult> Ledger::Impl::replay(Transaction& tx, const Request& request) {
  const Result found = tx.exec(transfers_sql.find_key, {request.key});
  if (found.empty()) return std::nullopt;
  return replay_of(found.rows[0], request);
}

Ledger::Impl::Reading Ledger::Impl::read_for(Transaction& tx, const Request& request) {
  Reading r;
  if (!transfers_sql.lookup.empty()) {
    const Result found = tx.exec(transfers_sql.lookup, {request.key, opt(request.from), opt(request.to)});
    const Row& row = found.one();
    if (!row.is_null(0)) {
      r.earlier = replay_of(row, request);
      return r;
    }
    constexpr std::size_t c = detail::key_record_columns;
    auto party = [&](std::size_t at) {
      return row.is_null(at)
                 ? std::nullopt
                 : std::optional<Party>(Party{row.text(at), row.i64(at + 1), row.i64(at + 2), row.i64(at + 3)});
    };
    if (request.from) r.from = party(c);
    if (request.to) r.to = party(c + 4);
    r.transfer_id = row.i64(c + 8);
    r.entry_id = row.i64(c + 9);
    return r;
  }
  if ((r.earlier = replay(tx, request))) return r;
  const Result locked = request.from && request.to
                            ? tx.exec(transfers_sql.lock_two, {*request.from, *request.to})
                            : tx.exec(transfers_sql.lock_one, {request.from ? *request.from : *request.to});
  for (const auto& row : locked.rows) {
    const Party party{row.text(1), row.i64(2), row.i64(3), row.i64(4)};
    if (request.from && row.text(0) == *request.from) r.from = party;
    if (request.to && row.text(0) == *request.to) r.to = party;
  }
  return r;
}

void Ledger::Impl::invalidate_accounts(Transaction& tx, const Request& request) {
  if (!options.cache) return;
  std::optional<std::string> low = request.from ? std::optional(cache_key(*request.from)) : std::nullopt;
  std::optional<std::string> high = request.to ? std::optional(cache_key(*request.to)) : std::nullopt;
  if (!low || (high && *high < *low)) std::swap(low, high);  // in key order: PostgreSQL locks them so
  tx.exec(transfers_sql.invalidate_two, {opt(low), opt(high)});
  for (const auto* key : {&low, &high}) {
    if (!*key) continue;
    detail::instruments::cache().invalidations.add();
    tx.on_commit([cache = options.cache, k = **key] { cache->forget_local(k); });
  }
}

TransferResult Ledger::Impl::apply_in(Transaction& tx, const Request& request) {
  const Reading read = read_for(tx, request);
  if (read.earlier) {
    count([](LedgerStats& st) { ++st.replays; });
    return *read.earlier;
  }
  const Party* from = read.from ? &*read.from : nullptr;
  const Party* to = read.to ? &*read.to : nullptr;
  if (request.from && !from)
    throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.from));
  if (request.to && !to) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.to));
  if (from && to && from->currency != to->currency)
    throw Error(ErrorKind::currency_mismatch, fmt::format("account '{}' is in {} and '{}' in {}", *request.from,
                                                          from->currency, *request.to, to->currency));
  const std::string& currency = (from ? from : to)->currency;
  // Checked arithmetic on the values read: no balance may leave int64.
  if (to && !checked_add(to->balance, request.amount))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("the balance of '{}' would overflow a 64-bit integer", *request.to));
  // Funds are the available amount: balance - held. held may still count holds past their timeout:
  // only when they are what stands in the way are they closed, so a payment never waits for a sweep.
  bool funded = !from || fits(from->balance, from->held, from->min_balance, request.amount);
  if (!funded && from->held > 0)
    funded = fits(from->balance, from->held - release_expired(tx, *request.from), from->min_balance, request.amount);
  if (funded) {
    if (from && tx.exec(transfers_sql.debit, {*request.from, request.amount}).affected != 1)
      throw Error(ErrorKind::conflict, "the source balance changed under its row lock");  // cannot happen; retried
    if (to) tx.exec(transfers_sql.credit, {*request.to, request.amount});
  }
  TransferResult result;
  result.status = funded ? TransferStatus::ok : TransferStatus::insufficient_funds;
  std::vector<Value> record{request.key,
                            request.kind,
                            opt(request.from),
                            opt(request.to),
                            request.amount,
                            currency,
                            std::string(funded ? "ok" : "insufficient_funds"),
                            request.reverses ? Value(request.reverses) : Value(nullptr),
                            opt(request.global_txid)};
  if (read.transfer_id) {  // the id read under the write lock: no RETURNING
    record.emplace_back(*read.transfer_id);
    tx.exec(transfers_sql.record_as, record);
    result.transfer_id = *read.transfer_id;
  } else {
    result.transfer_id = tx.exec(transfers_sql.record, record).one().i64(0);
  }
  if (!funded) return result;
  if (read.entry_id && from && to) {
    tx.exec(transfers_sql.entry_pair,
            {*read.entry_id, result.transfer_id, *request.from, -request.amount, *request.to, request.amount});
  } else if (read.entry_id) {
    tx.exec(transfers_sql.entry_as, {*read.entry_id, result.transfer_id, from ? *request.from : *request.to,
                                     from ? -request.amount : request.amount});
  } else {
    if (from) tx.exec(transfers_sql.entry, {result.transfer_id, *request.from, -request.amount});
    if (to) tx.exec(transfers_sql.entry, {result.transfer_id, *request.to, request.amount});
  }
  invalidate_accounts(tx, request);
  return result;
}

std::vector<Value> Ledger::Impl::one_statement_params(const Request& request) const {
  std::vector<Value> params{*request.from, *request.to, request.amount, request.key};
  if (options.cache) {
    // Keys in order, so two transfers between the same accounts take the cache rows in one order.
    std::string low = cache_key(*request.from), high = cache_key(*request.to);
    if (high < low) std::swap(low, high);
    params.emplace_back(std::move(low));
    params.emplace_back(std::move(high));
  } else {
    params.emplace_back(nullptr);
    params.emplace_back(nullptr);
  }
  return params;
}

bool Ledger::Impl::fits(std::int64_t balance, std::int64_t held, std::int64_t min_balance, std::int64_t amount) {
  const auto left = checked_sub(balance, amount);
  const auto available = left ? checked_sub(*left, held) : std::nullopt;
  return available && *available >= min_balance;
}

std::optional<TransferResult> Ledger::Impl::transfer_in_one_statement(const Request& request) {
  const std::vector<Value> params = one_statement_params(request);
  auto forget_local = [&] {
    if (options.cache)
      options.cache->forget_local(std::get<std::string>(params[4])),
          options.cache->forget_local(std::get<std::string>(params[5]));
  };
  std::optional<Row> row;
  try {
    auto session = backend->borrow();
    row = (*session)->exec(transfers_sql.one_statement_transfer, params).one();
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::in_doubt) forget_local();  // it may have committed
    throw;
  }
  // The statement was its own transaction and has committed: drop this process's copies.
  forget_local();
  return one_statement_outcome(*row, request);
}

std::optional<TransferResult> Ledger::Impl::transfer_in_one_statement(Transaction& tx, const Request& request) {
  const std::vector<Value> params = one_statement_params(request);
  const Row row = tx.exec(transfers_sql.one_statement_transfer, params).one();
  if (options.cache)
    tx.on_commit([cache = options.cache, a = std::get<std::string>(params[4]), b = std::get<std::string>(params[5])] {
      cache->forget_local(a);
      cache->forget_local(b);
    });
  return one_statement_outcome(row, request);
}

std::optional<TransferResult> Ledger::Impl::one_statement_outcome(const Row& row, const Request& request) {
  if (!row.is_null(0)) {  // the key was seen: its original outcome, or idempotency_mismatch
    const TransferResult replayed = replay_of(row, request);
    count([](LedgerStats& st) { ++st.replays; });
    return replayed;
  }
  // After the key record's columns: the currencies, the overflow flag, the record and the count.
  constexpr std::size_t c = detail::key_record_columns;
  if (row.is_null(c)) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.from));
  if (row.is_null(c + 1)) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", *request.to));
  if (row.text(c) != row.text(c + 1))
    throw Error(ErrorKind::currency_mismatch, fmt::format("account '{}' is in {} and '{}' in {}", *request.from,
                                                          row.text(c), *request.to, row.text(c + 1)));
  if (row.i64(c + 2) != 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("the balance of '{}' would overflow a 64-bit integer", *request.to));
  if (row.is_null(c + 3)) return std::nullopt;  // short while holding holds: apply_in decides
  TransferResult r;
  r.transfer_id = row.i64(c + 3);
  r.status = row.text(c + 4) == "ok" ? TransferStatus::ok : TransferStatus::insufficient_funds;
  if (r.ok() && row.i64(c + 5) != 4)
    throw Error(ErrorKind::permanent,
                fmt::format("transfer {} changed {} rows instead of 4", r.transfer_id, row.i64(c + 5)));
  return r;
}

TransferResult Ledger::Impl::apply(const Request& request) {
  if (!transfers_sql.one_statement_transfer.empty() && request.kind == "transfer") {
    TransferResult result = retrying([&] {
      if (auto r = transfer_in_one_statement(request)) return *r;
      Transaction tx = detail::DatabaseGate::begin(*backend, TxOptions{});
      TransferResult r = apply_in(tx, request);
      tx.commit();
      return r;
    });
    if (!result.replayed) count([&](LedgerStats& st) { ++(result.ok() ? st.transfers_ok : st.transfers_rejected); });
    return result;
  }
  TransferResult result = retrying([&] {
    Transaction tx = detail::DatabaseGate::begin(*backend, TxOptions{});
    TransferResult r = apply_in(tx, request);
    tx.commit();
    return r;
  });
  if (!result.replayed) count([&](LedgerStats& st) { ++(result.ok() ? st.transfers_ok : st.transfers_rejected); });
  return result;
}

Ledger::Ledger(Database& db, LedgerOptions options)
    : impl_(std::make_unique<Impl>(detail::DatabaseGate::shared_backend(db), options)) {}
Ledger::~Ledger() = default;

bool Ledger::open(std::string_view id, std::string_view currency, std::int64_t min_balance) {
  check_text(id, "account id", max_id_bytes);
  check_currency(currency);
  if (min_balance > 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("min_balance must be 0 or negative (an overdraft limit), got {}", min_balance));
  auto session = impl_->backend->borrow();
  // ON CONFLICT DO NOTHING: a concurrent open of the same id waits for the other to commit and
  // then inserts nothing, instead of failing with a unique violation.
  if (!(*session)->exec(impl_->accounts_sql.open, {std::string(id), std::string(currency), min_balance}).empty())
    return true;
  // Accounts are never deleted, so the row that stopped the insert is there to compare with.
  const Result r = (*session)->exec(impl_->accounts_sql.get, {std::string(id)});
  if (r.empty()) throw Error(ErrorKind::conflict, fmt::format("account '{}' was neither opened nor found", id));
  const Account existing = account_of(r.rows[0]);
  std::string differences;
  if (existing.currency != currency) differences = fmt::format("currency {}, not {}", existing.currency, currency);
  if (existing.min_balance != min_balance)
    differences +=
        fmt::format("{}min_balance {}, not {}", differences.empty() ? "" : " and ", existing.min_balance, min_balance);
  if (!differences.empty())
    throw Error(ErrorKind::idempotency_mismatch, fmt::format("account '{}' is open with {}", id, differences));
  return false;
}

std::optional<Account> Ledger::Impl::read(std::string_view id) {
  auto session = backend->borrow();
  const Result r = (*session)->exec(accounts_sql.get, {std::string(id)});
  if (r.empty()) return std::nullopt;
  return account_of(r.rows[0]);
}

namespace {
// An account's cached copy: "currency balance min_balance version held" (the id is in the key).
// held is as of the load: a hold that expires later still shows until the copy does (cache_ttl).
std::string encode(const Account& a) {
  return fmt::format("{} {} {} {} {}", a.currency, a.balance, a.min_balance, a.version, a.held);
}

Account decode(std::string_view id, const std::string& cached) {
  Account a;
  a.id = std::string(id);
  char currency[4] = {};
  long long balance = 0, min_balance = 0, version = 0, held = 0;
  if (std::sscanf(cached.c_str(), "%3s %lld %lld %lld %lld", currency, &balance, &min_balance, &version, &held) != 5)
    throw Error(ErrorKind::permanent, fmt::format("the cached copy of account '{}' is malformed: '{}'", id, cached));
  a.currency = currency;
  a.balance = balance;
  a.min_balance = min_balance;
  a.version = version;
  a.held = held;
  return a;
}
}  // namespace

Account Ledger::get(std::string_view id) {
  check_text(id, "account id", max_id_bytes);
  auto& impl = *impl_;
  if (impl.options.cache) {
    // A missing account is not cached (no negative ttl): opening it must be seen at once.
    // The loader is one indexed read: cheaper than a cross-process loader lease.
    LoadOptions one_per_process;
    one_per_process.scope = LoadScope::this_process;
    const auto cached = impl.options.cache->get_or_load(
        Impl::cache_key(id), impl.options.cache_ttl,
        [&] {
          const auto a = impl.read(id);
          return a ? std::optional<std::string>(encode(*a)) : std::nullopt;
        },
        one_per_process);
    if (!cached) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", id));
    return decode(id, *cached);
  }
  const auto a = impl.read(id);
  if (!a) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", id));
  return *a;
}

std::vector<Account> Ledger::list() {
  auto session = impl_->backend->borrow();
  std::vector<Account> out;
  for (const auto& row : (*session)->exec(impl_->accounts_sql.list, {}).rows) out.push_back(account_of(row));
  return out;
}

std::vector<CurrencySummary> Ledger::currencies() {
  auto session = impl_->backend->borrow();
  std::vector<CurrencySummary> out;
  for (const auto& row : (*session)->exec(impl_->accounts_sql.currencies, {}).rows)
    out.push_back(CurrencySummary{row.text(0), row.i64(1), row.i64(2), row.i64(3)});
  return out;
}

std::vector<Account> Ledger::largest_accounts(std::size_t limit) {
  if (limit < 1 || limit > 10'000)
    throw Error(ErrorKind::invalid_argument, fmt::format("largest_accounts: limit must be 1 to 10000, got {}", limit));
  auto session = impl_->backend->borrow();
  std::vector<Account> out;
  for (const auto& row : (*session)->exec(impl_->accounts_sql.largest, {static_cast<std::int64_t>(limit)}).rows)
    out.push_back(account_of(row));
  return out;
}

TransferResult Ledger::deposit(std::string_view account, std::int64_t amount, std::string_view key) {
  check_text(account, "account id", max_id_bytes);
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  Measure measure(Measure::Kind::deposit);
  return measure(impl_->apply({"deposit", std::nullopt, std::string(account), amount, std::string(key)}));
}

TransferResult Ledger::withdraw(std::string_view account, std::int64_t amount, std::string_view key) {
  check_text(account, "account id", max_id_bytes);
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  Measure measure(Measure::Kind::withdrawal);
  return measure(impl_->apply({"withdrawal", std::string(account), std::nullopt, amount, std::string(key)}));
}

namespace {
void check_leg(std::string_view account, std::int64_t amount, std::string_view key, std::string_view global_txid) {
  check_text(account, "account id", max_id_bytes);
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  detail::check_gid(global_txid);
}
}  // namespace

TransferResult Ledger::deposit(Transaction& tx, std::string_view account, std::int64_t amount, std::string_view key,
                               std::string_view global_txid) {
  check_leg(account, amount, key, global_txid);
  Measure measure(Measure::Kind::deposit);
  return measure(impl_->apply_in(
      tx, {"deposit", std::nullopt, std::string(account), amount, std::string(key), 0, std::string(global_txid)}));
}

TransferResult Ledger::withdraw(Transaction& tx, std::string_view account, std::int64_t amount, std::string_view key,
                                std::string_view global_txid) {
  check_leg(account, amount, key, global_txid);
  Measure measure(Measure::Kind::withdrawal);
  return measure(impl_->apply_in(
      tx, {"withdrawal", std::string(account), std::nullopt, amount, std::string(key), 0, std::string(global_txid)}));
}

namespace {
// The arguments of a transfer as a keyed request; Error(invalid_argument) for a bad one.
Request transfer_request(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key) {
  check_text(from, "source account id", max_id_bytes);
  check_text(to, "destination account id", max_id_bytes);
  if (from == to) throw Error(ErrorKind::invalid_argument, fmt::format("a transfer from '{}' to itself", from));
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  return {"transfer", std::string(from), std::string(to), amount, std::string(key)};
}
}  // namespace

TransferResult Ledger::transfer(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key) {
  const Request request = transfer_request(from, to, amount, key);
  Measure measure(Measure::Kind::transfer);
  return measure(impl_->apply(request));
}

TransferResult Ledger::transfer(Transaction& tx, std::string_view from, std::string_view to, std::int64_t amount,
                                std::string_view key) {
  const Request request = transfer_request(from, to, amount, key);
  Measure measure(Measure::Kind::transfer);
  auto& impl = *impl_;
  if (!impl.transfers_sql.one_statement_transfer.empty())
    if (auto r = impl.transfer_in_one_statement(tx, request)) return measure(*r);
  return measure(impl.apply_in(tx, request));
}

TransferResult Ledger::transfer_or_throw(std::string_view from, std::string_view to, std::int64_t amount,
                                         std::string_view key) {
  const TransferResult r = transfer(from, to, amount, key);
  if (!r.ok())
    throw Error(
        ErrorKind::insufficient_funds,
        fmt::format("'{}' cannot pay {} without going below its minimum (transfer {})", from, amount, r.transfer_id));
  return r;
}

namespace {
// Throws what the item's own fields are refused for (before anything is sent).
// The item as a transfer request; throws what a transfer() with its fields is refused for.
Request item_request(const BatchItem& item) { return transfer_request(item.from, item.to, item.amount, item.key); }

bool retried_whole(const Error& e) {
  return e.kind() == ErrorKind::conflict || e.kind() == ErrorKind::transient || e.kind() == ErrorKind::in_doubt;
}

// The last index of the chain that starts at `start` (a chain is linked items and the unlinked one
// that ends it).
std::size_t chain_end(const std::vector<BatchItem>& items, std::size_t start) {
  std::size_t end = start;
  while (items[end].linked) ++end;
  return end;
}

// A chain failed at item `failed`: its other items get that error too (nothing of the chain was written).
void fail_chain(std::vector<BatchResult>& results, std::size_t start, std::size_t end, std::size_t failed) {
  for (std::size_t i = start; i <= end; ++i) {
    if (i == failed) continue;
    results[i].result = TransferResult{};
    results[i].error = results[failed].error;
    results[i].message = fmt::format("not applied: item {} of its linked chain failed", failed);
  }
}
}  // namespace

std::size_t Ledger::Impl::batch_chain_on_client(Transaction& tx, const std::vector<BatchItem>& items, std::size_t start,
                                                std::vector<BatchResult>& results) {
  const std::size_t end = chain_end(items, start);
  // A standalone item that fails has written nothing (the one-statement transfer refuses rather
  // than raises; apply_in checks before its first write), so only chains need a savepoint: one
  // round trip per standalone item on PostgreSQL, and on SQLite no copy of every page it changes.
  const bool one_statement = !transfers_sql.one_statement_transfer.empty();
  const bool savepoint = start != end;
  if (savepoint) tx.exec(transfers_sql.chain_savepoint);
  std::optional<std::size_t> failed;
  for (std::size_t i = start; i <= end && !failed; ++i) {
    const BatchItem& item = items[i];
    try {
      const Request request = item_request(item);
      std::optional<TransferResult> decided;
      if (one_statement) decided = transfer_in_one_statement(tx, request);
      results[i].result = decided ? *decided : apply_in(tx, request);
      // In a chain, a rejection fails the chain; alone, it is the item's recorded outcome.
      if (start != end && !results[i].result.ok())
        throw Error(ErrorKind::insufficient_funds, fmt::format("'{}' cannot pay {}", item.from, item.amount));
    } catch (const Error& e) {
      if (retried_whole(e)) throw;                     // the whole batch is retried
      if (!savepoint && !e.sqlstate().empty()) throw;  // the server aborted the transaction: no item commits
      results[i].error = e.kind();
      results[i].message = e.what();
      failed = i;
    }
  }
  if (failed && savepoint) {
    tx.exec(transfers_sql.chain_rollback);
    fail_chain(results, start, end, *failed);
  }
  if (savepoint) tx.exec(transfers_sql.chain_release);
  return end + 1;
}

std::size_t Ledger::Impl::batch_on_server(Transaction& tx, const std::vector<BatchItem>& items, std::size_t first,
                                          std::vector<BatchResult>& results) {
  // Columns of a batch row after the transfer's (TransferStatements::batch).
  constexpr std::size_t item_col = detail::key_record_columns + 6, failed_col = item_col + 1,
                        stopped_col = item_col + 2, sqlstate_col = item_col + 3, message_col = item_col + 4;
  const std::size_t n = items.size() - first;
  std::vector<std::optional<Error>> refused(n);
  std::vector<std::optional<std::string>> from(n), to(n), amount(n), key(n), linked(n), cache_a(n), cache_b(n);
  std::vector<std::string> cached;  // the cache keys this batch may drop, forgotten locally on commit
  for (std::size_t k = 0; k < n; ++k) {
    const BatchItem& item = items[first + k];
    linked[k] = item.linked ? "t" : "f";
    std::optional<Request> request;
    try {
      request = item_request(item);
    } catch (const Error& e) {
      refused[k] = e;  // sent with a NULL key: it fails its chain without running
      continue;
    }
    from[k] = item.from, to[k] = item.to, amount[k] = std::to_string(item.amount), key[k] = item.key;
    const std::vector<Value> p = one_statement_params(*request);
    if (options.cache) {
      cache_a[k] = std::get<std::string>(p[4]), cache_b[k] = std::get<std::string>(p[5]);
      cached.push_back(*cache_a[k]), cached.push_back(*cache_b[k]);
    }
  }
  const Result rows =
      tx.exec(transfers_sql.batch, {detail::array_param(from), detail::array_param(to), detail::array_param(amount),
                                    detail::array_param(key), detail::array_param(linked), detail::array_param(cache_a),
                                    detail::array_param(cache_b)});
  if (!cached.empty())
    tx.on_commit([cache = options.cache, cached = std::move(cached)] {
      for (const auto& k : cached) cache->forget_local(k);
    });
  auto broken = [](const std::string& what) {
    return Error(ErrorKind::permanent, "the batch function's rows do not match its items: " + what);
  };
  std::size_t r = 0;
  std::size_t start = first;
  while (start < items.size()) {
    const std::size_t end = chain_end(items, start);
    if (r == rows.rows.size()) throw broken(fmt::format("no row for item {}", start));
    if (rows.rows[r].i64(stopped_col) == 1) {  // the client decides this chain
      if (static_cast<std::size_t>(rows.rows[r].i64(item_col)) + first != start || r + 1 != rows.rows.size())
        throw broken("a stop mid-chain");
      return start;
    }
    std::optional<std::size_t> failed;
    for (std::size_t i = start; i <= end && !failed; ++i, ++r) {
      if (r == rows.rows.size()) throw broken(fmt::format("no row for item {}", i));
      const Row& row = rows.rows[r];
      if (static_cast<std::size_t>(row.i64(item_col)) + first != i)
        throw broken(fmt::format("item {} out of order", i));
      const BatchItem& item = items[i];
      try {
        if (refused[i - first]) throw *refused[i - first];
        if (!row.is_null(sqlstate_col))
          throw Error(ErrorKind::permanent, fmt::format("postgres: ERROR:  {}", row.text(message_col)),
                      row.text(sqlstate_col));
        const auto decided = one_statement_outcome(row, item_request(item));
        if (!decided) throw broken(fmt::format("item {} went on without the client", i));
        results[i].result = *decided;
        // In a chain, a rejection fails the chain; alone, it is the item's recorded outcome.
        if (start != end && !decided->ok())
          throw Error(ErrorKind::insufficient_funds, fmt::format("'{}' cannot pay {}", item.from, item.amount));
      } catch (const Error& e) {
        if (retried_whole(e)) throw;
        results[i].error = e.kind();
        results[i].message = e.what();
        failed = i;
      }
      // The server undid a chain exactly when this judgement fails it: otherwise the results
      // would not say what was written.
      if (start != end && failed.has_value() != (row.i64(failed_col) == 1))
        throw broken(fmt::format("item {} judged {} by the server", i, failed ? "applied" : "failed"));
    }
    if (failed && start != end) fail_chain(results, start, end, *failed);
    start = end + 1;
  }
  if (r != rows.rows.size()) throw broken("rows after the last item");
  return items.size();
}

std::vector<BatchResult> Ledger::transfer_batch(const std::vector<BatchItem>& items) {
  if (items.empty() || items.size() > max_batch_items)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("a batch needs 1 to {} items, got {}", max_batch_items, items.size()));
  if (items.back().linked)
    throw Error(ErrorKind::invalid_argument,
                "the last batch item is linked to nothing (a chain ends with an unlinked item)");
  Measure measure(Measure::Kind::batch);
  std::vector<BatchResult> results;
  auto& impl = *impl_;
  impl.retrying([&] {
    results.assign(items.size(), BatchResult{});
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    // PostgreSQL: the items go in one call of the batch function, which stops only at a chain the
    // client must decide (a source short while it holds holds); that chain runs here, then the
    // rest goes to the function again. Elsewhere every chain runs here.
    std::size_t start = 0;
    while (start < items.size()) {
      if (!impl.transfers_sql.batch.empty()) start = impl.batch_on_server(tx, items, start, results);
      if (start < items.size()) start = impl.batch_chain_on_client(tx, items, start, results);
    }
    tx.commit();
    return 0;
  });
  for (const auto& r : results)
    if (!r.error && !r.result.replayed)
      impl.count([&](LedgerStats& st) { ++(r.result.ok() ? st.transfers_ok : st.transfers_rejected); });
  return measure(std::move(results));
}

TransferResult Ledger::reverse(std::string_view original_key, std::int64_t amount, std::string_view key) {
  check_text(original_key, "original idempotency key", max_key_bytes);
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  auto& impl = *impl_;
  Measure measure(Measure::Kind::reversal);
  TransferResult result = impl.retrying([&] {
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    const Result original = tx.exec(impl.transfers_sql.lock_original, {std::string(original_key)});
    if (original.empty())
      throw Error(ErrorKind::not_found, fmt::format("no applied transfer has the key '{}'", original_key));
    const Row& o = original.rows[0];
    Request request{"reversal", o.text(2), o.text(1), amount, std::string(key), o.i64(0)};
    if (auto earlier = impl.replay(tx, request)) {
      impl.count([](LedgerStats& st) { ++st.replays; });
      return *earlier;
    }
    const std::int64_t refunded = tx.exec(impl.transfers_sql.refunded, {o.i64(0)}).one().i64(0);
    const auto total = checked_add(refunded, amount);
    if (!total || *total > o.i64(3))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("refunds of transfer '{}' would reach {} of its {} ({} refunded already)", original_key,
                              total ? *total : refunded, o.i64(3), refunded));
    TransferResult r = impl.apply_in(tx, request);
    tx.commit();
    return r;
  });
  if (!result.replayed) impl.count([&](LedgerStats& st) { ++(result.ok() ? st.transfers_ok : st.transfers_rejected); });
  return measure(result);
}

Account Ledger::update(std::string_view id, const std::function<void(Account&)>& fn) {
  check_text(id, "account id", max_id_bytes);
  if (!fn) throw Error(ErrorKind::invalid_argument, "update needs a function");
  auto& impl = *impl_;
  Measure measure(Measure::Kind::update);
  return measure(detail::with_retries(
      impl.options.retry, detail::RetryIn::conflicts,
      [&] {
        const auto found = impl.read(id);
        if (!found) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", id));
        const Account& read = *found;
        Account want = read;
        fn(want);
        if (want.id != read.id || want.currency != read.currency || want.balance != read.balance ||
            want.version != read.version || want.held != read.held)
          throw Error(ErrorKind::invalid_argument,
                      "update may change min_balance only; balances move through transfers");
        if (want.min_balance > 0 || want.min_balance > want.available())
          throw Error(ErrorKind::invalid_argument,
                      fmt::format("min_balance {} must be <= 0 and <= the available amount {}", want.min_balance,
                                  want.available()));
        Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
        // Holds past their timeout still count in accounts.held, which the table's CHECK compares
        // with min_balance: close them first.
        const Result locked = tx.exec(impl.transfers_sql.lock_one, {read.id});
        if (!locked.empty() && locked.rows[0].i64(4) > 0) impl.release_expired(tx, read.id);
        if (tx.exec(impl.transfers_sql.update, {read.id, read.version, want.min_balance}).affected != 1)
          throw Error(ErrorKind::conflict,
                      fmt::format("account '{}' changed since version {} was read", read.id, read.version));
        impl.invalidate(tx, read.id);
        tx.commit();
        want.version = read.version + 1;
        return want;
      },
      [&](const Error&) {
        impl.count([](LedgerStats& st) { ++st.conflicts, ++st.retries; });
        detail::instruments::ledger().conflicts.add();
        detail::instruments::ledger().retries.add();
      }));
}

std::int64_t Ledger::prune_keys(std::chrono::milliseconds older_than) {
  if (older_than < min_key_age)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("prune age must be at least {}h: a client may still retry a younger key, and its retry "
                            "would then apply a second time (got {}ms)",
                            min_key_age.count(), older_than.count()));
  auto session = impl_->backend->borrow();
  return (*session)->exec(impl_->transfers_sql.prune, {static_cast<std::int64_t>(-older_than.count())}).affected;
}

CheckReport Ledger::check() {
  const detail::CheckStatements& sql = impl_->check_sql;
  // Read-only, so a lost connection or a lost COMMIT reply is simply read again.
  return detail::with_retries(
      impl_->options.retry, detail::RetryIn::conflicts_and_in_doubt,
      [&] {
        CheckReport report;
        // One snapshot for every query: REPEATABLE READ on PostgreSQL, a read transaction on SQLite.
        Transaction tx =
            detail::DatabaseGate::begin(*impl_->backend, TxOptions{Isolation::repeatable_read, TxAccess::read_only});
        for (const auto& r : tx.exec(sql.balance_mismatch).rows)
          report.violations.push_back({"balance_mismatch", r.text(0),
                                       fmt::format("balance {} but its opening balance {} plus its entries {} differ",
                                                   r.i64(1), r.i64(2), r.i64(3))});
        for (const auto& r : tx.exec(sql.opening_mismatch).rows)
          report.violations.push_back(
              {"opening_mismatch", r.text(0),
               fmt::format("opening balance {} of {} entries but its archived entries add up to {} in {}", r.i64(3),
                           r.i64(4), r.i64(1), r.i64(2))});
        for (const auto& r : tx.exec(sql.below_minimum).rows)
          report.violations.push_back(
              {"below_minimum", r.text(0),
               fmt::format("balance {} minus held {} is below its minimum {}", r.i64(1), r.i64(2), r.i64(3))});
        for (const auto& r : tx.exec(sql.held_mismatch).rows)
          report.violations.push_back(
              {"held_mismatch", r.text(0), fmt::format("held {} but its open holds add up to {}", r.i64(1), r.i64(2))});
        for (const auto& r : tx.exec(sql.capture_mismatch).rows)
          report.violations.push_back(
              {"capture_mismatch", "", fmt::format("captured hold {} has no matching transfer", r.i64(0))});
        for (const auto& r : tx.exec(sql.unbalanced_transfer).rows)
          report.violations.push_back(
              {"unbalanced_transfer", "", fmt::format("transfer {} entries do not add up to 0", r.i64(0))});
        for (const auto& r : tx.exec(sql.rejected_with_entries).rows)
          report.violations.push_back(
              {"rejected_with_entries", "", fmt::format("rejected transfer {} has entries", r.i64(0))});
        for (const auto& r : tx.exec(sql.totals).rows) {
          const CurrencyTotal& total =
              report.totals.emplace_back(CurrencyTotal{r.text(0), r.i64(1), r.i64(2), r.i64(3)});
          const auto expected = checked_sub(total.deposits, total.withdrawals);
          if (!expected || *expected != total.balance)
            report.violations.push_back(
                {"total_mismatch", "",
                 fmt::format("{}: balances add up to {}, deposits {} minus withdrawals {}", total.currency,
                             total.balance, total.deposits, total.withdrawals)});
        }
        if (report.totals.size() == 1) report.total_balance = report.totals[0].balance;
        report.accounts = tx.exec(sql.accounts).one().i64(0);
        report.entries = tx.exec(sql.entries).one().i64(0);
        tx.commit();
        return report;
      },
      [](const Error&) {});
}

CurrencyTotal CheckReport::total(std::string_view currency) const {
  for (const auto& t : totals)
    if (t.currency == currency) return t;
  return CurrencyTotal{std::string(currency)};
}

LedgerStats Ledger::stats() const {
  std::lock_guard lock(impl_->stats_mutex);
  return impl_->stats;
}

}  // namespace rowguard

// Model-based test: random sequences of ledger, hold, lock and cache operations run against the real
// backend and against a small in-memory model of what the docs promise, compared after every step.
#include <map>
#include <optional>
#include <random>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {

struct Model {
  struct Recorded {
    std::string kind, from, to;
    std::int64_t amount;
    TransferStatus status;
  };
  std::map<std::string, std::int64_t> balances;  // opened accounts
  std::map<std::string, Recorded> keys;
  struct LockRow {
    std::int64_t token = 0;             // the last token handed out (or raised by force-release)
    std::optional<std::string> holder;  // who holds it now
    std::string last_owner;             // who held it last (kept after a release)
  };
  std::map<std::string, LockRow> locks;
  std::map<std::string, std::string> cache;
  struct HoldRow {
    std::string from, to, key;
    std::int64_t amount = 0, captured = 0;
    HoldState state = HoldState::held;
  };
  std::map<std::int64_t, HoldRow> holds;         // by hold id
  std::map<std::string, std::int64_t> hold_keys;  // hold key -> id
  std::int64_t held(const std::string& account) const {
    std::int64_t sum = 0;
    for (const auto& [id, h] : holds)
      if (h.from == account && h.state == HoldState::held) sum += h.amount;
    return sum;
  }
};

// The outcome of one money movement, or the kind of the error it raised.
struct Outcome {
  std::optional<ErrorKind> error;
  TransferStatus status = TransferStatus::ok;
  bool replayed = false;
  bool operator==(const Outcome& o) const {
    return error == o.error && (error || (status == o.status && replayed == o.replayed));
  }
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  if (o.error) return os << "error " << to_string(*o.error);
  return os << to_string(o.status) << (o.replayed ? " (replayed)" : "");
}

template <class F>
Outcome outcome_of(F&& f) {
  try {
    const TransferResult r = f();
    return {std::nullopt, r.status, r.replayed};
  } catch (const Error& e) {
    return {e.kind()};
  }
}

// What the model says a movement of `amount` does. from/to empty: the outside world.
Outcome expect_movement(Model& m, const std::string& kind, const std::string& from, const std::string& to,
                        std::int64_t amount, const std::string& key) {
  if (const auto seen = m.keys.find(key); seen != m.keys.end()) {
    const auto& r = seen->second;
    if (r.kind != kind || r.from != from || r.to != to || r.amount != amount)
      return {ErrorKind::idempotency_mismatch};
    return {std::nullopt, r.status, true};
  }
  if ((!from.empty() && !m.balances.count(from)) || (!to.empty() && !m.balances.count(to)))
    return {ErrorKind::not_found};
  const bool enough = from.empty() || m.balances[from] - m.held(from) >= amount;  // the available amount; min 0
  if (enough) {
    if (!from.empty()) m.balances[from] -= amount;
    if (!to.empty()) m.balances[to] += amount;
  }
  const TransferStatus status = enough ? TransferStatus::ok : TransferStatus::insufficient_funds;
  m.keys[key] = {kind, from, to, amount, status};
  return {std::nullopt, status, false};
}

}  // namespace

TEST_CASE("model: random ledger, hold, lock and cache operations agree with the model at every step", "[backend]") {
  TestDb t;
  t.db().migrate();
  Ledger ledger(t.db());
  Locks locks(t.db());
  Cache cache(t.db());
  Model m;
  const std::vector<std::string> accounts{"m0", "m1", "m2", "m3"}, owners{"owner-a", "owner-b"},
      lock_names{"L0", "L1"}, cache_keys{"c0", "c1", "c2"};
  std::mt19937 rng(20261122);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  auto key = [&] { return fmt::format("key{}", rng() % 40); };  // a small pool: keys are often reused
  constexpr int steps = 800;
  for (int step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 15);
    INFO("step " << step << ", operation " << op);
    switch (op) {
      case 0: {  // open
        const std::string id = pick(accounts);
        const bool exists = m.balances.count(id) > 0;
        const auto kind = [&]() -> std::optional<ErrorKind> {
          try {
            ledger.open(id, "EUR");
            return std::nullopt;
          } catch (const Error& e) {
            return e.kind();
          }
        }();
        CHECK(kind == (exists ? std::optional(ErrorKind::permanent) : std::nullopt));
        m.balances.emplace(id, 0);
        break;
      }
      case 1:
      case 2: {  // deposit
        const std::string id = pick(accounts), k = key();
        const std::int64_t amount = 1 + rng() % 500;
        const Outcome want = expect_movement(m, "deposit", "", id, amount, k);
        CHECK(outcome_of([&] { return ledger.deposit(id, amount, k); }) == want);
        break;
      }
      case 3: {  // withdraw
        const std::string id = pick(accounts), k = key();
        const std::int64_t amount = 1 + rng() % 500;
        const Outcome want = expect_movement(m, "withdrawal", id, "", amount, k);
        CHECK(outcome_of([&] { return ledger.withdraw(id, amount, k); }) == want);
        break;
      }
      case 4:
      case 5: {  // transfer between two different accounts
        const std::string from = pick(accounts);
        std::string to = pick(accounts);
        while (to == from) to = pick(accounts);
        const std::string k = key();
        const std::int64_t amount = 1 + rng() % 700;
        const Outcome want = expect_movement(m, "transfer", from, to, amount, k);
        CHECK(outcome_of([&] { return ledger.transfer(from, to, amount, k); }) == want);
        break;
      }
      case 6: {  // read every open account's balance
        for (const auto& [id, balance] : m.balances) {
          const Account a = ledger.get(id);
          CHECK(a.balance == balance);
          CHECK(a.held == m.held(id));
        }
        break;
      }
      case 12: {  // hold (keys from their own small pool; holds never expire here: 1 h)
        const std::string from = pick(accounts);
        std::string to = pick(accounts);
        while (to == from) to = pick(accounts);
        const std::string k = fmt::format("hold{}", rng() % 20);
        const std::int64_t amount = 1 + rng() % 400;
        Outcome want;
        if (const auto seen = m.hold_keys.find(k); seen != m.hold_keys.end()) {
          const auto& h = m.holds[seen->second];
          if (h.from != from || h.to != to || h.amount != amount)
            want = {ErrorKind::idempotency_mismatch};
          else
            want = {std::nullopt, h.state == HoldState::rejected ? TransferStatus::insufficient_funds : TransferStatus::ok, true};
        } else if (!m.balances.count(from) || !m.balances.count(to)) {
          want = {ErrorKind::not_found};
        } else {
          const bool enough = m.balances[from] - m.held(from) >= amount;
          want = {std::nullopt, enough ? TransferStatus::ok : TransferStatus::insufficient_funds, false};
        }
        HoldResult got;
        const Outcome real = [&]() -> Outcome {
          try {
            got = ledger.hold(from, to, amount, k, 1h);
            return {std::nullopt, got.status, got.replayed};
          } catch (const Error& e) {
            return {e.kind()};
          }
        }();
        CHECK(real == want);
        if (!want.error && !want.replayed && !real.error) {
          m.holds[got.hold_id] = {from, to, k, amount, 0,
                                  want.status == TransferStatus::ok ? HoldState::held : HoldState::rejected};
          m.hold_keys[k] = got.hold_id;
        }
        break;
      }
      case 13: {  // capture all or part of a known hold (or of one that does not exist)
        if (m.holds.empty()) break;
        auto it = m.holds.begin();
        std::advance(it, rng() % m.holds.size());
        const std::int64_t id = rng() % 8 == 0 ? 999'999 : it->first;
        auto& h = it->second;
        const std::optional<std::int64_t> take =
            rng() % 2 ? std::nullopt : std::optional<std::int64_t>(1 + static_cast<std::int64_t>(rng() % (h.amount + 50)));
        const std::int64_t amount = take.value_or(h.amount);
        Outcome want;
        if (id != it->first || h.state == HoldState::rejected) want = {ErrorKind::not_found};
        else if (amount > h.amount) want = {ErrorKind::invalid_argument};
        else if (h.state == HoldState::captured)
          want = amount == h.captured ? Outcome{std::nullopt, TransferStatus::ok, true} : Outcome{ErrorKind::idempotency_mismatch};
        else if (h.state == HoldState::voided) want = {ErrorKind::hold_closed};
        else want = {std::nullopt, TransferStatus::ok, false};
        CHECK(outcome_of([&] { return ledger.capture(id, take); }) == want);
        if (!want.error && !want.replayed) {
          m.balances[h.from] -= amount;
          m.balances[h.to] += amount;
          h.state = HoldState::captured;
          h.captured = amount;
        }
        break;
      }
      case 14: {  // void a known hold
        if (m.holds.empty()) break;
        auto it = m.holds.begin();
        std::advance(it, rng() % m.holds.size());
        auto& h = it->second;
        std::optional<ErrorKind> want;
        if (h.state == HoldState::rejected) want = ErrorKind::not_found;
        else if (h.state == HoldState::captured) want = ErrorKind::hold_closed;
        std::optional<HoldState> state;
        const auto kind = [&]() -> std::optional<ErrorKind> {
          try {
            state = ledger.void_hold(it->first).state;
            return std::nullopt;
          } catch (const Error& e) {
            return e.kind();
          }
        }();
        CHECK(kind == want);
        if (!want) CHECK(state == HoldState::voided);
        if (!want) h.state = HoldState::voided;
        break;
      }
      case 7: {  // try_acquire by one of two owners
        const std::string name = pick(lock_names), owner = pick(owners);
        auto& row = m.locks[name];
        auto lease = locks.try_acquire(name, 60s, owner);
        if (row.holder && *row.holder != owner) {
          CHECK_FALSE(lease);
        } else {
          if (!row.holder) {
            ++row.token;
            row.holder = owner;
            row.last_owner = owner;
          }
          REQUIRE(lease);
          CHECK(lease->token() == row.token);
          lease->detach();  // the model decides when it is released
        }
        break;
      }
      case 8: {  // release by an owner with the current or a stale token
        // Succeeds for the holder, and again (a repeated release answers released) for the last
        // holder with the current token; anything else is lock_lost and changes nothing.
        const std::string name = pick(lock_names), owner = pick(owners);
        auto& row = m.locks[name];
        const std::int64_t token = row.token - static_cast<std::int64_t>(rng() % 2);
        const bool mine = row.last_owner == owner && token == row.token && token > 0;
        const auto kind = [&]() -> std::optional<ErrorKind> {
          try {
            locks.release(name, owner, token);
            return std::nullopt;
          } catch (const Error& e) {
            return e.kind();
          }
        }();
        CHECK(kind == (mine ? std::nullopt : std::optional(ErrorKind::lock_lost)));
        if (mine) row.holder.reset();
        break;
      }
      case 9: {  // force-release of a lock that exists: the token moves on, nobody holds it
        const std::string name = pick(lock_names);
        auto& row = m.locks[name];
        if (row.token == 0) break;
        locks.force_release(name, "model test");
        ++row.token;
        row.holder.reset();
        const auto listed = locks.list();
        const auto it = std::find_if(listed.begin(), listed.end(), [&](const LockInfo& l) { return l.name == name; });
        REQUIRE(it != listed.end());
        CHECK(it->token == row.token);
        CHECK_FALSE(it->held);
        break;
      }
      case 10: {  // cache put or invalidate
        const std::string k = pick(cache_keys);
        if (rng() % 3 == 0) {
          cache.invalidate(k);
          m.cache.erase(k);
        } else {
          const std::string v = fmt::format("v{}", rng() % 1000);
          cache.put(k, v, 60s);
          m.cache[k] = v;
        }
        break;
      }
      default: {  // cache get
        const std::string k = pick(cache_keys);
        const auto it = m.cache.find(k);
        CHECK(cache.get(k) == (it == m.cache.end() ? std::nullopt : std::optional(it->second)));
      }
    }
  }
  const CheckReport check = ledger.check();
  CHECK(check.ok());
  std::int64_t total = 0;
  for (const auto& [id, balance] : m.balances) total += balance;
  CHECK(check.total_balance == total);
  CHECK(check.accounts == static_cast<std::int64_t>(m.balances.size()));
}

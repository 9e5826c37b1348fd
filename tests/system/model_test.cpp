// Model-based test: random sequences of ledger, hold, reversal, lock and cache operations, with the
// maintenance operations between them (cache sweep and size eviction, prune-keys, archive, lock
// and hold sweeps) and inside a cache load (an invalidation, a put or a prefix invalidation, then a
// sweep, while the loader runs), against the real backend and a small in-memory model of what the
// docs promise, compared after every step. Time passes for a transfer when the test back-dates it
// by 40 days (as the archive tests do), so that prune-keys and archive have old rows to act on
// with their real floors. Each run draws a seed (printed on failure, ROWGUARD_SEED reruns it);
// ROWGUARD_MODEL_STEPS sets the number of steps (the soak mode runs more). The first divergence
// ends the run: after it the model no longer describes the database. Transfers and holds carry
// TransferDetails (a key's own most of the time, another set now and then, or the same metadata
// spelled otherwise); replays, records and the filtered transfers() queries are checked against them.
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "support/seeded.hpp"
#include "support/support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t day_ms = 86'400'000;

struct Model {
  // A row of <prefix>transfers the model knows (live: not archived), by id.
  struct Transfer {
    std::string kind, from, to;  // from/to empty: the outside world
    std::int64_t amount = 0;
    TransferStatus status = TransferStatus::ok;
    std::optional<std::string> key;        // nullopt once pruned
    std::optional<std::int64_t> reverses;  // a reversal's original
    bool capture = false;                  // a hold's capture (holds keep it live; never aged here)
    bool aged = false;                     // back-dated past the archive cutoff and the prune age
    TransferDetails details;
    // The accounts' balances right after it (applied ones): what its result and its entries carry.
    std::optional<std::int64_t> from_after, to_after;
  };
  std::map<std::int64_t, Transfer> transfers;
  std::map<std::string, std::int64_t> keys;     // live idempotency key -> transfer id
  std::set<std::int64_t> ids_ever;              // every transfer id ever handed out (never reused)
  std::map<std::string, std::string> currency;  // opened accounts
  std::map<std::string, std::int64_t> balances;
  struct LockRow {
    std::int64_t token = 0;             // the last token handed out (or raised by force-release)
    std::optional<std::string> holder;  // who holds it now
    std::string last_owner;             // who held it last (kept after a release)
  };
  std::map<std::string, LockRow> locks;
  // A cached value; maybe_gone: absent is right too, because a size-bounded sweep ran since it was
  // written and may have evicted it (which one goes depends on write times in milliseconds), or its
  // load may have been refused by a sweep cutoff in the millisecond it began.
  struct CacheSlot {
    std::string value;
    bool maybe_gone = false;
  };
  std::map<std::string, CacheSlot> cache;
  struct HoldRow {
    std::string from, to, key;
    std::int64_t amount = 0, captured = 0;
    HoldState state = HoldState::held;
    TransferDetails details;
  };
  std::map<std::int64_t, HoldRow> holds;          // by hold id
  std::map<std::string, std::int64_t> hold_keys;  // hold key -> id
  std::int64_t held(const std::string& account) const {
    std::int64_t sum = 0;
    for (const auto& [id, h] : holds)
      if (h.from == account && h.state == HoldState::held) sum += h.amount;
    return sum;
  }
  std::int64_t refunded(std::int64_t original) const {
    std::int64_t sum = 0;
    for (const auto& [id, t] : transfers)
      if (t.reverses == original && t.status == TransferStatus::ok) sum += t.amount;
    return sum;
  }
  void evictable() {
    for (auto& [k, slot] : cache) slot.maybe_gone = true;
  }
};

// The outcome of one money movement, or the kind of the error it raised.
struct Outcome {
  std::optional<ErrorKind> error;
  TransferStatus status = TransferStatus::ok;
  bool replayed = false;
  std::int64_t id = 0;  // the transfer's id; compared on replays only (a new one is checked apart)
  // The result's balances; compared when the expected side knows them (with_balances).
  std::optional<std::int64_t> from_balance{}, to_balance{};
  bool balances_known = false;
  bool operator==(const Outcome& o) const {
    const bool balances =
        !(balances_known || o.balances_known) || (from_balance == o.from_balance && to_balance == o.to_balance);
    return error == o.error &&
           (error || (status == o.status && replayed == o.replayed && (!replayed || id == o.id) && balances));
  }
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  if (o.error) return os << "error " << to_string(*o.error);
  auto shown = [](const std::optional<std::int64_t>& b) { return b ? std::to_string(*b) : std::string("none"); };
  return os << to_string(o.status) << (o.replayed ? fmt::format(" (replayed transfer {})", o.id) : "")
            << fmt::format(" balances {} -> {}", shown(o.from_balance), shown(o.to_balance));
}

// A cached value as Catch2 prints it: "none" or the value in quotes.
std::string shown(const std::optional<std::string>& v) { return v ? "'" + *v + "'" : "none"; }

template <class F>
Outcome outcome_of(F&& f) {
  try {
    const TransferResult r = f();
    return {std::nullopt, r.status, r.replayed, r.transfer_id, r.from_balance, r.to_balance};
  } catch (const Error& e) {
    return {e.kind()};
  }
}

// Metadata as a JSON value (none: null): how the ledger compares it.
nlohmann::json metadata_value(const std::string& text) {
  return text.empty() ? nlohmann::json() : nlohmann::json::parse(text);
}

// The same details as the ledger compares them: metadata as JSON values, the rest exactly.
bool same_details(const TransferDetails& a, const TransferDetails& b) {
  return a.code == b.code && a.reference == b.reference && a.event_at_ms == b.event_at_ms &&
         metadata_value(a.metadata) == metadata_value(b.metadata);
}

std::string shown(const TransferDetails& d) {
  return fmt::format("code {} reference '{}' metadata {} event {}", d.code, d.reference, d.metadata,
                     d.event_at_ms ? std::to_string(*d.event_at_ms) : "none");
}

// What the model says a movement of `amount` does (from/to empty: the outside world), before it is
// made; record() then enters a new transfer under the id the ledger gave it.
// want with the balances its result must carry: a replay's are the original's, a new applied
// transfer's the model's after it, a rejection's none.
Outcome with_balances(Model& m, Outcome want, const std::string& from, const std::string& to, std::int64_t amount) {
  if (want.error) return want;
  want.balances_known = true;
  if (want.replayed) {
    const auto& r = m.transfers.at(want.id);
    want.from_balance = r.from_after;
    want.to_balance = r.to_after;
  } else if (want.status == TransferStatus::ok) {
    if (!from.empty()) want.from_balance = m.balances[from] - amount;
    if (!to.empty()) want.to_balance = m.balances[to] + amount;
  }
  return want;
}

Outcome expect_movement_plain(Model& m, const std::string& kind, const std::string& from, const std::string& to,
                              std::int64_t amount, const std::string& key, const TransferDetails& details) {
  if (const auto seen = m.keys.find(key); seen != m.keys.end()) {
    const auto& r = m.transfers.at(seen->second);
    if (r.kind != kind || r.from != from || r.to != to || r.amount != amount || !same_details(r.details, details))
      return {ErrorKind::idempotency_mismatch};
    return {std::nullopt, r.status, true, seen->second};
  }
  if ((!from.empty() && !m.balances.count(from)) || (!to.empty() && !m.balances.count(to)))
    return {ErrorKind::not_found};
  if (!from.empty() && !to.empty() && m.currency[from] != m.currency[to]) return {ErrorKind::currency_mismatch};
  const bool enough = from.empty() || m.balances[from] - m.held(from) >= amount;  // the available amount; min 0
  return {std::nullopt, enough ? TransferStatus::ok : TransferStatus::insufficient_funds, false};
}

Outcome expect_movement(Model& m, const std::string& kind, const std::string& from, const std::string& to,
                        std::int64_t amount, const std::string& key, const TransferDetails& details) {
  return with_balances(m, expect_movement_plain(m, kind, from, to, amount, key, details), from, to, amount);
}

Model::Transfer request(std::string kind, std::string from, std::string to, std::int64_t amount, std::string key,
                        const TransferDetails& details, std::optional<std::int64_t> reverses = std::nullopt) {
  Model::Transfer t;
  t.details = details;
  t.kind = std::move(kind);
  t.from = std::move(from);
  t.to = std::move(to);
  t.amount = amount;
  t.key = std::move(key);
  t.reverses = reverses;
  return t;
}

// Enters a transfer the ledger just made (want: what the model expected; real: what came back).
void record(Model& m, const Outcome& want, const Outcome& real, Model::Transfer t) {
  if (want.error || want.replayed || real.error || real.replayed) return;
  REQUIRE_FALSE(m.ids_ever.count(real.id));  // a transfer id is never handed out twice
  m.ids_ever.insert(real.id);
  t.status = want.status;
  if (t.status == TransferStatus::ok) {
    if (!t.from.empty()) t.from_after = m.balances[t.from] -= t.amount;
    if (!t.to.empty()) t.to_after = m.balances[t.to] += t.amount;
  }
  if (t.key) m.keys[*t.key] = real.id;
  m.transfers[real.id] = std::move(t);
}

}  // namespace

TEST_CASE(
    "model: random ledger, hold, lock and cache operations, with maintenance between and inside them, agree "
    "with the model at every step",
    "[backend]") {
  const unsigned seed = run_seed();
  INFO(seed_note(seed));
  TestDb t;
  t.db().migrate();
  // The ledger reads accounts through a cache of its own, which the sweeps below sweep too.
  Cache ledger_cache(t.db());
  LedgerOptions ledger_options;
  ledger_options.cache = &ledger_cache;
  ledger_options.cache_ttl = 1h;
  Ledger ledger(t.db(), ledger_options);
  Locks locks(t.db());
  Cache cache(t.db());
  // The maintenance side of the cache: sweeps with no grace and a size bound of two rows.
  CacheOptions sweeping;
  sweeping.sweep_grace = 0ms;
  sweeping.max_rows = 2;
  Cache sweeper(t.db(), sweeping);
  Model m;
  const std::vector<std::string> accounts{"m0", "m1", "m2", "m3", "u0"}, owners{"owner-a", "owner-b"},
      lock_names{"L0", "L1"}, cache_keys{"c0", "c1", "c2"};
  auto currency_of = [](const std::string& id) { return id[0] == 'u' ? "USD" : "EUR"; };
  std::mt19937 rng(seed);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  auto key = [&] { return fmt::format("key{}", rng() % 40); };  // a small pool: keys are often reused
  // The details a request with key k attaches: the key's own (so that a reused key usually
  // replays), and one time in eight another code, reference or event time (a mismatch), or the same
  // metadata spelled otherwise (a replay all the same).
  auto details_for = [&](const std::string& k) {
    std::uint32_t h = 2166136261u;  // FNV-1a: the same on every platform, so a seed reruns alike
    for (const char c : k) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
    TransferDetails d;
    d.code = static_cast<int>(h % 3);
    if (h % 2) d.reference = "ref-" + k;
    if (h % 5 != 0) d.metadata = fmt::format(R"({{"key":"{}","n":{}}})", k, h % 4);
    if (h % 7 == 0) d.event_at_ms = 1'000'000 + h % 1000;
    switch (rng() % 8) {
      case 0:
        d.code = (d.code + 1) % 3;
        break;
      case 1:
        d.reference = d.reference.empty() ? "other" : "";
        break;
      case 2:
        d.metadata = d.metadata.empty() ? "{}" : fmt::format(R"({{ "n" : {}.0, "key" : "{}" }})", h % 4, k);
        break;
      case 3:
        d.event_at_ms = d.event_at_ms ? std::nullopt : std::optional<std::int64_t>(5);
        break;
      default:
        break;
    }
    return d;
  };
  // The record of a transfer the ledger answered with holds the model's details.
  auto check_recorded = [&](const Outcome& real) {
    if (real.error) return;
    const auto it = m.transfers.find(real.id);
    if (it == m.transfers.end()) return;
    const TransferRecord got = ledger.find_transfer(real.id);
    INFO("transfer " << real.id << ": " << shown(got.details) << " against " << shown(it->second.details));
    REQUIRE(same_details(got.details, it->second.details));
    // Each entry records its account's balance after it, as the model has it.
    for (const auto& e : got.entries) {
      INFO("entry " << e.id << " of " << e.account);
      REQUIRE(e.balance_after == (e.amount < 0 ? it->second.from_after : it->second.to_after));
      REQUIRE(e.account_version.has_value());
    }
  };
  const std::string transfers_table = t.db().table_prefix() + "transfers";
  const std::string entries_table = t.db().table_prefix() + "entries";
  const std::string back_date = dialect_of(t.db()).timestamp_plus_ms("created_at", "$1");
  auto db_now_ms = [&] { return t.db().exec("SELECT " + dialect_of(t.db()).now_ms()).one().i64(0); };
  // Every open account's balance and hold, and each currency's total, as the model has them.
  auto compare_accounts = [&] {
    std::map<std::string, std::int64_t> totals, model_totals;
    for (const auto& a : ledger.list()) totals[a.currency] += a.balance;
    for (const auto& [id, balance] : m.balances) {
      model_totals[m.currency[id]] += balance;
      const Account a = ledger.get(id);
      REQUIRE(a.balance == balance);
      REQUIRE(a.held == m.held(id));
    }
    REQUIRE(totals == model_totals);
  };
  const long steps = env_count("ROWGUARD_MODEL_STEPS", 2000);
  // For triage: operations to leave out ("16,23"), to look past a known divergence.
  std::set<int> skipped;
  if (const char* s = std::getenv("ROWGUARD_MODEL_SKIP_OPS"))
    for (const char* p = s; *p;) {
      char* end = nullptr;
      skipped.insert(static_cast<int>(std::strtol(p, &end, 10)));
      p = *end ? end + 1 : end;
    }
  for (long step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 25);
    if (skipped.count(op)) continue;
    INFO("step " << step << ", operation " << op);
    switch (op) {
      case 0: {  // open
        const std::string id = pick(accounts);
        const bool exists = m.balances.count(id) > 0;
        // Opening again with the same currency and minimum is fine (false); with another currency it
        // is the idempotency_mismatch of a key reused with other parameters, and changes nothing.
        REQUIRE(ledger.open(id, currency_of(id)) == !exists);
        if (exists) {
          const std::string other = std::string(currency_of(id)) == "EUR" ? "USD" : "EUR";
          REQUIRE(kind_of([&] { ledger.open(id, other); }) == ErrorKind::idempotency_mismatch);
        }
        m.balances.emplace(id, 0);
        m.currency.emplace(id, currency_of(id));
        break;
      }
      case 1:
      case 2: {  // deposit
        const std::string id = pick(accounts), k = key();
        const std::int64_t amount = 1 + rng() % 500;
        const TransferDetails d = details_for(k);
        const Outcome want = expect_movement(m, "deposit", "", id, amount, k, d);
        const Outcome real = outcome_of([&] { return ledger.deposit(id, amount, k, d); });
        REQUIRE(real == want);
        record(m, want, real, request("deposit", "", id, amount, k, d));
        check_recorded(real);
        break;
      }
      case 3: {  // withdraw
        const std::string id = pick(accounts), k = key();
        const std::int64_t amount = 1 + rng() % 500;
        const TransferDetails d = details_for(k);
        const Outcome want = expect_movement(m, "withdrawal", id, "", amount, k, d);
        const Outcome real = outcome_of([&] { return ledger.withdraw(id, amount, k, d); });
        REQUIRE(real == want);
        record(m, want, real, request("withdrawal", id, "", amount, k, d));
        check_recorded(real);
        break;
      }
      case 4:
      case 5: {  // transfer between two different accounts
        const std::string from = pick(accounts);
        std::string to = pick(accounts);
        while (to == from) to = pick(accounts);
        const std::string k = key();
        const std::int64_t amount = 1 + rng() % 700;
        const TransferDetails d = details_for(k);
        const Outcome want = expect_movement(m, "transfer", from, to, amount, k, d);
        const Outcome real = outcome_of([&] { return ledger.transfer(from, to, amount, k, d); });
        REQUIRE(real == want);
        record(m, want, real, request("transfer", from, to, amount, k, d));
        check_recorded(real);
        break;
      }
      case 6:  // read every open account's balance
        compare_accounts();
        break;
      case 12: {  // hold (keys from their own small pool; holds never expire here: 1 h)
        const std::string from = pick(accounts);
        std::string to = pick(accounts);
        while (to == from) to = pick(accounts);
        const std::string k = fmt::format("hold{}", rng() % 20);
        const std::int64_t amount = 1 + rng() % 400;
        const TransferDetails d = details_for(k);
        Outcome want;
        if (const auto seen = m.hold_keys.find(k); seen != m.hold_keys.end()) {
          const auto& h = m.holds[seen->second];
          if (h.from != from || h.to != to || h.amount != amount || !same_details(h.details, d))
            want = {ErrorKind::idempotency_mismatch};
          else
            want = {std::nullopt,
                    h.state == HoldState::rejected ? TransferStatus::insufficient_funds : TransferStatus::ok, true};
        } else if (!m.balances.count(from) || !m.balances.count(to)) {
          want = {ErrorKind::not_found};
        } else if (m.currency[from] != m.currency[to]) {
          want = {ErrorKind::currency_mismatch};
        } else {
          const bool enough = m.balances[from] - m.held(from) >= amount;
          want = {std::nullopt, enough ? TransferStatus::ok : TransferStatus::insufficient_funds, false};
        }
        HoldResult got;
        const Outcome real = [&]() -> Outcome {
          try {
            got = ledger.hold(from, to, amount, k, 1h, d);
            return {std::nullopt, got.status, got.replayed};
          } catch (const Error& e) {
            return {e.kind()};
          }
        }();
        REQUIRE(real == want);
        if (!want.error && !want.replayed && !real.error) {
          m.holds[got.hold_id] = {
              from, to, k, amount, 0, want.status == TransferStatus::ok ? HoldState::held : HoldState::rejected, d};
          m.hold_keys[k] = got.hold_id;
        }
        if (!real.error) REQUIRE(same_details(ledger.get_hold(got.hold_id).details, m.holds.at(got.hold_id).details));
        break;
      }
      case 13: {  // capture all or part of a known hold (or of one that does not exist)
        if (m.holds.empty()) break;
        auto it = m.holds.begin();
        std::advance(it, rng() % m.holds.size());
        const std::int64_t id = rng() % 8 == 0 ? 999'999 : it->first;
        auto& h = it->second;
        const std::optional<std::int64_t> take =
            rng() % 2 ? std::nullopt
                      : std::optional<std::int64_t>(1 + static_cast<std::int64_t>(rng() % (h.amount + 50)));
        const std::int64_t amount = take.value_or(h.amount);
        Outcome want;
        const std::string capture_key = fmt::format("hold:{}:capture", id);
        if (id != it->first || h.state == HoldState::rejected)
          want = {ErrorKind::not_found};
        else if (amount > h.amount)
          want = {ErrorKind::invalid_argument};
        else if (h.state == HoldState::captured)
          want = amount == h.captured ? Outcome{std::nullopt, TransferStatus::ok, true, m.keys.at(capture_key)}
                                      : Outcome{ErrorKind::idempotency_mismatch};
        else if (h.state == HoldState::voided)
          want = {ErrorKind::hold_closed};
        else
          want = {std::nullopt, TransferStatus::ok, false};
        want = with_balances(m, want, h.from, h.to, amount);
        const Outcome real = outcome_of([&] { return ledger.capture(id, take); });
        REQUIRE(real == want);
        check_recorded(real);
        if (!want.error && !want.replayed && !real.error) {
          // The capture's transfer carries the hold's details.
          Model::Transfer capture = request("transfer", h.from, h.to, amount, capture_key, h.details);
          capture.capture = true;
          record(m, want, real, std::move(capture));
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
        if (h.state == HoldState::rejected)
          want = ErrorKind::not_found;
        else if (h.state == HoldState::captured)
          want = ErrorKind::hold_closed;
        std::optional<HoldState> state;
        const auto kind = [&]() -> std::optional<ErrorKind> {
          try {
            state = ledger.void_hold(it->first).state;
            return std::nullopt;
          } catch (const Error& e) {
            return e.kind();
          }
        }();
        REQUIRE(kind == want);
        if (!want) REQUIRE(state == HoldState::voided);
        if (!want) h.state = HoldState::voided;
        break;
      }
      case 15: {  // refund part of a keyed transfer (amounts 1..5, so two refunds often look alike)
        std::string original_key = key(), k = key();
        std::int64_t amount = 1 + rng() % 5;
        // Half the time: a refund key used before, with its amount, for a refund of another
        // transfer between the same two accounts if there is one (the request differs only in
        // which transfer it refunds).
        std::vector<std::string> refund_keys;
        for (const auto& [used, id] : m.keys)
          if (m.transfers.at(id).kind == "reversal") refund_keys.push_back(used);
        if (!refund_keys.empty() && rng() % 2) {
          k = refund_keys[rng() % refund_keys.size()];
          const Model::Transfer& earlier = m.transfers.at(m.keys.at(k));
          amount = earlier.amount;
          for (const auto& [used, id] : m.keys) {
            const Model::Transfer& tr = m.transfers.at(id);
            if (tr.kind == "transfer" && tr.status == TransferStatus::ok && tr.from == earlier.to &&
                tr.to == earlier.from && id != earlier.reverses) {
              original_key = used;
              break;
            }
          }
        }
        const TransferDetails d = details_for(k);
        const auto o = m.keys.find(original_key);
        const bool applied = o != m.keys.end() && m.transfers.at(o->second).kind == "transfer" &&
                             m.transfers.at(o->second).status == TransferStatus::ok;
        Outcome want;
        Model::Transfer refund;
        if (!applied) {
          want = {ErrorKind::not_found};
        } else {
          const std::int64_t original = o->second;
          const Model::Transfer& ot = m.transfers.at(original);
          refund = request("reversal", ot.to, ot.from, amount, k, d, original);
          if (const auto seen = m.keys.find(k); seen != m.keys.end()) {
            // Every field of the request: which transfer it refunds too (issue 21, defect 3).
            const auto& r = m.transfers.at(seen->second);
            if (r.kind != "reversal" || r.from != ot.to || r.to != ot.from || r.amount != amount ||
                r.reverses != original || !same_details(r.details, d))
              want = {ErrorKind::idempotency_mismatch};
            else
              want = {std::nullopt, r.status, true, seen->second};
          } else if (m.refunded(original) + amount > ot.amount) {
            want = {ErrorKind::invalid_argument};
          } else {
            want = {
                std::nullopt,
                m.balances[ot.to] - m.held(ot.to) >= amount ? TransferStatus::ok : TransferStatus::insufficient_funds,
                false};
          }
        }
        if (!want.error) want = with_balances(m, want, refund.from, refund.to, amount);
        const Outcome real = outcome_of([&] { return ledger.reverse(original_key, amount, k, d); });
        REQUIRE(real == want);
        record(m, want, real, std::move(refund));
        check_recorded(real);
        break;
      }
      case 16: {  // get_or_load whose loader meets an invalidation, a put, a sweep, or nothing
        // What commits while the loader reads its (by then old) value: 0 nothing, 1 an invalidation,
        // 2 one and a sweep, 3 a prefix invalidation (every key of the model), 4 one and a sweep,
        // 5 a put and a sweep, 6 a sweep. The sweeps delete tombstones at once (no grace), then
        // the least recently written rows past two; one that deleted rows refuses the loads in flight.
        const std::string k = pick(cache_keys);
        const int meddle = static_cast<int>(rng() % 7);
        INFO("load of " << k << ", meddling " << meddle);
        LoadOptions lo;
        lo.scope = rng() % 2 ? LoadScope::all_processes : LoadScope::this_process;
        const std::string loaded = fmt::format("loaded{}-m{}", step, meddle), put = fmt::format("put{}", step);
        bool called = false;
        std::int64_t swept = 0;
        const auto slot = m.cache.find(k);
        const std::optional<std::string> got = cache.get_or_load(
            k, 1h,
            [&]() -> std::optional<std::string> {
              called = true;
              if (meddle == 1 || meddle == 2) cache.invalidate(k);
              if (meddle == 3 || meddle == 4) cache.invalidate_prefix("c");
              if (meddle == 5) cache.put(k, put, 1h);
              if (meddle == 2 || meddle >= 4) swept = sweeper.sweep();
              return loaded;
            },
            lo);
        if (!called) {
          // A hit: only on a value the model has (else the table kept a value it must not have).
          INFO("a hit on " << shown(got));
          REQUIRE(slot != m.cache.end());
          REQUIRE(shown(got) == shown(slot->second.value));
        } else {
          REQUIRE((slot == m.cache.end() || slot->second.maybe_gone));  // a miss only where one may be
          REQUIRE(shown(got) == shown(loaded));                         // the caller gets what it loaded, stored or not
          if (meddle == 2 || meddle >= 4) m.evictable();
          if (meddle == 1 || meddle == 2) m.cache.erase(k);
          if (meddle == 3 || meddle == 4) m.cache.clear();
          // A put overtook the load: the put's value stays, the load's is not stored (and the
          // sweep after the put may have evicted it).
          if (meddle == 5) m.cache[k] = {put, true};
          // Stored after the sweep, unless the sweep deleted rows: it then records its cutoff (now,
          // with no grace), which refuses every load that began before it.
          // Maybe gone even then: a sweep that deleted rows in the millisecond the load began (a
          // maintenance step just before) refuses it too, times being whole milliseconds.
          if (meddle == 0 || (meddle == 6 && swept == 0)) m.cache[k] = {loaded, true};
          if (meddle == 6 && swept > 0) m.cache.erase(k);
        }
        break;
      }
      case 17: {  // cache sweep: tombstones at once, then the least recently written rows past two
        sweeper.sweep(1 + rng() % 3);
        m.evictable();
        break;
      }
      case 18: {  // time passes for one transfer: 40 days, past the archive cutoff and the prune age
        std::vector<std::int64_t> young;
        for (const auto& [id, tr] : m.transfers)
          if (!tr.aged && !tr.capture) young.push_back(id);
        if (young.empty()) break;
        const std::int64_t id = young[rng() % young.size()];
        t.db().exec(fmt::format("UPDATE {} SET created_at = {} WHERE id = $2", transfers_table, back_date),
                    {-40 * day_ms, id});
        t.db().exec(fmt::format("UPDATE {} SET created_at = {} WHERE transfer_id = $2", entries_table, back_date),
                    {-40 * day_ms, id});
        m.transfers[id].aged = true;
        break;
      }
      case 19: {  // prune keys older than 30 days: exactly the aged ones still keyed
        std::int64_t want = 0;
        for (auto& [id, tr] : m.transfers)
          if (tr.aged && tr.key) {
            ++want;
            m.keys.erase(*tr.key);
            tr.key.reset();
          }
        REQUIRE(ledger.prune_keys(std::chrono::hours(24 * 30)) == want);
        break;
      }
      case 20: {  // archive what is older than 31 days: aged transfers whose whole refund group is aged
        std::vector<std::int64_t> moved;
        for (const auto& [id, tr] : m.transfers) {
          if (!tr.aged) continue;
          const std::int64_t original = tr.reverses.value_or(id);
          bool all_aged = m.transfers.at(original).aged && !m.transfers.at(original).capture;
          for (const auto& [other, o] : m.transfers)
            if (o.reverses == original && !o.aged) all_aged = false;
          if (all_aged) moved.push_back(id);
        }
        const ArchiveReport r = ledger.archive(db_now_ms() - 31 * day_ms);
        REQUIRE(r.transfers == static_cast<std::int64_t>(moved.size()));
        for (const std::int64_t id : moved) {
          if (const auto& k = m.transfers[id].key) m.keys.erase(*k);  // forgotten, as with prune-keys
          m.transfers.erase(id);
        }
        compare_accounts();
        break;
      }
      case 21: {  // lock and hold sweeps: nothing here has expired, so neither may change anything
        REQUIRE(locks.sweep(0ms) == 0);
        REQUIRE(ledger.sweep_holds() == 0);
        const auto listed = locks.list();
        for (const auto& [name, row] : m.locks) {
          const auto it = std::find_if(listed.begin(), listed.end(), [&](const LockInfo& l) { return l.name == name; });
          if (row.token == 0) continue;
          REQUIRE(it != listed.end());
          REQUIRE(it->token == row.token);
          REQUIRE(it->held == row.holder.has_value());
          if (row.holder) REQUIRE(it->owner == *row.holder);
        }
        break;
      }
      case 22: {  // ledger check, every account, and each currency's total
        const CheckReport check = ledger.check();
        for (const auto& v : check.violations) UNSCOPED_INFO(v.what << " " << v.account << ": " << v.detail);
        REQUIRE(check.ok());
        compare_accounts();
        break;
      }
      case 23: {  // the archive tables exported and emptied, as docs/operations.md allows
        if (rng() % 3 != 0) break;
        for (const char* table : {"entries_archive", "transfers_archive"})
          t.db().exec(fmt::format("DELETE FROM {}{}", t.db().table_prefix(), table));
        break;
      }
      case 24: {  // transfers() by code, reference or metadata, paged, against the model's live transfers
        TransferQuery q;
        q.limit = 1 + static_cast<int>(rng() % 7);
        std::function<bool(const Model::Transfer&)> match;
        switch (rng() % 3) {
          case 0: {
            const int code = 1 + static_cast<int>(rng() % 2);
            q.code = code;
            match = [code](const Model::Transfer& tr) { return tr.details.code == code; };
            break;
          }
          case 1: {
            const std::string reference = rng() % 8 ? "ref-" + key() : std::string("other");
            q.reference = reference;
            match = [reference](const Model::Transfer& tr) { return tr.details.reference == reference; };
            break;
          }
          default: {
            const int n = static_cast<int>(rng() % 4);
            q.metadata = rng() % 2 ? fmt::format(R"({{"n":{}}})", n) : fmt::format(R"({{"n":{}.0}})", n);
            match = [n](const Model::Transfer& tr) {
              const nlohmann::json v = metadata_value(tr.details.metadata);
              return v.is_object() && v.contains("n") && v.at("n") == n;
            };
          }
        }
        if (rng() % 3 == 0) {
          const std::string account = pick(accounts);
          if (!m.balances.count(account)) break;  // not_found: the other tests check that
          q.account = account;
          match = [match, account](const Model::Transfer& tr) {
            return (tr.from == account || tr.to == account) && match(tr);
          };
        }
        std::vector<std::int64_t> want, got;
        for (auto it = m.transfers.rbegin(); it != m.transfers.rend(); ++it)
          if (match(it->second)) want.push_back(it->first);
        for (TransferPage page = ledger.transfers(q);; page = ledger.transfers(q)) {
          for (const auto& tr : page.items) got.push_back(tr.id);
          if (!page.next) break;
          q.before = page.next;
        }
        REQUIRE(got == want);
        break;
      }
      case 7: {  // try_acquire by one of two owners
        const std::string name = pick(lock_names), owner = pick(owners);
        auto& row = m.locks[name];
        auto lease = locks.try_acquire(name, 1h, owner);
        if (row.holder && *row.holder != owner) {
          REQUIRE_FALSE(lease);
        } else {
          if (!row.holder) {
            ++row.token;
            row.holder = owner;
            row.last_owner = owner;
          }
          REQUIRE(lease);
          REQUIRE(lease->token() == row.token);
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
        REQUIRE(kind == (mine ? std::nullopt : std::optional(ErrorKind::lock_lost)));
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
        REQUIRE(it->token == row.token);
        REQUIRE_FALSE(it->held);
        break;
      }
      case 10: {  // cache put or invalidate
        const std::string k = pick(cache_keys);
        if (rng() % 3 == 0) {
          cache.invalidate(k);
          m.cache.erase(k);
        } else {
          const std::string v = fmt::format("v{}", rng() % 1000);
          cache.put(k, v, 1h);
          m.cache[k] = {v, false};
        }
        break;
      }
      default: {  // cache get
        const std::string k = pick(cache_keys);
        const auto it = m.cache.find(k);
        const std::optional<std::string> got = cache.get(k);
        if (it == m.cache.end()) {
          REQUIRE(shown(got) == "none");
        } else if (!got && it->second.maybe_gone) {
          m.cache.erase(it);  // evicted by a sweep
        } else {
          REQUIRE(shown(got) == shown(it->second.value));
        }
      }
    }
  }
  const CheckReport check = ledger.check();
  for (const auto& v : check.violations) UNSCOPED_INFO(v.what << " " << v.account << ": " << v.detail);
  REQUIRE(check.ok());
  REQUIRE(check.accounts == static_cast<std::int64_t>(m.balances.size()));
  compare_accounts();
}

#include "support/interleave_workloads.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <deque>
#include <exception>
#include <latch>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <unistd.h>

#include <fmt/format.h>

#include "support/fault_proxy.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;

namespace rowguard::test {

namespace {
using Clock = std::chrono::steady_clock;
constexpr std::int64_t day_ms = 86'400'000;

// What a caller retries with the same key (docs/ledger.md): the outcome is unknown or not reached.
bool retriable(ErrorKind k) {
  return k == ErrorKind::conflict || k == ErrorKind::transient || k == ErrorKind::in_doubt;
}

// Bodies run on their own threads, lined up on a start barrier; an exception escaping a body is
// rethrown by run() after every thread has ended.
class Crew {
 public:
  void add(std::function<void()> body) { bodies_.push_back(std::move(body)); }
  void run() {
    std::latch start(static_cast<std::ptrdiff_t>(bodies_.size()));
    std::mutex mutex;
    std::exception_ptr failed;
    std::vector<std::thread> threads;
    for (auto& body : bodies_)
      threads.emplace_back([&, b = &body] {
        start.arrive_and_wait();
        try {
          (*b)();
        } catch (...) {
          std::lock_guard lock(mutex);
          if (!failed) failed = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    if (failed) std::rethrow_exception(failed);
  }

 private:
  std::vector<std::function<void()>> bodies_;
};

// Counts a workload request as in flight while it lives.
class InFlight {
 public:
  explicit InFlight(std::atomic<int>& n) : n_(n) { ++n_; }
  ~InFlight() { --n_; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  std::atomic<int>& n_;
};

// When a run's threads stop: once the schedule's duration has passed and the run has done what
// its test asserts it did (enough()), or at four times the duration whatever it did (a sanitizer
// build or a loaded machine is slow). enough() is called from every thread: it must be safe to.
class Stop {
 public:
  Stop(std::chrono::milliseconds duration, std::function<bool()> enough)
      : min_(Clock::now() + duration), max_(Clock::now() + 4 * duration), enough_(std::move(enough)) {}
  bool operator()() const {
    if (stopped_) return true;
    const auto now = Clock::now();
    if (now < min_) return false;
    if (now >= max_ || enough_()) stopped_ = true;
    return stopped_;
  }

 private:
  Clock::time_point min_, max_;
  std::function<bool()> enough_;
  mutable std::atomic<bool> stopped_{false};
};

// For triage: $ROWGUARD_INTERLEAVE_SKIP leaves out the maintenance operations (and the workload
// features) whose names contain one of its comma-separated parts ("cache sweep,archive"), to see
// which one a failure needs.
bool skipped(const std::string& name) {
  const char* env = std::getenv("ROWGUARD_INTERLEAVE_SKIP");
  if (env == nullptr) return false;
  for (std::string rest = env; !rest.empty();) {
    const auto comma = rest.find(',');
    if (const std::string part = rest.substr(0, comma); !part.empty() && name.find(part) != std::string::npos)
      return true;
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return false;
}

// One maintenance operation: its name, how often it is picked, and what it does (returns how
// much it changed: rows pruned, transfers archived, leases ended, ...).
struct MaintenanceOp {
  std::string name;
  int weight = 1;
  std::function<std::int64_t()> run;
};

// Runs ops picked at random (by weight) with short random pauses until `stop`. Errors of the kinds
// in `tolerated` are expected (a conflict with the workload, a lease the workload holds); any
// other is a finding.
void maintain(const std::vector<MaintenanceOp>& ops, unsigned seed, const Stop& stop, std::chrono::milliseconds pause,
              const std::atomic<int>& in_flight, MaintenanceTally& tally, std::mutex& tally_mutex, Findings& findings,
              const std::set<ErrorKind>& tolerated = {}) {
  std::mt19937 rng(seed);
  std::vector<MaintenanceOp> kept;
  for (const auto& op : ops)
    if (!skipped(op.name)) kept.push_back(op);
  if (kept.empty()) return;
  int total = 0;
  for (const auto& op : kept) total += op.weight;
  while (!stop()) {
    int pick = static_cast<int>(rng() % static_cast<unsigned>(total));
    const MaintenanceOp* op = &kept.front();
    for (const auto& o : kept) {
      if (pick < o.weight) {
        op = &o;
        break;
      }
      pick -= o.weight;
    }
    const bool overlapped = in_flight > 0;
    const auto began = Clock::now();
    try {
      const std::int64_t effect = op->run();
      const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
      std::lock_guard lock(tally_mutex);
      ++tally.ran[op->name];
      tally.longest_ms[op->name] = std::max(tally.longest_ms[op->name], static_cast<std::int64_t>(took));
      tally.effect[op->name] += effect;
      tally.overlapped += overlapped;
    } catch (const Error& e) {
      if (retriable(e.kind()) || tolerated.count(e.kind()))
        findings.expected("maintenance " + op->name, e);
      else
        findings.unexpected_error("maintenance " + op->name, e.what());
    } catch (const std::exception& e) {
      findings.unexpected_error("maintenance " + op->name, e.what());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % static_cast<unsigned>(pause.count() + 1)));
  }
}

// A maintenance operation run as a `rowguard` CLI process on t's database. Exit 0, 6 (conflict
// after all retries), 10 (transient) and those in `also` are expected; anything else is a finding.
MaintenanceOp cli_op(TestDb& t, const std::string& name, int weight, std::function<std::vector<std::string>()> args,
                     Findings& findings, MaintenanceTally& tally, std::mutex& tally_mutex, std::set<int> also = {}) {
  return {
      name, weight,
      [&t, &findings, &tally, &tally_mutex, name, args = std::move(args), also = std::move(also)]() -> std::int64_t {
        std::vector<std::string> all{"--db", t.url(), "--prefix", t.db().table_prefix()};
        for (auto& a : args()) all.push_back(std::move(a));
        std::string out;
        const int rc = run_cli(all, &out, true);
        {
          std::lock_guard lock(tally_mutex);
          ++tally.cli_runs;
        }
        if (rc != 0 && rc != 6 && rc != 10 && !also.count(rc))
          findings.unexpected_error(name, fmt::format("exit {}: {}", rc, out.substr(0, 400)));
        return rc == 0;
      }};
}

std::int64_t db_now_ms(Database& db) { return db.exec("SELECT " + dialect_of(db).now_ms()).one().i64(0); }

// Runs f again with the same arguments (the same idempotency key) while it fails in a way that
// leaves the outcome unknown or not reached, as docs/ledger.md tells callers to; nothing when it
// kept failing for 30 s. Other errors propagate.
template <class F>
auto with_same_key(F&& f, std::atomic<int>& retries, Findings& findings, const std::string& what)
    -> std::optional<decltype(f())> {
  const auto give_up = Clock::now() + 30s;
  for (;;) {
    try {
      return f();
    } catch (const Error& e) {
      if (!retriable(e.kind())) throw;
      findings.expected(what, e);
      ++retries;
      if (Clock::now() > give_up) return std::nullopt;
      std::this_thread::sleep_for(2ms);
    }
  }
}

std::string violations_text(const CheckReport& r, std::vector<std::string>& out) {
  for (const auto& v : r.violations) out.push_back(fmt::format("{} {}: {}", v.what, v.account, v.detail));
  return {};
}

// Reads the checks after a run, retrying a conflict (SQLite busy) for a while.
template <class F>
auto settled(F&& f) {
  for (int attempt = 0;; ++attempt) {
    try {
      return f();
    } catch (const Error& e) {
      if (!retriable(e.kind()) || attempt > 100) throw;
      std::this_thread::sleep_for(20ms);
    }
  }
}

// Whether the maintenance has run at least once while a request was in flight, and `name` changed
// something (empty: any).
bool interleaved(const MaintenanceTally& tally, std::mutex& mutex, const std::string& name = {}) {
  std::lock_guard lock(mutex);
  if (tally.overlapped == 0) return false;
  if (name.empty()) return true;
  const auto it = tally.effect.find(name);
  return it != tally.effect.end() && it->second > 0;
}

// What a reader of cached accounts saw: an account read through the ledger's cache is never older
// than one read from the table just before it (the change that made the newer version committed
// its invalidation with it).
struct CachedReads {
  std::atomic<int> reads{0}, stale{0};
  std::mutex mutex;
  std::string first_stale;
};

// Reads accounts until `stop`: pick() names one and the ledgers that read it from the table and
// through its cache.
void read_cached_against_table(const Stop& stop, unsigned seed,
                               const std::function<std::tuple<std::string, Ledger*, Ledger*>(std::mt19937&)>& pick,
                               std::chrono::milliseconds pause, CachedReads& out, Findings& findings,
                               const std::string& what) {
  std::mt19937 rng(seed);
  while (!stop()) {
    const auto [id, table_ledger, cached_ledger] = pick(rng);
    try {
      const Account table = table_ledger->get(id);
      const Account cached = cached_ledger->get(id);
      ++out.reads;
      if (cached.version < table.version && out.stale++ == 0) {
        std::lock_guard lock(out.mutex);
        out.first_stale = fmt::format(
            "{}: the cache gave version {} (balance {}) after the table had version {} "
            "(balance {})",
            id, cached.version, cached.balance, table.version, table.balance);
      }
    } catch (const Error& e) {
      if (retriable(e.kind()))
        findings.expected(what, e);
      else
        findings.unexpected_error(what, e.what());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1 + rng() % static_cast<unsigned>(pause.count())));
  }
}

}  // namespace

void Findings::expected(const std::string& what, const Error& e) {
  std::lock_guard lock(mutex);
  ++counts[fmt::format("{}: {}", what, to_string(e.kind()))];
}

void Findings::unexpected_error(const std::string& what, const std::string& message) {
  std::lock_guard lock(mutex);
  ++unexpected_count;
  if (unexpected.size() < 20) unexpected.push_back(fmt::format("{}: {}", what, message));
}

std::string Findings::summary() {
  std::lock_guard lock(mutex);
  std::string s;
  for (const auto& [what, n] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", what, n);
  return s.empty() ? "none" : s;
}

std::string MaintenanceTally::summary() const {
  std::string s;
  for (const auto& [name, n] : ran) {
    const auto e = effect.find(name);
    const auto l = longest_ms.find(name);
    s += fmt::format("{}{} x{} (changed {}, slowest {} ms)", s.empty() ? "" : ", ", name, n,
                     e == effect.end() ? 0 : e->second, l == longest_ms.end() ? 0 : l->second);
  }
  for (const auto& [name, n] : effect)
    if (!ran.count(name)) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", name, n);
  return fmt::format("{}; {} began while a request was in flight; {} CLI runs", s.empty() ? "nothing" : s, overlapped,
                     cli_runs);
}

// ---- Payments -------------------------------------------------------------------------------

namespace {

// The answer to a keyed request: its status, its transfer (or hold) id, whether it was a replay.
struct Answer {
  TransferStatus status = TransferStatus::ok;
  std::int64_t id = 0;
  bool replayed = false;
};
Answer answer(const TransferResult& r) { return {r.status, r.transfer_id, r.replayed}; }
Answer answer(const HoldResult& r) { return {r.status, r.hold_id, r.replayed}; }

// An acknowledged request a worker keeps while it is young: it may send it again, refund it, and
// when it leaves the window its keys are retired (the test then ages them).
struct Sent {
  std::string key;
  std::string kind;  // transfer, hold, capture, reversal, batch
  Answer first;
  std::function<Answer()> resend;
  std::string from, to;  // for a transfer that may be refunded
  std::int64_t amount = 0, refunded = 0;
  std::string original;                    // a reversal's original key (resent only while that is young too)
  std::vector<std::string> transfer_keys;  // keys of rows in <prefix>transfers to age once retired
};

}  // namespace

PaymentsReport run_payments(TestDb& t, const Schedule& s, Findings& findings) {
  Database& db = t.db();
  Cache ledger_cache(db);
  LedgerOptions lo;
  lo.cache = &ledger_cache;
  lo.retry.attempts = 50;
  lo.retry.deadline = 30s;
  Ledger ledger(db, lo);
  Ledger plain(db);  // reads the table: the reader's reference
  CacheOptions sweeping;
  sweeping.sweep_grace = 0ms;
  sweeping.max_rows = 4;
  Cache sweeper(db, sweeping);
  Locks locks(db);
  const std::vector<std::string> eur{"e0", "e1", "e2", "e3"}, usd{"u0", "u1", "u2"};
  constexpr std::int64_t opening = 1'000'000;
  std::map<std::string, std::string> currency;
  for (const auto& id : eur) currency[id] = "EUR";
  for (const auto& id : usd) currency[id] = "USD";
  for (const auto& [id, cur] : currency) {
    ledger.open(id, cur);
    ledger.deposit(id, opening, "opening-" + id);
  }

  std::atomic<int> in_flight{0}, retries{0}, given_up{0}, acknowledged{0}, applied{0}, resent{0}, resend_wrong{0};
  CachedReads cached;
  std::mutex mutex;                           // guards what follows
  std::map<std::string, std::int64_t> delta;  // per account: what the acknowledged requests moved
  std::deque<std::string> retired;            // transfer keys nobody sends again: to be aged
  std::vector<std::string> resend_failures;
  MaintenanceTally tally;
  std::mutex tally_mutex;

  const Stop stop(s.duration, [&] {
    return applied > 0 && resent > 0 && interleaved(tally, tally_mutex, "age retired keys 40 days");
  });
  Crew crew;
  constexpr int workers = 3;
  for (int w = 0; w < workers; ++w)
    crew.add([&, w] {
      std::mt19937 rng(s.seed * 7919u + static_cast<unsigned>(w));
      std::deque<Sent> window;
      std::map<std::string, std::int64_t> moved;
      int n = 0;
      auto fresh = [&] { return fmt::format("w{}-{}", w, n++); };
      auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
      auto two = [&](const std::vector<std::string>& v) {
        const std::string a = pick(v);
        std::string b = pick(v);
        while (b == a) b = pick(v);
        return std::pair{a, b};
      };
      auto remember = [&](Sent x) {
        window.push_back(std::move(x));
        if (window.size() <= 6) return;
        std::lock_guard lock(mutex);
        for (const auto& k : window.front().transfer_keys) retired.push_back(k);
        window.pop_front();
      };
      auto acknowledge = [&](const Answer& a, const std::string& from, const std::string& to, std::int64_t amount) {
        ++acknowledged;
        if (a.status != TransferStatus::ok) return;
        ++applied;
        moved[from] -= amount;
        moved[to] += amount;
      };
      auto send = [&](const std::string& what, auto&& f) {
        return with_same_key(f, retries, findings, "payments " + what);
      };
      while (!stop()) {
        const unsigned op = rng() % 100;
        std::string what = "transfer";
        try {
          const auto& ids = rng() % 3 == 0 ? usd : eur;
          const auto [from, to] = two(ids);
          const std::int64_t amount = 1 + static_cast<std::int64_t>(rng() % 2000);
          if (op < 35) {  // a transfer
            const std::string key = fresh();
            auto go = [&ledger, from, to, amount, key] { return answer(ledger.transfer(from, to, amount, key)); };
            const auto a = send(what, [&] {
              InFlight f(in_flight);
              return go();
            });
            if (!a) {
              ++given_up;
              continue;
            }
            acknowledge(*a, from, to, amount);
            remember({key, "transfer", *a, go, from, to, amount, 0, {}, {key}});
          } else if (op < 52) {  // a hold, then its capture, its void, or nothing (it expires)
            what = "hold";
            const std::string key = fresh(), hold_key = key + "-hold";
            const bool abandon = rng() % 5 == 0;
            const auto timeout = abandon ? 300ms : 120s;
            auto hold = [&ledger, from, to, amount, hold_key, timeout] {
              return answer(ledger.hold(from, to, amount, hold_key, timeout));
            };
            const auto h = send(what, [&] {
              InFlight f(in_flight);
              return hold();
            });
            if (!h) {
              ++given_up;
              continue;
            }
            ++acknowledged;
            remember({hold_key, "hold", *h, hold, {}, {}, 0, 0, {}, {}});
            if (h->status != TransferStatus::ok || abandon) continue;
            if (rng() % 3 == 0) {
              what = "void";
              const auto v = send(what, [&] {
                InFlight f(in_flight);
                return ledger.void_hold(h->id);
              });
              if (!v)
                ++given_up;
              else if (v->state != HoldState::voided)
                findings.unexpected_error("payments void", fmt::format("hold {} is {}", h->id, to_string(v->state)));
              continue;
            }
            what = "capture";
            const std::int64_t take = rng() % 2 ? amount : 1 + static_cast<std::int64_t>(rng() % amount);
            const std::string capture_key = key + "-capture";
            const std::int64_t hold_id = h->id;
            auto capture = [&ledger, hold_id, take, capture_key] {
              return answer(ledger.capture(hold_id, take, capture_key));
            };
            const auto c = send(what, [&] {
              InFlight f(in_flight);
              return capture();
            });
            if (!c) {
              ++given_up;
              continue;
            }
            acknowledge(*c, from, to, take);
            remember({capture_key, "capture", *c, capture, {}, {}, 0, 0, {}, {capture_key}});
          } else if (op < 64) {  // a partial refund of a young applied transfer
            what = "reversal";
            std::vector<Sent*> refundable;
            for (auto& x : window)
              if (x.kind == "transfer" && x.first.status == TransferStatus::ok && x.refunded < x.amount)
                refundable.push_back(&x);
            if (refundable.empty()) continue;
            Sent& o = *refundable[rng() % refundable.size()];
            const std::int64_t back =
                1 + static_cast<std::int64_t>(rng() % std::min<std::int64_t>(50, o.amount - o.refunded));
            const std::string key = fresh(), original = o.key;
            auto reverse = [&ledger, original, back, key] { return answer(ledger.reverse(original, back, key)); };
            const auto r = send(what, [&] {
              InFlight f(in_flight);
              return reverse();
            });
            if (!r) {
              ++given_up;
              continue;
            }
            if (r->status == TransferStatus::ok) o.refunded += back;
            acknowledge(*r, o.to, o.from, back);
            remember({key, "reversal", *r, reverse, {}, {}, 0, 0, original, {key}});
          } else if (op < 76) {  // a batch of 2 to 4 transfers, some in linked chains
            what = "batch";
            std::vector<BatchItem> items;
            const std::size_t count = 2 + rng() % 3;
            for (std::size_t i = 0; i < count; ++i) {
              const auto [a, b] = two(ids);
              items.push_back(
                  {a, b, 1 + static_cast<std::int64_t>(rng() % 3000), fresh(), i + 1 < count && rng() % 2 == 0});
            }
            const auto results = send(what, [&] {
              InFlight f(in_flight);
              return ledger.transfer_batch(items);
            });
            if (!results) {
              ++given_up;
              continue;
            }
            for (std::size_t i = 0; i < items.size(); ++i) {
              const BatchResult& r = (*results)[i];
              const BatchItem& item = items[i];
              if (r.error) {  // nothing recorded under the key (a chain that failed as a whole)
                if (*r.error != ErrorKind::insufficient_funds)
                  findings.unexpected_error("payments batch item",
                                            fmt::format("{}: {}", to_string(*r.error), r.message));
                continue;
              }
              const Answer a = answer(r.result);
              acknowledge(a, item.from, item.to, item.amount);
              // Sent again alone: a batch item's key answers transfer() with its recorded outcome.
              auto again = [&ledger, item] {
                return answer(ledger.transfer(item.from, item.to, item.amount, item.key));
              };
              remember({item.key, "batch", a, again, item.from, item.to, item.amount, 0, {}, {item.key}});
            }
          } else if (op < 94) {  // an acknowledged request sent again: replayed, the same outcome
            what = "resend";
            if (window.empty()) continue;
            const Sent& x = window[rng() % window.size()];
            if (!x.original.empty() &&
                std::none_of(window.begin(), window.end(), [&](const Sent& y) { return y.key == x.original; }))
              continue;  // a refund whose original is retired: its key may be pruned (not_found then)
            const auto a = send(what, [&] {
              InFlight f(in_flight);
              return x.resend();
            });
            if (!a) {
              ++given_up;
              continue;
            }
            ++resent;
            if (!a->replayed || a->status != x.first.status || a->id != x.first.id) {
              ++resend_wrong;
              std::lock_guard lock(mutex);
              if (resend_failures.size() < 10)
                resend_failures.push_back(fmt::format("{} '{}': first {} id {}, again {} id {}{}", x.kind, x.key,
                                                      to_string(x.first.status), x.first.id, to_string(a->status),
                                                      a->id, a->replayed ? " (replayed)" : " (applied again)"));
            }
          } else {  // between currencies: refused, nothing recorded
            what = "cross-currency transfer";
            const std::string key = fresh();
            try {
              InFlight f(in_flight);
              ledger.transfer(pick(eur), pick(usd), amount, key);
              findings.unexpected_error("payments " + what, "accepted");
            } catch (const Error& e) {
              if (e.kind() == ErrorKind::currency_mismatch)
                findings.expected("payments " + what, e);
              else if (!retriable(e.kind()))
                throw;
            }
          }
        } catch (const Error& e) {
          findings.unexpected_error("payments " + what, e.what());
        }
        // A short pause: SQLite's busy handler otherwise starves the maintenance writers.
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
      }
      std::lock_guard lock(mutex);
      for (const auto& [id, m] : moved) delta[id] += m;
    });

  crew.add([&] {
    std::vector<std::string> all;
    for (const auto& [id, c] : currency) all.push_back(id);
    read_cached_against_table(
        stop, s.seed * 31u + 7u,
        [&](std::mt19937& rng) {
          return std::tuple{all[rng() % all.size()], &plain, &ledger};
        },
        3ms, cached, findings, "payments reader");
  });

  const std::string shift = dialect_of(db).timestamp_plus_ms("created_at", "$1");
  const std::string age_entries = fmt::format(
      "UPDATE {0}entries SET created_at = {1} WHERE transfer_id IN (SELECT id FROM {0}transfers WHERE "
      "idempotency_key = $2)",
      db.table_prefix(), shift);
  const std::string age_transfers =
      fmt::format("UPDATE {}transfers SET created_at = {} WHERE idempotency_key = $2", db.table_prefix(), shift);
  std::vector<MaintenanceOp> ops{
      {"age retired keys 40 days", 5,
       [&]() -> std::int64_t {
         std::vector<std::string> keys;
         {
           std::lock_guard lock(mutex);
           while (!retired.empty() && keys.size() < 8) {
             keys.push_back(retired.front());
             retired.pop_front();
           }
         }
         std::int64_t aged = 0;
         for (std::size_t i = 0; i < keys.size(); ++i) {
           try {
             auto tx = db.begin();
             tx.exec(age_entries, {-40 * day_ms, keys[i]});
             aged += tx.exec(age_transfers, {-40 * day_ms, keys[i]}).affected;
             tx.commit();
           } catch (const Error&) {
             std::lock_guard lock(mutex);
             for (std::size_t j = i; j < keys.size(); ++j) retired.push_back(keys[j]);  // another time
             throw;
           }
         }
         return aged;
       }},
      {"prune-keys 30 days", 2, [&] { return ledger.prune_keys(std::chrono::hours(24 * 30)); }},
      {"archive before 31 days ago", 2, [&] { return ledger.archive(db_now_ms(db) - 31 * day_ms).transfers; }},
      {"hold sweep", 1, [&] { return ledger.sweep_holds(); }},
      {"cache sweep (no grace, 4 rows)", 3, [&] { return sweeper.sweep(); }},
      {"lock sweep", 1, [&] { return locks.sweep(0ms); }},
  };
  if (s.processes) {
    ops.push_back(cli_op(
        t, "cli ledger prune-keys", 1,
        [] {
          return std::vector<std::string>{"ledger", "prune-keys", "--older-than", "720h"};
        },
        findings, tally, tally_mutex));
    ops.push_back(cli_op(
        t, "cli ledger archive", 1,
        [&] {
          return std::vector<std::string>{"ledger", "archive", "--before",
                                          fmt::format("@{}", db_now_ms(db) - 31 * day_ms)};
        },
        findings, tally, tally_mutex));
    ops.push_back(cli_op(
        t, "cli ledger sweep-holds", 1,
        [] {
          return std::vector<std::string>{"ledger", "sweep-holds"};
        },
        findings, tally, tally_mutex));
  }
  for (unsigned m = 0; m < 2; ++m)
    crew.add([&, m] { maintain(ops, s.seed * 104729u + m, stop, 15ms, in_flight, tally, tally_mutex, findings); });
  crew.run();

  PaymentsReport r;
  r.acknowledged = acknowledged;
  r.applied = applied;
  r.resent = resent;
  r.resend_wrong = resend_wrong;
  r.resend_failures = resend_failures;
  r.retries = retries;
  r.given_up = given_up;
  r.cached_reads = cached.reads;
  r.stale_cached_reads = cached.stale;
  r.first_stale = cached.first_stale;
  r.maintenance = tally;
  const CheckReport check = settled([&] { return plain.check(); });
  r.check_ok = check.ok();
  violations_text(check, r.violations);
  for (const auto& a : settled([&] { return plain.list(); })) {
    r.totals[a.currency] += a.balance;
    r.expected_totals[a.currency] += opening;
    const std::int64_t want = opening + delta[a.id];
    if (a.balance != want)
      r.balances_wrong.push_back(
          fmt::format("{}: balance {}, the acknowledged requests make {}", a.id, a.balance, want));
  }
  return r;
}

// ---- Leases ---------------------------------------------------------------------------------

namespace {

struct Interval {
  Clock::time_point start, end;
  std::int64_t token = 0;
  int worker = 0;
};

// Events of one kind (acquisitions, admitted fence writes) whose tokens must follow real time:
// one that began after another had ended carries a token at least as high (strictly higher when
// `strict`). Returns how many do not, and describes the first.
int out_of_real_time_order(std::vector<Interval> events, bool strict, std::string& first) {
  std::vector<Interval> by_end = events;
  std::sort(events.begin(), events.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
  std::sort(by_end.begin(), by_end.end(), [](const auto& a, const auto& b) { return a.end < b.end; });
  std::size_t ended = 0;
  std::int64_t highest = 0;
  int wrong = 0;
  for (const auto& e : events) {
    while (ended < by_end.size() && by_end[ended].end < e.start) highest = std::max(highest, by_end[ended++].token);
    if (strict ? e.token <= highest : e.token < highest) {
      if (wrong++ == 0)
        first = fmt::format("worker {} got token {} after token {} had been given and returned", e.worker, e.token,
                            highest);
    }
  }
  return wrong;
}

}  // namespace

LeasesReport run_leases(TestDb& t, const Schedule& s, Findings& findings) {
  Database& db = t.db();
  Locks locks(db);
  Locks maintenance_locks(db);
  Fence fence(db);
  const std::string name = "interleaved", resource = "interleaved-resource", external = "interleaved-external";
  const std::string log = db.table_prefix() + "interleave_log";
  db.exec(fmt::format("CREATE TABLE {} (seq BIGINT PRIMARY KEY, token BIGINT NOT NULL, worker BIGINT NOT NULL)", log));
  // Its seq is taken under the fence row's lock (Fence::guard holds it to commit), so seq order
  // is commit order.
  const std::string append = fmt::format(
      "INSERT INTO {0} (seq, token, worker) SELECT COALESCE(MAX(seq), 0) + 1, $1, $2 "
      "FROM {0}",
      log);
  constexpr auto ttl = 4s;
  std::atomic<int> in_flight{0}, writes{0};
  std::mutex mutex;
  std::map<std::string, std::vector<Interval>> acquisitions;  // by lock name
  std::vector<Interval> admitted, losses, force_releases;
  MaintenanceTally tally;
  std::mutex tally_mutex;

  const Stop stop(s.duration, [&] {
    if (writes == 0 || !interleaved(tally, tally_mutex, "force-release")) return false;
    std::lock_guard lock(mutex);
    return acquisitions[name].size() > 1;
  });
  Crew crew;
  constexpr int workers = 3;
  for (int w = 0; w < workers; ++w)
    crew.add([&, w] {
      std::mt19937 rng(s.seed * 7919u + static_cast<unsigned>(w));
      while (!stop()) {
        const auto began = Clock::now();
        // Now and then a holder dies (stops renewing, never releases): its lease expires after
        // 300 ms, the others wait for that, and the sweeps then have an expired lease to clear.
        // Half of them hold one of a few side locks, whose expired leases nobody takes at once.
        const bool dies = rng() % 6 == 0;
        const std::string held = dies && rng() % 2 ? fmt::format("side-{}", rng() % 3) : name;
        std::optional<Lease> lease;
        try {
          InFlight f(in_flight);
          lease.emplace(locks.acquire(held, dies ? std::chrono::milliseconds(300) : ttl, 2s));
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::lock_busy || retriable(e.kind()))
            findings.expected("leases acquire", e);
          else
            findings.unexpected_error("leases acquire", e.what());
          continue;
        }
        const std::int64_t token = lease->token();
        {
          std::lock_guard lock(mutex);
          acquisitions[held].push_back({began, Clock::now(), token, w});
        }
        if (held != name) {  // a side lock: the holder dies at once
          lease->detach();
          continue;
        }
        bool lost = false;
        auto lose = [&](const Error& e) {
          if (e.kind() != ErrorKind::lock_lost) throw e;
          findings.expected("leases holder", e);
          lost = true;
          std::lock_guard lock(mutex);
          losses.push_back({began, Clock::now(), token, w});
        };
        const int n = dies ? 1 : 1 + static_cast<int>(rng() % 3);
        for (int i = 0; i < n && !lost; ++i) {
          try {
            InFlight f(in_flight);
            auto tx = db.begin();
            lease->guard(tx);                  // still ours (and a takeover waits for this commit)
            fence.guard(tx, resource, token);  // and no newer token wrote here
            tx.exec(append, {token, std::int64_t{w}});
            tx.commit();
            ++writes;
            const auto asked = Clock::now();
            if (fence.admit(external, token)) {
              std::lock_guard lock(mutex);
              admitted.push_back({asked, Clock::now(), token, w});
            }
          } catch (const Error& e) {
            if (e.kind() == ErrorKind::lock_lost)
              lose(e);
            else if (retriable(e.kind()))
              findings.expected("leases write", e);
            else
              findings.unexpected_error("leases write", e.what());
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 6));
        }
        if (dies) {
          lease->detach();
          continue;
        }
        try {
          if (!lost && rng() % 3 == 0) lease->renew(ttl);
          if (!lost) lease->release();
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::lock_lost)
            lose(e);
          else if (retriable(e.kind()))
            findings.expected("leases renew or release", e);
          else
            findings.unexpected_error("leases renew or release", e.what());
        }
        if (lost) lease->detach();
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 3));
      }
    });

  std::vector<MaintenanceOp> ops{
      {"force-release", 2,
       [&]() -> std::int64_t {
         const auto began = Clock::now();
         maintenance_locks.force_release(name, "interleave test");
         std::lock_guard lock(mutex);
         force_releases.push_back({began, Clock::now(), 0, -1});
         return 1;
       }},
      {"lock sweep (0 ms)", 6, [&] { return maintenance_locks.sweep(0ms); }},
      {"lock sweep (50 ms)", 2, [&] { return maintenance_locks.sweep(50ms); }},
  };
  if (s.processes) {
    ops.push_back(cli_op(
        t, "cli lock sweep", 1,
        [] {
          return std::vector<std::string>{"lock", "sweep", "--older-than", "0s"};
        },
        findings, tally, tally_mutex));
    // A CLI force-release is recorded from before the process starts to after it ends.
    auto cli_force = cli_op(t, "cli lock force-release", 1,
                            [&] {
                              return std::vector<std::string>{"lock", "force-release", name, "--reason", "cli"};
                            },
                            findings, tally, tally_mutex, {5});
    ops.push_back({cli_force.name, cli_force.weight, [&, run = cli_force.run]() -> std::int64_t {
                     const auto began = Clock::now();
                     const std::int64_t done = run();
                     std::lock_guard lock(mutex);
                     force_releases.push_back({began, Clock::now(), 0, -1});
                     return done;
                   }});
  }
  crew.add([&] {
    maintain(ops, s.seed * 104729u, stop, 40ms, in_flight, tally, tally_mutex, findings, {ErrorKind::not_found});
  });
  crew.run();

  LeasesReport r;
  r.guarded_writes = writes;
  r.maintenance = tally;
  std::string first;
  for (const auto& [lock_name, list] : acquisitions) {
    r.acquisitions += static_cast<int>(list.size());
    std::set<std::int64_t> tokens;
    for (const auto& a : list) r.tokens_reused += !tokens.insert(a.token).second;
    r.tokens_out_of_order += out_of_real_time_order(list, true, first);
    if (r.first_problem.empty() && !first.empty()) r.first_problem = lock_name + ": " + first;
  }
  first.clear();
  r.fence_admitted_stale = out_of_real_time_order(admitted, false, first);
  if (r.first_problem.empty() && !first.empty()) r.first_problem = "fence: " + first;
  // The guarded log, in commit order: tokens never go back, and one token is one holder.
  std::int64_t previous = 0;
  std::map<std::int64_t, std::int64_t> writer;
  for (const auto& row :
       settled([&] { return db.exec(fmt::format("SELECT token, worker FROM {} ORDER BY seq", log)); }).rows) {
    if (row.i64(0) < previous && r.log_out_of_order++ == 0 && r.first_problem.empty())
      r.first_problem = fmt::format("a write under token {} committed after one under token {}", row.i64(0), previous);
    previous = std::max(previous, row.i64(0));
    const auto [it, inserted] = writer.emplace(row.i64(0), row.i64(1));
    if (!inserted && it->second != row.i64(1)) ++r.log_token_shared;
  }
  // Every lease lost while held was ended by a force-release during its hold (or ran past its ttl).
  for (const auto& l : losses) {
    const bool forced = std::any_of(force_releases.begin(), force_releases.end(),
                                    [&](const Interval& f) { return f.start <= l.end && f.end >= l.start; });
    if (forced || l.end - l.start >= ttl) {
      ++r.refused_after_force_release;
    } else if (r.leases_lost_unexplained++ == 0 && r.first_problem.empty()) {
      r.first_problem =
          fmt::format("worker {} lost token {} after {} ms with no force-release meanwhile", l.worker, l.token,
                      std::chrono::duration_cast<std::chrono::milliseconds>(l.end - l.start).count());
    }
  }
  return r;
}

// ---- Cache ----------------------------------------------------------------------------------

CacheInterleaveReport run_cache_interleave(TestDb& t, const Schedule& s, Findings& findings) {
  Database& db = t.db();
  CacheOptions co;
  co.load_lease_ttl = 2s;
  co.load_wait = 10s;
  Cache cache(db, co);
  CacheOptions sweeping;
  sweeping.sweep_grace = 0ms;
  sweeping.max_rows = 3;
  Cache sweeper(db, sweeping);
  Locks locks(db);
  constexpr int keys = 6;  // two prefix groups of three
  auto key_of = [](int k) { return fmt::format("g{}:k{}", k / 3, k); };
  // What each key's value is now, and the version whose invalidation or put has returned.
  std::array<std::atomic<std::int64_t>, keys> truth{}, floor{};
  std::array<std::atomic<int>, keys> floor_by{};  // how the floor was set (an index into `how`)
  const std::array<const char*, 5> how{"invalidate", "put", "invalidate_prefix", "invalidate by a CLI process",
                                       "invalidate inside a transaction"};
  std::array<std::mutex, keys> writing;  // one writer per key at a time: versions go up in order
  std::atomic<int> in_flight{0}, reads{0}, loads{0}, writes{0}, wrong_key{0}, stale{0}, lock_lost{0};
  std::mutex mutex;
  std::array<int, 3> stale_by{};
  std::array<std::string, 3> stale_first;
  std::string first_stale;
  MaintenanceTally tally;
  std::mutex tally_mutex;
  // "g0:k1@7" -> 7 when the value is for key; -1 when it is for another key.
  auto version_in = [](const std::string& key, const std::string& value) -> std::int64_t {
    if (value.rfind(key + "@", 0) != 0) return -1;
    return std::stoll(value.substr(key.size() + 1));
  };

  const Stop stop(s.duration, [&] { return reads > 0 && loads > 0 && writes > 0 && interleaved(tally, tally_mutex); });
  Crew crew;
  for (int w = 0; w < 3; ++w)
    crew.add([&, w] {
      std::mt19937 rng(s.seed * 7919u + static_cast<unsigned>(w));
      while (!stop()) {
        const int k = static_cast<int>(rng() % keys);
        const std::string key = key_of(k);
        const std::int64_t seen_floor = floor[k];
        const int seen_by = floor_by[k];
        std::optional<std::string> value;
        // How the value came: 0 get (the table), 1 get_or_load whose own loader ran, 2 get_or_load
        // whose loader did not run (a hit, or another caller's load joined in process).
        int came = 0;
        try {
          InFlight f(in_flight);
          if (rng() % 4 == 0) {
            value = cache.get(key);
          } else {
            came = 2;
            LoadOptions lo;
            lo.scope = rng() % 2 ? LoadScope::all_processes : LoadScope::this_process;
            if (rng() % 4 == 0) lo.stale_for = 5s;
            if (rng() % 4 == 0) lo.early_refresh = true;
            const auto ttl = rng() % 4 == 0 ? std::chrono::milliseconds(150) : std::chrono::milliseconds(10'000);
            const auto pause = std::chrono::milliseconds(rng() % 15);
            value = cache.get_or_load(
                key, ttl,
                [&, k, key, pause]() -> std::optional<std::string> {
                  ++loads;
                  came = 1;
                  const std::int64_t v = truth[k];
                  std::this_thread::sleep_for(pause);  // a slow read of the source: writes overtake it
                  return fmt::format("{}@{}", key, v);
                },
                lo);
          }
          ++reads;
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::lock_lost) ++lock_lost;
          if (e.kind() == ErrorKind::lock_lost || e.kind() == ErrorKind::lock_busy || retriable(e.kind()))
            findings.expected("cache read", e);
          else
            findings.unexpected_error("cache read", e.what());
          continue;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
        if (!value) continue;
        const std::int64_t v = version_in(key, *value);
        if (v < 0) {
          ++wrong_key;
        } else if (v < seen_floor) {
          ++stale;
          // What the table holds right after: the same stale value (it was stored), or not.
          std::string then;
          try {
            const auto held = cache.get(key);
            then = held ? *held : "nothing";
          } catch (const Error& e) {
            then = e.what();
          }
          std::lock_guard lock(mutex);
          const std::array<const char*, 3> through{"get", "get_or_load (its own loader)",
                                                   "get_or_load (a hit or another caller's load)"};
          if (stale_by[came]++ == 0)
            stale_first[came] =
                fmt::format("{}: {} read version {} after the {} of version {} had returned (the table then held {})",
                            through[static_cast<std::size_t>(came)], key, v, how[static_cast<std::size_t>(seen_by)],
                            seen_floor, then);
        }
      }
    });

  crew.add([&] {  // the writer
    std::mt19937 rng(s.seed * 31u + 5u);
    while (!stop()) {
      const int k = static_cast<int>(rng() % keys);
      const std::string key = key_of(k);
      const unsigned op = rng() % 10;
      try {
        InFlight f(in_flight);
        if (op == 7) {  // a whole group by prefix
          const int group = k / 3;
          std::scoped_lock lock(writing[group * 3], writing[group * 3 + 1], writing[group * 3 + 2]);
          std::array<std::int64_t, 3> now{};
          for (int i = 0; i < 3; ++i) now[i] = ++truth[group * 3 + i];
          cache.invalidate_prefix(fmt::format("g{}:", group));
          for (int i = 0; i < 3; ++i) {
            floor[group * 3 + i] = now[i];
            floor_by[group * 3 + i] = 2;
          }
        } else {
          std::lock_guard lock(writing[k]);
          const std::int64_t now = ++truth[k];
          int by = 0;
          if (op == 5 || op == 6) {
            cache.put(key, fmt::format("{}@{}", key, now), 10s);
            by = 1;
          } else if (op == 8 && s.processes) {
            std::string out;
            const int rc =
                run_cli({"--db", t.url(), "--prefix", db.table_prefix(), "cache", "invalidate", key}, &out, true);
            {
              std::lock_guard tl(tally_mutex);
              ++tally.cli_runs;
            }
            if (rc != 0) {
              findings.unexpected_error("cache cli invalidate", fmt::format("exit {}: {}", rc, out.substr(0, 300)));
              continue;
            }
            by = 3;
          } else if (op == 9) {
            auto tx = db.begin();
            cache.invalidate(tx, key);
            tx.commit();
            by = 4;
          } else {
            cache.invalidate(key);
          }
          floor[k] = now;
          floor_by[k] = by;
        }
        ++writes;
      } catch (const Error& e) {
        if (retriable(e.kind()))
          findings.expected("cache write", e);
        else
          findings.unexpected_error("cache write", e.what());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 8));
    }
  });

  std::vector<MaintenanceOp> ops{
      {"cache sweep (no grace, 3 rows)", 5, [&] { return sweeper.sweep(); }},
      {"lock sweep", 2, [&] { return locks.sweep(0ms); }},
      {"force-release of a loader lease", 2,
       [&, rng = std::mt19937(s.seed)]() mutable -> std::int64_t {
         locks.force_release("cache:" + key_of(static_cast<int>(rng() % keys)), "interleave test");
         return 1;
       }},
  };
  if (s.processes)
    ops.push_back(cli_op(
        t, "cli cache sweep", 1,
        [] {
          return std::vector<std::string>{"cache", "sweep"};
        },
        findings, tally, tally_mutex));
  crew.add([&] {
    maintain(ops, s.seed * 104729u, stop, 10ms, in_flight, tally, tally_mutex, findings, {ErrorKind::not_found});
  });
  crew.run();

  CacheInterleaveReport r;
  r.reads = reads;
  r.loads = loads;
  r.writes = writes;
  r.wrong_key = wrong_key;
  r.loads_lock_lost = lock_lost;
  r.maintenance = tally;
  // Settled: what the table holds now is no older than the last invalidation or put of each key.
  for (int k = 0; k < keys; ++k) {
    const std::string key = key_of(k);
    const auto value = settled([&] { return cache.get(key); });
    if (value && version_in(key, *value) < floor[k] && stale++ == 0)
      first_stale =
          fmt::format("{} holds version {} after the run, whose last {} was of version {}", key,
                      version_in(key, *value), how[static_cast<std::size_t>(floor_by[k].load())], floor[k].load());
  }
  r.stale = stale;
  r.stale_from_table = stale_by[0];
  r.stale_from_own_load = stale_by[1];
  r.stale_from_hit_or_join = stale_by[2];
  r.first_stale = first_stale;
  for (const auto& f : stale_first)
    if (!f.empty()) r.first_stale += (r.first_stale.empty() ? "" : "; ") + f;
  return r;
}

// ---- Sagas ----------------------------------------------------------------------------------

namespace {

// A payment order: "<customer>|<shop>|<amount>|<what fails: -, provider, notify>|<bad: 0 or 1>".
struct Order {
  std::string customer, shop;
  std::int64_t amount = 0;
  std::string fails;
  bool bad_utf8 = false;  // the provider's result is not valid UTF-8 (issue 21, defect 17)
  static Order parse(const std::string& payload) {
    Order o;
    std::vector<std::string> parts;
    for (std::size_t at = 0;;) {
      const auto bar = payload.find('|', at);
      parts.push_back(payload.substr(at, bar == std::string::npos ? std::string::npos : bar - at));
      if (bar == std::string::npos) break;
      at = bar + 1;
    }
    o.customer = parts.at(0);
    o.shop = parts.at(1);
    o.amount = std::stoll(parts.at(2));
    o.fails = parts.at(3);
    o.bad_utf8 = parts.at(4) == "1";
    return o;
  }
  std::string payload() const { return fmt::format("{}|{}|{}|{}|{}", customer, shop, amount, fails, bad_utf8 ? 1 : 0); }
};

// hold -> provider -> capture -> notify. Every compensation succeeds whether its action ran, ran
// in part or never did: the hold's looks its hold up by replaying its key (a hold that never was is
// made and voided at once), the capture's refunds the capture if there is one.
std::vector<SagaStep> payment_steps(Ledger& ledger, const std::string& payload) {
  const Order o = Order::parse(payload);
  auto hold = [&ledger, o](StepContext& c) {
    return ledger.hold(o.customer, o.shop, o.amount, c.idempotency_key(), std::chrono::minutes(10));
  };
  return {
      {"hold",
       [hold](StepContext& c) -> std::string {
         const HoldResult h = hold(c);
         if (!h.ok()) throw std::runtime_error("insufficient funds");
         return std::to_string(h.hold_id);
       },
       [&ledger, hold](StepContext& c) {
         const HoldResult h = hold(c);
         if (h.ok() && ledger.get_hold(h.hold_id).state == HoldState::held) ledger.void_hold(h.hold_id);
       }},
      {"provider",
       [o](StepContext&) -> std::string {
         std::this_thread::sleep_for(std::chrono::milliseconds(o.amount % 15));  // a call out
         if (o.fails == "provider") throw std::runtime_error("declined");
         return o.bad_utf8 ? std::string("approved \xff\xfe") : std::string("approved");
       },
       {}},
      {"capture",
       [&ledger](StepContext& c) -> std::string {
         return std::to_string(
             ledger.capture(std::stoll(*c.result_of("hold")), std::nullopt, c.idempotency_key()).transfer_id);
       },
       [&ledger, o](StepContext& c) {
         try {
           ledger.reverse(c.idempotency_key(), o.amount, c.compensation_key());
         } catch (const Error& e) {
           if (e.kind() != ErrorKind::not_found) throw;  // never captured: nothing to refund
         }
       }},
      {"notify",
       [o](StepContext&) -> std::string {
         if (o.fails == "notify") throw std::runtime_error("notification service down");
         return "sent";
       },
       {}},
  };
}

}  // namespace

SagasReport run_sagas_interleave(TestDb& t, const Schedule& s, Findings& findings) {
  Database& db = t.db();
  LedgerOptions lo;
  lo.retry.attempts = 50;
  lo.retry.deadline = 30s;
  Ledger ledger(db, lo);
  Locks locks(db);
  const std::vector<std::string> customers{"c0", "c1", "c2"}, shops{"s0", "s1"};
  constexpr std::int64_t opening = 1'000'000;
  for (const auto& c : customers) {
    ledger.open(c, "EUR");
    ledger.deposit(c, opening, "opening-" + c);
  }
  for (const auto& shop : shops) ledger.open(shop, "EUR");
  SagaOptions so;
  so.lease_ttl = 1s;
  so.compensation_retry.attempts = 3;
  so.compensation_retry.initial_backoff = 1ms;
  so.compensation_retry.max_backoff = 5ms;
  auto define = [&](Sagas& sagas) {
    sagas.define_by_payload("pay", [&](const std::string& payload) { return payment_steps(ledger, payload); });
  };
  Sagas coordinators(db, so), recovery(db, so);
  define(coordinators);
  define(recovery);

  std::atomic<int> in_flight{0}, started{0}, interrupted{0}, recoveries{0}, recovered{0};
  std::atomic<int> completed_runs{0}, compensated_runs{0};  // run() outcomes, for Stop
  std::mutex mutex;
  std::map<std::string, Order> orders;       // every saga started, by id
  std::map<std::string, std::string> ended;  // how run() ended for it, when not completed or compensated
  MaintenanceTally tally;
  std::mutex tally_mutex;

  const Stop stop(s.duration,
                  [&] { return completed_runs > 0 && compensated_runs > 0 && interleaved(tally, tally_mutex); });
  Crew crew;
  for (int w = 0; w < 2; ++w)
    crew.add([&, w] {
      std::mt19937 rng(s.seed * 7919u + static_cast<unsigned>(w));
      for (int n = 0; !stop(); ++n) {
        Order o;
        o.customer = customers[rng() % customers.size()];
        o.shop = shops[rng() % shops.size()];
        o.amount = 1 + static_cast<std::int64_t>(rng() % 5000);
        const unsigned f = rng() % 10;
        o.fails = f < 2 ? "provider" : f < 3 ? "notify" : "-";
        o.bad_utf8 = rng() % 12 == 0 && !skipped("results not UTF-8");
        const std::string id = fmt::format("o{}-{}", w, n);
        {
          std::lock_guard lock(mutex);
          orders[id] = o;
        }
        ++started;
        try {
          InFlight g(in_flight);
          const SagaOutcome out = coordinators.run("pay", id, o.payload());
          if (out.state == SagaState::completed) ++completed_runs;
          if (out.state == SagaState::compensated) ++compensated_runs;
          if (!out.done()) {
            std::lock_guard lock(mutex);
            ended[id] = fmt::format("run() returned {}: {}", to_string(out.state), out.error);
          }
        } catch (const Error& e) {
          {
            std::lock_guard lock(mutex);
            ended[id] = fmt::format("run() threw {}: {}", to_string(e.kind()), e.what());
          }
          if (e.kind() == ErrorKind::lock_lost || e.kind() == ErrorKind::lock_busy) {
            ++interrupted;  // its lease was force-released, or recovery drives it now
            findings.expected("sagas run", e);
          } else {
            findings.unexpected_error("sagas run" + std::string(o.bad_utf8 ? " (a result not UTF-8)" : ""), e.what());
          }
        }
      }
    });
  crew.add([&] {
    std::mt19937 rng(s.seed * 31u + 3u);
    while (!stop()) {
      try {
        const SagaRecovery r = recovery.recover();
        ++recoveries;
        recovered += static_cast<int>(r.completed + r.compensated);
      } catch (const Error& e) {
        if (retriable(e.kind()))
          findings.expected("sagas recover", e);
        else
          findings.unexpected_error("sagas recover", e.what());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 40));
    }
  });
  std::vector<MaintenanceOp> ops{
      {"force-release of a running saga's lease", 3,
       [&, rng = std::mt19937(s.seed)]() mutable -> std::int64_t {
         const auto running = coordinators.list({SagaState::running, "pay", 100});
         if (running.empty()) return 0;
         locks.force_release("saga:" + running[rng() % running.size()].id, "interleave test");
         return 1;
       }},
      {"lock sweep", 2, [&] { return locks.sweep(0ms); }},
      {"hold sweep", 1, [&] { return ledger.sweep_holds(); }},
  };
  if (s.processes)
    ops.push_back(cli_op(
        t, "cli lock sweep", 1,
        [] {
          return std::vector<std::string>{"lock", "sweep", "--older-than", "0s"};
        },
        findings, tally, tally_mutex));
  crew.add([&] {
    maintain(ops, s.seed * 104729u, stop, 30ms, in_flight, tally, tally_mutex, findings, {ErrorKind::not_found});
  });
  crew.run();

  // Recovery finishes what is left (a lease force-released or ended by a coordinator that gave up
  // expires within lease_ttl).
  SagasReport r;
  const auto give_up = Clock::now() + 10s;
  for (;;) {
    SagaRecovery last;
    try {
      last = recovery.recover();
    } catch (const Error& e) {
      if (!retriable(e.kind())) {
        findings.unexpected_error("sagas final recover", e.what());
        break;
      }
    }
    recovered += static_cast<int>(last.completed + last.compensated);
    if ((last.ok() && recovery.list({SagaState::running, "", 1}).empty() &&
         recovery.list({SagaState::compensating, "", 1}).empty()) ||
        Clock::now() > give_up)
      break;
    std::this_thread::sleep_for(100ms);
  }
  r.started = started;
  r.interrupted = interrupted;
  r.recoveries = recoveries;
  r.recovered = recovered;
  r.maintenance = tally;
  std::map<std::string, std::int64_t> expected;
  for (const auto& c : customers) expected[c] = opening;
  for (const auto& [id, o] : orders) {
    const auto info = settled([&] { return recovery.get(id); });
    if (!info) {
      r.unresolved.push_back(fmt::format("{} was never recorded ({}; {})", id, o.payload(),
                                         ended.count(id) ? ended[id] : "run() returned it done"));
      continue;
    }
    if (info->state == SagaState::completed) {
      ++r.completed;
      expected[o.customer] -= o.amount;
      expected[o.shop] += o.amount;
    } else if (info->state == SagaState::compensated) {
      ++r.compensated;
    } else {
      r.unresolved.push_back(fmt::format("{} {} ({}{}): {}; {}", id, to_string(info->state), o.payload(),
                                         o.bad_utf8 ? ", a result not UTF-8" : "", info->error.substr(0, 200),
                                         ended.count(id) ? ended[id].substr(0, 200) : "run() returned it done"));
    }
  }
  const CheckReport check = settled([&] { return ledger.check(); });
  r.check_ok = check.ok();
  violations_text(check, r.violations);
  for (const auto& a : settled([&] { return ledger.list(); }))
    if (a.balance != expected[a.id])
      r.balances_wrong.push_back(
          fmt::format("{}: balance {}, the completed orders make {}", a.id, a.balance, expected[a.id]));
  return r;
}

// ---- Two-phase commit (PostgreSQL) ----------------------------------------------------------

TwoPhaseReport run_two_phase_interleave(TestDb& t, const Schedule& s, Findings& findings) {
  Database& a = t.db();
  // The other participant: a second database of the same server, same table prefix (as the
  // two-phase tests do); the recovery reaches it through a fault proxy that cuts its connections.
  const std::string url_b = own_database(t.url(), "rowguard_2pc_b");
  Database b = Database::open(url_b, t.options());
  b.migrate();
  FaultProxy proxy(port_of(url_b));
  Database b_for_recovery = Database::open(via_port(url_b, proxy.port()), t.options());
  Cache cache_a(a), cache_b(b);
  LedgerOptions cached_a, cached_b;
  cached_a.cache = &cache_a;
  cached_b.cache = &cache_b;
  Ledger la(a, cached_a), lb(b, cached_b);  // the service's ledgers, reading through their caches
  Ledger plain_a(a), plain_b(b);            // the table, for the reader and the checks
  const std::vector<std::string> in_a{"a0", "a1", "a2"}, in_b{"b0", "b1", "b2"};
  constexpr std::int64_t opening = 100'000;
  for (const auto& id : in_a) {
    la.open(id, "EUR");
    la.deposit(id, opening, "opening-" + id);
  }
  for (const auto& id : in_b) {
    lb.open(id, "EUR");
    lb.deposit(id, opening, "opening-" + id);
  }
  // prepared transactions are cluster-wide: a log name of this run's own.
  const std::string log_name = fmt::format("il{}x{}", ::getpid(), s.seed % 100000);
  constexpr auto grace = std::chrono::milliseconds(800);
  TwoPhaseOptions ro;
  ro.log_name = log_name;
  ro.recovery_grace = grace;
  TwoPhase recovery(a, {{"a", &a}, {"b", &b_for_recovery}}, ro);

  std::atomic<int> in_flight{0}, acknowledged{0}, applied{0}, retries{0}, given_up{0}, lost_race{0};
  std::atomic<int> past_grace{0};
  CachedReads cached;
  std::mutex mutex;
  std::map<std::string, std::int64_t> delta;
  MaintenanceTally tally;
  std::mutex tally_mutex;

  const Stop stop(s.duration, [&] { return applied > 0 && interleaved(tally, tally_mutex); });
  Crew crew;
  for (int w = 0; w < 3; ++w)
    crew.add([&, w] {
      std::mt19937 rng(s.seed * 7919u + static_cast<unsigned>(w));
      std::mt19937 pauses(s.seed * 7u + static_cast<unsigned>(w));
      TwoPhaseOptions o = ro;
      o.ledgers = {{"a", cached_a}, {"b", cached_b}};  // the legs drop the cached balances they change
      // A coordinator pauses now and then after its PREPAREs (sometimes past the grace, when
      // recovery may abort it first) or after its decision (recovery may commit it first).
      o.on_step = [&pauses, &past_grace, grace](TwoPhaseStep step, const std::string&) {
        if (step == TwoPhaseStep::prepared && pauses() % 8 == 0) {
          const auto pause = std::chrono::milliseconds(pauses() % (grace.count() * 3 / 2));
          past_grace += pause > grace;
          std::this_thread::sleep_for(pause);
        }
        if (step == TwoPhaseStep::decided && pauses() % 8 == 0)
          std::this_thread::sleep_for(std::chrono::milliseconds(pauses() % 300));
      };
      TwoPhase tp(a, {{"a", &a}, {"b", &b}}, o);
      std::map<std::string, std::int64_t> moved;
      for (int n = 0; !stop(); ++n) {
        const bool ab = rng() % 2 == 0;
        const std::string x = (ab ? in_a : in_b)[rng() % 3], y = (ab ? in_b : in_a)[rng() % 3];
        const std::int64_t amount = 1 + static_cast<std::int64_t>(rng() % 300);
        const std::string key = fmt::format("w{}-{}", w, n);
        const auto give_up = Clock::now() + 30s;
        for (;;) {
          try {
            InFlight f(in_flight);
            const auto r = ab ? tp.transfer("a", x, "b", y, amount, key) : tp.transfer("b", x, "a", y, amount, key);
            ++acknowledged;
            if (r.ok()) {
              ++applied;
              moved[x] -= amount;
              moved[y] += amount;
            }
            break;
          } catch (const Error& e) {
            if (!retriable(e.kind())) {
              findings.unexpected_error("two-phase transfer", e.what());
              break;
            }
            if (e.kind() == ErrorKind::conflict) ++lost_race;
            findings.expected("two-phase transfer", e);
            ++retries;
            if (Clock::now() > give_up) {
              ++given_up;
              break;
            }
            std::this_thread::sleep_for(5ms);
          }
        }
      }
      std::lock_guard lock(mutex);
      for (const auto& [id, m] : moved) delta[id] += m;
    });
  crew.add([&] {  // the reader: cached accounts in both databases against their tables
    read_cached_against_table(
        stop, s.seed * 31u + 11u,
        [&](std::mt19937& rng) {
          const bool in_first = rng() % 2 == 0;
          return std::tuple{(in_first ? in_a : in_b)[rng() % 3], in_first ? &plain_a : &plain_b, in_first ? &la : &lb};
        },
        6ms, cached, findings, "two-phase reader");
  });
  std::vector<MaintenanceOp> ops{
      {"2pc recover", 6,
       [&]() -> std::int64_t {
         const RecoveryReport r = recovery.recover();
         for (const auto& e : r.errors) findings.expected("2pc recover participant", Error(ErrorKind::transient, e));
         std::lock_guard lock(tally_mutex);
         tally.effect["2pc recover: rolled back"] += r.rolled_back;
         return r.committed + r.rolled_back;
       }},
      {"2pc prune (the grace)", 2, [&] { return recovery.prune(grace); }},
      {"cut the recovery's connections to b", 1,
       [&]() -> std::int64_t {
         proxy.cut_all();
         return 1;
       }},
  };
  crew.add([&] { maintain(ops, s.seed * 104729u, stop, 40ms, in_flight, tally, tally_mutex, findings); });
  crew.run();

  TwoPhaseReport r;
  // Recovery settles what is left: nothing may stay prepared.
  const std::string gids = fmt::format("rowguard:{}:", log_name);
  auto prepared = [&] {
    return settled([&] {
      return a.exec("SELECT count(*) FROM pg_prepared_xacts WHERE left(gid, length($1)) = $1", {gids}).one().i64(0);
    });
  };
  for (const auto give_up = Clock::now() + 20s; Clock::now() < give_up;) {
    try {
      if (recovery.recover().clean() && prepared() == 0) break;
    } catch (const Error& e) {
      findings.expected("2pc final recover", e);
    }
    std::this_thread::sleep_for(200ms);
  }
  r.prepared_left = prepared();
  r.acknowledged = acknowledged;
  r.applied = applied;
  r.retries = retries;
  r.given_up = given_up;
  r.conflicts_from_recovery = lost_race;
  r.paused_past_grace = past_grace;
  r.stale_cached_reads = cached.stale;
  r.first_stale = cached.first_stale;
  r.maintenance = tally;
  // Both legs of every key alike: the same gid and amount, a withdrawal on one side and a deposit
  // on the other; no key on one side only.
  const std::string legs = fmt::format(
      "SELECT idempotency_key, global_txid, amount, kind FROM {}transfers WHERE global_txid IS NOT NULL AND outcome = "
      "'ok'",
      a.table_prefix());
  std::map<std::string, std::tuple<std::string, std::int64_t, std::string>> leg_a, leg_b;
  for (const auto& row : settled([&] { return a.exec(legs); }).rows)
    leg_a[row.text(0)] = {row.text(1), row.i64(2), row.text(3)};
  for (const auto& row : settled([&] { return b.exec(legs); }).rows)
    leg_b[row.text(0)] = {row.text(1), row.i64(2), row.text(3)};
  auto unmatched = [&](const std::string& what) {
    if (r.legs_unmatched++ == 0) r.first_unmatched = what;
  };
  for (const auto& [key, leg] : leg_a) {
    const auto twin = leg_b.find(key);
    if (twin == leg_b.end())
      unmatched(fmt::format("key {}: a {} in a (gid {}), nothing in b", key, std::get<2>(leg), std::get<0>(leg)));
    else if (std::get<0>(twin->second) != std::get<0>(leg) || std::get<1>(twin->second) != std::get<1>(leg) ||
             std::get<2>(twin->second) == std::get<2>(leg))
      unmatched(fmt::format("key {}: legs differ ({} {} {} in a, {} {} {} in b)", key, std::get<2>(leg),
                            std::get<1>(leg), std::get<0>(leg), std::get<2>(twin->second), std::get<1>(twin->second),
                            std::get<0>(twin->second)));
  }
  for (const auto& [key, leg] : leg_b)
    if (!leg_a.count(key))
      unmatched(fmt::format("key {}: a {} in b (gid {}), nothing in a", key, std::get<2>(leg), std::get<0>(leg)));
  const CheckReport check_a = settled([&] { return plain_a.check(); });
  const CheckReport check_b = settled([&] { return plain_b.check(); });
  r.checks_ok = check_a.ok() && check_b.ok();
  violations_text(check_a, r.violations);
  violations_text(check_b, r.violations);
  r.expected_total = 6 * opening;
  for (Ledger* l : {&plain_a, &plain_b})
    for (const auto& acc : settled([&] { return l->list(); })) {
      r.total += acc.balance;
      if (acc.balance != opening + delta[acc.id])
        r.balances_wrong.push_back(fmt::format("{}: balance {}, the acknowledged transfers make {}", acc.id,
                                               acc.balance, opening + delta[acc.id]));
    }
  return r;
}

}  // namespace rowguard::test

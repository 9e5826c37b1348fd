#include "support/fault_workloads.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>

using namespace std::chrono_literals;

namespace rowguard::test {

namespace {
using Clock = std::chrono::steady_clock;

// The kinds a broken session, a restarting server or a cut connection may produce. Anything else
// (permanent, invalid_argument, schema_mismatch, ...) during a fault is a bug in the mapping.
bool expected_under_faults(ErrorKind k) {
  return k == ErrorKind::transient || k == ErrorKind::in_doubt || k == ErrorKind::conflict ||
         k == ErrorKind::lock_busy || k == ErrorKind::lock_lost;
}

// Runs f until it returns, retrying what a fault may cause, for up to a minute (the server may
// still be coming back up). Used for set-up and for the checks after the faults stop.
template <class F>
auto persist(ErrorTally& errors, F&& f) {
  const auto give_up = Clock::now() + 60s;
  for (;;) {
    try {
      return f();
    } catch (const Error& e) {
      errors.add(e);
      if (!expected_under_faults(e.kind()) || Clock::now() > give_up) throw;
      std::this_thread::sleep_for(50ms);
    }
  }
}

std::string account(const std::string& tag, int i) { return fmt::format("{}-a{}", tag, i); }
}  // namespace

std::chrono::seconds fault_duration(int ci) {
  if (const char* s = std::getenv("ROWGUARD_FAULT_SECONDS"); s && *s) return std::chrono::seconds(std::atoi(s));
  return std::chrono::seconds(ci);
}

void ErrorTally::add(const Error& e) {
  std::lock_guard lock(mutex);
  ++counts[e.kind()];
  if (!expected_under_faults(e.kind()) && first_unexpected.empty()) first_unexpected = e.what();
}

int ErrorTally::of(ErrorKind k) {
  std::lock_guard lock(mutex);
  return counts[k];
}

std::string ErrorTally::summary() {
  std::lock_guard lock(mutex);
  std::string s;
  for (const auto& [kind, n] : counts) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", n, to_string(kind));
  return s.empty() ? "no errors" : s;
}

BankReport run_bank(Database& db, const std::string& tag, int accounts, int workers, std::chrono::seconds duration,
                    ErrorTally& errors, const std::function<void()>& quiet) {
  LedgerOptions lo;
  lo.retry.attempts = 50;
  lo.retry.deadline = 30s;
  Ledger ledger(db, lo);
  for (int i = 0; i < accounts; ++i) {
    persist(errors, [&] {
      // A retried open after an in_doubt one finds the account there already.
      if (!db.exec(fmt::format("SELECT id FROM {}accounts WHERE id = $1", db.table_prefix()), {account(tag, i)})
               .empty())
        return 0;
      ledger.open(account(tag, i), "EUR");
      return 0;
    });
    persist(errors, [&] { return ledger.deposit(account(tag, i), 10'000, fmt::format("{}-seed{}", tag, i)); });
  }

  std::mutex mutex;
  std::set<std::string> acknowledged, sent;
  std::atomic<int> given_up{0}, retries{0};
  const auto stop = Clock::now() + duration;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w * 7919 + 17));
      for (int i = 0; Clock::now() < stop; ++i) {
        const std::string key = fmt::format("{}-t{}-{}", tag, w, i);
        const int from = static_cast<int>(rng() % static_cast<unsigned>(accounts));
        const int to = (from + 1 + static_cast<int>(rng() % static_cast<unsigned>(accounts - 1))) % accounts;
        const std::int64_t amount = 1 + static_cast<std::int64_t>(rng() % 50);
        {
          std::lock_guard lock(mutex);
          sent.insert(key);
        }
        // The documented recovery: an error means "unknown or not done": send the same key again.
        const auto give_up = Clock::now() + 60s;
        for (;;) {
          try {
            if (i % 4 == 3) {
              // Every fourth payment is a hold and its capture, whose transfer is recorded under
              // the key: both steps replay their first outcome when sent again.
              const HoldResult h = ledger.hold(account(tag, from), account(tag, to), amount, key + "-hold", 120s);
              if (!h.ok()) break;  // rejected: nothing reserved, nothing journaled under the key
              ledger.capture(h.hold_id, std::nullopt, key);
            } else {
              ledger.transfer(account(tag, from), account(tag, to), amount, key);
            }
            std::lock_guard lock(mutex);
            acknowledged.insert(key);
            break;
          } catch (const Error& e) {
            errors.add(e);
            ++retries;
            if (Clock::now() > give_up) {
              ++given_up;
              break;
            }
            std::this_thread::sleep_for(10ms);
          }
        }
      }
    });
  for (auto& t : threads) t.join();
  quiet();

  BankReport r;
  r.acknowledged = static_cast<int>(acknowledged.size());
  r.given_up = given_up;
  r.retries = retries;
  r.expected_total = 10'000LL * accounts;
  const CheckReport check = persist(errors, [&] { return ledger.check(); });
  r.check_ok = check.ok();
  r.total = check.total_balance;
  const Result rows = persist(errors, [&] {
    return db.exec(fmt::format("SELECT idempotency_key FROM {}transfers WHERE kind = 'transfer' AND "
                               "substr(idempotency_key, 1, $2) = $1",
                               db.table_prefix()),
                   {tag + "-t", static_cast<std::int64_t>(tag.size() + 2)});
  });
  std::set<std::string> journal;
  for (const auto& row : rows.rows) journal.insert(row.text(0));
  r.journal_transfers = static_cast<int>(rows.rows.size());  // a key twice would show as rows > keys
  for (const auto& k : acknowledged) r.missing += journal.count(k) == 0;
  for (const auto& k : journal) r.unexplained += sent.count(k) == 0;
  if (journal.size() != rows.rows.size()) r.unexplained += static_cast<int>(rows.rows.size() - journal.size());
  return r;
}

LockReport run_locks(Database& db, const std::string& tag, int workers, std::chrono::seconds duration,
                     ErrorTally& errors, const std::function<void()>& quiet) {
  Locks locks(db);
  Fence fence(db);
  const std::string name = tag + "-lock", resource = tag + "-resource";
  struct Interval {
    Clock::time_point start, end;
    std::int64_t token;
  };
  std::mutex mutex;
  std::vector<Interval> intervals;
  std::atomic<int> rejected{0};
  std::atomic<std::int64_t> highest_written{0};   // the newest token whose fenced write committed
  std::atomic<std::int64_t> highest_acquired{0};  // the newest token any holder was given
  const auto stop = Clock::now() + duration;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&] {
      while (Clock::now() < stop) {
        std::optional<Lease> lease;
        try {
          lease.emplace(locks.acquire(name, 1500ms, 3s));
        } catch (const Error& e) {
          errors.add(e);
          std::this_thread::sleep_for(5ms);
          continue;
        }
        const auto start = Clock::now();
        for (auto seen = highest_acquired.load();
             seen < lease->token() && !highest_acquired.compare_exchange_weak(seen, lease->token());) {
        }
        if (!lease->valid()) continue;
        try {
          auto tx = db.begin();
          fence.guard(tx, resource, lease->token());  // the holder's write, fenced by its token
          tx.commit();
          for (auto seen = highest_written.load();
               seen < lease->token() && !highest_written.compare_exchange_weak(seen, lease->token());) {
          }
        } catch (const Error& e) {
          errors.add(e);
          if (e.kind() == ErrorKind::lock_lost) ++rejected;
        }
        std::this_thread::sleep_for(20ms);
        const auto end = Clock::now();
        // Only what the holder could rely on: the lease was still valid by its own clock at the end.
        if (lease->valid()) {
          std::lock_guard lock(mutex);
          intervals.push_back({start, end, lease->token()});
        }
        try {
          lease->release();
        } catch (const Error& e) {
          errors.add(e);
          lease->detach();
        }
      }
    });
  for (auto& t : threads) t.join();
  quiet();

  LockReport r;
  r.holds = static_cast<int>(intervals.size());
  r.stale_writes_rejected = rejected;
  std::sort(intervals.begin(), intervals.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
  for (std::size_t i = 1; i < intervals.size(); ++i) {
    r.overlaps += intervals[i].start < intervals[i - 1].end;
    r.tokens_out_of_order += intervals[i].token <= intervals[i - 1].token;
  }
  // The fence's high-water mark is the newest token whose write committed (a holder's write can
  // fail in a fault, or end in doubt and have committed after all: never below, never beyond the
  // newest token handed out).
  const std::int64_t highest = persist(errors, [&] { return fence.highest(resource); });
  if (highest < highest_written || highest > highest_acquired) ++r.fence_wrong;
  return r;
}

CacheReport run_cache(Database& db, const std::string& tag, int workers, std::chrono::seconds duration,
                      ErrorTally& errors, const std::function<void()>& quiet) {
  CacheOptions co;
  co.load_lease_ttl = 2s;
  co.load_wait = 10s;
  Cache cache(db, co);
  constexpr int keys = 4;
  std::atomic<int> loads{0}, reads{0}, wrong{0};
  auto key_of = [&](int k) { return fmt::format("{}-k{}", tag, k); };
  auto loader_for = [&](const std::string& key) {
    return [&, key]() -> std::optional<std::string> { return fmt::format("{}={}", key, ++loads); };
  };
  auto right = [](const std::string& key, const std::optional<std::string>& v) {
    return v && v->rfind(key + "=", 0) == 0;
  };
  const auto stop = Clock::now() + duration;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w * 104729 + 3));
      while (Clock::now() < stop) {
        const std::string key = key_of(static_cast<int>(rng() % keys));
        try {
          if (rng() % 8 == 0) {
            cache.invalidate(key);
          } else {
            const auto v = cache.get_or_load(key, 5s, loader_for(key));
            ++reads;
            if (!right(key, v)) ++wrong;
          }
        } catch (const Error& e) {
          errors.add(e);
          std::this_thread::sleep_for(5ms);
        }
      }
    });
  for (auto& t : threads) t.join();
  quiet();

  CacheReport r;
  r.reads = reads;
  r.loads = loads;
  r.wrong_values = wrong;
  r.final_reads_ok = true;
  for (int k = 0; k < keys; ++k) {
    const std::string key = key_of(k);
    const auto loaded = persist(errors, [&] { return cache.get_or_load(key, 60s, loader_for(key)); });
    const auto again = persist(errors, [&] { return cache.get(key); });
    r.final_reads_ok = r.final_reads_ok && right(key, loaded) && again == loaded;
  }
  return r;
}

}  // namespace rowguard::test

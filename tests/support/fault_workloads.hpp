#pragma once
// Workloads that run while something breaks (sessions killed, the server restarted, the network
// cut), and the invariant each one checks afterwards. Shared by the fault tests and the soak mode.

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include <rowguard/rowguard.hpp>

namespace rowguard::test {

// How long a fault test runs its workloads: `ci` seconds, or $ROWGUARD_FAULT_SECONDS (the soak mode,
// scripts/soak.sh) when set.
std::chrono::seconds fault_duration(int ci);

// Each workload calls quiet() when its work is done and before its checks: the caller stops the
// faults there, so the checks read a settled database (a soak's ledger check over minutes of
// entries takes long enough to be killed again and again otherwise).

// Error kinds seen by the workloads, for the report and for the "never permanent" checks.
struct ErrorTally {
  std::mutex mutex;
  std::map<ErrorKind, int> counts;
  std::string first_unexpected;  // the message of the first kind a fault must never produce
  void add(const Error& e);
  int of(ErrorKind k);
  std::string summary();
};

// Transfers between `accounts` accounts of 10'000 each from `workers` threads until `duration` has
// passed. Each transfer has a fresh key, and a caller that gets an error retries it with the same
// key, as docs/ledger.md says, until the ledger answers (or a minute passes). Then: the ledger check
// passes, money is conserved, every acknowledged key is in the journal exactly once, and nothing
// but acknowledged or given-up keys is.
struct BankReport {
  int acknowledged = 0;
  int given_up = 0;  // keys whose retries ran out: may or may not have applied, never twice
  int retries = 0;
  bool check_ok = false;
  std::int64_t total = 0, expected_total = 0;
  int journal_transfers = 0;
  int missing = 0;      // acknowledged but not in the journal
  int unexplained = 0;  // in the journal but never sent
};
BankReport run_bank(Database& db, const std::string& tag, int accounts, int workers, std::chrono::seconds duration,
                    ErrorTally& errors, const std::function<void()>& quiet);

// Threads contending for one lock. A holder records the interval during which its lease was valid
// by its own (conservative) clock, and writes through a Fence with its token. Then: no two
// recorded intervals overlap, tokens grow with time, and the fence never admitted a stale token.
struct LockReport {
  int holds = 0;
  int overlaps = 0;
  int tokens_out_of_order = 0;
  int fence_wrong = 0;  // the fence's high-water mark is not the newest committed token
  int stale_writes_rejected = 0;
  int stale_writes_admitted = 0;
};
LockReport run_locks(Database& db, const std::string& tag, int workers, std::chrono::seconds duration,
                     ErrorTally& errors, const std::function<void()>& quiet);

// get_or_load on a few keys from several threads, with invalidations. Every value returned is one
// the loader produced for that key, and after the run every key still loads and reads back.
struct CacheReport {
  int reads = 0;
  int loads = 0;
  int wrong_values = 0;
  bool final_reads_ok = false;
};
CacheReport run_cache(Database& db, const std::string& tag, int workers, std::chrono::seconds duration,
                      ErrorTally& errors, const std::function<void()>& quiet);

}  // namespace rowguard::test

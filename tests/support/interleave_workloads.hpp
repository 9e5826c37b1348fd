#pragma once
// Workloads that run beside the maintenance operations that could break their guarantees (cache
// sweep and size eviction, prune-keys, archive, hold sweep, lock sweep and force-release, saga
// recovery, two-phase recover and prune), on real threads lined up on a start barrier, with some
// of the maintenance run as CLI processes; and what each checks afterwards. Every random choice
// comes from Schedule::seed (thread timing does not: a seed reruns the same choices, not the same
// interleaving). Used by tests/system/interleave_test.cpp; scripts/soak.sh runs them for longer.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <rowguard/rowguard.hpp>

namespace rowguard::test {

class TestDb;

struct Schedule {
  unsigned seed = 0;
  std::chrono::milliseconds duration{3000};
  // Some maintenance also runs as `rowguard` CLI processes on the same database (false on
  // sqlite-memory, whose database is private to this process).
  bool processes = true;
};

// Errors the run met: expected ones counted by "what: kind", the others kept verbatim.
struct Findings {
  std::mutex mutex;
  std::map<std::string, int> counts;
  std::vector<std::string> unexpected;  // at most 20, then only counted
  int unexpected_count = 0;
  void expected(const std::string& what, const Error& e);
  void unexpected_error(const std::string& what, const std::string& message);
  std::string summary();
};

// What the maintenance side did: how often each operation ran and changed something, and how
// many runs began while a workload request was in flight (the evidence that they interleaved).
struct MaintenanceTally {
  std::map<std::string, int> ran;
  std::map<std::string, std::int64_t> effect;      // rows pruned, transfers archived, leases ended, ...
  std::map<std::string, std::int64_t> longest_ms;  // the slowest run of each
  int overlapped = 0;
  int cli_runs = 0;
  std::string summary() const;
};

// ---- Payments -------------------------------------------------------------------------------
// Workers pay between accounts in EUR and in USD by transfer, hold + capture, hold + void,
// reversal and batch (linked chains too), each under a fresh key, retrying an error with the same
// key; they send acknowledged requests again and expect the recorded outcome back (replayed). A
// worker's last few keys stay young; older ones are retired: the test then back-dates them 40
// days, so prune-keys (30 days) and archive (a cutoff 31 days back) act on them, as they would on
// a ledger that has run for months. Holds abandoned with a 300 ms timeout give the hold sweep
// work. A reader compares cached and uncached account reads. Maintenance beside them: prune-keys,
// archive (two threads, so runs overlap), the aging, hold sweep, cache sweep with no grace and a
// size bound on the ledger's cache, lock sweep, and the same through the CLI.
struct PaymentsReport {
  int acknowledged = 0;  // keyed requests that got an answer
  int applied = 0;       // of those, applied (status ok)
  int resent = 0;        // acknowledged requests sent again
  int resend_wrong = 0;  // ... answered other than "replayed, same outcome" (applied twice, or lost)
  std::vector<std::string> resend_failures;
  int retries = 0;
  int given_up = 0;
  bool check_ok = false;
  std::vector<std::string> violations;                          // ledger check
  std::vector<std::string> balances_wrong;                      // "<account>: balance B, acknowledged requests make E"
  std::map<std::string, std::int64_t> totals, expected_totals;  // per currency
  int cached_reads = 0;
  int stale_cached_reads = 0;  // a cached account older than one read from the table before it
  std::string first_stale;
  MaintenanceTally maintenance;
};
PaymentsReport run_payments(TestDb& t, const Schedule& s, Findings& findings);

// ---- Leases ---------------------------------------------------------------------------------
// Workers take one lease in turn and write under it: a guarded transaction (Lease::guard, and
// Fence::guard on a resource) appends (token, worker) to a log table, and Fence::admit gates an
// "external" resource. Now and then a holder dies (never renews or releases; ttl 300 ms), on the
// shared lock or on one of a few side locks, so the others wait for an expiry and the sweeps have
// expired leases to clear. Beside them: force-release of the shared lock (a legitimate way in for
// the next holder: the evicted holder's writes must then be refused), and lock sweeps (which must
// never touch a live lease), in process and through the CLI.
struct LeasesReport {
  int acquisitions = 0;
  int guarded_writes = 0;
  int refused_after_force_release = 0;  // an evicted holder's write refused (the property at work)
  int tokens_reused = 0;                // two acquisitions with one token
  int tokens_out_of_order = 0;          // an acquisition that began after another ended got a lower token
  int log_out_of_order = 0;             // a committed guarded write with a lower token after a higher one
  int log_token_shared = 0;             // two workers committed writes under one token
  int fence_admitted_stale = 0;         // Fence::admit let a token in after a higher one was admitted
  int leases_lost_unexplained = 0;      // lost without a force-release during the hold, or expiry
  std::string first_problem;
  MaintenanceTally maintenance;
};
LeasesReport run_leases(TestDb& t, const Schedule& s, Findings& findings);

// ---- Cache ----------------------------------------------------------------------------------
// Keys in two prefix groups, each with a true version in memory. Writers bump a key's version,
// then invalidate it (in process or by a CLI process), put the new version, or invalidate the
// whole group by prefix; once that returns, the version is the key's floor. Readers get_or_load
// with slow loaders that read the true version (some with stale_for or early refresh), or get;
// every value read must be for its key and at least the floor seen when the read began. Beside
// them: sweeps with no grace and a size bound, lock sweeps, and force-release of loader leases.
struct CacheInterleaveReport {
  int reads = 0;
  int loads = 0;
  int writes = 0;
  int wrong_key = 0;
  int stale = 0;  // a value older than an invalidation or put that had returned before the read
  // ... by how it came: get (so the table kept it), a get_or_load whose own loader made it, a
  // get_or_load that ran no loader (a hit, or another caller's load in flight in this process)
  int stale_from_table = 0, stale_from_own_load = 0, stale_from_hit_or_join = 0;
  std::string first_stale;  // the first of each way, and a stale value left in the table
  int loads_lock_lost = 0;  // get_or_load answered lock_lost (its loader lease was force-released)
  MaintenanceTally maintenance;
};
CacheInterleaveReport run_cache_interleave(TestDb& t, const Schedule& s, Findings& findings);

// ---- Sagas ----------------------------------------------------------------------------------
// Payment sagas (hold, provider, capture, notify; the provider and notify fail for some orders,
// and a few step results are not valid UTF-8) run by two coordinators, while another Sagas
// recovers, and maintenance force-releases the leases of running sagas, sweeps locks and holds.
// Afterwards recovery runs until nothing is left; then every saga must be completed or
// compensated, and the money must match: each completed order paid once, each compensated one
// not at all.
struct SagasReport {
  int started = 0;
  int completed = 0, compensated = 0;
  int interrupted = 0;  // run() ended with lock_lost or lock_busy (left to recovery)
  int recoveries = 0, recovered = 0;
  std::vector<std::string> unresolved;  // "<id> <state> <payload>: <error>" after the final recovery
  bool check_ok = false;
  std::vector<std::string> violations;
  std::vector<std::string> balances_wrong;
  MaintenanceTally maintenance;
};
SagasReport run_sagas_interleave(TestDb& t, const Schedule& s, Findings& findings);

// ---- Two-phase commit (PostgreSQL) ----------------------------------------------------------
// Transfers between two databases in both directions, some coordinators pausing after PREPARE or
// after the decision (a few past the recovery grace), retried with their key on any error; beside
// them recover() and prune() on a schedule (the recovery's connections to the second database cut
// now and then), and a reader comparing cached and uncached accounts.
// Afterwards: nothing left prepared, both legs of every key alike, money conserved across both
// databases and per account exactly what the acknowledged transfers make.
struct TwoPhaseReport {
  int acknowledged = 0, applied = 0, retries = 0, given_up = 0;
  int conflicts_from_recovery = 0;  // transfers that lost the race to recovery past their own retries
  int paused_past_grace = 0;        // coordinators that paused after PREPARE for longer than the grace
  int legs_unmatched = 0;           // a key applied in one database only, or its legs differ
  std::string first_unmatched;
  std::int64_t prepared_left = 0;
  bool checks_ok = false;
  std::vector<std::string> violations;
  std::vector<std::string> balances_wrong;
  std::int64_t total = 0, expected_total = 0;
  int stale_cached_reads = 0;
  std::string first_stale;
  MaintenanceTally maintenance;
};
TwoPhaseReport run_two_phase_interleave(TestDb& t, const Schedule& s, Findings& findings);

}  // namespace rowguard::test

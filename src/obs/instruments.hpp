#pragma once
// The instruments of every component, created once (function-local statics) so that a call site
// records with one atomic add and no lookup:
//
//   detail::instruments::locks().acquired.add();
//
// Every family and every label combination is registered by register_all(), which metrics() calls
// first: a series that never moved reads 0. The names are documented in docs/operations.md.
// Internal: included only from src/.

#include "rowguard/error.hpp"

#include "obs/metrics_registry.hpp"

namespace rowguard::detail::instruments {

using metrics::Counter;
using metrics::Gauge;
using metrics::Histogram;

struct Locks {
  Counter &acquired, &busy, &error;  // rowguard_lock_acquires_total{result}
  Histogram& acquire_seconds;        // one try-acquire statement
  Counter& waits;                    // acquire() calls that had to wait
  Histogram& wait_seconds;           // acquire() calls that waited, until they returned or gave up
  Counter &renewed, &renew_lost, &renew_error;
  Counter &released, &release_lost, &release_error;
  Counter& leases_lost;
  Counter& force_releases;
};
const Locks& locks();

enum class LedgerKind { transfer, deposit, withdrawal, reversal, hold, capture, void_hold, batch, update };
inline constexpr int ledger_kinds = 9;
enum class LedgerOutcome { ok, insufficient_funds, replayed, error };
inline constexpr int ledger_outcomes = 4;
struct Ledger {
  Counter* requests[ledger_kinds][ledger_outcomes];
  Histogram* request_seconds[ledger_kinds];
  Counter& conflicts;
  Counter& retries;
  Counter& requests_of(LedgerKind k, LedgerOutcome o) const {
    return *requests[static_cast<int>(k)][static_cast<int>(o)];
  }
  Histogram& seconds_of(LedgerKind k) const { return *request_seconds[static_cast<int>(k)]; }
};
const Ledger& ledger();

struct Cache {
  Counter &hit, &miss, &stale;    // rowguard_cache_lookups_total{result}
  Counter &load_ok, &load_error;  // rowguard_cache_loads_total{result}
  Histogram& load_seconds;
  Counter& invalidations;
  Counter& stale_writes_refused;
};
const Cache& cache();

struct Standby {
  Counter &answered, &stale, &failed;  // rowguard_standby_reads_total{result}
};
const Standby& standby();

struct Pool {
  Counter& borrows;
  Counter& waits;
  Histogram& wait_seconds;
  Counter& timeouts;
  Counter& created;
  Counter& discarded;
  Gauge& open;
  Gauge& idle;
};
const Pool& pool();

struct Retries {
  Counter &conflict, &transient, &in_doubt;  // rowguard_retries_total{kind}
  Counter& exhausted;
};
const Retries& retries();

struct Sagas {
  Counter &started, &completed, &compensated, &compensation_failed, &recovered;  // rowguard_sagas_total{event}
};
const Sagas& sagas();

struct TwoPhase {
  Counter &committed, &rolled_back, &in_doubt, &unfinished;  // rowguard_two_phase_total{outcome}
};
const TwoPhase& two_phase();

void register_all();

// with_retries' hooks (core/retrying.cpp): a retry of error e, and a retriable error given up on.
void count_retry(const Error& e) noexcept;
void retries_exhausted(const Error& e, int attempts) noexcept;

}  // namespace rowguard::detail::instruments

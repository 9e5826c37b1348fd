// The instruments of every component (see core/instruments.hpp and docs/operations.md).
#include "obs/instruments.hpp"

#include <string>

#include "rowguard/database.hpp"
#include "rowguard/version.hpp"

#include "obs/logging.hpp"

namespace rowguard::detail::instruments {

namespace {
metrics::Registry& reg() { return metrics::Registry::instance(); }

Counter& counter(const char* name, const char* help, const MetricLabels& labels = {}) {
  return reg().counter(name, help, labels);
}
Histogram& histogram(const char* name, const char* help, const MetricLabels& labels = {}) {
  return reg().histogram(name, help, labels);
}
}  // namespace

const Locks& locks() {
  static const Locks m = [] {
    const char* acq = "Lock try-acquire statements by result (busy: held by someone else)";
    const char* ren = "Lease renewals by result";
    const char* rel = "Lease releases by result";
    return Locks{
        counter("rowguard_lock_acquires_total", acq, {{"result", "acquired"}}),
        counter("rowguard_lock_acquires_total", acq, {{"result", "busy"}}),
        counter("rowguard_lock_acquires_total", acq, {{"result", "error"}}),
        histogram("rowguard_lock_acquire_seconds", "Latency of one lock try-acquire statement"),
        counter("rowguard_lock_waits_total", "Blocking acquires that found the lock held and waited"),
        histogram("rowguard_lock_wait_seconds", "Time blocking acquires spent waiting, until acquired or given up"),
        counter("rowguard_lock_renewals_total", ren, {{"result", "ok"}}),
        counter("rowguard_lock_renewals_total", ren, {{"result", "lost"}}),
        counter("rowguard_lock_renewals_total", ren, {{"result", "error"}}),
        counter("rowguard_lock_releases_total", rel, {{"result", "ok"}}),
        counter("rowguard_lock_releases_total", rel, {{"result", "lost"}}),
        counter("rowguard_lock_releases_total", rel, {{"result", "error"}}),
        counter("rowguard_leases_lost_total",
                "Leases this process held and lost (expired, taken over or force-released)"),
        counter("rowguard_lock_force_releases_total", "Locks force-released by an operator")};
  }();
  return m;
}

namespace {
constexpr const char* ledger_kind_names[ledger_kinds] = {"transfer", "deposit",   "withdrawal", "reversal", "hold",
                                                         "capture",  "void_hold", "batch",      "update"};
constexpr const char* ledger_outcome_names[ledger_outcomes] = {"ok", "insufficient_funds", "replayed", "error"};
}  // namespace

const Ledger& ledger() {
  static const Ledger m = [] {
    Ledger l{{},
             {},
             counter("rowguard_ledger_conflicts_total",
                     "Ledger attempts that met a conflict or transient failure (each was retried)"),
             counter("rowguard_ledger_retries_total", "Ledger requests retried")};
    for (int k = 0; k < ledger_kinds; ++k) {
      for (int o = 0; o < ledger_outcomes; ++o)
        l.requests[k][o] = &counter("rowguard_ledger_requests_total", "Ledger requests by kind and outcome",
                                    {{"kind", ledger_kind_names[k]}, {"outcome", ledger_outcome_names[o]}});
      l.request_seconds[k] =
          &histogram("rowguard_ledger_request_seconds", "Latency of ledger requests, retries included",
                     {{"kind", ledger_kind_names[k]}});
    }
    return l;
  }();
  return m;
}

const Standby& standby() {
  static const Standby m = [] {
    const char* help =
        "Reads offered to a standby (StandbyReads) by result: answered there, or sent to the primary because the "
        "standby was too stale or failed";
    return Standby{counter("rowguard_standby_reads_total", help, {{"result", "answered"}}),
                   counter("rowguard_standby_reads_total", help, {{"result", "stale"}}),
                   counter("rowguard_standby_reads_total", help, {{"result", "failed"}})};
  }();
  return m;
}

const Cache& cache() {
  static const Cache m = [] {
    const char* look = "Cache lookups by result (stale: an expired value served within stale_for)";
    const char* load = "Cache loader calls by result";
    return Cache{counter("rowguard_cache_lookups_total", look, {{"result", "hit"}}),
                 counter("rowguard_cache_lookups_total", look, {{"result", "miss"}}),
                 counter("rowguard_cache_lookups_total", look, {{"result", "stale"}}),
                 counter("rowguard_cache_loads_total", load, {{"result", "ok"}}),
                 counter("rowguard_cache_loads_total", load, {{"result", "error"}}),
                 histogram("rowguard_cache_load_seconds", "Latency of cache loader calls"),
                 counter("rowguard_cache_invalidations_total", "Cache invalidations (keys and prefixes)"),
                 counter("rowguard_cache_stale_writes_refused_total",
                         "Loaded values not stored because an invalidation or put came first, or the load took longer "
                         "than sweep_grace")};
  }();
  return m;
}

const Pool& pool() {
  static const Pool m{
      counter("rowguard_pool_borrows_total", "Sessions borrowed from the pools"),
      counter("rowguard_pool_waits_total", "Borrows that found every session busy and waited"),
      histogram("rowguard_pool_wait_seconds", "Time borrows waited for a free session"),
      counter("rowguard_pool_timeouts_total", "Borrows that gave up waiting (pool_wait)"),
      counter("rowguard_pool_sessions_created_total", "Database sessions opened"),
      counter("rowguard_pool_sessions_discarded_total",
              "Sessions dropped from the pools (broken or left in a transaction)"),
      reg().gauge("rowguard_pool_sessions_open", "Sessions open (borrowed or idle) in all pools of the process"),
      reg().gauge("rowguard_pool_sessions_idle", "Idle sessions in all pools of the process")};
  return m;
}

const Retries& retries() {
  static const Retries m = [] {
    const char* help = "Operations retried by the retry policy, by the kind of error retried";
    return Retries{counter("rowguard_retries_total", help, {{"kind", "conflict"}}),
                   counter("rowguard_retries_total", help, {{"kind", "transient"}}),
                   counter("rowguard_retries_total", help, {{"kind", "in_doubt"}}),
                   counter("rowguard_retries_exhausted_total",
                           "Retriable failures given up on (attempts or deadline of the policy ran out)")};
  }();
  return m;
}

const Sagas& sagas() {
  static const Sagas m = [] {
    const char* help = "Saga events: started, completed, compensated, compensation_failed, recovered";
    return Sagas{counter("rowguard_sagas_total", help, {{"event", "started"}}),
                 counter("rowguard_sagas_total", help, {{"event", "completed"}}),
                 counter("rowguard_sagas_total", help, {{"event", "compensated"}}),
                 counter("rowguard_sagas_total", help, {{"event", "compensation_failed"}}),
                 counter("rowguard_sagas_total", help, {{"event", "recovered"}})};
  }();
  return m;
}

const TwoPhase& two_phase() {
  static const TwoPhase m = [] {
    const char* help = "Two-phase transactions by outcome (unfinished: committed, recover() finishes it)";
    return TwoPhase{counter("rowguard_two_phase_total", help, {{"outcome", "committed"}}),
                    counter("rowguard_two_phase_total", help, {{"outcome", "rolled_back"}}),
                    counter("rowguard_two_phase_total", help, {{"outcome", "in_doubt"}}),
                    counter("rowguard_two_phase_total", help, {{"outcome", "unfinished"}})};
  }();
  return m;
}

namespace {
// Prometheus' build_info convention: a gauge that is always 1, its labels the facts, so a query
// can join them onto other series or count the versions deployed.
void build_info() {
  static const bool registered = [] {
    reg()
        .gauge("rowguard_build_info", "rowguard's version and the schema version it expects; always 1",
               {{"version", std::string(version())}, {"schema", std::to_string(Database::library_schema_version())}})
        .set(1);
    return true;
  }();
  (void)registered;
}
}  // namespace

void register_all() {
  build_info();
  locks();
  ledger();
  cache();
  standby();
  pool();
  retries();
  sagas();
  two_phase();
}

void count_retry(const Error& e) noexcept {
  try {
    const auto& r = retries();
    if (e.kind() == ErrorKind::conflict)
      r.conflict.add();
    else if (e.kind() == ErrorKind::transient)
      r.transient.add();
    else
      r.in_doubt.add();
  } catch (...) {
    // Registering the counters the first time ran out of memory: the retry goes on uncounted.
  }
}

void retries_exhausted(const Error& e, int attempts) noexcept {
  try {
    retries().exhausted.add();
    if (!log_enabled(LogLevel::warn)) return;
    detail::log(
        LogLevel::warn, "retry", "retries exhausted",
        {{"kind", std::string(to_string(e.kind()))}, {"attempts", std::to_string(attempts)}, {"error", e.what()}});
  } catch (...) {
    // Registering the counter or building the fields ran out of memory: nothing to count or log with.
  }
}

}  // namespace rowguard::detail::instruments

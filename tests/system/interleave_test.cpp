// Maintenance run *at the same time* as the operations whose guarantees it could break: each test
// runs a workload (tests/support/interleave_workloads.hpp) on threads lined up on a start barrier beside
// maintenance on a random schedule, then checks every guarantee of that workload. Seeded: each
// run draws a seed, printed with any failure (ROWGUARD_SEED reruns the same choices); each runs
// a few seconds in the test command, $ROWGUARD_INTERLEAVE_SECONDS in the soak mode
// (scripts/soak.sh --interleave-seconds N).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/interleave_workloads.hpp"
#include "support/seeded.hpp"
#include "support/support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {

// One run's seed, database and findings. The test shows the seed with INFO (in its own scope, so
// that every failure prints it).
struct Run {
  Schedule schedule;
  TestDb t;
  Findings findings;
  Run() {
    schedule.seed = run_seed();
    schedule.duration = interleave_duration(3000ms);
    schedule.processes = can().shared_database && has_cli();
    t.db().migrate();
  }
};

void require_no_unexpected_errors(Findings& findings) {
  for (const auto& u : findings.unexpected) UNSCOPED_INFO("unexpected error: " << u);
  CHECK(findings.unexpected_count == 0);
}

std::int64_t changed(const MaintenanceTally& m, const std::string& name) {
  const auto it = m.effect.find(name);
  return it == m.effect.end() ? 0 : it->second;
}

void list(const std::vector<std::string>& lines, const char* what) {
  for (const auto& l : lines) UNSCOPED_INFO(what << ": " << l);
}

}  // namespace

TEST_CASE(
    "interleave: payments with retried keys stay exact while prune-keys, archive, hold, cache and lock sweeps "
    "run beside them",
    "[backend][interleave][threads]") {
  Run run;
  INFO(seed_note(run.schedule.seed));
  Findings& findings = run.findings;
  const PaymentsReport r = run_payments(run.t, run.schedule, findings);
  WARN(
      fmt::format("{}: {} requests acknowledged ({} applied), {} sent again, {} retries, {} given up, {} cached "
                  "reads; maintenance: {}; expected errors: {}",
                  backend(), r.acknowledged, r.applied, r.resent, r.retries, r.given_up, r.cached_reads,
                  r.maintenance.summary(), findings.summary()));
  require_no_unexpected_errors(findings);
  // The schedule interleaved: requests were answered and sent again, and maintenance changed
  // things while requests were in flight.
  CHECK(r.applied > 0);
  CHECK(r.resent > 0);
  CHECK(r.maintenance.overlapped > 0);
  CHECK(changed(r.maintenance, "age retired keys 40 days") > 0);
  // Every acknowledged request applied exactly once; every one sent again was replayed.
  CHECK(r.given_up == 0);
  list(r.resend_failures, "sent again");
  CHECK(r.resend_wrong == 0);
  list(r.balances_wrong, "balance");
  CHECK(r.balances_wrong.empty());
  // Money conserved per currency, and the ledger check clean.
  CHECK(r.totals == r.expected_totals);
  list(r.violations, "ledger check");
  CHECK(r.check_ok);
  // No cached account older than the table's.
  INFO(r.first_stale);
  CHECK(r.stale_cached_reads == 0);
}

TEST_CASE(
    "interleave: lease holders never overlap and evicted holders are refused while lock sweeps and force-release "
    "run beside them",
    "[backend][interleave][threads]") {
  Run run;
  INFO(seed_note(run.schedule.seed));
  Findings& findings = run.findings;
  const LeasesReport r = run_leases(run.t, run.schedule, findings);
  WARN(
      fmt::format("{}: {} acquisitions, {} guarded writes, {} holders evicted and refused; maintenance: {}; "
                  "expected errors: {}",
                  backend(), r.acquisitions, r.guarded_writes, r.refused_after_force_release, r.maintenance.summary(),
                  findings.summary()));
  require_no_unexpected_errors(findings);
  CHECK(r.acquisitions > 1);
  CHECK(r.guarded_writes > 0);
  CHECK(r.maintenance.overlapped > 0);
  CHECK(r.maintenance.ran.count("force-release") > 0);
  INFO(r.first_problem);
  // Fencing tokens strictly increase, and no two holders' writes interleave.
  CHECK(r.tokens_reused == 0);
  CHECK(r.tokens_out_of_order == 0);
  CHECK(r.log_out_of_order == 0);
  CHECK(r.log_token_shared == 0);
  CHECK(r.fence_admitted_stale == 0);
  // A sweep never ended a live lease: every loss is a force-release's doing.
  CHECK(r.leases_lost_unexplained == 0);
}

TEST_CASE(
    "interleave: no cache value older than a returned invalidation is read while sweeps, evictions, prefix "
    "invalidations and loader-lease force-releases run beside slow loads",
    "[backend][interleave][threads]") {
  Run run;
  INFO(seed_note(run.schedule.seed));
  Findings& findings = run.findings;
  const CacheInterleaveReport r = run_cache_interleave(run.t, run.schedule, findings);
  WARN(fmt::format(
      "{}: {} reads, {} loads, {} writes, {} loads ended by lock_lost; maintenance: {}; expected "
      "errors: {}",
      backend(), r.reads, r.loads, r.writes, r.loads_lock_lost, r.maintenance.summary(), findings.summary()));
  require_no_unexpected_errors(findings);
  CHECK(r.reads > 0);
  CHECK(r.loads > 0);
  CHECK(r.writes > 0);
  CHECK(r.maintenance.overlapped > 0);
  CHECK(r.wrong_key == 0);
  INFO(r.first_stale);
  CHECK(r.stale_from_table == 0);
  CHECK(r.stale_from_own_load == 0);
  CHECK(r.stale_from_hit_or_join == 0);
  CHECK(r.stale == 0);
}

TEST_CASE(
    "interleave: payment sagas end completed or compensated, paid once or not at all, while recovery, "
    "force-release of their leases and lock and hold sweeps run beside them",
    "[backend][interleave][saga][threads]") {
  Run run;
  INFO(seed_note(run.schedule.seed));
  Findings& findings = run.findings;
  const SagasReport r = run_sagas_interleave(run.t, run.schedule, findings);
  WARN(
      fmt::format("{}: {} sagas started, {} completed, {} compensated, {} interrupted (left to recovery), {} "
                  "recovered in {} recoveries; maintenance: {}; expected errors: {}",
                  backend(), r.started, r.completed, r.compensated, r.interrupted, r.recovered, r.recoveries,
                  r.maintenance.summary(), findings.summary()));
  require_no_unexpected_errors(findings);
  CHECK(r.completed > 0);
  CHECK(r.compensated > 0);
  CHECK(r.maintenance.overlapped > 0);
  list(r.unresolved, "unresolved");
  CHECK(r.unresolved.empty());
  list(r.balances_wrong, "balance");
  CHECK(r.balances_wrong.empty());
  list(r.violations, "ledger check");
  CHECK(r.check_ok);
}

TEST_CASE(
    "interleave: two-phase transfers commit both legs or neither while recover and prune run beside paused "
    "coordinators",
    "[pg][interleave][threads]") {
  Run run;
  INFO(seed_note(run.schedule.seed));
  Findings& findings = run.findings;
  const TwoPhaseReport r = run_two_phase_interleave(run.t, run.schedule, findings);
  WARN(
      fmt::format("{}: {} transfers acknowledged ({} applied), {} coordinators paused past the grace, {} retries ({} "
                  "after recovery won the race), {} given up; maintenance: {}; expected errors: {}",
                  backend(), r.acknowledged, r.applied, r.paused_past_grace, r.retries, r.conflicts_from_recovery,
                  r.given_up, r.maintenance.summary(), findings.summary()));
  require_no_unexpected_errors(findings);
  CHECK(r.applied > 0);
  CHECK(r.maintenance.overlapped > 0);
  CHECK(r.given_up == 0);
  CHECK(r.prepared_left == 0);
  INFO(r.first_unmatched);
  CHECK(r.legs_unmatched == 0);
  list(r.violations, "ledger check");
  CHECK(r.checks_ok);
  CHECK(r.total == r.expected_total);
  list(r.balances_wrong, "balance");
  CHECK(r.balances_wrong.empty());
  INFO(r.first_stale);
  CHECK(r.stale_cached_reads == 0);
}

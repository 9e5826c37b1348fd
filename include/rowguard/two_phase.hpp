#pragma once
// rowguard::TwoPhase: one transaction across several PostgreSQL databases by two-phase commit
// (PREPARE TRANSACTION, a durable decision in a log table, COMMIT PREPARED), and the recovery of
// prepared transactions a crashed coordinator left in doubt.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/ledger.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

// Where a two-phase commit stands; TwoPhaseOptions::on_step is called at each (tests crash there).
enum class TwoPhaseStep {
  prepared,       // every participant has prepared; nothing decided yet (a crash here aborts)
  deciding,       // about to log the commit decision (a coordinator delayed here past the grace is refused)
  decided,        // the commit decision is durable in the log; no COMMIT PREPARED sent yet
  committed_one,  // one more participant has committed (once per participant)
  finished,       // every participant has committed and the decision row is marked finished
};

std::string_view to_string(TwoPhaseStep step) noexcept;

struct TwoPhaseOptions {
  // Names this coordinator's transactions: gids are "rowguard:<log_name>:<random>", and recover()
  // touches only prepared transactions of its own log name. Default: "default".
  // REQUIRES: 1 to 40 characters of [A-Za-z0-9_-].
  std::string log_name = "default";
  // How old a prepared transaction without a decision must be (on its database's clock, from
  // pg_prepared_xacts.prepared) before recover() aborts it. It also bounds the coordinator: its
  // 'commit' is recorded only while the log database's clock is less than this past the start of
  // its first PREPARE; a decision that arrives later (a stalled coordinator, a retry after a lost
  // connection) is recorded as 'abort', so it can never commit a gid that recovery aborted, even
  // after prune() removed that abort. Assumes the clocks of the log database and the participants
  // differ by less than this. Default: 60s. REQUIRES: >= 0 (0: nothing can commit).
  std::chrono::milliseconds recovery_grace{60'000};
  // The participants' transactions. Default: read committed, read-write.
  TxOptions transaction;
  // Retries of the decision insert and of COMMIT / ROLLBACK PREPARED after a lost connection or a
  // busy prepared transaction (all of them idempotent). Default: RetryPolicy's defaults.
  RetryPolicy retry;
  // The options of the Ledger that writes transfer()'s legs in each participant, by participant
  // name (missing: LedgerOptions' defaults). Set cache to the Cache through which that database's
  // balances are read: each leg then drops the cached copies of its account in its own prepared
  // transaction, which COMMIT PREPARED commits with the leg. Without it a cached balance stays
  // stale for up to its cache_ttl. Default: none. REQUIRES: participant names; each Cache on the
  // participant's database and outliving the TwoPhase.
  std::map<std::string, LedgerOptions, std::less<>> ledgers;
  // Called at each step with the global gid, for tests: they kill the coordinator there, or throw,
  // which leaves the global transaction exactly where it stands, as a crash would (prepared legs
  // stay prepared for recover()). Default: none.
  std::function<void(TwoPhaseStep, const std::string& gid)> on_step;
};

// The transactions of one global transaction, one per participant, handed to TwoPhase::run's work.
// Thread-safety: belongs to the thread running run().
class GlobalTransaction {
 public:
  GlobalTransaction(const GlobalTransaction&) = delete;
  GlobalTransaction& operator=(const GlobalTransaction&) = delete;
  ~GlobalTransaction();

  // The open transaction on the participant of that name; Error(invalid_argument) for an unknown one.
  Transaction& operator[](std::string_view participant);
  // "rowguard:<log_name>:<32 hex digits>"; participant p prepares as "<gid>:<p>".
  const std::string& gid() const noexcept { return gid_; }

 private:
  friend class TwoPhase;
  explicit GlobalTransaction(std::string gid) : gid_(std::move(gid)) {}
  std::string gid_;
  std::vector<std::pair<std::string, Transaction>> transactions_;
};

struct TwoPhaseResult {
  std::string gid;
  // Participants whose COMMIT PREPARED did not get through (the connection kept failing). The
  // transaction is committed all the same (its decision is durable): recover() finishes them. 0
  // normally.
  std::size_t unfinished = 0;
};

// The outcome of a transfer between accounts in two databases.
struct TwoPhaseTransferResult {
  TransferStatus status = TransferStatus::ok;  // ok, or insufficient_funds (recorded under the key)
  std::string gid;                             // the global transaction that carried it (the original on a replay)
  std::int64_t withdrawal_id = 0;              // the leg in the source database's transfers
  std::int64_t deposit_id = 0;                 // the leg in the destination database's transfers; 0 when rejected
  bool replayed = false;                       // the key was seen before: the original outcome, nothing changed
  std::size_t unfinished = 0;                  // as TwoPhaseResult::unfinished
  bool ok() const noexcept { return status == TransferStatus::ok; }
};

// What recover() did.
struct RecoveryReport {
  std::int64_t committed = 0;    // prepared transactions committed (their gid's decision was commit)
  std::int64_t rolled_back = 0;  // rolled back (decision abort, or none and older than recovery_grace)
  // Left for a later run: no decision yet and younger than recovery_grace (a coordinator may still
  // be deciding), busy, or on a participant that could not be reached.
  std::int64_t in_doubt = 0;
  std::int64_t finished = 0;        // decision rows marked finished (every participant done)
  std::vector<std::string> errors;  // one line per participant that failed (no password in them)
  bool clean() const noexcept { return in_doubt == 0; }
};

// A two-phase-commit coordinator over PostgreSQL databases (the participants), with its decisions
// in the table <prefix>global_transactions of the log database (which may be a participant too).
// Atomic across the participants once the decision row commits; presumed abort before that.
// Prepared transactions keep their locks until COMMIT / ROLLBACK PREPARED: run recover() after a
// crash, and periodically (see docs/two_phase.md).
//
// Every participant needs max_prepared_transactions > 0, and must be reached as the same role by
// recover() as by the coordinator (or a superuser). SQLite has no prepared transactions: the
// constructor throws Error(invalid_argument, SQLSTATE 0A000) for a SQLite log or participant.
//
// Thread-safety: safe for concurrent use from many threads; each run() uses its own sessions.
// The Databases must outlive the TwoPhase.
//
// Example:
//   rowguard::TwoPhase tp(log, {{"eu", &eu}, {"us", &us}});
//   auto r = tp.transfer("eu", "alice", "us", "bob", 2'500, "order-77");
//   tp.recover();  // after a crash, and from a timer
class TwoPhase {
 public:
  // Error(invalid_argument) for no participants, a duplicate or invalid name (1 to 40 characters of
  // [A-Za-z0-9_-]), a null Database, a bad option, or an engine without prepared transactions.
  TwoPhase(Database& log, std::vector<std::pair<std::string, Database*>> participants, TwoPhaseOptions options = {});
  ~TwoPhase();
  TwoPhase(const TwoPhase&) = delete;
  TwoPhase& operator=(const TwoPhase&) = delete;

  // Opens a transaction on every participant, runs work on them, prepares them all, logs the
  // decision 'commit' in its own committed transaction, then COMMIT PREPARED on each. An exception
  // from work or a failed PREPARE rolls everything back (ROLLBACK PREPARED for those prepared) and
  // is rethrown. Error(conflict) when recovery aborted the gid first (the coordinator took longer
  // than recovery_grace): nothing committed, safe to run again. Error(in_doubt) when the decision
  // could not be written or read back: recover() settles it (commit if the row made it, else abort).
  // PostgreSQL detects deadlocks only inside one database: work that locks rows in several
  // participants must lock them in one global order (transfer() does), or set lock_timeout.
  TwoPhaseResult run(const std::function<void(GlobalTransaction&)>& work);

  // Moves amount from an account in one participant to an account in another: a withdrawal leg in
  // from_db and a deposit leg in to_db, each journaled in its database's ledger with global_txid
  // set (so each database's Ledger::check() still adds up), committed together by run(). Idempotent
  // on key: a replayed key returns the original outcome and changes nothing. The key's record is
  // compared field by field with the request (source participant and account, destination
  // participant and account, amount; for an ok outcome the deposit leg must be in to_db): any
  // difference, or a key that something other than a two-phase transfer recorded, is
  // Error(idempotency_mismatch). A source that would go below its minimum gives
  // insufficient_funds, recorded under the key in from_db. Errors as Ledger::transfer(), plus
  // invalid_argument for an unknown participant or from_db == to_db.
  TwoPhaseTransferResult transfer(std::string_view from_db, std::string_view from_account, std::string_view to_db,
                                  std::string_view to_account, std::int64_t amount, std::string_view key);

  // Settles the prepared transactions of this log name on every participant (pg_prepared_xacts):
  // commits those whose gid has a 'commit' decision; rolls back those with an 'abort' decision, and
  // those with none once older than recovery_grace, after first logging 'abort' for them (so a slow
  // coordinator cannot commit later). Marks a decision row finished only once every participant it
  // names was reached and holds no leg of its gid: never while a participant could not be reached
  // (its leg's outcome is unknown). Safe to run at any time, concurrently with coordinators and
  // with other recoveries.
  RecoveryReport recover();

  // Deletes finished decision rows older than older_than. Returns how many. A gid's row must outlive
  // any coordinator that could still decide it: Error(invalid_argument) when older_than <
  // recovery_grace.
  std::int64_t prune(std::chrono::milliseconds older_than);

  const TwoPhaseOptions& options() const noexcept;

 private:
  struct Impl;  // src/<component>/: the state and statements behind the handle
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard

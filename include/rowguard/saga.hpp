#pragma once
// rowguard::Sagas: named sequences of steps, each with an action and a compensation, whose progress
// is persisted before and after every step so that another process can finish or undo them; a step
// whose work is in the saga's own database (a Ledger transfer, hold or capture) records its progress
// in the same transaction as that work (SagaStep::in_transaction).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/retry.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

// Where a saga stands. running and compensating are unresolved; completed and compensated are final.
enum class SagaState { running, compensating, completed, compensated };
// Where one step stands: started (its action may have run, in part or whole), done (its action
// returned), failed (its action threw), compensating, compensated.
enum class StepState { started, done, failed, compensating, compensated };

std::string_view to_string(SagaState state) noexcept;
std::string_view to_string(StepState state) noexcept;
// Error(invalid_argument) for a name that is not one of the states above.
SagaState saga_state_from(std::string_view name);

// What an action or a compensation is told. Thread-safety: used by the one thread that runs the step.
struct StepContext {
  std::string saga_id;
  std::string saga_type;
  std::string payload;
  std::string step;  // this step's name
  int index = 0;     // 0-based position of the step in the saga
  int attempt = 1;   // 1 on the first try in this process; retries and resumed runs count on
  // The fencing token of the coordinator's lease "saga:<id>" (Lease::token()). A coordinator that
  // takes the saga over has a higher one, so an action whose effect is outside the saga's database
  // passes it to a Fence (Fence::admit / Fence::guard), or to a resource that keeps the highest
  // token it saw: a paused coordinator's late write is then refused once its successor wrote.
  // Example: if (!fence.admit("provider:charge:" + c.saga_id, c.token)) throw std::runtime_error("taken over");
  std::int64_t token = 0;
  // The results of the steps before this one that completed, in order: (name, result); in a
  // compensation, also this step's own result when its action completed.
  std::vector<std::pair<std::string, std::string>> results;

  // The stable key to pass to whatever the action changes: "<saga id>:<step>". The same on every
  // retry, resume and coordinator, so an action that ran before finds its own record.
  std::string idempotency_key() const { return saga_id + ":" + step; }
  // The key for the compensation: "<saga id>:<step>:undo".
  std::string compensation_key() const { return idempotency_key() + ":undo"; }
  // The result of an earlier completed step; nullptr when it has none.
  const std::string* result_of(std::string_view name) const;
};

// One step. The action returns a result (kept in the step's row and shown to later steps); the
// compensation undoes the action and must succeed whether the action ran fully, partly or not at
// all. Both must be idempotent: a coordinator that dies mid-step leaves the step to be run again.
// A result must be UTF-8 text without NUL (encode bytes, e.g. as hex): any other result fails the
// step, which is then compensated. Error messages are stored with such bytes escaped as \xNN.
// Example:
//   {"hold", [&](StepContext& c) { return std::to_string(ledger.hold("card", "shop", 500, c.idempotency_key(),
//   1h).hold_id); },
//            [&](StepContext& c) { if (auto* id = c.result_of("hold")) ledger.void_hold(std::stoll(*id)); }}
//
// A step whose work is writes to the saga's own database is better made with in_transaction(): its
// action gets the transaction that records the step done and advances the saga, so the work and
// its progress commit together or not at all (one commit per step instead of three; see
// docs/sagas.md). Example:
//   SagaStep::in_transaction("hold", [&](StepContext& c, Transaction& tx) {
//     return std::to_string(ledger.hold(tx, "card", "shop", 500, c.idempotency_key(), 1h).hold_id); },
//     [&](StepContext& c) { if (auto* id = c.result_of("hold")) ledger.void_hold(std::stoll(*id)); })
struct SagaStep {
  std::string name;  // REQUIRES: 1 to 64 bytes of UTF-8 without NUL or ':'; unique within a saga
  std::function<std::string(StepContext&)> action;  // REQUIRES: set, unless transactional_action is
  std::function<void(StepContext&)> compensation;   // empty: nothing to undo
  // Instead of action: an action run inside the transaction, on the saga's database, that also
  // writes the step's row as done and moves the saga on (and, for a new saga's first step, creates
  // the saga's row). Its writes go through that Transaction (the Ledger's calls taking a
  // Transaction&); it must not commit it, nor write through another transaction or another
  // database: those would not be undone with it. The transaction holds the lease's row (and on
  // SQLite the database's write lock) until it ends: keep the action to database work, with no
  // call to the outside world. When it throws a retriable Error (conflict, transient, in_doubt)
  // the whole transaction is run again with the same key; anything else rolls it back and fails
  // the step, which is then compensated like any failed step.
  std::function<std::string(StepContext&, Transaction&)> transactional_action{};

  // A step with a transactional_action. Error(invalid_argument) from Sagas::define() when unset.
  static SagaStep in_transaction(std::string name, std::function<std::string(StepContext&, Transaction&)> action,
                                 std::function<void(StepContext&)> compensation = {}) {
    SagaStep step;
    step.name = std::move(name);
    step.compensation = std::move(compensation);
    step.transactional_action = std::move(action);
    return step;
  }
};

struct SagaOptions {
  // Length of the coordinator's lease "saga:<id>" (renewed by a heartbeat while it drives the
  // saga); recovery takes over a saga only after it ran out. Default: 30s. REQUIRES: >= 100ms.
  std::chrono::milliseconds lease_ttl{30'000};
  // How often the heartbeat renews the lease. Default: lease_ttl / 3. REQUIRES: < lease_ttl.
  std::optional<std::chrono::milliseconds> heartbeat_interval;
  // Retries of an action that throws a retriable rowguard::Error (conflict, transient, in_doubt:
  // the step's key makes the retry safe), and of the saga's own writes. Any other exception fails
  // the step at once. Default: RetryPolicy's defaults.
  RetryPolicy retry;
  // Retries of a compensation that throws anything; when they run out the saga stays
  // compensating with the error recorded, for recover(). Default: 5 attempts, 10ms doubling to 1s.
  RetryPolicy compensation_retry{5, std::chrono::milliseconds(10), std::chrono::milliseconds(1'000),
                                 std::chrono::milliseconds(30'000)};
  // A readable prefix of the coordinator's owner id (see LockOptions). Default: "host:pid".
  std::string owner_prefix;
};

// What run() or a recovery ended with.
struct SagaOutcome {
  std::string id;
  SagaState state = SagaState::running;  // completed or compensated; compensating when a
                                         // compensation kept failing (recover() goes on with it)
  std::string failed_step;               // the step whose action failed; empty when none did
  std::string error;                     // the failed step's error, or the compensation error that stopped it
  bool replayed = false;                 // the saga had already finished: this is its stored outcome
  bool done() const noexcept { return state == SagaState::completed || state == SagaState::compensated; }
};

struct SagaStepInfo {
  int index = 0;
  std::string name;
  StepState state = StepState::started;
  std::optional<std::string> result;
  std::string error;
  std::int64_t attempts = 0;
};

// A saga's row, and with get() its steps' rows.
struct SagaInfo {
  std::string id;
  std::string type;
  std::string payload;
  SagaState state = SagaState::running;
  int step = 0;  // the step being run, or being compensated
  std::string error;
  std::string owner;  // the last coordinator that drove it
  std::int64_t created_at_ms = 0;
  std::int64_t updated_at_ms = 0;
  std::vector<SagaStepInfo> steps;  // filled by get() only
};

struct SagaFilter {
  std::optional<SagaState> state;  // Default: every state.
  std::string type;                // Default (empty): every type.
  std::int64_t limit = 1000;       // REQUIRES: 1 to 100000.
};

// What recover() did.
struct SagaRecovery {
  std::int64_t completed = 0;    // driven to completed
  std::int64_t compensated = 0;  // driven to compensated
  std::int64_t busy = 0;         // left alone: a live coordinator holds its lease
  std::int64_t undefined = 0;    // left alone: of a type not defined in this Sagas (another service's)
  // Taken over but left unresolved (a compensation still failing, a definition whose steps no
  // longer match the saga's rows, the lease lost mid-way): (saga id, why).
  std::vector<std::pair<std::string, std::string>> unresolved;
  bool ok() const noexcept { return busy == 0 && unresolved.empty(); }
};

// Runs and recovers sagas. Thread-safety: define() and define_by_payload() must happen before
// run() or recover() are called from other threads; after that, run(), recover(), list() and get()
// are safe to call concurrently (one coordinator drives a given saga at a time, by its lease).
//
// Example:
//   rowguard::Sagas sagas(db);
//   sagas.define("payment", {{"reserve", reserve, release}, {"charge", charge, refund}});
//   auto outcome = sagas.run("payment", "order-42", R"({"amount":500})");
//   // after a crash, anywhere: sagas.recover();
class Sagas {
 public:
  explicit Sagas(Database& db, SagaOptions options = {});
  ~Sagas();
  Sagas(const Sagas&) = delete;
  Sagas& operator=(const Sagas&) = delete;

  // Error(invalid_argument) for a bad type (1 to 128 bytes), bad or duplicate step names, an empty
  // list, or a step without an action or with both an action and a transactional_action.
  void define(std::string_view type, std::vector<SagaStep> steps);
  // For sagas whose steps depend on their payload; fn is called on every run and resume.
  void define_by_payload(std::string_view type, std::function<std::vector<SagaStep>(const std::string& payload)> fn);

  // Runs the saga `id` of a defined type to completion, or, when a step fails, compensates the
  // failed step and then every completed one in reverse order. Each step's progress is committed
  // before and after its action, or, for a step made with SagaStep::in_transaction, with its
  // action; a new saga's row is created with its first step's first write. Re-running an id that finished returns its
  // stored outcome (replayed); one that is unresolved and unowned is resumed. Errors: invalid_argument (bad id,
  // undefined type), idempotency_mismatch (the id exists with another type or payload),
  // lock_busy (another live coordinator drives it, or the saga could not be recorded because its
  // lease kept running out first: nothing ran, run it again), lock_lost (the lease was lost after
  // the saga was recorded: it is left for recover()).
  SagaOutcome run(std::string_view type, std::string_view id, std::string_view payload);

  // Finds unresolved sagas of the types defined here whose coordinator's lease is free or expired,
  // and drives each to completion or full compensation, resuming from its persisted step (a step
  // found 'started' is run again, with the same idempotency key). One saga at a time, in the order
  // they were last updated.
  SagaRecovery recover();

  std::vector<SagaInfo> list(const SagaFilter& filter = {});
  // The saga and its steps; empty when there is no such saga.
  std::optional<SagaInfo> get(std::string_view id);

 private:
  struct Impl;  // src/<component>/: the state and statements behind the handle
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard

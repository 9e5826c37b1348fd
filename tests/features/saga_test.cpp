// Sagas: steps with compensations, persisted before and after each step, recovered after a crash.
#include <atomic>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <signal.h>
#include <sstream>
#include <thread>
#include <tuple>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "base/sql_text.hpp"

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::dialect_of;
using namespace std::chrono_literals;
using rowguard::test::kind_of;
using rowguard::test::run_cli;
using rowguard::test::TestDb;

namespace {

// What the steps did, in order: "do:<key>" and "undo:<key>".
struct Journal {
  std::mutex mutex;
  std::vector<std::string> events;
  void add(std::string e) {
    std::lock_guard lock(mutex);
    events.push_back(std::move(e));
  }
  std::vector<std::string> all() {
    std::lock_guard lock(mutex);
    return events;
  }
};

// Steps named by `names`; the step named `failing` throws.
std::vector<SagaStep> journal_steps(Journal& j, std::vector<std::string> names, std::string failing = {}) {
  std::vector<SagaStep> steps;
  for (const auto& name : names) {
    steps.push_back({name,
                     [&j, name, failing](StepContext& c) -> std::string {
                       j.add("do:" + c.idempotency_key());
                       if (name == failing) throw std::runtime_error("provider said no");
                       return "result-of-" + name;
                     },
                     [&j](StepContext& c) { j.add("undo:" + c.compensation_key()); }});
  }
  return steps;
}

SagaOptions quick(std::chrono::milliseconds ttl = 1s) {
  SagaOptions o;
  o.lease_ttl = ttl;
  o.compensation_retry.attempts = 2;
  o.compensation_retry.initial_backoff = 1ms;
  o.compensation_retry.max_backoff = 2ms;
  return o;
}

// Leaves a saga as a coordinator that died would: its rows as given, and its lease held for ttl.
void write_crashed(Database& db, const std::string& id, const std::string& type, const std::string& state, int step,
                   const std::vector<std::tuple<std::string, std::string, std::string>>& step_rows,
                   std::chrono::milliseconds ttl) {
  const std::string p = db.table_prefix();
  const std::string now = dialect_of(db).now_timestamp();
  db.exec(fmt::format("INSERT INTO {}sagas (id, type, payload, state, step, owner, created_at, updated_at) "
                      "VALUES ($1, $2, '', $3, $4, 'dead', {now}, {now})",
                      p, fmt::arg("now", now)),
          {id, type, state, std::int64_t{step}});
  std::int64_t i = 0;
  for (const auto& [name, st, result] : step_rows) {
    db.exec(fmt::format("INSERT INTO {}saga_steps (saga_id, step, name, state, result, attempts, started_at, "
                        "updated_at) VALUES ($1, $2, $3, $4, $5, 1, {now}, {now})",
                        p, fmt::arg("now", now)),
            {id, i++, name, st, result.empty() ? Value(nullptr) : Value(result)});
  }
  Locks locks(db);
  auto lease = locks.try_acquire("saga:" + id, ttl);
  REQUIRE(lease);
  lease->detach();  // the coordinator is gone; its lease runs out at its ttl
}

// Holds a coordinator inside a step: pass() signals that the step began, then waits for open().
struct Gate {
  std::promise<void> entered, go;
  std::shared_future<void> opened = go.get_future().share();
  void pass() {
    entered.set_value();
    opened.wait();
  }
  void wait_entered() { entered.get_future().wait(); }
  void open() { go.set_value(); }
  // A step that passes the gate and returns "ok".
  SagaStep step(std::string name) {
    return {std::move(name),
            [this](StepContext&) {
              pass();
              return std::string("ok");
            },
            {}};
  }
};

std::vector<std::string> step_states(const SagaInfo& info) {
  std::vector<std::string> out;
  for (const auto& s : info.steps) out.emplace_back(to_string(s.state));
  return out;
}

// Ends this process at once, as a crash would: SIGKILL runs no exit handler, so no destructor
// releases a lease and no sanitizer reports the threads a dying coordinator leaves behind.
[[noreturn]] void die_now() {
  ::kill(::getpid(), SIGKILL);
  for (;;) ::pause();
}

// Runs coordinator() in a child process, which dies inside it (die_now); the child exits 3 when
// coordinator() returns or throws instead.
void run_dying_coordinator(const std::function<void()>& coordinator) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    try {
      coordinator();
    } catch (...) {
    }
    ::_exit(3);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
}

// Recovers until a saga completed (the dead coordinator's lease runs out first), for at most 5 s.
SagaRecovery recover_one(Sagas& sagas) {
  SagaRecovery r;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  do {
    r = sagas.recover();
    if (r.completed) break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return r;
}

}  // namespace

TEST_CASE("sagas: every step completes in order, sees earlier results and a stable key", "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  std::vector<std::string> seen;
  auto step = [&](std::string name) {
    return SagaStep{name,
                    [&seen, name](StepContext& c) {
                      seen.push_back(fmt::format("{} {} {} {}", c.index, c.idempotency_key(), c.results.size(),
                                                 c.result_of("a") ? *c.result_of("a") : "-"));
                      return name + "!";
                    },
                    {}};
  };
  sagas.define("order", {step("a"), step("b"), step("c")});
  const SagaOutcome o = sagas.run("order", "o-1", R"({"amount":5})");
  CHECK(o.state == SagaState::completed);
  CHECK(o.done());
  CHECK_FALSE(o.replayed);
  CHECK(o.failed_step.empty());
  CHECK(seen == std::vector<std::string>{"0 o-1:a 0 -", "1 o-1:b 1 a!", "2 o-1:c 2 a!"});

  const auto info = sagas.get("o-1");
  REQUIRE(info);
  CHECK(info->state == SagaState::completed);
  CHECK(info->type == "order");
  CHECK(info->payload == R"({"amount":5})");
  CHECK(info->error.empty());
  CHECK_FALSE(info->owner.empty());
  CHECK(step_states(*info) == std::vector<std::string>{"done", "done", "done"});
  CHECK(info->steps[1].result == "b!");
  CHECK(info->steps[1].attempts == 1);
  CHECK_FALSE(sagas.get("o-2"));
  // The coordinator let its lease go: nothing is left held.
  for (const auto& l : Locks(t.db()).list()) CHECK_FALSE(l.held);
}

TEST_CASE("sagas: a failed step is compensated, then the completed steps in reverse", "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  Journal j;
  sagas.define("order", journal_steps(j, {"create", "hold", "provider", "capture"}, "provider"));
  const SagaOutcome o = sagas.run("order", "o-7", "{}");
  CHECK(o.state == SagaState::compensated);
  CHECK(o.failed_step == "provider");
  CHECK_THAT(o.error, Catch::Contains("provider said no"));
  CHECK(j.all() == std::vector<std::string>{"do:o-7:create", "do:o-7:hold", "do:o-7:provider", "undo:o-7:provider:undo",
                                            "undo:o-7:hold:undo", "undo:o-7:create:undo"});
  const auto info = sagas.get("o-7");
  REQUIRE(info);
  CHECK(info->state == SagaState::compensated);
  CHECK(info->step == 0);
  CHECK_THAT(info->error, Catch::Contains("provider said no"));
  CHECK(step_states(*info) == std::vector<std::string>{"compensated", "compensated", "compensated"});
  CHECK_THAT(info->steps[2].error, Catch::Contains("provider said no"));
  CHECK(info->steps[0].result == "result-of-create");  // kept for the record
  CHECK(sagas.list({SagaState::compensated, "", 10}).size() == 1);
  CHECK(sagas.list({SagaState::completed, "", 10}).empty());
  CHECK(sagas.list({std::nullopt, "order", 10}).size() == 1);
}

TEST_CASE("sagas: a finished id returns its stored outcome, another payload or type is a mismatch",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  Journal j;
  sagas.define("ok", journal_steps(j, {"a", "b"}));
  sagas.define("bad", journal_steps(j, {"a", "b"}, "b"));
  CHECK(sagas.run("ok", "s1", "p").state == SagaState::completed);
  CHECK(sagas.run("bad", "s2", "p").state == SagaState::compensated);
  const auto done = j.all().size();

  const SagaOutcome again = sagas.run("ok", "s1", "p");
  CHECK(again.replayed);
  CHECK(again.state == SagaState::completed);
  const SagaOutcome again2 = sagas.run("bad", "s2", "p");
  CHECK(again2.replayed);
  CHECK(again2.state == SagaState::compensated);
  CHECK(again2.failed_step == "b");
  CHECK_THAT(again2.error, Catch::Contains("provider said no"));
  CHECK(j.all().size() == done);  // nothing ran again

  CHECK(kind_of([&] { sagas.run("ok", "s1", "other payload"); }) == ErrorKind::idempotency_mismatch);
  CHECK(kind_of([&] { sagas.run("bad", "s1", "p"); }) == ErrorKind::idempotency_mismatch);
  CHECK(j.all().size() == done);
}

TEST_CASE("sagas: retriable errors retry the action with the same key, other errors fail the step",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  std::vector<std::string> keys;
  sagas.define("flaky", {{"call",
                          [&](StepContext& c) -> std::string {
                            keys.push_back(fmt::format("{}#{}", c.idempotency_key(), c.attempt));
                            if (keys.size() < 3) throw Error(ErrorKind::transient, "connection reset");
                            return "ok";
                          },
                          {}}});
  CHECK(sagas.run("flaky", "f1", "").state == SagaState::completed);
  CHECK(keys == std::vector<std::string>{"f1:call#1", "f1:call#2", "f1:call#3"});
  CHECK(sagas.get("f1")->steps.at(0).attempts == 3);
}

TEST_CASE("sagas: recover drives dead coordinators' sagas to completion and to compensation",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Journal j;
  Sagas sagas(t.db(), quick());
  sagas.define("order", journal_steps(j, {"s0", "s1", "s2"}));
  // A: died inside s1 (s1 'started'); B: died compensating after s1 failed.
  write_crashed(t.db(), "A", "order", "running", 1, {{"s0", "done", "r0"}, {"s1", "started", ""}}, 1s);
  write_crashed(t.db(), "B", "order", "compensating", 1, {{"s0", "done", "r0"}, {"s1", "failed", ""}}, 1s);

  // Their leases have not run out: a live coordinator could still be driving them.
  SagaRecovery early = sagas.recover();
  CHECK(early.busy == 2);
  CHECK(early.completed + early.compensated == 0);
  CHECK_FALSE(early.ok());
  CHECK(kind_of([&] { sagas.run("order", "A", ""); }) == ErrorKind::lock_busy);
  CHECK(j.all().empty());

  std::this_thread::sleep_for(1100ms);
  const SagaRecovery r = sagas.recover();
  CHECK(r.completed == 1);
  CHECK(r.compensated == 1);
  CHECK(r.busy == 0);
  CHECK(r.unresolved.empty());
  CHECK(r.ok());
  // A: s1 runs again with its same key (it may have applied before the crash), s0 does not; B:
  // the failed s1 and then s0 are compensated.
  auto events = j.all();
  std::sort(events.begin(), events.end());
  CHECK(events == std::vector<std::string>{"do:A:s1", "do:A:s2", "undo:B:s0:undo", "undo:B:s1:undo"});
  CHECK(sagas.get("A")->state == SagaState::completed);
  CHECK(step_states(*sagas.get("A")) == std::vector<std::string>{"done", "done", "done"});
  CHECK(sagas.get("A")->steps[1].attempts == 2);
  CHECK(sagas.get("B")->state == SagaState::compensated);
  CHECK(step_states(*sagas.get("B")) == std::vector<std::string>{"compensated", "compensated"});
  CHECK(sagas.recover().ok());  // nothing left
}

TEST_CASE("sagas: a coordinator process killed mid-step is recovered by another",
          "[backend][saga][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  Journal j;
  const auto marker = rowguard::test::scratch_dir() / "ran";
  run_dying_coordinator([&] {
    Database db = Database::open(t.url(), t.options());
    Sagas child(db, quick());
    child.define("order", {{"s0", [](StepContext&) { return std::string("r0"); }, {}},
                           {"s1",
                            [&](StepContext& c) -> std::string {
                              std::ofstream(marker) << c.idempotency_key();
                              die_now();  // the coordinator dies inside the step
                            },
                            {}},
                           {"s2", [](StepContext&) { return std::string("r2"); }, {}}});
    child.run("order", "K", "");
  });
  std::string key;
  std::ifstream(marker) >> key;
  CHECK(key == "K:s1");

  Sagas sagas(t.db(), quick());
  sagas.define("order", journal_steps(j, {"s0", "s1", "s2"}));
  const auto before = sagas.get("K");
  REQUIRE(before);
  CHECK(before->state == SagaState::running);
  CHECK(before->step == 1);
  CHECK(step_states(*before) == std::vector<std::string>{"done", "started"});
  const SagaRecovery r = recover_one(sagas);
  CHECK(r.completed == 1);
  CHECK(j.all() == std::vector<std::string>{"do:K:s1", "do:K:s2"});
  CHECK(sagas.get("K")->state == SagaState::completed);
}

TEST_CASE("sagas: a live coordinator's saga is not taken over by recover or another run", "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick(2s));
  Gate gate;
  sagas.define("slow", {gate.step("wait")});
  auto running = std::async(std::launch::async, [&] { return sagas.run("slow", "L", ""); });
  gate.wait_entered();
  const SagaRecovery r = sagas.recover();
  CHECK(r.busy == 1);
  CHECK(r.completed == 0);
  CHECK(kind_of([&] { sagas.run("slow", "L", ""); }) == ErrorKind::lock_busy);
  gate.open();
  CHECK(running.get().state == SagaState::completed);
  CHECK(sagas.recover().ok());
}

TEST_CASE("sagas: a failing compensation leaves the saga compensating until recover succeeds",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  std::atomic<bool> refund_works{false};
  std::atomic<int> refunds{0};
  std::string own_result;
  sagas.define("pay", {{"charge", [](StepContext&) { return std::string("charged"); },
                        [&](StepContext& c) {
                          ++refunds;
                          own_result = c.result_of("charge") ? *c.result_of("charge") : "none";
                          if (!refund_works) throw std::runtime_error("refund service down");
                        }},
                       {"ship", [](StepContext&) -> std::string { throw std::runtime_error("out of stock"); }, {}}});
  const SagaOutcome o = sagas.run("pay", "P", "");
  CHECK(o.state == SagaState::compensating);
  CHECK_FALSE(o.done());
  CHECK(o.failed_step == "ship");
  CHECK_THAT(o.error, Catch::Contains("refund service down"));
  CHECK(refunds == 2);             // compensation_retry.attempts
  CHECK(own_result == "charged");  // a compensation sees its own step's result
  auto info = sagas.get("P");
  CHECK(info->state == SagaState::compensating);
  CHECK(info->step == 0);
  CHECK_THAT(info->error, Catch::Contains("compensation of step 'charge' failed"));
  CHECK(step_states(*info) == std::vector<std::string>{"compensating", "compensated"});
  CHECK(sagas.list({SagaState::compensating, "", 10}).size() == 1);

  SagaRecovery r = sagas.recover();
  REQUIRE(r.unresolved.size() == 1);
  CHECK(r.unresolved[0].first == "P");
  CHECK_THAT(r.unresolved[0].second, Catch::Contains("refund service down"));

  refund_works = true;
  r = sagas.recover();
  CHECK(r.compensated == 1);
  CHECK(r.ok());
  info = sagas.get("P");
  CHECK(info->state == SagaState::compensated);
  CHECK_THAT(info->error, Catch::Contains("out of stock"));
  const SagaOutcome stored = sagas.run("pay", "P", "");
  CHECK(stored.replayed);
  CHECK(stored.state == SagaState::compensated);
  CHECK(stored.failed_step == "ship");
}

TEST_CASE("sagas: a coordinator that loses its lease stops, and recover finishes the saga",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  Locks locks(t.db());
  std::atomic<int> calls{0};
  bool evict = true;
  sagas.define("evicted", {{"a",
                            [&](StepContext& c) {
                              ++calls;
                              if (evict) locks.force_release("saga:" + c.saga_id, "test: operator took it away");
                              return std::string("a");
                            },
                            {}},
                           {"b", [](StepContext&) { return std::string("b"); }, {}}});
  CHECK(kind_of([&] { sagas.run("evicted", "E", ""); }) == ErrorKind::lock_lost);
  CHECK(sagas.get("E")->state == SagaState::running);
  CHECK(step_states(*sagas.get("E")) == std::vector<std::string>{"started"});  // the done-write was refused
  evict = false;
  const SagaRecovery r = sagas.recover();
  CHECK(r.completed == 1);
  CHECK(calls == 2);  // at least once: the step ran again under its key
  CHECK(sagas.get("E")->state == SagaState::completed);
}

TEST_CASE("sagas: bad ids, types, step names and definitions are invalid_argument and write nothing",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  auto act = [](StepContext&) { return std::string(); };
  CHECK(kind_of([&] { sagas.define("", {{"a", act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define(std::string(129, 't'), {{"a", act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {{"", act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {{"a:b", act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {{std::string(65, 's'), act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {{"a", act, {}}, {"a", act, {}}}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {{"a", {}, {}}}); }) == ErrorKind::invalid_argument);
  sagas.define("t", {{std::string(64, 's'), act, {}}});
  CHECK(kind_of([&] { sagas.run("t", "", ""); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.run("t", std::string(129, 'i'), ""); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.run("t", std::string("a\0b", 3), ""); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.run("t", "x", std::string("\xff")); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.run("undefined", "x", ""); }) == ErrorKind::invalid_argument);
  sagas.define_by_payload("dyn", [](const std::string&) { return std::vector<SagaStep>{}; });
  CHECK(kind_of([&] { sagas.run("dyn", "x", ""); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.list({std::nullopt, "", 0}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([] { saga_state_from("paid"); }) == ErrorKind::invalid_argument);
  SagaOptions bad;
  bad.lease_ttl = 10ms;
  CHECK(kind_of([&] { Sagas s(t.db(), bad); }) == ErrorKind::invalid_argument);
  CHECK(rowguard::test::rows_in(t.db(), "sagas") == 0);
  CHECK(rowguard::test::rows_in(t.db(), "saga_steps") == 0);
  CHECK(sagas.run("t", std::string(128, 'i'), "").state == SagaState::completed);
}

TEST_CASE("cli: saga run, show, list and recover exit codes", "[backend][saga][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  const auto dir = rowguard::test::scratch_dir();
  const std::string log = (dir / "saga.log").string();
  const std::vector<std::string> base = {"--db", t.url(), "--prefix", t.db().table_prefix()};
  auto cli = [&](std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), base.begin(), base.end());
    return run_cli(args, out);
  };
  auto append = [&](const std::string& what) {
    return fmt::format("echo {}:$ROWGUARD_SAGA_ID:$ROWGUARD_STEP:$ROWGUARD_IDEMPOTENCY_KEY >> '{}'", what, log);
  };
  std::string out;
  CHECK(cli({"saga", "run", "c1", "--step", "a=" + append("do"), "--undo", "a=" + append("undo"), "--step",
             "b=" + append("do")},
            &out) == 0);
  CHECK_THAT(out, Catch::Contains("completed"));
  // b fails: b's own undo, then a's.
  CHECK(cli({"saga", "run", "c2", "--step", "a=" + append("do"), "--undo", "a=" + append("undo"), "--step",
             "b=" + append("do") + " && exit 5", "--undo", "b=" + append("undo")}) == 1);
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  CHECK(lines == std::vector<std::string>{"do:c1:a:c1:a", "do:c1:b:c1:b", "do:c2:a:c2:a", "do:c2:b:c2:b",
                                          "undo:c2:b:c2:b:undo", "undo:c2:a:c2:a:undo"});
  // The same id with other steps is an idempotency mismatch; the same steps replay.
  CHECK(cli({"saga", "run", "c1", "--step", "a=true"}) == 7);
  CHECK(cli({"saga", "run", "c1", "--step", "a=" + append("do"), "--undo", "a=" + append("undo"), "--step",
             "b=" + append("do")}) == 0);
  CHECK(cli({"saga", "run", "c3", "--step", "a:b=true"}) == 2);
  CHECK(cli({"saga", "run", "c3", "--undo", "a=true"}) == 2);

  CHECK(cli({"--json", "saga", "show", "c2"}, &out) == 0);
  const auto shown = nlohmann::json::parse(out);
  CHECK(shown.at("state") == "compensated");
  CHECK(shown.at("steps").size() == 2);
  CHECK(shown.at("steps")[1].at("state") == "compensated");
  CHECK(cli({"saga", "show", "nope"}) == 5);
  CHECK(cli({"--json", "saga", "list", "--state", "completed"}, &out) == 0);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK(cli({"saga", "list", "--state", "paid"}) == 2);

  // An undo that fails leaves the saga compensating: recover exits 1 until it can finish it.
  const std::string flag = (dir / "refund-ok").string();
  CHECK(cli({"saga", "run", "c4", "--step", "a=true", "--undo", "a=test -e '" + flag + "'", "--step", "b=false"}) == 1);
  CHECK(cli({"--json", "saga", "list", "--state", "compensating"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"c4\""));
  CHECK(cli({"saga", "recover"}) == 1);
  std::ofstream(flag) << "ok";
  CHECK(cli({"--json", "saga", "recover"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("compensated") == 1);
  CHECK(cli({"saga", "recover"}) == 0);
}

namespace {
// Starts examples/payment_order with args; its output goes to /dev/null.
pid_t start_payment_order(const std::vector<std::string>& args) {
  std::vector<std::string> storage = {ROWGUARD_PAYMENT_ORDER};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}
}  // namespace

// [unit]: registered once, not per backend: the example runs on an SQLite file of its own.
TEST_CASE("sagas: payment orders with coordinators killed at random end paid once or cancelled cleanly",
          "[unit][saga][threads]") {
  const std::string url = "sqlite:" + (rowguard::test::scratch_dir() / "orders.db").string();
  REQUIRE(wait_for(start_payment_order({url, "setup"})) == 0);
  std::mt19937 rng(20261201);
  int killed = 0;
  for (int round = 0; round < 3; ++round) {
    std::vector<pid_t> workers;
    for (int w = 0; w < 3; ++w)
      workers.push_back(start_payment_order({url, "run", std::to_string(round * 10 + w + 1), "4", "0.02"}));
    // One coordinator of each round is killed with SIGKILL at a random moment (it may be done).
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 250)(rng)));
    ::kill(workers[round % 3], SIGKILL);
    for (const pid_t pid : workers) {
      // A coordinator that crashed inside a step killed itself with SIGKILL too.
      const int rc = wait_for(pid);
      if (rc == 128 + SIGKILL) ++killed;
      CHECK((rc == 0 || rc == 128 + SIGKILL));
    }
  }
  UNSCOPED_INFO("coordinators killed or crashed inside a step: " << killed);
  CHECK(killed > 0);
  // A batch nobody kills, whose provider rolls (seeded by the order) include a decline: so both
  // outcomes below are there however early the kills above cut the rounds short.
  CHECK(wait_for(start_payment_order({url, "run", "90", "8", "0"})) == 0);
  CHECK(wait_for(start_payment_order({url, "recover"})) == 0);
  CHECK(wait_for(start_payment_order({url, "check"})) == 0);
  // Both outcomes happened: the provider declines and times out at random.
  auto db = Database::open(url);
  Sagas sagas(db);
  CHECK_FALSE(sagas.list({SagaState::completed, "payment_order", 1000}).empty());
  CHECK_FALSE(sagas.list({SagaState::compensated, "payment_order", 1000}).empty());
  CHECK(sagas.list({SagaState::running, "", 1000}).empty());
  CHECK(sagas.list({SagaState::compensating, "", 1000}).empty());
}

TEST_CASE("sagas: an id already used is compared by type and by payload, whether finished, abandoned or running",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  Journal j;
  sagas.define("order", journal_steps(j, {"a", "b"}));
  sagas.define("refund", journal_steps(j, {"a", "b"}));
  auto mismatch = [&](std::string_view type, std::string_view id, std::string_view payload) {
    std::string message;
    const ErrorKind kind = kind_of([&] { sagas.run(type, id, payload); }, &message);
    UNSCOPED_INFO(message);
    return kind == ErrorKind::idempotency_mismatch;
  };
  // Finished.
  REQUIRE(sagas.run("order", "done", "p").state == SagaState::completed);
  CHECK(mismatch("refund", "done", "p"));  // type
  CHECK(mismatch("order", "done", "q"));   // payload
  CHECK(mismatch("order", "done", ""));
  CHECK(mismatch("order", "done", "p "));
  // Abandoned by a dead coordinator whose lease ran out: compared before it is resumed.
  write_crashed(t.db(), "abandoned", "order", "running", 1, {{"a", "done", "ra"}, {"b", "started", ""}}, 100ms);
  std::this_thread::sleep_for(150ms);
  const auto before = j.all().size();
  CHECK(mismatch("refund", "abandoned", ""));
  CHECK(mismatch("order", "abandoned", "p"));
  CHECK(j.all().size() == before);  // nothing resumed
  CHECK(sagas.get("abandoned")->state == SagaState::running);
  // Driven by a live coordinator: the mismatch is told, not lock_busy.
  Gate gate;
  sagas.define("slow", {gate.step("wait")});
  auto running = std::async(std::launch::async, [&] { return sagas.run("slow", "live", "p"); });
  gate.wait_entered();
  CHECK(mismatch("order", "live", "p"));
  CHECK(mismatch("slow", "live", "q"));
  CHECK(kind_of([&] { sagas.run("slow", "live", "p"); }) == ErrorKind::lock_busy);
  gate.open();
  CHECK(running.get().state == SagaState::completed);
  // The same request goes on: a replay, and a resume.
  CHECK(sagas.run("order", "done", "p").replayed);
  CHECK(sagas.run("order", "abandoned", "").state == SagaState::completed);
}

TEST_CASE("sagas: a step result or error that is not UTF-8 text fails the step and compensates, never wedges",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  Journal j;
  const std::string bad(
      "\xff\x00"
      "abc",
      5);
  auto step = [&](std::string name, std::function<std::string()> act) {
    return SagaStep{name,
                    [&j, act](StepContext& c) {
                      j.add("do:" + c.idempotency_key());
                      return act();
                    },
                    [&j](StepContext& c) { j.add("undo:" + c.compensation_key()); }};
  };
  auto fine = [] { return std::string("fine"); };
  sagas.define("bad-result", {step("first", fine), step("second", [&] { return bad; })});
  sagas.define("bad-error",
               {step("first", fine), step("second", [&]() -> std::string { throw std::runtime_error(bad); })});
  std::atomic<bool> refund_works{false};
  sagas.define("bad-undo", {{"first", [](StepContext&) { return std::string("charged"); },
                             [&](StepContext&) {
                               if (!refund_works) throw std::runtime_error("refund \xfe\xfe failed");
                             }},
                            {"second", [](StepContext&) -> std::string { throw std::runtime_error("declined"); }, {}}});
  auto text = [](const std::string& s) { return rowguard::detail::is_text(s); };

  // A result that cannot be stored as text fails its step: its own compensation, then the first's.
  const SagaOutcome r = sagas.run("bad-result", "r1", "");
  CHECK(r.state == SagaState::compensated);
  CHECK(r.failed_step == "second");
  CHECK_THAT(r.error, Catch::Contains("not UTF-8 text") && Catch::Contains("\\xff\\x00abc"));
  CHECK(text(r.error));
  CHECK(j.all() ==
        std::vector<std::string>{"do:r1:first", "do:r1:second", "undo:r1:second:undo", "undo:r1:first:undo"});
  auto info = sagas.get("r1");
  REQUIRE(info);
  CHECK(info->state == SagaState::compensated);
  CHECK(step_states(*info) == std::vector<std::string>{"compensated", "compensated"});
  CHECK_FALSE(info->steps[1].result);
  CHECK(info->steps[1].error == r.error);
  CHECK(sagas.run("bad-result", "r1", "").replayed);

  // An error message with such bytes is stored with them escaped.
  const SagaOutcome e = sagas.run("bad-error", "e1", "");
  CHECK(e.state == SagaState::compensated);
  CHECK(e.failed_step == "second");
  CHECK_THAT(e.error, Catch::Contains("\\xff"));
  CHECK(text(e.error));
  info = sagas.get("e1");
  CHECK(step_states(*info) == std::vector<std::string>{"compensated", "compensated"});
  CHECK(info->steps[1].error == e.error);
  CHECK(text(info->error));

  // So is a compensation's: the saga stays compensating until the refund works, then finishes.
  const SagaOutcome u = sagas.run("bad-undo", "u1", "");
  CHECK(u.state == SagaState::compensating);
  CHECK_THAT(u.error, Catch::Contains("refund \\xfe\\xfe failed"));
  CHECK(text(u.error));
  SagaRecovery rec = sagas.recover();
  REQUIRE(rec.unresolved.size() == 1);
  CHECK_THAT(rec.unresolved[0].second, Catch::Contains("\\xfe"));
  refund_works = true;
  rec = sagas.recover();
  CHECK(rec.compensated == 1);
  CHECK(rec.ok());
  CHECK(sagas.get("u1")->state == SagaState::compensated);
}

TEST_CASE("sagas: a paused coordinator's late external write is refused by a fence with its step's token",
          "[backend][saga][threads]") {
  TestDb t;
  t.db().migrate();
  Fence fence(t.db());
  const std::string resource = "provider:charges:F";
  Gate gate;
  std::int64_t token_a = 0, token_b = 0;
  std::optional<bool> admitted_a, admitted_b;
  // Coordinator A pauses inside the step, then writes to the provider through the fence.
  Sagas a(t.db(), quick(1s));
  a.define("pay", {{"charge",
                    [&](StepContext& c) {
                      token_a = c.token;
                      gate.pass();
                      admitted_a = fence.admit(resource, c.token);
                      return std::string("late");
                    },
                    {}}});
  Sagas b(t.db(), quick(1s));
  b.define("pay", {{"charge",
                    [&](StepContext& c) {
                      token_b = c.token;
                      admitted_b = fence.admit(resource, c.token);
                      return std::string("on time");
                    },
                    {}}});
  auto running = std::async(std::launch::async, [&] {
    try {
      a.run("pay", "F", "");
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::permanent;  // not expected: A must find its lease lost
  });
  gate.wait_entered();
  // A's pause outlasts its lease: a paused process renews nothing, so its lease ends on the
  // database clock (set here rather than waited for).
  const auto& d = dialect_of(t.db());
  CHECK(t.db()
            .exec(fmt::format("UPDATE {}locks SET expires_at = {} WHERE name = 'saga:F'", t.db().table_prefix(),
                              d.timestamp_plus_ms(d.now_timestamp(), "$1")),
                  {std::int64_t{-1000}})
            .affected == 1);
  // B takes the saga over and runs the step again with a higher token.
  const SagaRecovery r = b.recover();
  CHECK(r.completed == 1);
  CHECK(token_a > 0);
  CHECK(token_b > token_a);
  CHECK(admitted_b == std::optional<bool>(true));
  // A wakes up: its write is refused, and it stops.
  gate.open();
  CHECK(running.get() == ErrorKind::lock_lost);
  CHECK(admitted_a == std::optional<bool>(false));
  CHECK(fence.highest(resource) == token_b);
  const auto info = b.get("F");
  CHECK(info->state == SagaState::completed);
  CHECK(info->steps.at(0).result == std::optional<std::string>("on time"));
}

// ---- Steps run inside the transaction that records them (SagaStep::in_transaction) ----

namespace {

// What the sessions of a CountedDb did: COMMITs sent, statements run outside a transaction (each
// its own transaction), and a fault to inject into the next statement whose text contains a string.
struct SessionLog {
  std::mutex mutex;
  std::int64_t commits = 0;
  std::int64_t alone = 0;
  std::string fail_on;  // empty: no fault
  ErrorKind fail_kind = ErrorKind::permanent;
  int failures_left = 0;
  void reset() {
    std::lock_guard lock(mutex);
    commits = alone = 0;
  }
  std::pair<std::int64_t, std::int64_t> counts() {
    std::lock_guard lock(mutex);
    return {commits, alone};
  }
  void fail(std::string sql_part, ErrorKind kind, int times) {
    std::lock_guard lock(mutex);
    fail_on = std::move(sql_part);
    fail_kind = kind;
    failures_left = times;
  }
};

// A session of the test's database that counts what it sends into a SessionLog.
class CountingSession final : public detail::Session {
 public:
  CountingSession(std::unique_ptr<detail::SessionLease> inner, std::shared_ptr<SessionLog> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}
  const detail::Dialect& dialect() const noexcept override { return (*inner_)->dialect(); }
  Result exec(std::string_view sql, const std::vector<Value>& params) override {
    {
      std::lock_guard lock(log_->mutex);
      if (!in_transaction_) ++log_->alone;
      if (log_->failures_left > 0 && sql.find(log_->fail_on) != std::string_view::npos) {
        --log_->failures_left;
        throw Error(log_->fail_kind, "test: injected failure");
      }
    }
    return (*inner_)->exec(sql, params);
  }
  void exec_script(const std::string& script) override { (*inner_)->exec_script(script); }
  void begin(const TxOptions& options) override {
    (*inner_)->begin(options);
    in_transaction_ = true;
  }
  void rollback() override {
    in_transaction_ = false;
    (*inner_)->rollback();
  }

 protected:
  void send_commit() override {
    {
      std::lock_guard lock(log_->mutex);
      ++log_->commits;
    }
    (*inner_)->commit();
  }

 private:
  std::unique_ptr<detail::SessionLease> inner_;
  std::shared_ptr<SessionLog> log_;
};

// A Database on the test's database whose sessions count into log.
Database counted(Database& db, const std::shared_ptr<SessionLog>& log) {
  const std::shared_ptr<detail::Backend>& real = detail::DatabaseGate::shared_backend(db);
  auto backend =
      std::make_shared<detail::Backend>(std::string(real->name()), real->display_url(), real->options(),
                                        std::shared_ptr<const detail::Dialect>(real, &real->dialect()),
                                        [real, log] { return std::make_unique<CountingSession>(real->borrow(), log); });
  return detail::DatabaseGate::wrap(std::move(backend));
}

// The payment of bench/main.cpp: a hold, then its capture, each run in the step's transaction
// (in_tx) or as an action of its own. The payload is "FROM TO AMOUNT".
std::vector<SagaStep> payment_steps(Ledger& ledger, bool in_tx) {
  auto args = [](const StepContext& c) {
    std::istringstream in(c.payload);
    std::string from, to;
    std::int64_t amount = 0;
    in >> from >> to >> amount;
    return std::make_tuple(from, to, amount);
  };
  auto hold = [&ledger, args](StepContext& c, Transaction* tx) {
    const auto [from, to, amount] = args(c);
    const HoldResult h = tx ? ledger.hold(*tx, from, to, amount, c.idempotency_key(), 10min)
                            : ledger.hold(from, to, amount, c.idempotency_key(), 10min);
    if (!h.ok()) throw std::runtime_error("hold rejected");
    return std::to_string(h.hold_id);
  };
  auto capture = [&ledger](StepContext& c, Transaction* tx) {
    const std::int64_t id = std::stoll(*c.result_of("hold"));
    return std::to_string(tx ? ledger.capture(*tx, id, std::nullopt, c.idempotency_key()).transfer_id
                             : ledger.capture(id, std::nullopt, c.idempotency_key()).transfer_id);
  };
  auto void_hold = [&ledger](StepContext& c) {
    if (const auto* id = c.result_of("hold")) ledger.void_hold(std::stoll(*id));
  };
  if (in_tx)
    return {
        SagaStep::in_transaction(
            "hold", [hold](StepContext& c, Transaction& tx) { return hold(c, &tx); }, void_hold),
        SagaStep::in_transaction("capture", [capture](StepContext& c, Transaction& tx) { return capture(c, &tx); })};
  return {{"hold", [hold](StepContext& c) { return hold(c, nullptr); }, void_hold},
          {"capture", [capture](StepContext& c) { return capture(c, nullptr); }, {}}};
}

// Accounts `from` (with 10'000 on it) and `to`.
void open_accounts(Ledger& ledger, const std::string& from, const std::string& to) {
  ledger.open(from, "EUR");
  ledger.open(to, "EUR");
  ledger.deposit(from, 10'000, "seed");
}

// A fresh database, and a Database and a Ledger on it whose sessions count into log.
struct CountedLedger {
  TestDb t;
  std::shared_ptr<SessionLog> log = std::make_shared<SessionLog>();
  Database db;
  Ledger ledger;
  CountedLedger() : db((t.db().migrate(), counted(t.db(), log))), ledger(db) {}
};

}  // namespace

TEST_CASE("sagas: a two-step ledger saga run in its steps' transactions commits twice, and once per step alone",
          "[backend][saga][threads]") {
  CountedLedger c;
  auto& [t, log, db, ledger] = c;
  open_accounts(ledger, "card", "shop");
  SagaOptions o;
  o.lease_ttl = 30s;  // no heartbeat renewal during the test
  Sagas sagas(db, o);
  sagas.define("in_tx", payment_steps(ledger, true));
  sagas.define("alone", payment_steps(ledger, false));

  // Per saga: the lease's acquire and release and the read of the saga's row are statements of
  // their own; everything else is in the COMMITs counted.
  log->reset();
  REQUIRE(sagas.run("in_tx", "p-1", "card shop 500").state == SagaState::completed);
  const auto [tx_commits, tx_alone] = log->counts();
  CHECK(tx_commits == 2);  // each step: its ledger writes, its done row and the saga's row
  CHECK(tx_alone == 3);

  log->reset();
  REQUIRE(sagas.run("alone", "p-2", "card shop 500").state == SagaState::completed);
  const auto [commits, alone] = log->counts();
  // Each step: 'started' (the first with the saga's new row), the ledger's own transaction, done.
  // With server-side statements a hold and a capture are one autocommit call each, not a transaction.
  const bool one_call = dialect_of(db).has_server_statements();
  CHECK(commits == (one_call ? 4 : 6));
  CHECK(alone == (one_call ? 5 : 3));

  CHECK(ledger.get("card").balance == 9'000);
  CHECK(ledger.get("shop").balance == 1'000);
  CHECK(ledger.get("card").held == 0);
  CHECK(ledger.check().ok());
  const auto info = sagas.get("p-1");
  REQUIRE(info);
  CHECK(step_states(*info) == std::vector<std::string>{"done", "done"});
  CHECK(info->steps[0].attempts == 1);
  CHECK(info->steps[1].result == std::to_string(ledger.find_transfer_by_key("p-1:capture").id));
  for (const auto& l : Locks(t.db()).list()) CHECK_FALSE(l.held);
  // A finished id replays; nothing runs again.
  CHECK(sagas.run("in_tx", "p-1", "card shop 500").replayed);
  CHECK(ledger.get("card").balance == 9'000);
}

TEST_CASE("sagas: a step run in its transaction never leaves its ledger write without its done row, or the reverse",
          "[backend][saga][threads]") {
  CountedLedger c;
  auto& [t, log, db, ledger] = c;
  open_accounts(ledger, "a", "b");
  Journal j;
  // A transfer of 100 from a to b, then (when `then_throw`) a failure after the transfer was written.
  bool then_throw = false;
  auto pay = [&](StepContext& c, Transaction& tx) {
    j.add("do:" + c.idempotency_key());
    const auto r = ledger.transfer(tx, "a", "b", 100, c.idempotency_key());
    if (then_throw) throw std::runtime_error("after the transfer");
    return std::to_string(r.transfer_id);
  };
  auto undo = [&](StepContext& c) { j.add("undo:" + c.compensation_key()); };
  Sagas sagas(db, quick(30s));
  sagas.define("pay", {SagaStep::in_transaction("first", pay, undo), SagaStep::in_transaction("second", pay, undo)});
  auto applied = [&](const std::string& key) {
    return t.db()
        .exec(fmt::format("SELECT count(*) FROM {}transfers WHERE idempotency_key = $1", t.db().table_prefix()), {key})
        .one()
        .i64(0);
  };

  SECTION("the done row's write fails after the transfer: neither commits, and the saga is compensated") {
    log->fail(fmt::format("INSERT INTO {}saga_steps", t.db().table_prefix()), ErrorKind::permanent, 1);
    const SagaOutcome o = sagas.run("pay", "s", "");
    CHECK(o.state == SagaState::compensated);
    CHECK(o.failed_step == "first");
    CHECK_THAT(o.error, Catch::Contains("injected failure"));
    CHECK(applied("s:first") == 0);
    CHECK(ledger.get("a").balance == 10'000);
    CHECK(step_states(*sagas.get("s")) == std::vector<std::string>{"compensated"});
    CHECK(j.all() == std::vector<std::string>{"do:s:first", "undo:s:first:undo"});
  }
  SECTION("a lost commit runs the step's transaction again under its key: the transfer once, the row done") {
    log->fail(fmt::format("INSERT INTO {}saga_steps", t.db().table_prefix()), ErrorKind::transient, 1);
    CHECK(sagas.run("pay", "s", "").state == SagaState::completed);
    CHECK(applied("s:first") == 1);
    CHECK(applied("s:second") == 1);
    CHECK(ledger.get("a").balance == 9'800);
    const auto info = sagas.get("s");
    CHECK(step_states(*info) == std::vector<std::string>{"done", "done"});
    CHECK(info->steps[0].attempts == 2);
    CHECK(info->steps[0].result == std::to_string(ledger.find_transfer_by_key("s:first").id));
  }
  SECTION("the action fails after its transfer: the transfer is rolled back with the step") {
    CHECK(sagas.run("pay", "ok", "").state == SagaState::completed);
    then_throw = true;
    const SagaOutcome o = sagas.run("pay", "s", "");
    CHECK(o.state == SagaState::compensated);
    CHECK(applied("s:first") == 0);
    CHECK(ledger.get("a").balance == 9'800);  // only the saga "ok"
    CHECK(sagas.get("s")->steps.at(0).error.find("after the transfer") != std::string::npos);
  }
  CHECK(ledger.check().ok());
}

TEST_CASE("sagas: a coordinator killed inside a step's transaction leaves neither its transfer nor its row",
          "[backend][saga][shared-db][threads]") {
  TestDb t;
  t.db().migrate();
  {
    Ledger ledger(t.db());
    open_accounts(ledger, "a", "b");
  }
  auto steps = [](Ledger& ledger, bool die) {
    auto pay = [&ledger, die](StepContext& c, Transaction& tx) -> std::string {
      const auto r = ledger.transfer(tx, "a", "b", 100, c.idempotency_key());
      if (die && c.step == "second") die_now();  // the transfer is written, the step's row not yet
      return std::to_string(r.transfer_id);
    };
    return std::vector<SagaStep>{SagaStep::in_transaction("first", pay), SagaStep::in_transaction("second", pay)};
  };
  run_dying_coordinator([&] {
    Database db = Database::open(t.url(), t.options());
    Ledger ledger(db);
    Sagas child(db, quick());
    child.define("pay", steps(ledger, true));
    child.run("pay", "K", "");
  });

  Ledger ledger(t.db());
  CHECK(ledger.get("a").balance == 9'900);  // the first step only
  CHECK(kind_of([&] { ledger.find_transfer_by_key("K:second"); }) == ErrorKind::not_found);
  Sagas sagas(t.db(), quick());
  sagas.define("pay", steps(ledger, false));
  const auto before = sagas.get("K");
  REQUIRE(before);
  CHECK(before->state == SagaState::running);
  CHECK(before->step == 1);
  CHECK(step_states(*before) == std::vector<std::string>{"done"});
  CHECK(recover_one(sagas).completed == 1);
  CHECK(ledger.get("a").balance == 9'800);
  CHECK(ledger.get("b").balance == 200);
  CHECK(ledger.find_transfer_by_key("K:second").outcome == "ok");
  CHECK(ledger.check().ok());
}

TEST_CASE("sagas: a step needs exactly one of an action and a transactional action", "[backend][saga]") {
  TestDb t;
  t.db().migrate();
  Sagas sagas(t.db(), quick());
  SagaStep both = SagaStep::in_transaction("a", [](StepContext&, Transaction&) { return std::string(); });
  both.action = [](StepContext&) { return std::string(); };
  CHECK(kind_of([&] { sagas.define("t", {both}); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { sagas.define("t", {SagaStep::in_transaction("a", {})}); }) == ErrorKind::invalid_argument);
  sagas.define("t", {SagaStep::in_transaction("a", [](StepContext&, Transaction&) { return std::string("x"); })});
  CHECK(sagas.run("t", "one", "").state == SagaState::completed);
  CHECK(sagas.get("one")->steps.at(0).result == "x");
}

// rowguard saga run | list | show | recover
//
// A saga run from the shell has type "shell": its steps are shell commands, kept in its payload
// (JSON) so that `saga recover`, in any process, can resume it with the same commands.
#include <iostream>

#include "cli.hpp"

namespace rowguard::cli {

namespace {

constexpr std::string_view shell_type = "shell";

struct SagaArgs {
  std::string id;
  std::vector<std::string> steps;  // NAME=CMD, in order
  std::vector<std::string> undos;  // NAME=CMD
  std::string state;
  std::string type;
  std::int64_t limit = 1000;
  std::string lease_ttl = "30s";
};

std::pair<std::string, std::string> split(const std::string& spec, std::string_view option) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error(ErrorKind::invalid_argument, fmt::format("{} wants NAME=CMD, got '{}'", option, spec));
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

// The payload of a shell saga: {"steps":[{"name":..,"run":..,"undo":..}, ...]}.
std::string payload_of(const SagaArgs& a) {
  nlohmann::json steps = nlohmann::json::array();
  for (const auto& spec : a.steps) {
    auto [name, cmd] = split(spec, "--step");
    steps.push_back({{"name", name}, {"run", cmd}});
  }
  for (const auto& spec : a.undos) {
    auto [name, cmd] = split(spec, "--undo");
    bool found = false;
    for (auto& s : steps)
      if (s["name"] == name) {
        if (s.contains("undo"))
          throw Error(ErrorKind::invalid_argument, fmt::format("step '{}' has two --undo commands", name));
        s["undo"] = cmd;
        found = true;
      }
    if (!found) throw Error(ErrorKind::invalid_argument, fmt::format("--undo names '{}', which is no --step", name));
  }
  return json_line({{"steps", steps}});
}

// Runs a step's command; a non-zero exit fails the step (or the compensation).
void run_step_command(const std::string& command, const StepContext& c, const std::string& key) {
  const int code =
      run_shell(command, {"ROWGUARD_SAGA_ID=" + c.saga_id, "ROWGUARD_STEP=" + c.step, "ROWGUARD_IDEMPOTENCY_KEY=" + key,
                          "ROWGUARD_FENCING_TOKEN=" + std::to_string(c.token)});
  if (code != 0) throw std::runtime_error(fmt::format("command exited with {}", code));
}

std::vector<SagaStep> shell_steps(const std::string& payload) {
  const auto json = nlohmann::json::parse(payload, nullptr, false);
  if (json.is_discarded() || !json.contains("steps") || !json["steps"].is_array())
    throw Error(ErrorKind::invalid_argument, "a shell saga's payload is not {\"steps\": [...]}");
  std::vector<SagaStep> steps;
  for (const auto& s : json["steps"]) {
    SagaStep step;
    step.name = s.value("name", "");
    const std::string run = s.value("run", "");
    step.action = [run](StepContext& c) {
      run_step_command(run, c, c.idempotency_key());
      return std::string();
    };
    if (s.contains("undo")) {
      const std::string undo = s.value("undo", "");
      step.compensation = [undo](StepContext& c) { run_step_command(undo, c, c.compensation_key()); };
    }
    steps.push_back(std::move(step));
  }
  return steps;
}

SagaOptions options_of(const SagaArgs& a) {
  SagaOptions o;
  o.lease_ttl = parse_duration(a.lease_ttl);
  // A failing command is not retried as if it were a lost connection; compensations are, briefly.
  o.compensation_retry.attempts = 3;
  o.compensation_retry.initial_backoff = std::chrono::milliseconds(100);
  return o;
}

nlohmann::json json_of(const SagaInfo& s) {
  nlohmann::json j = {
      {"id", s.id},       {"type", s.type},   {"state", to_string(s.state)},      {"step", s.step},
      {"error", s.error}, {"owner", s.owner}, {"created_at_ms", s.created_at_ms}, {"updated_at_ms", s.updated_at_ms}};
  return j;
}

void print_outcome(const Globals& globals, const SagaOutcome& o) {
  emit(globals,
       {{"id", o.id},
        {"state", to_string(o.state)},
        {"failed_step", o.failed_step},
        {"error", o.error},
        {"replayed", o.replayed}},
       fmt::format("saga '{}' {}{}{}", o.id, to_string(o.state), o.replayed ? " (stored outcome)" : "",
                   o.failed_step.empty() ? "" : fmt::format(": step '{}' failed: {}", o.failed_step, o.error)));
}

}  // namespace

void add_saga_commands(CLI::App& app, Globals& globals, int& exit_status) {
  auto* saga = app.add_subcommand("saga", "Sagas: steps with compensations, resumable after a crash");
  saga->require_subcommand(1);
  static SagaArgs a;

  auto* run = saga->add_subcommand(
      "run",
      "Run shell commands as saga ID: exit 0 when completed, 1 when a step failed (its undo and the earlier "
      "steps' undos ran in reverse; or an undo kept failing and `saga recover` finishes it), 3 when another "
      "coordinator drives ID, 7 when ID exists with other steps");
  run->add_option("id", a.id, "Saga id (1 to 128 bytes)")->required();
  run->add_option("--step", a.steps,
                  "NAME=CMD, in order; CMD runs under /bin/sh with ROWGUARD_SAGA_ID, ROWGUARD_STEP, "
                  "ROWGUARD_IDEMPOTENCY_KEY and ROWGUARD_FENCING_TOKEN (the coordinator's lease token, for a fence in "
                  "front of what the command changes) set; a non-zero exit fails the step. It may run more than once.")
      ->required();
  run->add_option("--undo", a.undos, "NAME=CMD: the compensation of step NAME (key: <id>:<name>:undo)");
  run->add_option("--lease-ttl", a.lease_ttl, "The coordinator's lease, renewed while it runs (default 30s)");
  run->callback([&globals, &exit_status] {
    const std::string payload = payload_of(a);
    auto db = open_database(globals);
    Sagas sagas(db, options_of(a));
    sagas.define_by_payload(shell_type, shell_steps);
    const SagaOutcome o = sagas.run(shell_type, a.id, payload);
    print_outcome(globals, o);
    exit_status = o.state == SagaState::completed ? 0 : 1;
  });

  auto* list = saga->add_subcommand("list", "Sagas, oldest first: id, type, state, step, error");
  list->add_option("--state", a.state, "Only running, compensating, completed or compensated");
  list->add_option("--type", a.type, "Only this type");
  list->add_option("--limit", a.limit, "At most this many (default 1000)")->check(decimal());
  list->callback([&globals] {
    SagaFilter filter;
    if (!a.state.empty()) filter.state = saga_state_from(a.state);
    filter.type = a.type;
    filter.limit = a.limit;
    auto db = open_database(globals);
    for (const auto& s : Sagas(db).list(filter))
      emit(globals, json_of(s),
           fmt::format("{:<30} {:<12} {:<13} step {:<3} {}", s.id, s.type, to_string(s.state), s.step, s.error));
  });

  auto* show = saga->add_subcommand("show", "One saga and its steps (exit 5 when there is none)");
  show->add_option("id", a.id, "Saga id")->required();
  show->callback([&globals] {
    auto db = open_database(globals);
    const auto s = Sagas(db).get(a.id);
    if (!s) throw Error(ErrorKind::not_found, fmt::format("no saga '{}'", a.id));
    nlohmann::json j = json_of(*s);
    j["payload"] = s->payload;
    j["steps"] = nlohmann::json::array();
    std::string text = fmt::format("saga '{}' type {} {} at step {}{}", s->id, s->type, to_string(s->state), s->step,
                                   s->error.empty() ? "" : ": " + s->error);
    for (const auto& st : s->steps) {
      j["steps"].push_back({{"index", st.index},
                            {"name", st.name},
                            {"state", to_string(st.state)},
                            {"result", st.result ? nlohmann::json(*st.result) : nlohmann::json()},
                            {"error", st.error},
                            {"attempts", st.attempts}});
      text += fmt::format("\n  {:>3} {:<20} {:<12} attempts {}{}", st.index, st.name, to_string(st.state), st.attempts,
                          st.error.empty() ? "" : " error: " + st.error);
    }
    emit(globals, j, text);
  });

  auto* recover = saga->add_subcommand(
      "recover",
      "Finish or compensate the shell sagas whose coordinator died: exit 0 when none is left "
      "unresolved, 1 when some are (an undo still failing), 3 when only live coordinators' remain");
  recover->add_option("--lease-ttl", a.lease_ttl, "The recovering coordinator's lease (default 30s)");
  recover->callback([&globals, &exit_status] {
    auto db = open_database(globals);
    Sagas sagas(db, options_of(a));
    sagas.define_by_payload(shell_type, shell_steps);
    const SagaRecovery r = sagas.recover();
    nlohmann::json unresolved = nlohmann::json::array();
    std::string text = fmt::format("completed {} compensated {} busy {} unresolved {} other types {}", r.completed,
                                   r.compensated, r.busy, r.unresolved.size(), r.undefined);
    for (const auto& [id, why] : r.unresolved) {
      unresolved.push_back({{"id", id}, {"error", why}});
      text += fmt::format("\n  unresolved '{}': {}", id, why);
    }
    emit(globals,
         {{"completed", r.completed},
          {"compensated", r.compensated},
          {"busy", r.busy},
          {"undefined", r.undefined},
          {"unresolved", unresolved}},
         text);
    exit_status = !r.unresolved.empty() ? 1 : r.busy > 0 ? exit_code(ErrorKind::lock_busy) : 0;
  });
}

}  // namespace rowguard::cli

// rowguard 2pc transfer|recover|prune: two-phase commit across PostgreSQL databases. --db is the
// database that holds the decision log; every participant is named with --participant NAME=URL.
#include <iostream>
#include <map>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct TwoPhaseArgs {
  std::vector<std::string> participants;  // NAME=URL
  std::string log_name = "default";
  std::string grace = "60s";
  std::string from, to, key, older_than = "168h";
  std::int64_t amount = 0;
};

// The participants' Databases, opened with the global options (prefix, connect timeout).
struct Participants {
  std::map<std::string, std::unique_ptr<Database>> open;
  std::vector<std::pair<std::string, Database*>> list;

  Participants(const Globals& globals, const std::vector<std::string>& specs) {
    for (const auto& spec : specs) {
      const auto eq = spec.find('=');
      if (eq == std::string::npos || eq == 0)
        throw Error(ErrorKind::invalid_argument, "--participant takes NAME=URL (e.g. eu=postgresql://db-eu/payments)");
      const std::string name = spec.substr(0, eq);
      Globals g = globals;
      g.db = spec.substr(eq + 1);
      auto db = std::make_unique<Database>(open_database(g));
      list.emplace_back(name, db.get());
      if (!open.emplace(name, std::move(db)).second)
        throw Error(ErrorKind::invalid_argument, fmt::format("participant '{}' is named twice", name));
    }
  }
};

// "NAME:ACCOUNT" -> {NAME, ACCOUNT}; the account id may itself contain ':'.
std::pair<std::string, std::string> leg(const std::string& text) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw Error(ErrorKind::invalid_argument, fmt::format("'{}' is not PARTICIPANT:ACCOUNT", text));
  return {text.substr(0, colon), text.substr(colon + 1)};
}

TwoPhaseOptions options_of(const TwoPhaseArgs& a) {
  TwoPhaseOptions o;
  o.log_name = a.log_name;
  o.recovery_grace = parse_duration(a.grace);
  return o;
}
}  // namespace

void add_two_phase_commands(CLI::App& app, Globals& globals) {
  static TwoPhaseArgs a;
  auto* group = app.add_subcommand(
      "2pc", "Two-phase commit across PostgreSQL databases (--db holds the decision log; see docs/two_phase.md)");
  group->require_subcommand(1);
  // --grace is the coordinators' and recovery's: prune only keeps its rows longer than the default.
  auto common = [](CLI::App* cmd, bool with_grace = true) {
    cmd->add_option("--participant", a.participants, "NAME=URL of a participant database (repeat for each)")
        ->required();
    cmd->add_option("--log-name", a.log_name, "The coordinator's log name, the gids' namespace (default: default)");
    if (!with_grace) return;
    cmd->add_option("--grace", a.grace,
                    "How old an undecided prepared transaction must be before recovery aborts it; a coordinator's "
                    "commit decision later than this after its first PREPARE is recorded as abort (default: 60s)");
  };

  auto* transfer = group->add_subcommand(
      "transfer", "Move AMOUNT minor units from NAME:ACCOUNT to NAME:ACCOUNT in another participant, atomically");
  transfer->add_option("from", a.from, "Source PARTICIPANT:ACCOUNT")->required();
  transfer->add_option("to", a.to, "Destination PARTICIPANT:ACCOUNT")->required();
  transfer->add_option("amount", a.amount, amount_help)->required()->check(decimal());
  transfer->add_option("--key", a.key, "Idempotency key (default: a new one, printed; retry with it)");
  common(transfer);
  transfer->callback([&globals] {
    auto log = open_database(globals);
    Participants p(globals, a.participants);
    TwoPhase tp(log, p.list, options_of(a));
    const auto [from_db, from_account] = leg(a.from);
    const auto [to_db, to_account] = leg(a.to);
    const std::string key = a.key.empty() ? fresh_key() : a.key;
    const TwoPhaseTransferResult r = tp.transfer(from_db, from_account, to_db, to_account, a.amount, key);
    emit(globals,
         {{"gid", r.gid},
          {"status", std::string(to_string(r.status))},
          {"withdrawal_id", r.withdrawal_id},
          {"deposit_id", r.deposit_id},
          {"replayed", r.replayed},
          {"unfinished", r.unfinished},
          {"key", key}},
         fmt::format("2pc transfer {}{} ({}, withdrawal {}, deposit {}, key {}{}{})",
                     r.ok() ? "done" : "rejected: ", r.ok() ? "" : to_string(r.status), r.gid, r.withdrawal_id,
                     r.deposit_id, key, r.replayed ? ", replayed" : "",
                     r.unfinished ? fmt::format(", {} participant(s) left to recover", r.unfinished) : ""));
    if (!r.ok())
      throw Error(ErrorKind::insufficient_funds, fmt::format("2pc transfer rejected: insufficient funds ({})", r.gid));
  });

  auto* recover = group->add_subcommand(
      "recover", "Settle prepared transactions a crashed coordinator left (exit 9 while any stay in doubt)");
  common(recover);
  recover->callback([&globals] {
    auto log = open_database(globals);
    Participants p(globals, a.participants);
    TwoPhase tp(log, p.list, options_of(a));
    const RecoveryReport r = tp.recover();
    for (const auto& e : r.errors) std::cerr << "rowguard: " << e << '\n';
    emit(globals,
         {{"committed", r.committed},
          {"rolled_back", r.rolled_back},
          {"in_doubt", r.in_doubt},
          {"finished", r.finished},
          {"errors", r.errors}},
         fmt::format("committed {}, rolled back {}, in doubt {}, finished {}", r.committed, r.rolled_back, r.in_doubt,
                     r.finished));
    if (!r.clean())
      throw Error(ErrorKind::in_doubt,
                  fmt::format("{} prepared transaction(s) left in doubt: run recover again later", r.in_doubt));
  });

  auto* prune = group->add_subcommand("prune", "Delete finished decisions older than --older-than (default 168h)");
  common(prune, false);
  prune->add_option("--older-than", a.older_than,
                    "An age, e.g. 48h or 30d; at least 60s, the default --grace, and keep it above the --grace your "
                    "coordinators and recoveries run with: a decision row must outlive any coordinator that could "
                    "still decide its gid");
  prune->callback([&globals] {
    auto log = open_database(globals);
    Participants p(globals, a.participants);
    TwoPhase tp(log, p.list, options_of(a));
    const std::int64_t n = tp.prune(parse_duration(a.older_than));
    emit(globals, {{"pruned", n}}, fmt::format("pruned {} decision(s)", n));
  });
}

}  // namespace rowguard::cli

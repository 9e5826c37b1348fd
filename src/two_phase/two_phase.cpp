#include "rowguard/two_phase.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>

#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "backend/backend.hpp"

#include "core/database_gate.hpp"

#include "ledger/ledger_impl.hpp"
#include "two_phase/two_phase_sql.hpp"

namespace rowguard {

using namespace detail::ledger;

std::string_view to_string(TwoPhaseStep step) noexcept {
  switch (step) {
    case TwoPhaseStep::prepared:
      return "prepared";
    case TwoPhaseStep::deciding:
      return "deciding";
    case TwoPhaseStep::decided:
      return "decided";
    case TwoPhaseStep::committed_one:
      return "committed_one";
    case TwoPhaseStep::finished:
      return "finished";
  }
  return "unknown";
}

namespace {

bool is_name(std::string_view s) {
  return !s.empty() && s.size() <= 40 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// 128 bits straight from std::random_device (the kernel's generator) for every gid: a seeded
// engine would hand the same sequence to every process forked after seeding it, and two
// coordinators with one gid would finish each other's prepared transactions (the kill test forks).
std::string random_hex() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}{:08x}{:08x}", rd(), rd(), rd(), rd());
}

// Thrown out of a transfer's work when its key turned up in the source database meanwhile (a
// concurrent request with the key committed first): the run is rolled back and the replay read.
struct KeySeenMeanwhile {};

// Participant names, comma-separated, as the decision log keeps them.
std::vector<std::string> split_names(const std::string& list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// A decision row: 'commit' or 'abort', and the participants it names.
struct Decision {
  std::string decision;
  std::vector<std::string> participants;
};

// A deadline no clock reaches: recovery's abort is never refused.
constexpr std::int64_t no_deadline = std::numeric_limits<std::int64_t>::max();

}  // namespace

GlobalTransaction::~GlobalTransaction() = default;

Transaction& GlobalTransaction::operator[](std::string_view participant) {
  for (auto& [name, tx] : transactions_)
    if (name == participant) return tx;
  throw Error(ErrorKind::invalid_argument, fmt::format("no participant is named '{}'", participant));
}

// A transfer between participants as asked, to compare with what a key recorded.
struct LegsRequest {
  std::string_view from_db, from_account, to_db, to_account;
  std::int64_t amount = 0;
  std::string_view key;
  // What the source's withdrawal leg records as its peer (transfers.global_peer).
  std::string destination() const { return fmt::format("{}:{}", to_db, to_account); }
};

struct TwoPhase::Impl {
  Database& log;
  std::vector<std::pair<std::string, Database*>> participants;
  TwoPhaseOptions options;
  std::string prefix;                                    // "rowguard:<log_name>:"
  std::optional<detail::DecisionLogStatements> log_sql;  // set once the options are checked
  std::map<std::string, detail::ParticipantStatements, std::less<>> participant_sql;

  const detail::ParticipantStatements& sql_of(std::string_view name) const {
    return participant_sql.find(name)->second;
  }
  std::map<std::string, std::unique_ptr<Ledger>, std::less<>> ledgers;

  Database& db(std::string_view name) const {
    for (const auto& [n, d] : participants)
      if (n == name) return *d;
    throw Error(ErrorKind::invalid_argument, fmt::format("no participant is named '{}'", name));
  }

  std::string names() const {
    std::string out;
    for (const auto& [n, d] : participants) out += (out.empty() ? "" : ",") + n;
    return out;
  }

  void step(TwoPhaseStep s, const std::string& gid) const {
    if (options.on_step) options.on_step(s, gid);
  }

  // The log database's clock, in epoch milliseconds.
  std::int64_t log_clock_ms() {
    return detail::with_retries(
        options.retry, detail::RetryIn::conflicts_and_in_doubt, [&] { return log.exec(log_sql->clock).one().i64(0); },
        [](const Error&) {});
  }

  // Writes decision for gid unless one is there, and returns the one that stands: whichever of a
  // coordinator's 'commit' and recovery's 'abort' committed first. A 'commit' is written only while
  // the log database's clock is before deadline_ms (the coordinator's first PREPARE plus the grace,
  // on that clock): later it is written as 'abort', so a decision delayed in the coordinator, its
  // retries or the network can never be recorded after recovery may have aborted the gid and
  // prune removed that abort. One statement (insert and read-back), idempotent, so a lost reply is
  // simply retried.
  Decision decide(const std::string& gid, const std::string& decision, const std::string& who,
                  std::int64_t deadline_ms) {
    return detail::with_retries(
        options.retry, detail::RetryIn::conflicts_and_in_doubt,
        [&] {
          // Empty when a concurrent insert committed during the statement (its snapshot predates it).
          const Result r = log.exec(log_sql->decide, {gid, decision, who, deadline_ms});
          if (r.empty()) throw Error(ErrorKind::transient, fmt::format("the decision row of {} was not found", gid));
          return Decision{r.rows[0].text(0), split_names(r.rows[0].text(1))};
        },
        [](const Error&) {});
  }

  std::optional<Decision> decision_of(const std::string& gid) {
    const Result r = detail::with_retries(
        options.retry, detail::RetryIn::conflicts_and_in_doubt, [&] { return log.exec(log_sql->decision_of, {gid}); },
        [](const Error&) {});
    if (r.empty()) return std::nullopt;
    return Decision{r.rows[0].text(0), split_names(r.rows[0].text(1))};
  }

  // COMMIT or ROLLBACK PREPARED of one leg; false when it was not (or no longer) prepared.
  bool finish(Database& d, const std::string& leg, bool commit) {
    return detail::with_retries(
        options.retry, detail::RetryIn::conflicts_and_in_doubt,
        [&] {
          auto session = detail::DatabaseGate::backend(d).borrow();
          return (*session)->finish_prepared(leg, commit);
        },
        [](const Error&) {});
  }

  void mark_finished(const std::string& gid) { log.exec(log_sql->mark_finished, {gid}); }

  // A key seen before in the source: the original outcome, after comparing every field of the
  // request with the record. The source's withdrawal leg gives the source account, the amount and
  // the destination (global_peer); for an ok outcome the deposit leg, found by the global
  // transaction id in the destination, must be there with the same account and amount. A key
  // recorded by anything else (no global_txid, another kind, no such deposit) is a mismatch.
  std::optional<TwoPhaseTransferResult> replay(const LegsRequest& q) {
    Database& source = db(q.from_db);
    Database& target = db(q.to_db);
    const Result found = source.exec(sql_of(q.from_db).key_record, {std::string(q.key)});
    if (found.empty()) return std::nullopt;
    const Row& row = found.rows[0];
    auto differs = [&](std::string_view field, const std::string& recorded, const std::string& asked) {
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("idempotency key '{}' was used for another request: {} differs (recorded {}, asked {})",
                              q.key, field, recorded, asked));
    };
    const std::optional<std::string> gid = row.opt_text(5);
    if (row.text(1) != "withdrawal" || !gid)
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("idempotency key '{}' was used in participant '{}' by a {} that is not a two-phase "
                              "transfer (transfer {})",
                              q.key, q.from_db, row.text(1), row.i64(0)));
    const std::optional<std::string> from = row.opt_text(2);
    if (from != q.from_account) differs("source account", from.value_or("outside"), std::string(q.from_account));
    if (row.i64(3) != q.amount) differs("amount", std::to_string(row.i64(3)), std::to_string(q.amount));
    // Legs written before schema step 007 have no peer; an ok one is still checked by its deposit.
    if (const auto recorded = row.opt_text(6); recorded && *recorded != q.destination())
      differs("destination", *recorded, q.destination());
    TwoPhaseTransferResult r;
    r.gid = *gid;
    r.withdrawal_id = row.i64(0);
    r.replayed = true;
    r.status = row.text(4) == "ok" ? TransferStatus::ok : TransferStatus::insufficient_funds;
    if (!r.ok()) return r;

    // The deposit leg, with the key (or none, when pruned since). Committed with the withdrawal, or
    // still prepared when its coordinator stopped in phase two: the decision commits it now, as
    // recover() would. Archived since: in the archive.
    auto deposit_in = [&](const std::string& sql) { return target.exec(sql, {*gid, std::string(q.key)}); };
    const auto& target_sql = sql_of(q.to_db);
    Result leg = deposit_in(target_sql.deposit_leg);
    if (leg.empty()) {
      const auto decision = decision_of(*gid);
      if (decision && decision->decision == "commit" && finish(target, *gid + ":" + std::string(q.to_db), true))
        leg = deposit_in(target_sql.deposit_leg);
    }
    if (leg.empty()) leg = deposit_in(target_sql.archived_deposit_leg);
    if (leg.empty())
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("idempotency key '{}' was used for another request: its transaction {} has no deposit "
                              "in participant '{}'",
                              q.key, *gid, q.to_db));
    if (leg.rows[0].text(1) != q.to_account)
      differs("destination account", leg.rows[0].text(1), std::string(q.to_account));
    if (leg.rows[0].i64(2) != q.amount) differs("amount", std::to_string(leg.rows[0].i64(2)), std::to_string(q.amount));
    r.deposit_id = leg.rows[0].i64(0);
    return r;
  }

  // Best effort, before any decision: what is not rolled back here, recovery presumes aborted.
  void roll_back(const std::string& gid, const std::vector<std::string>& prepared) noexcept {
    for (const auto& name : prepared) {
      try {
        finish(db(name), fmt::format("{}:{}", gid, name), false);
      } catch (...) {
        // Left prepared: recover() rolls it back once older than recovery_grace.
      }
    }
  }
};

TwoPhase::TwoPhase(Database& log, std::vector<std::pair<std::string, Database*>> participants, TwoPhaseOptions options)
    : impl_(std::make_unique<Impl>(Impl{log, std::move(participants), std::move(options), {}, {}, {}, {}})) {
  auto& impl = *impl_;
  detail::validate(impl.options.retry);
  if (!is_name(impl.options.log_name))
    throw Error(ErrorKind::invalid_argument, "TwoPhaseOptions::log_name must be 1 to 40 characters of [A-Za-z0-9_-]");
  if (impl.options.recovery_grace.count() < 0)
    throw Error(ErrorKind::invalid_argument, "TwoPhaseOptions::recovery_grace must not be negative");
  if (impl.participants.empty()) throw Error(ErrorKind::invalid_argument, "a two-phase commit needs participants");
  detail::require_prepared_transactions(detail::DatabaseGate::backend(log).dialect(), "TwoPhase (the decision log)");
  std::set<std::string> seen;
  for (const auto& [name, d] : impl.participants) {
    if (!is_name(name))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("participant name '{}' must be 1 to 40 characters of [A-Za-z0-9_-]", name));
    if (!seen.insert(name).second)
      throw Error(ErrorKind::invalid_argument, fmt::format("participant '{}' is named twice", name));
    if (d == nullptr) throw Error(ErrorKind::invalid_argument, fmt::format("participant '{}' has no Database", name));
    detail::require_prepared_transactions(detail::DatabaseGate::backend(*d).dialect(),
                                          fmt::format("TwoPhase (participant '{}')", name));
    const auto configured = impl.options.ledgers.find(name);
    impl.ledgers.emplace(
        name,
        std::make_unique<Ledger>(*d, configured == impl.options.ledgers.end() ? LedgerOptions{} : configured->second));
  }
  for (const auto& [name, o] : impl.options.ledgers)
    if (!seen.count(name))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("TwoPhaseOptions::ledgers names '{}', which is not a participant", name));
  impl.prefix = fmt::format("rowguard:{}:", impl.options.log_name);
  impl.log_sql.emplace(detail::DatabaseGate::backend(log));
  for (const auto& [name, d] : impl.participants)
    impl.participant_sql.emplace(name, detail::ParticipantStatements(detail::DatabaseGate::backend(*d)));
}

TwoPhase::~TwoPhase() = default;

const TwoPhaseOptions& TwoPhase::options() const noexcept { return impl_->options; }

TwoPhaseResult TwoPhase::run(const std::function<void(GlobalTransaction&)>& work) {
  if (!work) throw Error(ErrorKind::invalid_argument, "run needs a function");
  auto& impl = *impl_;
  GlobalTransaction global(impl.prefix + random_hex());
  const std::string& gid = global.gid();
  // rowguard_two_phase_total{outcome}: whatever leaves before the decision rolled back.
  struct Count {
    detail::metrics::Counter* outcome = &detail::instruments::two_phase().rolled_back;
    ~Count() { outcome->add(); }
  } counted;
  global.transactions_.reserve(impl.participants.size());
  for (const auto& [name, d] : impl.participants)
    global.transactions_.emplace_back(name, d->begin(impl.options.transaction));
  work(global);  // an exception here rolls every transaction back (their destructors)

  // Phase one. A failure rolls back what was prepared, and the one whose PREPARE may have gone through.
  // Its start on the log database's clock bounds the commit decision (see decide()): recovery
  // measures the grace from each PREPARE, which comes later.
  const auto started = std::chrono::steady_clock::now();
  const std::int64_t commit_deadline_ms = impl.log_clock_ms() + impl.options.recovery_grace.count();
  std::vector<std::string> prepared;
  for (auto& [name, tx] : global.transactions_) {
    try {
      tx.prepare(fmt::format("{}:{}", gid, name));
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::in_doubt) prepared.push_back(name);
      impl.roll_back(gid, prepared);
      throw;
    }
    prepared.push_back(name);
  }
  impl.step(TwoPhaseStep::prepared, gid);
  if (std::chrono::steady_clock::now() - started >= impl.options.recovery_grace) {
    impl.roll_back(gid, prepared);
    throw Error(ErrorKind::conflict,
                fmt::format("{}: preparing took longer than recovery_grace ({} ms), which recovery may already have "
                            "aborted: rolled back",
                            gid, impl.options.recovery_grace.count()));
  }

  // The decision: durable in the log before any COMMIT PREPARED.
  std::string decision;
  impl.step(TwoPhaseStep::deciding, gid);
  try {
    decision = impl.decide(gid, "commit", impl.names(), commit_deadline_ms).decision;
  } catch (const Error& e) {
    counted.outcome = &detail::instruments::two_phase().in_doubt;
    if (detail::log_enabled(LogLevel::error))
      detail::log(LogLevel::error, "two_phase", "commit decision in doubt; recover() settles it",
                  {{"gid", gid}, {"error", e.what()}});
    throw Error(ErrorKind::in_doubt,
                fmt::format("{}: the commit decision could not be logged or read back; recover() settles it "
                            "(commit if the decision row was written, else abort): {}",
                            gid, e.what()),
                e.sqlstate());
  }
  if (decision != "commit") {
    impl.roll_back(gid, prepared);
    throw Error(ErrorKind::conflict,
                fmt::format("{}: the decision is abort: recovery aborted the transaction first, or the coordinator "
                            "decided more than recovery_grace ({} ms) after its first PREPARE (on the log database's "
                            "clock): rolled back",
                            gid, impl.options.recovery_grace.count()));
  }
  impl.step(TwoPhaseStep::decided, gid);

  // Phase two: committed whatever happens now; what does not get through, recover() finishes.
  TwoPhaseResult result{gid, 0};
  for (const auto& [name, d] : impl.participants) {
    try {
      impl.finish(*d, fmt::format("{}:{}", gid, name), true);  // false: recovery committed it already
      impl.step(TwoPhaseStep::committed_one, gid);
    } catch (const Error&) {
      ++result.unfinished;
    }
  }
  if (result.unfinished == 0) {
    try {
      impl.mark_finished(gid);
      impl.step(TwoPhaseStep::finished, gid);
    } catch (const Error&) {
      // Only bookkeeping: recover() marks it when it finds nothing prepared under the gid.
    }
    counted.outcome = &detail::instruments::two_phase().committed;
  } else {
    counted.outcome = &detail::instruments::two_phase().unfinished;
    if (detail::log_enabled(LogLevel::warn))
      detail::log(LogLevel::warn, "two_phase", "committed; some participants not finished, recover() finishes them",
                  {{"gid", gid}, {"unfinished", std::to_string(result.unfinished)}});
  }
  return result;
}

TwoPhaseTransferResult TwoPhase::transfer(std::string_view from_db, std::string_view from_account,
                                          std::string_view to_db, std::string_view to_account, std::int64_t amount,
                                          std::string_view key) {
  auto& impl = *impl_;
  impl.db(from_db);  // refuses a name that is no participant
  impl.db(to_db);
  if (from_db == to_db)
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format("a transfer within participant '{}' needs no two-phase commit: use Ledger::transfer", from_db));
  check_text(from_account, "source account id", max_id_bytes);
  check_text(to_account, "destination account id", max_id_bytes);
  check_amount(amount);
  check_text(key, "idempotency key", max_key_bytes);
  Ledger& withdrawals = *impl.ledgers.find(from_db)->second;
  Ledger& deposits = *impl.ledgers.find(to_db)->second;
  const LegsRequest request{from_db, from_account, to_db, to_account, amount, key};
  const std::string peer = request.destination();
  const std::string& set_peer_sql = impl.sql_of(from_db).set_peer;

  return detail::with_retries(
      impl.options.retry, detail::RetryIn::conflicts,
      [&]() -> TwoPhaseTransferResult {
        if (auto earlier = impl.replay(request)) return *earlier;
        TwoPhaseTransferResult r;
        try {
          const TwoPhaseResult done = run([&](GlobalTransaction& g) {
            Transaction& out = g[from_db];
            Transaction& in = g[to_db];
            // Both account rows are locked first, in one order across all databases (participant name,
            // then account id): PostgreSQL detects deadlocks only inside one database, and two
            // transfers in opposite directions locking source then destination would wait for each
            // other across two databases forever.
            auto lock = [&](Transaction& tx, std::string_view participant, std::string_view account) {
              const Result c = tx.exec(impl.sql_of(participant).lock_account, {std::string(account)});
              if (c.empty()) throw Error(ErrorKind::not_found, fmt::format("account '{}' does not exist", account));
              return c.rows[0].text(0);
            };
            std::string from_currency, to_currency;
            if (std::pair(from_db, from_account) < std::pair(to_db, to_account)) {
              from_currency = lock(out, from_db, from_account);
              to_currency = lock(in, to_db, to_account);
            } else {
              to_currency = lock(in, to_db, to_account);
              from_currency = lock(out, from_db, from_account);
            }
            if (from_currency != to_currency)
              throw Error(ErrorKind::currency_mismatch,
                          fmt::format("account '{}' is in {} and '{}' in {}", from_account, from_currency, to_account,
                                      to_currency));
            // The key was recorded meanwhile (a concurrent request with it committed first): whatever
            // recorded it, the replay after the rollback compares it field by field.
            TransferResult w;
            try {
              w = withdrawals.withdraw(out, from_account, amount, key, g.gid());
            } catch (const Error& e) {
              if (e.kind() == ErrorKind::idempotency_mismatch) throw KeySeenMeanwhile{};
              throw;
            }
            if (w.replayed) throw KeySeenMeanwhile{};
            // Where the money goes, on the source's record: a rejection leaves no deposit leg to tell it.
            out.exec(set_peer_sql, {w.transfer_id, peer});
            r.status = w.status;
            r.withdrawal_id = w.transfer_id;
            if (!w.ok()) return;  // the rejection is recorded under the key in the source only
            const TransferResult d = deposits.deposit(in, to_account, amount, key, g.gid());
            if (d.replayed)
              throw Error(ErrorKind::idempotency_mismatch,
                          fmt::format("idempotency key '{}' was already used in participant '{}' (transfer {})", key,
                                      to_db, d.transfer_id));
            r.deposit_id = d.transfer_id;
          });
          r.gid = done.gid;
          r.unfinished = done.unfinished;
          return r;
        } catch (const KeySeenMeanwhile&) {
          throw Error(ErrorKind::conflict, fmt::format("idempotency key '{}' was recorded meanwhile", key));
        } catch (const Error& e) {
          // A concurrent request with the same key won the unique index: retry to read its record.
          if (e.sqlstate() == "23505") throw Error(ErrorKind::conflict, e.what(), e.sqlstate());
          throw;
        }
      },
      [](const Error&) {});
}

RecoveryReport TwoPhase::recover() {
  auto& impl = *impl_;
  RecoveryReport report;
  // Unfinished decisions are read before the participants are listed: a 'commit' row is written
  // only after every leg is prepared, so each of its legs is then either listed or already done.
  std::map<std::string, Decision> open;
  for (const auto& row : impl.log.exec(impl.log_sql->unfinished, {impl.prefix}).rows)
    open.emplace(row.text(0), Decision{row.text(1), split_names(row.text(2))});

  // Every prepared leg of this log name, per global gid.
  struct Leg {
    std::string participant;
    std::int64_t age_ms = 0;
  };
  std::map<std::string, std::vector<Leg>> legs;
  std::set<std::string> unreachable;
  for (const auto& [name, d] : impl.participants) {
    try {
      const std::string suffix = ":" + name;
      const Result r = d->exec(impl.sql_of(name).prepared_legs, {impl.prefix, suffix});
      for (const auto& row : r.rows) {
        const std::string leg = row.text(0);
        legs[leg.substr(0, leg.size() - suffix.size())].push_back({name, row.i64(1)});
      }
    } catch (const Error& e) {
      unreachable.insert(name);
      ++report.in_doubt;
      report.errors.push_back(fmt::format("participant '{}': {}", name, e.what()));
    }
  }

  std::set<std::string> unsettled;  // gids with a leg left in doubt
  for (const auto& [gid, its] : legs) {
    std::optional<std::string> decision;
    try {
      if (auto found = impl.decision_of(gid)) decision = found->decision;
      if (!decision) {
        std::int64_t oldest = 0;
        for (const auto& leg : its) oldest = std::max(oldest, leg.age_ms);
        if (oldest >= impl.options.recovery_grace.count()) {
          // Presumed abort, logged first: a coordinator still running then reads 'abort' and rolls
          // back instead of committing. If it wrote 'commit' first, that decision stands. The abort
          // names every participant this recovery knows: whether one of them still holds a leg of
          // the gid is known only once each was reached.
          const Decision d = impl.decide(gid, "abort", impl.names(), no_deadline);
          decision = d.decision;
          // A 'commit' that won the race was written after the participants were listed, so a leg
          // prepared since may be missing from them: only a later recovery may finish that row.
          if (d.decision == "abort" && !open.count(gid)) open.emplace(gid, d);
        }
      }
    } catch (const Error& e) {
      report.errors.push_back(fmt::format("decision log: {}", e.what()));
    }
    if (!decision) {
      report.in_doubt += static_cast<std::int64_t>(its.size());
      unsettled.insert(gid);
      continue;
    }
    const bool commit = *decision == "commit";
    for (const auto& leg : its) {
      try {
        if (impl.finish(impl.db(leg.participant), gid + ":" + leg.participant, commit))
          ++(commit ? report.committed : report.rolled_back);
      } catch (const Error& e) {
        ++report.in_doubt;
        unsettled.insert(gid);
        report.errors.push_back(fmt::format("participant '{}': {}", leg.participant, e.what()));
      }
    }
  }

  // A decision is finished once none of its participants holds a leg. Rows whose participants this
  // recovery does not know (or could not reach) are left for one that does: a participant it could
  // not reach may hold a leg, whose outcome is then unknown.
  for (auto& [gid, o] : open) {
    if (unsettled.count(gid)) continue;
    bool known = true;
    for (const auto& name : o.participants) {
      const bool ours = std::any_of(impl.participants.begin(), impl.participants.end(),
                                    [&](const auto& p) { return p.first == name; });
      if (!ours || unreachable.count(name)) known = false;
    }
    if (!known) continue;
    try {
      impl.mark_finished(gid);
      ++report.finished;
    } catch (const Error& e) {
      report.errors.push_back(fmt::format("decision log: {}", e.what()));
    }
  }
  return report;
}

std::int64_t TwoPhase::prune(std::chrono::milliseconds older_than) {
  auto& impl = *impl_;
  if (older_than < impl.options.recovery_grace)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("prune age {} ms is below recovery_grace ({} ms): a coordinator could still decide a gid "
                            "whose row it would delete",
                            older_than.count(), impl.options.recovery_grace.count()));
  return impl.log.exec(impl.log_sql->prune, {static_cast<std::int64_t>(-older_than.count()), impl.prefix}).affected;
}

}  // namespace rowguard

// Sagas: steps with compensations whose progress is committed before and after every step.
//
// One coordinator drives a saga at a time: it holds the lease "saga:<id>" (renewed by a heartbeat)
// and every write of the saga's rows runs in its own transaction behind lease.guard(), so a
// coordinator that lost its lease can never write over the one that took the saga over.
#include "rowguard/saga.hpp"

#include <atomic>
#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>

#include "rowguard/locks.hpp"

#include "base/sql_text.hpp"
#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "backend/backend.hpp"

#include "core/database_gate.hpp"

#include "saga/saga_sql.hpp"

namespace rowguard {

namespace {
constexpr std::size_t max_id_bytes = 128;
constexpr std::size_t max_step_bytes = 64;
constexpr std::size_t max_sagas_listed = 100'000;

void check_name(std::string_view value, std::string_view what, std::size_t max) {
  if (value.empty() || value.size() > max || !detail::is_text(value))
    throw Error(ErrorKind::invalid_argument, fmt::format("{} must be 1 to {} bytes of UTF-8 without NUL", what, max));
}

void check_steps(std::string_view type, const std::vector<SagaStep>& steps) {
  if (steps.empty()) throw Error(ErrorKind::invalid_argument, fmt::format("saga type '{}' has no steps", type));
  if (steps.size() > 10'000)
    throw Error(ErrorKind::invalid_argument, fmt::format("saga type '{}' has more than 10000 steps", type));
  std::set<std::string_view> seen;
  for (const auto& s : steps) {
    check_name(s.name, "a saga step name", max_step_bytes);
    if (s.name.find(':') != std::string::npos)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("saga step name '{}' contains ':', which separates the parts of its keys", s.name));
    if (!seen.insert(s.name).second)
      throw Error(ErrorKind::invalid_argument, fmt::format("saga type '{}' has two steps named '{}'", type, s.name));
    if (!s.action && !s.transactional_action)
      throw Error(ErrorKind::invalid_argument, fmt::format("saga step '{}' has no action", s.name));
    if (s.action && s.transactional_action)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("saga step '{}' has both an action and a transactional action", s.name));
  }
}

StepState step_state_from(std::string_view name) {
  for (auto s :
       {StepState::started, StepState::done, StepState::failed, StepState::compensating, StepState::compensated})
    if (to_string(s) == name) return s;
  throw Error(ErrorKind::permanent, fmt::format("a saga step has the unknown state '{}'", name));
}

bool final_state(SagaState s) { return s == SagaState::completed || s == SagaState::compensated; }

std::string lease_name(std::string_view id) { return fmt::format("saga:{}", id); }

// The length of the well-formed UTF-8 sequence (not NUL) that text starts with; 0 when there is none.
std::size_t utf8_sequence(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b = byte(0);
  if (b != 0 && b < 0x80) return 1;
  std::size_t n = 0;
  unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) low = 0xA0;   // no overlong forms
    if (b == 0xED) high = 0x9F;  // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) low = 0x90;
    if (b == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (text.size() < n || byte(1) < low || byte(1) > high) return 0;
  for (std::size_t i = 2; i < n; ++i)
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  return n;
}

// Text any backend stores: bytes that are not well-formed UTF-8, and NUL, become \xNN. PostgreSQL
// refuses them in text and SOCI cuts a bound string at a NUL; a refused write of a saga's progress
// would leave it to be driven again, and fail again, forever.
std::string storable(std::string_view text) {
  if (detail::is_text(text)) return std::string(text);
  std::string out;
  out.reserve(text.size() + 16);
  for (std::size_t i = 0; i < text.size();) {
    if (const std::size_t n = utf8_sequence(text.substr(i))) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i]));
      ++i;
    }
  }
  return out;
}

// The message of whatever an action or compensation threw, storable.
std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const Error& x) {
    return storable(fmt::format("{}: {}", to_string(x.kind()), x.what()));
  } catch (const std::exception& x) {
    return storable(x.what());
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}
}  // namespace

std::string_view to_string(SagaState state) noexcept {
  switch (state) {
    case SagaState::running:
      return "running";
    case SagaState::compensating:
      return "compensating";
    case SagaState::completed:
      return "completed";
    case SagaState::compensated:
      return "compensated";
  }
  return "running";
}

std::string_view to_string(StepState state) noexcept {
  switch (state) {
    case StepState::started:
      return "started";
    case StepState::done:
      return "done";
    case StepState::failed:
      return "failed";
    case StepState::compensating:
      return "compensating";
    case StepState::compensated:
      return "compensated";
  }
  return "started";
}

SagaState saga_state_from(std::string_view name) {
  for (auto s : {SagaState::running, SagaState::compensating, SagaState::completed, SagaState::compensated})
    if (to_string(s) == name) return s;
  throw Error(ErrorKind::invalid_argument,
              fmt::format("'{}' is not a saga state (running, compensating, completed, compensated)", name));
}

const std::string* StepContext::result_of(std::string_view name) const {
  for (const auto& [n, r] : results)
    if (n == name) return &r;
  return nullptr;
}

struct Sagas::Impl {
  using Definition = std::function<std::vector<SagaStep>(const std::string&)>;
  std::shared_ptr<detail::Backend> backend;
  SagaOptions options;
  Locks locks;
  std::mutex definitions_mutex;
  std::map<std::string, Definition, std::less<>> definitions;
  detail::SagaStatements sql;

  Impl(Database& db, SagaOptions o)
      : backend(detail::DatabaseGate::shared_backend(db)),
        options(std::move(o)),
        locks(db, lock_options(options)),
        sql(*backend) {}

  static LockOptions lock_options(const SagaOptions& o) {
    if (o.lease_ttl < std::chrono::milliseconds(100))
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("SagaOptions::lease_ttl must be at least 100ms, got {} ms", o.lease_ttl.count()));
    if (o.heartbeat_interval &&
        (*o.heartbeat_interval <= std::chrono::milliseconds::zero() || *o.heartbeat_interval >= o.lease_ttl))
      throw Error(ErrorKind::invalid_argument, "SagaOptions::heartbeat_interval must be positive and below lease_ttl");
    detail::validate(o.retry);
    detail::validate(o.compensation_retry);
    LockOptions l;
    l.owner_prefix = o.owner_prefix;
    if (l.max_ttl < o.lease_ttl) l.max_ttl = o.lease_ttl;
    return l;
  }

  std::optional<Definition> definition(std::string_view type) {
    std::lock_guard lock(definitions_mutex);
    auto it = definitions.find(type);
    if (it == definitions.end()) return std::nullopt;
    return it->second;
  }

  static SagaInfo info_of(const Row& r) {
    SagaInfo i;
    i.id = r.text(0);
    i.type = r.text(1);
    i.payload = r.text(2);
    i.state = saga_state_from(r.text(3));
    i.step = static_cast<int>(r.i64(4));
    i.error = r.opt_text(5).value_or("");
    i.owner = r.opt_text(6).value_or("");
    i.created_at_ms = r.i64(7);
    i.updated_at_ms = r.i64(8);
    return i;
  }

  std::optional<SagaInfo> read(std::string_view id, bool with_steps) {
    auto session = backend->borrow();
    const Result r = (*session)->exec(sql.read, {std::string(id)});
    if (r.empty()) return std::nullopt;
    SagaInfo info = info_of(r.rows[0]);
    if (with_steps) {
      for (const auto& row : (*session)->exec(sql.steps, {std::string(id)}).rows) {
        SagaStepInfo s;
        s.index = static_cast<int>(row.i64(0));
        s.name = row.text(1);
        s.state = step_state_from(row.text(2));
        s.result = row.opt_text(3);
        s.error = row.opt_text(4).value_or("");
        s.attempts = row.i64(5);
        info.steps.push_back(std::move(s));
      }
    }
    return info;
  }

  // The outcome a saga's rows record: the failed step is the last one begun.
  static SagaOutcome outcome_of(const SagaInfo& info) {
    SagaOutcome o;
    o.id = info.id;
    o.state = info.state;
    if (info.state == SagaState::compensating || info.state == SagaState::compensated) {
      if (!info.steps.empty()) {
        o.failed_step = info.steps.back().name;
        o.error = info.steps.back().error;
      }
      if (info.state == SagaState::compensating && !info.error.empty()) o.error = info.error;
    }
    return o;
  }

  // Takes the saga's lease with a new owner id and starts its heartbeat; empty when a live
  // coordinator holds it. *lost turns true when the heartbeat finds the lease gone.
  std::optional<Lease> take(std::string_view id, const std::shared_ptr<std::atomic<bool>>& lost) {
    auto lease = locks.try_acquire(lease_name(id), options.lease_ttl, locks.new_owner());
    if (!lease) return std::nullopt;
    HeartbeatOptions h;
    h.interval = options.heartbeat_interval;
    h.on_lost = [lost] { *lost = true; };
    lease->start_heartbeat(std::move(h));
    return lease;
  }

  // recorded: the saga's row exists; when not, the first write creates it, and *recorded turns
  // true once that write committed.
  SagaOutcome drive(SagaInfo info, const std::vector<SagaStep>& steps, Lease& lease,
                    const std::shared_ptr<std::atomic<bool>>& lost, bool& recorded);
  struct Driver;
};

// One coordinator driving one saga: its rows in memory, written through on every change.
struct Sagas::Impl::Driver {
  Sagas::Impl& impl;
  SagaInfo& info;
  const std::vector<SagaStep>& steps;
  Lease& lease;
  std::shared_ptr<std::atomic<bool>> lost;
  bool& recorded;  // the saga's row exists: a new saga's first write creates it
  std::map<int, SagaStepInfo> rows;

  void check_lease() const {
    if (*lost || !lease.valid())
      throw Error(ErrorKind::lock_lost,
                  fmt::format("saga '{}': the coordinator's lease '{}' was lost; the saga is left for recover()",
                              info.id, lease.name()));
  }

  // One transaction behind the lease's guard, creating the saga's row first when it has none yet;
  // f(tx) returns whether to commit it (false: rolled back, nothing written).
  template <class F>
  bool transaction(F&& f) {
    Transaction tx = detail::DatabaseGate::begin(*impl.backend, TxOptions{});
    try {
      lease.guard(tx);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::lock_lost) *lost = true;  // stops the coordinator, whatever caught this
      throw;
    }
    if (!recorded) tx.exec(impl.sql.insert, {info.id, info.type, info.payload, lease.owner()});
    if (!f(tx)) return false;
    tx.commit();
    if (!recorded) {
      recorded = true;
      detail::instruments::sagas().started.add();
    }
    return true;
  }

  // One committed transaction, behind the lease's guard. Retried on conflicts and lost commits:
  // every write sets absolute values, so repeating one that did commit changes nothing more
  // (except an attempts counter).
  template <class F>
  void write(F&& f) {
    detail::with_retries(
        impl.options.retry, detail::RetryIn::conflicts_and_in_doubt,
        [&] {
          transaction([&](Transaction& tx) {
            f(tx);
            return true;
          });
        },
        [](const Error&) {});
  }

  void set_saga(Transaction& tx, SagaState state, int step, const std::string& error) {
    tx.exec(impl.sql.set, {info.id, std::string(to_string(state)), std::int64_t{step},
                           error.empty() ? Value(nullptr) : Value(error), lease.owner()});
    info.state = state;
    info.step = step;
    info.error = error;
    info.owner = lease.owner();
  }

  // own_result: a compensation also sees its own step's result, when its action completed.
  StepContext context(int i, int attempt, bool own_result = false) const {
    StepContext c;
    c.saga_id = info.id;
    c.saga_type = info.type;
    c.payload = info.payload;
    c.step = steps[i].name;
    c.index = i;
    c.attempt = attempt;
    c.token = lease.token();
    for (const auto& [j, row] : rows)
      if ((j < i || (own_result && j == i)) && row.result) c.results.emplace_back(row.name, *row.result);
    return c;
  }

  // The rows must be the definition's steps, in order: a definition changed under a running saga
  // would otherwise compensate the wrong step.
  void check_rows() const {
    for (const auto& [i, row] : rows)
      if (i < 0 || static_cast<std::size_t>(i) >= steps.size() || steps[i].name != row.name)
        throw Error(ErrorKind::permanent,
                    fmt::format("saga '{}' recorded step {} as '{}', but its type '{}' defines {}", info.id, i,
                                row.name, info.type,
                                static_cast<std::size_t>(i) < steps.size() ? "'" + steps[i].name + "' there"
                                                                           : std::string("fewer steps")));
  }

  std::string failure() const { return rows.empty() ? std::string() : rows.rbegin()->second.error; }

  // A result that cannot be stored as text fails the step (its action ran: it is compensated).
  static std::string check_result(const std::string& result) {
    if (detail::is_text(result)) return {};
    return fmt::format(
        "the action returned a result that is not UTF-8 text without NUL ({} bytes: {}); "
        "a saga keeps results as text: encode bytes, e.g. as hex",
        result.size(), storable(result.substr(0, 64)));
  }

  // Writes what step i's action did: done with its result (the saga moves on, or completes after
  // the last step), or failed with its error (the saga turns to compensating).
  void record_end(Transaction& tx, int i, const std::string& result, const std::string& error, std::int64_t runs) {
    const int n = static_cast<int>(steps.size());
    if (error.empty()) {
      const bool last = i + 1 == n;
      tx.exec(impl.sql.step_done, {info.id, std::int64_t{i}, steps[i].name, result, runs});
      set_saga(tx, last ? SagaState::completed : SagaState::running, last ? i : i + 1, {});
    } else {
      tx.exec(impl.sql.step_failed, {info.id, std::int64_t{i}, steps[i].name, error, runs});
      set_saga(tx, SagaState::compensating, i, fmt::format("step '{}' failed: {}", steps[i].name, error));
    }
  }

  // Runs step i's action on its own: 'started' committed before it, done or failed after it.
  // Returns the action's error (empty when it returned a storable result); *result its result,
  // *retries its runs after the first.
  std::string run_action(int i, SagaStepInfo& row, std::string* result, std::int64_t* retries) {
    const std::int64_t before = row.attempts;
    write([&](Transaction& tx) {
      tx.exec(impl.sql.step_start, {info.id, std::int64_t{i}, steps[i].name});
      set_saga(tx, SagaState::running, i, {});
    });
    row.state = StepState::started;
    row.attempts = before + 1;
    int attempt = static_cast<int>(row.attempts);
    StepContext ctx = context(i, attempt);
    std::string error;
    try {
      *result = detail::with_retries(
          impl.options.retry, detail::RetryIn::conflicts_and_in_doubt, [&] { return steps[i].action(ctx); },
          [&](const Error&) {
            check_lease();
            ++*retries;
            ctx.attempt = ++attempt;
          });
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::lock_lost && (*lost || !lease.valid())) throw;
      error = describe(std::current_exception());
    } catch (...) {
      error = describe(std::current_exception());
    }
    return error.empty() ? check_result(*result) : error;
  }

  // Runs step i's transactional action inside the transaction that records it done (and creates
  // the saga's row, for a new saga's first step): both commit, or neither. Returns true when that
  // committed; false with *error set when the action failed (its transaction rolled back), *runs
  // its runs (rolled back ones included).
  bool run_in_transaction(int i, const SagaStepInfo& row, std::string* error, std::int64_t* runs) {
    int attempt = static_cast<int>(row.attempts) + 1;
    StepContext ctx = context(i, attempt);
    std::string result;
    try {
      const bool committed = detail::with_retries(
          impl.options.retry, detail::RetryIn::conflicts_and_in_doubt,
          [&] {
            ++*runs;
            return transaction([&](Transaction& tx) {
              result = steps[i].transactional_action(ctx, tx);
              *error = check_result(result);
              if (!error->empty()) return false;
              record_end(tx, i, result, {}, *runs);
              return true;
            });
          },
          [&](const Error&) {
            check_lease();
            ctx.attempt = ++attempt;
          });
      if (committed) {
        SagaStepInfo& done = rows[i];
        done.state = StepState::done;
        done.result = result;
        done.attempts += *runs;
        return true;
      }
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::lock_lost && (*lost || !lease.valid())) throw;
      *error = describe(std::current_exception());
    } catch (...) {
      *error = describe(std::current_exception());
    }
    return false;
  }

  void run_forward() {
    const int n = static_cast<int>(steps.size());
    for (int i = info.step; i < n && info.state == SagaState::running; ++i) {
      auto found = rows.find(i);
      if (found != rows.end() && found->second.state == StepState::done) continue;
      check_lease();
      SagaStepInfo& row = rows[i];
      row.index = i;
      row.name = steps[i].name;
      std::string result;
      std::string error;
      std::int64_t runs = 0;  // the action's runs not yet counted in row.attempts
      if (steps[i].transactional_action) {
        if (run_in_transaction(i, row, &error, &runs)) continue;
      } else {
        error = run_action(i, row, &result, &runs);
      }
      check_lease();
      write([&](Transaction& tx) { record_end(tx, i, result, error, runs); });
      row.state = error.empty() ? StepState::done : StepState::failed;
      if (error.empty())
        row.result = result;
      else
        row.error = error;
      row.attempts += runs;
    }
  }

  // Compensates from the saga's step down to the first: the failed step too (its action may have
  // applied in part), then every completed step in reverse order.
  void compensate() {
    const std::string why = failure();
    for (int j = info.step; j >= 0; --j) {
      auto found = rows.find(j);
      if (found == rows.end() || found->second.state == StepState::compensated) continue;
      check_lease();
      write([&](Transaction& tx) {
        tx.exec(impl.sql.step_state, {info.id, std::int64_t{j}, std::string("compensating")});
        set_saga(tx, SagaState::compensating, j, info.error);
      });
      found->second.state = StepState::compensating;
      std::string error;
      if (const auto& undo = steps[j].compensation) {
        StepContext ctx = context(j, 1, true);
        try {
          detail::with_retries(
              impl.options.compensation_retry, detail::RetryIn::conflicts_and_in_doubt,
              [&] {
                try {
                  undo(ctx);
                } catch (const Error& e) {
                  if (e.retriable() || e.kind() == ErrorKind::in_doubt) throw;
                  throw Error(ErrorKind::transient, describe(std::current_exception()));
                } catch (...) {
                  throw Error(ErrorKind::transient, describe(std::current_exception()));
                }
              },
              [&](const Error&) {
                check_lease();
                ++ctx.attempt;
              });
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::lock_lost) throw;
          error = storable(e.what());
        }
      }
      check_lease();
      if (!error.empty()) {
        write([&](Transaction& tx) {
          set_saga(tx, SagaState::compensating, j,
                   fmt::format("compensation of step '{}' failed: {}", steps[j].name, error));
        });
        return;
      }
      write([&](Transaction& tx) {
        tx.exec(impl.sql.step_state, {info.id, std::int64_t{j}, std::string("compensated")});
        if (j == 0)
          set_saga(tx, SagaState::compensated, 0, why);
        else
          set_saga(tx, SagaState::compensating, j - 1, info.error);
      });
      found->second.state = StepState::compensated;
    }
    if (info.state == SagaState::compensating) {
      // Nothing was left to compensate (no step had begun).
      write([&](Transaction& tx) { set_saga(tx, SagaState::compensated, 0, why); });
    }
  }
};

SagaOutcome Sagas::Impl::drive(SagaInfo info, const std::vector<SagaStep>& steps, Lease& lease,
                               const std::shared_ptr<std::atomic<bool>>& lost, bool& recorded) {
  Driver d{*this, info, steps, lease, lost, recorded, {}};
  for (auto& s : info.steps) d.rows[s.index] = s;
  d.check_rows();
  if (info.state == SagaState::running) d.run_forward();
  if (info.state == SagaState::compensating) d.compensate();
  info.steps.clear();
  for (auto& [i, row] : d.rows) info.steps.push_back(row);
  SagaOutcome outcome = outcome_of(info);
  const auto& m = detail::instruments::sagas();
  if (info.state == SagaState::completed) {
    m.completed.add();
  } else if (info.state == SagaState::compensated) {
    m.compensated.add();
    if (detail::log_enabled(LogLevel::info))
      detail::log(LogLevel::info, "saga", "saga compensated",
                  {{"saga", info.id}, {"type", info.type}, {"error", outcome.error}});
  } else if (info.state == SagaState::compensating) {
    m.compensation_failed.add();
    if (detail::log_enabled(LogLevel::error))
      detail::log(LogLevel::error, "saga", "saga compensation failed; recover() retries it",
                  {{"saga", info.id}, {"type", info.type}, {"error", info.error}});
  }
  return outcome;
}

Sagas::Sagas(Database& db, SagaOptions options) : impl_(std::make_unique<Impl>(db, std::move(options))) {}
Sagas::~Sagas() = default;

void Sagas::define(std::string_view type, std::vector<SagaStep> steps) {
  check_name(type, "a saga type", max_id_bytes);
  check_steps(type, steps);
  std::lock_guard lock(impl_->definitions_mutex);
  impl_->definitions[std::string(type)] = [steps = std::move(steps)](const std::string&) { return steps; };
}

void Sagas::define_by_payload(std::string_view type,
                              std::function<std::vector<SagaStep>(const std::string& payload)> fn) {
  check_name(type, "a saga type", max_id_bytes);
  if (!fn) throw Error(ErrorKind::invalid_argument, fmt::format("saga type '{}' has no step function", type));
  std::lock_guard lock(impl_->definitions_mutex);
  impl_->definitions[std::string(type)] = std::move(fn);
}

SagaOutcome Sagas::run(std::string_view type, std::string_view id, std::string_view payload) {
  auto& impl = *impl_;
  check_name(id, "a saga id", max_id_bytes);
  check_name(type, "a saga type", max_id_bytes);
  if (!detail::is_text(payload))
    throw Error(ErrorKind::invalid_argument, "a saga payload must be UTF-8 text without NUL");
  const auto def = impl.definition(type);
  if (!def) throw Error(ErrorKind::invalid_argument, fmt::format("no saga type '{}' is defined", type));
  const std::string p(payload);
  std::vector<SagaStep> steps = (*def)(p);
  check_steps(type, steps);

  auto matches = [&](const SagaInfo& info) {
    if (info.type != type)
      throw Error(ErrorKind::idempotency_mismatch,
                  fmt::format("saga '{}' exists with type '{}', not '{}'", id, info.type, type));
    if (info.payload != payload)
      throw Error(ErrorKind::idempotency_mismatch, fmt::format("saga '{}' exists with another payload", id));
  };

  // The saga is recorded under its lease, by its first step's first write. A lease that runs out
  // before that write commits (a busy SQLite database delays it past the ttl) leaves nothing
  // behind: no row, so recover() would never see it, and no step's work (a step run in that
  // transaction rolled back with it; any other step's action runs only after it). That attempt is
  // not "left for recovery": run() takes the lease again and starts over, a few times, before it
  // answers lock_busy (nothing ran: run it again).
  constexpr int record_attempts = 3;
  for (int attempt = 1;; ++attempt) {
    auto lost = std::make_shared<std::atomic<bool>>(false);
    std::optional<Lease> lease = impl.take(id, lost);
    if (!lease) {
      if (auto found = impl.read(id, true)) {
        matches(*found);
        if (final_state(found->state)) {
          SagaOutcome o = Impl::outcome_of(*found);
          o.replayed = true;
          return o;
        }
      }
      throw Error(ErrorKind::lock_busy, fmt::format("saga '{}' is being driven by another coordinator", id));
    }
    std::optional<SagaInfo> info = impl.read(id, true);
    bool recorded = info.has_value();
    if (info) {
      matches(*info);
      if (final_state(info->state)) {
        SagaOutcome o = Impl::outcome_of(*info);
        o.replayed = true;
        lease->release();
        return o;
      }
    } else {
      // No need to read back what the first write records: only a holder of the lease writes it.
      info.emplace();
      info->id = id;
      info->type = type;
      info->payload = p;
      info->state = SagaState::running;
      info->owner = lease->owner();
    }
    SagaOutcome outcome;
    try {
      outcome = impl.drive(std::move(*info), steps, *lease, lost, recorded);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::lock_lost || recorded) throw;
      // Nothing was recorded under this lease. An in-doubt commit that did record the saga is
      // found by the read of the next attempt.
      lease.reset();
      if (attempt == record_attempts)
        throw Error(ErrorKind::lock_busy,
                    fmt::format("saga '{}' was not started: its lease ran out {} times before the saga was recorded "
                                "(nothing ran; run it again)",
                                id, record_attempts));
      continue;
    }
    try {
      lease->release();
    } catch (const Error&) {
      // The saga's rows are written; a lease that expired at the very end changes nothing.
    }
    return outcome;
  }
}

SagaRecovery Sagas::recover() {
  auto& impl = *impl_;
  SagaRecovery report;
  std::vector<std::string> ids;
  {
    auto session = impl.backend->borrow();
    for (const auto& row : (*session)->exec(impl.sql.unresolved, {}).rows) {
      // A saga of a type this process does not define belongs to another service: left alone.
      if (impl.definition(row.text(1)))
        ids.push_back(row.text(0));
      else
        ++report.undefined;
    }
  }
  for (const auto& id : ids) {
    auto lost = std::make_shared<std::atomic<bool>>(false);
    std::optional<Lease> lease;
    try {
      lease = impl.take(id, lost);
    } catch (const Error& e) {
      report.unresolved.emplace_back(id, e.what());
      continue;
    }
    if (!lease) {
      ++report.busy;
      continue;
    }
    try {
      auto info = impl.read(id, true);
      if (!info || final_state(info->state)) continue;  // finished between the query and the lease
      const auto def = impl.definition(info->type);
      if (!def) {
        report.unresolved.emplace_back(id, fmt::format("no saga type '{}' is defined here", info->type));
        continue;
      }
      auto steps = (*def)(info->payload);
      check_steps(info->type, steps);
      bool recorded = true;
      const SagaOutcome o = impl.drive(std::move(*info), steps, *lease, lost, recorded);
      detail::instruments::sagas().recovered.add();
      if (o.state == SagaState::completed)
        ++report.completed;
      else if (o.state == SagaState::compensated)
        ++report.compensated;
      else
        report.unresolved.emplace_back(id, o.error);
    } catch (const std::exception& e) {
      report.unresolved.emplace_back(id, e.what());
    }
    try {
      lease->release();
    } catch (const Error&) {
    }
  }
  return report;
}

std::vector<SagaInfo> Sagas::list(const SagaFilter& filter) {
  if (filter.limit < 1 || filter.limit > static_cast<std::int64_t>(max_sagas_listed))
    throw Error(ErrorKind::invalid_argument, fmt::format("a saga list limit must be 1 to {}", max_sagas_listed));
  if (!filter.type.empty()) check_name(filter.type, "a saga type", max_id_bytes);
  std::vector<Value> params;
  if (filter.state) params.emplace_back(std::string(to_string(*filter.state)));
  if (!filter.type.empty()) params.emplace_back(filter.type);
  params.emplace_back(filter.limit);
  const std::string sql = impl_->sql.list(filter.state.has_value(), !filter.type.empty());
  auto session = impl_->backend->borrow();
  std::vector<SagaInfo> out;
  for (const auto& row : (*session)->exec(sql, params).rows) out.push_back(Impl::info_of(row));
  return out;
}

std::optional<SagaInfo> Sagas::get(std::string_view id) {
  check_name(id, "a saga id", max_id_bytes);
  return impl_->read(id, true);
}

}  // namespace rowguard

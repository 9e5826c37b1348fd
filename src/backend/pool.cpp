#include <algorithm>
#include <iterator>
#include <optional>

#include <fmt/format.h>

#include "base/sql_text.hpp"
#include "obs/instruments.hpp"
#include "obs/logging.hpp"

#include "backend/backend.hpp"

namespace rowguard::detail {

void Session::begin(const TxOptions& options) {
  exec(dialect().begin(options), {});
  in_transaction_ = true;
  read_only_transaction_ = options.access == TxAccess::read_only;
}

void Session::commit() {
  // Whatever happens to COMMIT, the transaction is over: a failed COMMIT has rolled back or is in doubt.
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{in_transaction_};
  try {
    send_commit();
  } catch (...) {
    if (!broken_ && transaction_open()) {
      try {
        exec("ROLLBACK", {});
      } catch (...) {
        // Checked below.
      }
      if (transaction_open()) broken_ = true;  // dropped by the pool: closing the connection rolls back
    }
    throw;
  }
}

Error failed_commit(std::string_view backend_name) {
  return Error(ErrorKind::permanent,
               fmt::format("{}: COMMIT rolled back: a statement in this transaction failed, so the server aborted it "
                           "and nothing of it committed",
                           backend_name),
               "25P02");
}

void Session::rollback() {
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{in_transaction_};
  exec("ROLLBACK", {});
}

void check_gid(std::string_view gid) {
  const bool ok = !gid.empty() && gid.size() <= 200 && std::all_of(gid.begin(), gid.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ':' || c == '_' ||
           c == '-';
  });
  if (!ok)
    throw Error(ErrorKind::invalid_argument,
                "a global transaction id must be 1 to 200 characters of A-Z, a-z, 0-9, ':', '_' and '-'");
}

void require_prepared_transactions(const Dialect& dialect, std::string_view what) {
  if (!dialect.has_prepared_transactions())
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}: two-phase commit is not supported on {} (it has no prepared transactions); "
                            "use PostgreSQL",
                            what, dialect.name()),
                "0A000");
}

void Session::prepare(std::string_view gid) {
  require_prepared_transactions(dialect(), "prepare");
  check_gid(gid);
  if (!in_transaction_) throw Error(ErrorKind::invalid_argument, "prepare needs an open transaction");
  // Prepared or not, the session's transaction is over (a failed PREPARE rolls back).
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{in_transaction_};
  // The simple query protocol: PREPARE TRANSACTION takes no bind parameters, and a gid used once
  // would only fill the session's statement cache. In a transaction that an error has aborted,
  // PostgreSQL answers PREPARE TRANSACTION with a plain ROLLBACK and no error: the SELECT before it
  // fails there instead (25P02), so a prepare that returns has prepared.
  try {
    exec_script(fmt::format("SELECT 1; PREPARE TRANSACTION '{}'", gid));
  } catch (const Error& e) {
    if (broken_ && (e.kind() == ErrorKind::transient || e.kind() == ErrorKind::in_doubt))
      throw Error(ErrorKind::in_doubt,
                  fmt::format("the connection was lost during PREPARE TRANSACTION '{}': it may be prepared ({})", gid,
                              e.what()),
                  e.sqlstate());
    if (!broken_) {
      try {
        exec_script("ROLLBACK");  // ends an aborted transaction; a mere warning when none is open
      } catch (...) {
        // The session is broken now and the pool drops it.
      }
    }
    throw;
  }
}

bool Session::finish_prepared(std::string_view gid, bool commit) {
  require_prepared_transactions(dialect(), "finish_prepared");
  check_gid(gid);
  try {
    exec_script(fmt::format("{} PREPARED '{}'", commit ? "COMMIT" : "ROLLBACK", gid));
  } catch (const Error& e) {
    if (e.sqlstate() == "42704") return false;  // undefined_object: no prepared transaction has that gid
    if (e.sqlstate() == "55000") throw Error(ErrorKind::conflict, e.what(), e.sqlstate());  // busy
    throw;
  }
  return true;
}

SessionLease::SessionLease(Pool& pool, std::unique_ptr<Session> session) : pool_(pool), session_(std::move(session)) {}

SessionLease::~SessionLease() {
  if (session_ && session_->in_transaction() && !session_->broken()) {
    try {
      session_->rollback();
    } catch (...) {
      // The session is broken now (the backend marked it); the pool drops it below.
    }
  }
  pool_.give_back(std::move(session_));
}

Pool::Pool(SessionFactory factory, std::size_t max_sessions, std::chrono::milliseconds wait)
    : factory_(std::move(factory)), max_(max_sessions), wait_(wait) {}

Pool::~Pool() {
  // The process-wide gauges lose this pool's sessions (closed with idle_ right after).
  instruments::pool().open.add(-static_cast<std::int64_t>(stats_.open));
  instruments::pool().idle.add(-static_cast<std::int64_t>(stats_.idle));
}

std::unique_ptr<SessionLease> Pool::borrow() {
  const auto& m = instruments::pool();
  std::unique_lock lock(mutex_);
  // The clock is read only when the pool is exhausted: the common borrow takes an idle session and
  // holds the lock for a pop and two counts, with the instruments and the allocation after it.
  std::optional<std::chrono::steady_clock::time_point> started;
  while (idle_.empty() && stats_.open >= max_) {
    if (!started) {
      started = std::chrono::steady_clock::now();
      ++stats_.waits;
      m.waits.add();
    }
    if (freed_.wait_until(lock, *started + wait_) == std::cv_status::timeout && idle_.empty() && stats_.open >= max_) {
      m.wait_seconds.observe_since(*started);
      m.timeouts.add();
      throw Error(ErrorKind::transient,
                  fmt::format("no database session became free within {} ms (pool of {})", wait_.count(), max_));
    }
  }
  if (!idle_.empty()) {
    auto session = std::move(idle_.back());
    idle_.pop_back();
    --stats_.idle;
    lock.unlock();
    if (started) m.wait_seconds.observe_since(*started);
    m.idle.add(-1);
    m.borrows.add();
    return std::make_unique<SessionLease>(*this, std::move(session));
  }
  if (started) m.wait_seconds.observe_since(*started);
  ++stats_.open;  // reserve the slot, then connect without holding the lock
  m.open.add(1);
  lock.unlock();
  try {
    auto session = factory_();
    lock.lock();
    ++stats_.created;
    lock.unlock();
    m.created.add();
    m.borrows.add();
    return std::make_unique<SessionLease>(*this, std::move(session));
  } catch (...) {
    lock.lock();
    --stats_.open;
    m.open.add(-1);
    freed_.notify_one();
    throw;
  }
}

void Pool::give_back(std::unique_ptr<Session> session) noexcept {
  const auto& m = instruments::pool();
  const char* discarded = nullptr;  // why, when the session is dropped
  // A broken session most often means its server went away (a restart, a failover to a standby,
  // an old primary now read-only): the idle sessions were opened to the same server and are most
  // likely dead too. They are dropped with it, so the next callers connect afresh (a multi-host
  // URL with target_session_attrs=read-write finds the new primary) instead of each failing once.
  std::vector<std::unique_ptr<Session>> stale;
  {
    std::lock_guard lock(mutex_);
    if (session && !session->broken() && !session->in_transaction()) {
      idle_.push_back(std::move(session));
      ++stats_.idle;
      m.idle.add(1);
    } else {
      --stats_.open;
      ++stats_.discarded;
      m.open.add(-1);
      m.discarded.add();
      discarded = !session ? "no session" : session->broken() ? "broken" : "left in a transaction";
      if (session && session->broken() && !idle_.empty()) {
        stale.swap(idle_);
        const auto n = static_cast<std::int64_t>(stale.size());
        stats_.open -= stale.size();
        stats_.idle -= stale.size();
        stats_.discarded += stale.size();
        m.open.add(-n);
        m.idle.add(-n);
        m.discarded.add(static_cast<std::uint64_t>(n));
      }
    }
  }
  const std::size_t stale_count = stale.size();
  if (stale.empty())
    freed_.notify_one();
  else
    freed_.notify_all();
  stale.clear();  // closed here, outside the lock
  // A dropped session is closed here, outside the lock.
  if (discarded && log_enabled(LogLevel::info)) {
    try {
      log(LogLevel::info, "pool", "session discarded",
          {{"reason", discarded},
           {"idle_dropped_with_it", std::to_string(stale_count)},
           {"pool_size", std::to_string(max_)}});
    } catch (...) {
      // Out of memory building the fields: nothing to log with.
    }
  }
}

PoolStats Pool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

Backend::Backend(std::string name, std::string display_url, Options options, std::shared_ptr<const Dialect> dialect,
                 SessionFactory factory)
    : name_(std::move(name)),
      display_url_(std::move(display_url)),
      options_(std::move(options)),
      dialect_(std::move(dialect)),
      pool_(std::move(factory), options_.pool_size, options_.pool_wait) {}

std::string Backend::function_call(std::string_view function, std::size_t params) const {
  std::string call = fmt::format("{}SELECT * FROM {}(", writes_marker, table(function));
  for (std::size_t i = 1; i <= params; ++i) fmt::format_to(std::back_inserter(call), "{}${}", i > 1 ? ", " : "", i);
  call += ')';
  return call;
}

void validate_options(const Options& options) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::invalid_argument, what); };
  if (options.pool_size < 1 || options.pool_size > 1000)
    bad(fmt::format("pool_size must be between 1 and 1000, got {}", options.pool_size));
  if (options.pool_wait.count() < 0) bad("pool_wait must not be negative");
  if (options.busy_timeout.count() < 0 || options.busy_timeout.count() > 3'600'000)
    bad(fmt::format("busy_timeout must be between 0 and 1h, got {} ms", options.busy_timeout.count()));
  if (options.connect_timeout.count() < 1) bad("connect_timeout must be at least 1s");
  if (options.network_timeout.count() != 0 &&
      (options.network_timeout.count() < 2 || options.network_timeout.count() > 3600))
    bad(fmt::format("network_timeout must be 0 or between 2s and 1h, got {}s", options.network_timeout.count()));
  if (!is_identifier(options.table_prefix, 40))
    bad(fmt::format("table prefix '{}' is not a valid SQL identifier prefix ([a-z_][a-z0-9_]*, at most 40 bytes)",
                    options.table_prefix));
  if (options.application_name.empty() || options.application_name.size() > 63)
    bad("application_name must be 1 to 63 bytes");
  for (const char c : options.application_name)
    if (c < 0x20 || c > 0x7e) bad("application_name must be printable ASCII");
}

}  // namespace rowguard::detail

// SOCI's SQLite header wraps sqlite3.h in namespace sqlite_api, so this file must never include
// <sqlite3.h> itself: it reaches SQLite only as sqlite_api::.
#include <fmt/format.h>
#include <libpq-fe.h>
#include <soci/postgresql/soci-postgresql.h>
#include <soci/soci.h>
#include <soci/sqlite3/soci-sqlite3.h>

#include "backend/dialects.hpp"
#include "backend/postgres/engine.hpp"
#include "backend/soci/driver.hpp"
#include "backend/soci/statement.hpp"
#include "backend/sqlite/engine.hpp"

namespace rowguard::detail {

namespace {

bool is_sqlite(soci::session& sql) { return sql.get_backend_name() == "sqlite3"; }

sqlite_api::sqlite3* sqlite_handle(soci::session& sql) {
  return static_cast<soci::sqlite3_session_backend*>(sql.get_backend())->conn_;
}

PGconn* pg_handle(soci::session& sql) {
  return static_cast<soci::postgresql_session_backend*>(sql.get_backend())->conn_;
}

// rowguard_unhex(text) -> blob: SQLite 3.40 has no unhex(), and SOCI cannot bind a blob parameter,
// so blobs travel as hex text and this turns them back into bytes inside SQLite.
void unhex_function(sqlite_api::sqlite3_context* context, int, sqlite_api::sqlite3_value** argv) {
  if (sqlite_api::sqlite3_value_type(argv[0]) == SQLITE_NULL) {
    sqlite_api::sqlite3_result_null(context);
    return;
  }
  const auto* text = reinterpret_cast<const char*>(sqlite_api::sqlite3_value_text(argv[0]));
  const int size = sqlite_api::sqlite3_value_bytes(argv[0]);
  try {
    const std::string bytes = from_hex(std::string_view(text ? text : "", static_cast<std::size_t>(size)));
    // SQLITE_TRANSIENT (SQLite copies the bytes) is defined as the destructor pointer -1.
    // NOLINTNEXTLINE(performance-no-int-to-ptr)
    const auto transient = reinterpret_cast<sqlite_api::sqlite3_destructor_type>(-1);
    sqlite_api::sqlite3_result_blob(context, bytes.data(), static_cast<int>(bytes.size()), transient);
  } catch (const std::exception& e) {
    sqlite_api::sqlite3_result_error(context, e.what(), -1);
  }
}

// How the adapter got its soci::session; each variant knows how to give it back.
class SessionSource {
 public:
  virtual ~SessionSource() = default;
  virtual soci::session& get() = 0;
  // Whether rowguard opened the connection itself (and may change its libpq settings).
  virtual bool owned() const noexcept { return false; }
};

class OwnedSession final : public SessionSource {
 public:
  explicit OwnedSession(std::unique_ptr<soci::session> s) : session_(std::move(s)) {}
  soci::session& get() override { return *session_; }
  bool owned() const noexcept override { return true; }

 private:
  std::unique_ptr<soci::session> session_;
};

class BorrowedSession final : public SessionSource {
 public:
  explicit BorrowedSession(soci::session& s) : session_(s) {}
  soci::session& get() override { return session_; }

 private:
  soci::session& session_;
};

class PooledSession final : public SessionSource {
 public:
  PooledSession(soci::connection_pool& pool, std::size_t position) : pool_(pool), position_(position) {}
  ~PooledSession() override { pool_.give_back(position_); }
  soci::session& get() override { return pool_.at(position_); }

 private:
  soci::connection_pool& pool_;
  std::size_t position_;
};

class SociSession final : public Session {
 public:
  SociSession(std::unique_ptr<SessionSource> source, std::shared_ptr<const Dialect> dialect, Secrets secrets,
              const Options& options, std::shared_ptr<ReplicationDoubt> doubt)
      : source_(std::move(source)),
        sql_(source_->get()),
        doubt_(std::move(doubt)),
        dialect_(std::move(dialect)),
        secrets_(std::move(secrets)) {
    statements_ = std::make_unique<SociStatements>(sql_);
    if (is_sqlite(sql_)) {
      sqlite_api::sqlite3* db = sqlite_handle(sql_);
      sqlite_api::sqlite3_create_function_v2(db, "rowguard_unhex", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                                             unhex_function, nullptr, nullptr, nullptr);
      sqlite_api::sqlite3_busy_timeout(db, static_cast<int>(options.busy_timeout.count()));
      exec_script("PRAGMA foreign_keys = ON");
    } else if (source_->owned()) {
      // A COMMIT whose wait for a synchronous standby was canceled succeeds with only a WARNING
      // (src/backend/libpqxx/session.cpp). SOCI installs no notice receiver, so on a connection
      // rowguard opened the one in place is libpq's default, which ignores its argument: watch for
      // the warning and pass every notice on to it. A borrowed session's receiver is the service's
      // own and is left alone (docs/scaling.md says such a commit then reads as success).
      previous_receiver_ = PQsetNoticeReceiver(pg_handle(sql_), &SociSession::on_notice, this);
    }
  }

  ~SociSession() override {
    statements_.reset();
    if (previous_receiver_ != nullptr) PQsetNoticeReceiver(pg_handle(sql_), previous_receiver_, nullptr);
  }

  const Dialect& dialect() const noexcept override { return *dialect_; }

  Result exec(std::string_view sql, const std::vector<Value>& params) override {
    return guarded(sql, [&] { return statements_->run(sql, params); });
  }

  // Scripts run through the native handle: SOCI prepares one statement at a time.
  void exec_script(const std::string& script) override {
    guarded(script, [&] {
      if (is_sqlite(sql_)) {
        char* message = nullptr;
        const int rc = sqlite_api::sqlite3_exec(sqlite_handle(sql_), script.c_str(), nullptr, nullptr, &message);
        if (rc != SQLITE_OK) {
          const std::string text = message ? message : "script failed";
          sqlite_api::sqlite3_free(message);
          throw soci::sqlite3_soci_error(text, rc);
        }
      } else {
        PGresult* r = PQexec(pg_handle(sql_), script.c_str());
        const auto status = PQresultStatus(r);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
          const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
          const std::string text = PQerrorMessage(pg_handle(sql_));
          const std::string code = state ? state : "08006";
          PQclear(r);
          throw soci::postgresql_soci_error(text, code.c_str());
        }
        PQclear(r);
      }
      return Result{};
    });
  }

 protected:
  // SOCI hides the COMMIT's answer: PostgreSQL's state before it tells whether the server aborted
  // the transaction, which would answer COMMIT with ROLLBACK.
  void send_commit() override {
    if (!is_sqlite(sql_) && PQtransactionStatus(pg_handle(sql_)) == PQTRANS_INERROR) {
      exec("ROLLBACK", {});
      throw failed_commit("soci");
    }
    exec("COMMIT", {});
  }

  bool transaction_open() const noexcept override {
    if (is_sqlite(sql_)) return !sqlite_api::sqlite3_get_autocommit(sqlite_handle(sql_));
    const auto status = PQtransactionStatus(pg_handle(sql_));
    return status == PQTRANS_INTRANS || status == PQTRANS_INERROR;
  }

 private:
  template <class Run>
  Result guarded(std::string_view sql, Run&& run) {
    if (broken_) throw Error(ErrorKind::transient, "soci: session is broken");
    const StatementEffect effect = effect_of(sql);
    // Where a unit of work ends (a COMMIT, a ROLLBACK, a statement outside a transaction except the
    // BEGIN that opens one), a pending replication doubt is settled before the answer goes back.
    const bool ends_unit =
        effect == StatementEffect::commit || sql == "ROLLBACK" || (!in_transaction_ && sql.substr(0, 5) != "BEGIN");
    try {
      replication_wait_canceled_ = false;
      Result result = run();
      if (ends_unit && !is_sqlite(sql_)) settle_replication();
      return result;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      bool lost = false;
      const int extended = is_sqlite(sql_) ? sqlite_api::sqlite3_extended_errcode(sqlite_handle(sql_)) : 0;
      Error error = soci_error(e, effect, in_transaction_, lost, secrets_, extended);
      if (error.sqlstate() == "25006" && in_transaction_ && read_only_transaction_) {
        error = Error(ErrorKind::permanent, error.what(), "25006");  // a write in our own READ ONLY transaction
        lost = false;
      }
      if (!is_sqlite(sql_) && PQstatus(pg_handle(sql_)) != CONNECTION_OK) lost = true;
      if (lost) broken_ = true;
      throw error;
    }
  }

  // As PgSession::settle_replication (src/backend/libpqxx/session.cpp); only a connection rowguard
  // opened sees the warning, so on a service's session nothing is ever pending.
  void settle_replication() {
    if (!replication_wait_canceled_ && !doubt_->pending.load()) return;
    if (!replication_wait_canceled_) {
      PGresult* r = PQexec(pg_handle(sql_),
                           "BEGIN; SELECT pg_logical_emit_message(true, 'rowguard', 'replication barrier'); COMMIT");
      const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
      PQclear(r);
      if (!ok) {
        broken_ = true;  // where the barrier stopped is unknown: never reuse the session
        throw replication_in_doubt("soci");
      }
      if (!replication_wait_canceled_) {
        doubt_->pending = false;
        return;
      }
    }
    doubt_->pending = true;
    throw replication_in_doubt("soci");
  }

  static void on_notice(void* self, const PGresult* notice) {
    auto* session = static_cast<SociSession*>(self);
    const char* text = PQresultErrorField(notice, PG_DIAG_MESSAGE_PRIMARY);
    if (text != nullptr && is_sync_replication_cancel(text)) session->replication_wait_canceled_ = true;
    session->previous_receiver_(nullptr, notice);
  }

  std::unique_ptr<SessionSource> source_;
  soci::session& sql_;
  PQnoticeReceiver previous_receiver_ = nullptr;
  bool replication_wait_canceled_ = false;
  std::shared_ptr<ReplicationDoubt> doubt_;  // shared by the backend's sessions
  std::unique_ptr<SociStatements> statements_;
  std::shared_ptr<const Dialect> dialect_;
  Secrets secrets_;  // scrubbed from every message
};

std::shared_ptr<const Dialect> dialect_for(soci::session& sql) {
  return is_sqlite(sql) ? sqlite_dialect(BlobTransport::hex_text) : postgres_dialect(BlobTransport::hex_text);
}

std::string name_for(soci::session& sql) { return is_sqlite(sql) ? "soci+sqlite3" : "soci+postgresql"; }

Error connect_error(const std::exception& e, const std::string& display, const Secrets& secrets) {
  const auto* lite = dynamic_cast<const soci::sqlite3_soci_error*>(&e);
  const ErrorKind kind = lite ? kind_for_sqlite(lite->result()) : ErrorKind::transient;
  return Error(kind == ErrorKind::permanent ? ErrorKind::permanent : ErrorKind::transient,
               scrub(fmt::format("soci: cannot open {}: {}", display, e.what()), secrets));
}

}  // namespace

std::shared_ptr<Backend> open_soci(const ParsedUrl& url, const Options& options) {
  const bool lite = url.engine == Engine::soci_sqlite3;
  std::string connect;
  if (lite) {
    // SOCI's sqlite3 connect string: db=... quoted, timeout in seconds (we set the real busy timeout in ms).
    std::string quoted;
    for (const char c : url.target) {
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    connect = fmt::format("db=\"{}\"", quoted);
  } else {
    connect = with_session_defaults(url.target, options);
    validate_conninfo(connect, url.secrets);
  }
  auto dialect = lite ? sqlite_dialect(BlobTransport::hex_text) : postgres_dialect(BlobTransport::hex_text);
  auto doubt = std::make_shared<ReplicationDoubt>();
  auto factory = [lite, connect, dialect, options, display = url.display, secrets = url.secrets,
                  doubt]() -> std::unique_ptr<Session> {
    std::unique_ptr<soci::session> session;
    try {
      const soci::backend_factory& driver =
          lite ? static_cast<const soci::backend_factory&>(soci::sqlite3) : soci::postgresql;
      session = std::make_unique<soci::session>(driver, connect);
    } catch (const std::exception& e) {
      throw connect_error(e, display, secrets);
    }
    auto s = std::make_unique<SociSession>(std::make_unique<OwnedSession>(std::move(session)), dialect, secrets,
                                           options, doubt);
    if (lite) {
      const Result mode = s->exec("PRAGMA journal_mode = WAL", {});
      if (mode.rows.empty() || mode.rows[0].text(0) != "wal")
        throw Error(ErrorKind::permanent, fmt::format("soci: {} could not be switched to WAL mode", display));
      s->exec_script("PRAGMA synchronous = FULL");
    }
    return s;
  };
  auto backend =
      std::make_shared<Backend>(lite ? "soci+sqlite3" : "soci+postgresql", url.display, options, dialect, factory);
  if (!lite) backend->set_listener_factory(libpq_listener_factory(connect, url.secrets));
  return backend;
}

std::shared_ptr<Backend> open_soci(soci::session& session, const Options& options) {
  Options one = options;
  one.pool_size = 1;  // the service's session serves one rowguard operation at a time
  auto dialect = dialect_for(session);
  auto doubt = std::make_shared<ReplicationDoubt>();
  auto factory = [&session, dialect, one, doubt]() -> std::unique_ptr<Session> {
    // A broken predecessor was dropped by the pool: give the service's session a fresh connection.
    if (!is_sqlite(session) && PQstatus(pg_handle(session)) != CONNECTION_OK) session.reconnect();
    return std::make_unique<SociSession>(std::make_unique<BorrowedSession>(session), dialect, Secrets(), one, doubt);
  };
  return std::make_shared<Backend>(name_for(session), name_for(session) + " (service session)", one, dialect, factory);
}

std::shared_ptr<Backend> open_soci(soci::connection_pool& pool, std::size_t pool_size, const Options& options) {
  Options sized = options;
  sized.pool_size = pool_size;
  std::shared_ptr<const Dialect> dialect;
  std::string name;
  {
    const std::size_t position = pool.lease();
    PooledSession probe(pool, position);
    dialect = dialect_for(probe.get());
    name = name_for(probe.get());
  }
  auto doubt = std::make_shared<ReplicationDoubt>();
  auto factory = [&pool, dialect, sized, doubt]() -> std::unique_ptr<Session> {
    std::size_t position = 0;
    if (!pool.try_lease(position, static_cast<int>(sized.pool_wait.count())))
      throw Error(ErrorKind::transient, "soci: no session of the service's connection pool became free");
    auto source = std::make_unique<PooledSession>(pool, position);
    if (!is_sqlite(source->get()) && PQstatus(pg_handle(source->get())) != CONNECTION_OK) source->get().reconnect();
    return std::make_unique<SociSession>(std::move(source), dialect, Secrets(), sized, doubt);
  };
  return std::make_shared<Backend>(name, name + " (service connection pool)", sized, dialect, factory);
}

}  // namespace rowguard::detail

#include <mutex>

#include <fmt/format.h>
#include <pqxx/connection>
#include <pqxx/errorhandler>
#include <pqxx/except>
#include <pqxx/nontransaction>

#include "backend/dialects.hpp"
#include "backend/libpqxx/driver.hpp"
#include "backend/libpqxx/statement.hpp"
#include "backend/postgres/engine.hpp"

namespace rowguard::detail {

namespace {

// Watches a connection's notices for a canceled wait for synchronous replication (postgres.hpp).
class SyncReplicationWatch final : public pqxx::errorhandler {
 public:
  explicit SyncReplicationWatch(pqxx::connection_base& connection) : pqxx::errorhandler(connection) {}
  bool operator()(const char message[]) noexcept override {
    if (is_sync_replication_cancel(message)) seen = true;
    return true;  // the older handlers see it too
  }
  bool seen = false;
};

// libpqxx 6.4 looks every statement's encoding up in a table it builds on first use, as a
// function-local static. That is thread-safe, but libpqxx is not built with ThreadSanitizer, which
// therefore cannot see the static's guard: when two threads' connections ran their first statements
// together, it reported the table's construction and a lookup as a data race (CI of 8c75d7f,
// concurrent migrations). Having the table built under our own std::call_once, before a session
// runs any statement, gives every thread an order TSan can see. esc_like looks the encoding up
// without a round trip; afterwards the once costs an atomic load per new connection.
void build_libpqxx_encoding_table_once(const pqxx::connection_base& connection) {
  static std::once_flag once;
  std::call_once(once, [&] { (void)connection.esc_like(""); });
}

// One libpqxx connection. Statements run through one long-lived pqxx::nontransaction, and rowguard
// sends BEGIN/COMMIT itself: a single statement is then one round trip (a pqxx::work would add
// BEGIN and COMMIT round trips), and the session knows exactly what was in flight when a
// connection dies.
class PgSession final : public Session {
 public:
  PgSession(std::unique_ptr<pqxx::connection> connection, std::shared_ptr<const Dialect> dialect, Secrets secrets,
            bool unnamed_statements, std::shared_ptr<ReplicationDoubt> doubt)
      : connection_(std::move(connection)),
        dialect_(std::move(dialect)),
        secrets_(std::move(secrets)),
        doubt_(std::move(doubt)) {
    // libpqxx 6.4 silently reconnects a broken connection ("reactivation"), which would hide the
    // break from the pool and lose the transaction's context: turn that off.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    connection_->inhibit_reactivation(true);
#pragma GCC diagnostic pop
    watch_ = std::make_unique<SyncReplicationWatch>(*connection_);
    tx_ = std::make_unique<pqxx::nontransaction>(*connection_, "rowguard");
    statements_ = std::make_unique<PgStatements>(*connection_, unnamed_statements);
  }

  ~PgSession() override {
    statements_.reset();
    tx_.reset();
    watch_.reset();
  }

  const Dialect& dialect() const noexcept override { return *dialect_; }

  Result exec(std::string_view sql, const std::vector<Value>& params) override {
    const PgStatement* statement = nullptr;
    return guarded(
        [&]() -> const PgStatementTraits& {
          statement = &statements_->find(sql);
          return statement->traits;
        },
        [&] { return statements_->run(*tx_, *statement, params); });
  }

  // A multi-statement script cannot be prepared: it goes through the simple query protocol.
  void exec_script(const std::string& script) override {
    PgStatementTraits traits;
    guarded([&]() -> const PgStatementTraits& { return traits = PgStatementTraits::of(script); },
            [&] {
              tx_->exec(script);
              return Result{};
            });
  }

 protected:
  // PostgreSQL answers COMMIT of a transaction that an error aborted with the tag ROLLBACK and no
  // error (libpqxx 6.4 keeps the tag private): the session knows it aborted, and says so.
  void send_commit() override {
    if (aborted_) {
      exec("ROLLBACK", {});
      throw failed_commit("postgres");
    }
    exec("COMMIT", {});
  }

 private:
  // find() gives the statement's traits (worked out once per distinct text, PgStatements::find),
  // run() runs it; a driver failure in either becomes an Error.
  template <class Find, class Run>
  Result guarded(Find&& find, Run&& run) {
    if (broken_) throw Error(ErrorKind::transient, "postgres: session is broken");
    StatementEffect effect = StatementEffect::write;  // the safe side, until the text is known
    try {
      const PgStatementTraits& traits = find();
      effect = traits.effect;
      // Where a unit of work ends (a COMMIT, a ROLLBACK, a statement outside a transaction except
      // the BEGIN that opens one), a pending replication doubt is settled before the answer goes back.
      const bool ends_unit =
          effect == StatementEffect::commit || traits.rollback || (!in_transaction_ && !traits.begin);
      if (!in_transaction_) aborted_ = false;
      watch_->seen = false;
      Result result = run();
      // In an aborted transaction only ROLLBACK TO a savepoint (necessarily taken before the
      // failure) succeeds, and it ends the abort.
      if (aborted_ && traits.rollback_to) aborted_ = false;
      if (ends_unit) settle_replication();
      return result;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      // The server answered with an error: it aborted the transaction.
      if (in_transaction_ && dynamic_cast<const pqxx::sql_error*>(&e)) aborted_ = true;
      bool lost = false;
      Error error = postgres_error(e, effect, in_transaction_, lost, secrets_);
      if (error.sqlstate() == "25006" && in_transaction_ && read_only_transaction_) {
        error = Error(ErrorKind::permanent, error.what(), "25006");  // a write in our own READ ONLY transaction
        lost = false;
      }
      if (lost || !connection_->is_open()) broken_ = true;
      throw error;
    }
  }

  // After work committed: in doubt when its COMMIT's wait for the standby was canceled. Likewise
  // while an earlier commit of this backend is in doubt, until a barrier waits in full: a
  // transaction that writes WAL (a transactional logical message, which any role may emit; an xid
  // alone writes none, and a COMMIT without WAL does not wait), so its COMMIT waits until the
  // standby confirms everything up to it, the doubtful commit included.
  void settle_replication() {
    if (!watch_->seen && !doubt_->pending.load()) return;
    if (!watch_->seen) {
      try {
        tx_->exec("BEGIN");
        tx_->exec("SELECT pg_logical_emit_message(true, 'rowguard', 'replication barrier')");
        tx_->exec("COMMIT");
      } catch (const std::exception&) {
        broken_ = true;  // where the barrier stopped is unknown: never reuse the session
        throw replication_in_doubt("postgres");
      }
      if (!watch_->seen) {
        doubt_->pending = false;
        return;
      }
    }
    doubt_->pending = true;
    throw replication_in_doubt("postgres");
  }

  std::unique_ptr<pqxx::connection> connection_;
  std::unique_ptr<SyncReplicationWatch> watch_;  // registered on connection_, dropped before it
  std::unique_ptr<pqxx::nontransaction> tx_;
  std::unique_ptr<PgStatements> statements_;
  std::shared_ptr<const Dialect> dialect_;
  Secrets secrets_;                          // scrubbed from every message
  bool aborted_ = false;                     // a statement of the open transaction failed on the server
  std::shared_ptr<ReplicationDoubt> doubt_;  // shared by the backend's sessions
};

}  // namespace

std::shared_ptr<Backend> open_postgres(const ParsedUrl& url, const Options& options) {
  const std::string conninfo = with_session_defaults(url.target, options);
  validate_conninfo(conninfo, url.secrets);
  auto dialect = postgres_dialect(BlobTransport::native);
  const bool pooled = url.transaction_pooling;
  auto doubt = std::make_shared<ReplicationDoubt>();
  auto factory = [conninfo, dialect, secrets = url.secrets, pooled, doubt]() -> std::unique_ptr<Session> {
    // The session's own set-up talks to the server too (libpqxx opens its transaction object), and a
    // connection can be killed between connecting and that: both fail the same way.
    try {
      auto connection = std::make_unique<pqxx::connection>(conninfo);
      build_libpqxx_encoding_table_once(*connection);
      return std::make_unique<PgSession>(std::move(connection), dialect, secrets, pooled, doubt);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      bool lost = false;
      Error error = postgres_error(e, StatementEffect::read, false, lost, secrets);
      throw Error(error.kind() == ErrorKind::permanent ? ErrorKind::transient : error.kind(),
                  scrub(fmt::format("postgres: cannot connect to {}: {}", redact(conninfo), e.what()), secrets),
                  error.sqlstate());
    }
  };
  auto backend = std::make_shared<Backend>("postgres", url.display, options, dialect, factory);
  // Behind a transaction pooler LISTEN would register on whichever server connection the pooler
  // picked and be lost at the next transaction: waiters poll instead.
  if (!pooled) backend->set_listener_factory(libpq_listener_factory(conninfo, url.secrets));
  return backend;
}

std::shared_ptr<Backend> open_postgres(PqxxFactory make_connection, const Options& options) {
  if (!make_connection) throw Error(ErrorKind::invalid_argument, "the pqxx connection factory is empty");
  auto dialect = postgres_dialect(BlobTransport::native);
  auto doubt = std::make_shared<ReplicationDoubt>();
  auto factory = [make_connection = std::move(make_connection), dialect, doubt]() -> std::unique_ptr<Session> {
    std::unique_ptr<pqxx::connection> connection;
    try {
      connection = make_connection();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorKind::transient, fmt::format("postgres: the connection factory failed: {}", e.what()));
    }
    if (!connection || !connection->is_open())
      throw Error(ErrorKind::transient, "postgres: the connection factory returned no open connection");
    try {
      build_libpqxx_encoding_table_once(*connection);
      return std::make_unique<PgSession>(std::move(connection), dialect, Secrets(), false, doubt);
    } catch (const std::exception& e) {  // killed between the factory and the session's set-up
      throw Error(ErrorKind::transient, fmt::format("postgres: the new connection broke: {}", e.what()));
    }
  };
  return std::make_shared<Backend>("postgres", "postgresql (connection factory)", options, dialect, factory);
}

}  // namespace rowguard::detail

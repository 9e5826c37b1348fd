#include <pqxx/connection>
#include <pqxx/nontransaction>

#include <fmt/format.h>

#include "backend/dialects.hpp"
#include "backend/postgres/postgres.hpp"
#include "backend/postgres/statement.hpp"

namespace rowguard::detail {

namespace {

// One libpqxx connection. Statements run through one long-lived pqxx::nontransaction, and rowguard
// sends BEGIN/COMMIT itself: a single statement is then one round trip (a pqxx::work would add
// BEGIN and COMMIT round trips), and the session knows exactly what was in flight when a
// connection dies.
class PgSession final : public Session {
 public:
  PgSession(std::unique_ptr<pqxx::connection> connection, std::shared_ptr<const Dialect> dialect,
            std::string password, bool unnamed_statements)
      : connection_(std::move(connection)), dialect_(std::move(dialect)), password_(std::move(password)) {
    // libpqxx 6.4 silently reconnects a broken connection ("reactivation"), which would hide the
    // break from the pool and lose the transaction's context: turn that off.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    connection_->inhibit_reactivation(true);
#pragma GCC diagnostic pop
    tx_ = std::make_unique<pqxx::nontransaction>(*connection_, "rowguard");
    statements_ = std::make_unique<PgStatements>(*connection_, unnamed_statements);
  }

  ~PgSession() override {
    statements_.reset();
    tx_.reset();
  }

  const Dialect& dialect() const noexcept override { return *dialect_; }

  Result exec(std::string_view sql, const std::vector<Value>& params) override {
    return guarded(sql, [&] { return statements_->run(*tx_, sql, params); });
  }

  // A multi-statement script cannot be prepared: it goes through the simple query protocol.
  void exec_script(const std::string& script) override {
    guarded(script, [&] {
      tx_->exec(script);
      return Result{};
    });
  }

 private:
  template <class Run>
  Result guarded(std::string_view sql, Run&& run) {
    if (broken_) throw Error(ErrorKind::transient, "postgres: session is broken");
    try {
      return run();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      bool lost = false;
      Error error = postgres_error(e, effect_of(sql), in_transaction_, lost, password_);
      if (lost || !connection_->is_open()) broken_ = true;
      throw error;
    }
  }

  std::unique_ptr<pqxx::connection> connection_;
  std::unique_ptr<pqxx::nontransaction> tx_;
  std::unique_ptr<PgStatements> statements_;
  std::shared_ptr<const Dialect> dialect_;
  std::string password_;
};

}  // namespace

std::shared_ptr<Backend> open_postgres(const ParsedUrl& url, const Options& options) {
  std::string conninfo = with_conninfo_default(url.target, "application_name", options.application_name);
  conninfo = with_conninfo_default(conninfo, "connect_timeout", std::to_string(options.connect_timeout.count()));
  validate_conninfo(conninfo, url.password);
  auto dialect = postgres_dialect(BlobTransport::native);
  const bool pooled = url.transaction_pooling;
  auto factory = [conninfo, dialect, password = url.password, pooled]() -> std::unique_ptr<Session> {
    // The session's own set-up talks to the server too (libpqxx opens its transaction object), and a
    // connection can be killed between connecting and that: both fail the same way.
    try {
      return std::make_unique<PgSession>(std::make_unique<pqxx::connection>(conninfo), dialect, password, pooled);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      bool lost = false;
      Error error = postgres_error(e, StatementEffect::read, false, lost, password);
      throw Error(error.kind() == ErrorKind::permanent ? ErrorKind::transient : error.kind(),
                  scrub(fmt::format("postgres: cannot connect to {}: {}", redact(conninfo), e.what()), password),
                  error.sqlstate());
    }
  };
  auto backend = std::make_shared<Backend>("postgres", url.display, options, dialect, factory);
  // Behind a transaction pooler LISTEN would register on whichever server connection the pooler
  // picked and be lost at the next transaction: waiters poll instead.
  if (!pooled) backend->set_listener_factory(libpq_listener_factory(conninfo, url.password));
  return backend;
}

std::shared_ptr<Backend> open_postgres(PqxxFactory make_connection, const Options& options) {
  if (!make_connection) throw Error(ErrorKind::invalid_argument, "the pqxx connection factory is empty");
  auto dialect = postgres_dialect(BlobTransport::native);
  auto factory = [make_connection, dialect]() -> std::unique_ptr<Session> {
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
      return std::make_unique<PgSession>(std::move(connection), dialect, std::string(), false);
    } catch (const std::exception& e) {  // killed between the factory and the session's set-up
      throw Error(ErrorKind::transient, fmt::format("postgres: the new connection broke: {}", e.what()));
    }
  };
  return std::make_shared<Backend>("postgres", "postgresql (connection factory)", options, dialect, factory);
}

}  // namespace rowguard::detail

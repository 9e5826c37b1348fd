// LISTEN on a dedicated libpq connection: waiters for a lock wake when its holder releases,
// instead of polling. One connection per Locks, always drained by its own thread.
#include <deque>
#include <poll.h>

#include <fmt/format.h>
#include <libpq-fe.h>

#include "backend/postgres/engine.hpp"

namespace rowguard::detail {

namespace {

class LibpqListener final : public Listener {
 public:
  LibpqListener(const std::string& conninfo, const std::string& channel, const Secrets& secrets) {
    conn_ = PQconnectdb(conninfo.c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string message = scrub(PQerrorMessage(conn_), secrets);
      PQfinish(conn_);
      throw Error(ErrorKind::transient, fmt::format("postgres: listener cannot connect: {}", message));
    }
    // channel is a validated identifier; quoting keeps its case.
    PGresult* r = PQexec(conn_, fmt::format("LISTEN \"{}\"", channel).c_str());
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
      const std::string message = PQerrorMessage(conn_);
      PQfinish(conn_);
      throw Error(ErrorKind::transient, fmt::format("postgres: LISTEN failed: {}", message));
    }
  }
  ~LibpqListener() override { PQfinish(conn_); }

  std::optional<std::string> wait(std::chrono::milliseconds timeout) override {
    if (auto ready = drain()) return ready;
    pollfd fd{PQsocket(conn_), POLLIN, 0};
    if (fd.fd < 0) throw Error(ErrorKind::transient, "postgres: listener connection lost");
    const int n = ::poll(&fd, 1, static_cast<int>(timeout.count()));
    if (n < 0) return std::nullopt;  // EINTR: the caller loops
    if (n == 0) return std::nullopt;
    if (!PQconsumeInput(conn_) || PQstatus(conn_) != CONNECTION_OK)
      throw Error(ErrorKind::transient, fmt::format("postgres: listener connection lost: {}", PQerrorMessage(conn_)));
    return drain();
  }

 private:
  std::optional<std::string> drain() {
    while (PGnotify* n = PQnotifies(conn_)) {
      pending_.emplace_back(n->extra ? n->extra : "");
      PQfreemem(n);
    }
    if (pending_.empty()) return std::nullopt;
    std::string payload = std::move(pending_.front());
    pending_.pop_front();
    return payload;
  }

  PGconn* conn_ = nullptr;
  std::deque<std::string> pending_;
};

}  // namespace

ListenerFactory libpq_listener_factory(std::string conninfo, Secrets secrets) {
  return [conninfo = std::move(conninfo), secrets = std::move(secrets)](const std::string& channel) {
    return std::unique_ptr<Listener>(std::make_unique<LibpqListener>(conninfo, channel, secrets));
  };
}

}  // namespace rowguard::detail

#pragma once
// A TCP proxy of the test suite's own, between the client and PostgreSQL (or PgBouncer), that can
// delay, stall and cut connections on command: network faults without network namespaces, which
// need capabilities CI may not have.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace rowguard::test {

class FaultProxy {
 public:
  // Listens on a free loopback port and forwards every connection to 127.0.0.1:target_port.
  explicit FaultProxy(int target_port);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  int port() const noexcept { return port_; }
  // Every chunk forwarded from now on waits this long first (0: none).
  void set_delay(int ms) { delay_ms_ = ms; }
  // While stalled nothing is forwarded in either direction; connections stay open.
  void set_stalled(bool stalled);
  // Closes every open connection (both sides) at once; new connections are still accepted.
  // Returns how many connections it closed.
  std::uint64_t cut_all();
  // Connections accepted so far.
  std::uint64_t connections() const noexcept { return accepted_; }
  // Connections that were open when a cut_all() closed them: faults the clients met, at once or
  // when they next used the connection.
  std::uint64_t connections_cut() const noexcept { return connections_cut_; }
  // Connections accepted after the first cut_all() that closed one: the clients reconnected.
  std::uint64_t reconnections() const noexcept;
  // Chunks forwarded from clients to the server so far: one per request a client sent and then
  // waited for (libpq writes a statement's messages at once), so the round trips of a client that
  // does not pipeline.
  std::uint64_t requests() const noexcept { return requests_; }

 private:
  struct Connection {
    int client, server;
    int pumping = 2;       // both sockets close when both directions ended
    bool closing = false;  // cut, or one side ended
  };
  void accept_loop();
  void pump(const std::shared_ptr<Connection>& connection, int from, int to);

  int target_port_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> delay_ms_{0};
  std::atomic<std::uint64_t> accepted_{0}, connections_cut_{0};
  std::atomic<std::uint64_t> accepted_at_first_cut_{0};
  std::atomic<std::uint64_t> requests_{0};
  std::atomic<bool> cut_once_{false};
  std::mutex mutex_;
  std::condition_variable resumed_;
  bool stalled_ = false;
  std::set<std::shared_ptr<Connection>> open_;  // live connections
  std::thread acceptor_;
  std::vector<std::thread> pumps_;
};

// url with its 127.0.0.1 port replaced by port (URI form, any query kept).
std::string via_port(const std::string& url, int port);
// The port of a 127.0.0.1 URL.
int port_of(const std::string& url);

}  // namespace rowguard::test

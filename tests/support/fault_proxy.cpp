#include "support/fault_proxy.hpp"

#include <chrono>
#include <memory>
#include <poll.h>
#include <regex>
#include <stdexcept>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace rowguard::test {

namespace {
sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

bool write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
}  // namespace

FaultProxy::FaultProxy(int target_port) : target_port_(target_port) {
  listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener_ < 0) throw std::runtime_error("proxy: socket failed");
  const int one = 1;
  ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = loopback(0);
  if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 128) != 0)
    throw std::runtime_error("proxy: bind/listen failed");
  socklen_t len = sizeof a;
  ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

FaultProxy::~FaultProxy() {
  stopping_ = true;
  set_stalled(false);
  ::shutdown(listener_, SHUT_RDWR);
  acceptor_.join();
  ::close(listener_);
  cut_all();
  std::vector<std::thread> pumps;
  {
    std::lock_guard lock(mutex_);
    pumps.swap(pumps_);
  }
  for (auto& p : pumps) p.join();
}

void FaultProxy::set_stalled(bool stalled) {
  {
    std::lock_guard lock(mutex_);
    stalled_ = stalled;
  }
  resumed_.notify_all();
}

std::uint64_t FaultProxy::cut_all() {
  std::lock_guard lock(mutex_);
  std::uint64_t closed = 0;
  for (const auto& c : open_) {
    if (c->closing) continue;          // cut before, or ending by itself: its pumps are not done yet
    ::shutdown(c->client, SHUT_RDWR);  // the pumps see EOF and close
    ::shutdown(c->server, SHUT_RDWR);
    c->closing = true;
    ++closed;
  }
  if (closed > 0 && !cut_once_) {
    accepted_at_first_cut_ = accepted_.load();
    cut_once_ = true;
  }
  connections_cut_ += closed;
  return closed;
}

std::uint64_t FaultProxy::reconnections() const noexcept { return cut_once_ ? accepted_ - accepted_at_first_cut_ : 0; }

void FaultProxy::accept_loop() {
  while (!stopping_) {
    pollfd p{listener_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(target_port_);
    if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(client);
      if (server >= 0) ::close(server);
      continue;
    }
    const int one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard lock(mutex_);  // counted and registered together, so a cut sees both or neither
    ++accepted_;
    auto connection = std::make_shared<Connection>(Connection{client, server});
    open_.insert(connection);
    pumps_.emplace_back([this, connection] { pump(connection, connection->client, connection->server); });
    pumps_.emplace_back([this, connection] { pump(connection, connection->server, connection->client); });
  }
}

// Copies from -> to until either side closes; then shuts `to` down, which ends the other direction
// too, and the last of the two closes both sockets (so no descriptor is closed while still in use).
void FaultProxy::pump(const std::shared_ptr<Connection>& connection, int from, int to) {
  char buffer[16384];
  for (;;) {
    const ssize_t n = ::recv(from, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    if (const int d = delay_ms_; d > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d));
    {
      std::unique_lock lock(mutex_);
      resumed_.wait(lock, [&] { return !stalled_ || stopping_; });
    }
    if (from == connection->client) ++requests_;
    if (!write_all(to, buffer, static_cast<std::size_t>(n))) break;
  }
  std::lock_guard lock(mutex_);
  ::shutdown(to, SHUT_RDWR);
  connection->closing = true;
  if (--connection->pumping > 0) return;
  open_.erase(connection);
  ::close(from);
  ::close(to);
}

std::string via_port(const std::string& url, int port) {
  static const std::regex host_port(R"(@127\.0\.0\.1:[0-9]+)");
  if (!std::regex_search(url, host_port)) throw std::runtime_error("via_port: no 127.0.0.1:PORT in " + url);
  return std::regex_replace(url, host_port, "@127.0.0.1:" + std::to_string(port),
                            std::regex_constants::format_first_only);
}

int port_of(const std::string& url) {
  static const std::regex host_port(R"(@127\.0\.0\.1:([0-9]+))");
  std::smatch m;
  if (!std::regex_search(url, m, host_port)) throw std::runtime_error("port_of: no 127.0.0.1:PORT in " + url);
  return std::stoi(m[1].str());
}

}  // namespace rowguard::test

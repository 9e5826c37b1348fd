#pragma once
// The HTTP side of `rowguard serve`: Prometheus metrics, a health check and a read-only status page
// for one database. Kept apart from the command so tests can run it in process on every backend.

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "rowguard/rowguard.hpp"

namespace rowguard::cli {

struct StatusOptions {
  // How often the status page reloads itself. Default: 5s. REQUIRES: >= 1s.
  std::chrono::seconds refresh{5};
  // Ledger::check() reads every account and entry, so /metrics and the page reuse its last report
  // for this long. Default: 60s. REQUIRES: >= 1s.
  std::chrono::seconds check_every{60};
  // Rows the page shows, each list read with a LIMIT (totals and counts come from aggregates, so
  // a page reads a bounded number of rows however many accounts and locks there are). Defaults:
  // 20 recent transfers, 100 locks (the longest-held leases, then the most recently expired ones,
  // then released ones waited for), 20 largest balances, 100 ledger check violations.
  // REQUIRES: recent_transfers 1..1000.
  std::size_t recent_transfers = 20;
  std::size_t locks_shown = 100;
  std::size_t largest_accounts = 20;
  std::size_t violations_shown = 100;
  // How often the lock charts sample the locks table (one aggregate: the fencing tokens issued so
  // far and the processes waiting), while run() runs. Default: 10s. REQUIRES: 100ms..60s.
  std::chrono::milliseconds lock_sample_every{10'000};
  // Largest request body accepted; a larger one is answered 413 without being kept (no route
  // takes a body). Default: 4 KiB.
  std::size_t max_request_body = 4096;
};

// Serves GET /metrics, /healthz and / over HTTP/1.1 on one address until stop(); other methods
// get 405 with an Allow header. While run() runs, a thread of its own samples the locks table for
// the page's lock chart (the database keeps no history of acquisitions).
// Thread-safety: run() blocks its caller; stop() and the render functions may be called from any
// thread. Every request reads the database through its own pooled session; nothing it shows comes
// from the client, and nothing secret leaves it (the URL is shown with its password masked).
//
// Example:
//   StatusServer server(db, {});
//   int port = server.bind("127.0.0.1", 0);
//   std::thread t([&] { server.run(); });
//   ... server.stop(); t.join();
class StatusServer {
 public:
  StatusServer(Database& db, StatusOptions options);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Binds host:port (port 0 picks a free one) and returns the port. Error(invalid_argument) when
  // the address cannot be bound.
  int bind(const std::string& host, int port);
  // Answers requests until stop(). REQUIRES: bind() succeeded.
  void run();
  void stop();

  // The responses themselves: the Prometheus text of this process's metrics and the database-wide
  // view (aggregates only, besides the ledger check of at most check_every ago); the health check
  // as (HTTP status, JSON body: the clock and the schema version); the HTML page, whose charts
  // are inline SVG drawn here (no script, nothing fetched from elsewhere).
  std::string metrics_text();
  std::pair<int, std::string> health();
  std::string status_page();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard::cli

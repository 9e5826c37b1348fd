// rowguard serve: the Prometheus exporter, health check and status page (status_server.hpp).
#include <iostream>
#include <pthread.h>
#include <signal.h>
#include <thread>

#include "cli.hpp"
#include "status_server.hpp"

namespace rowguard::cli {

namespace {

struct ServeArgs {
  std::string listen = "127.0.0.1:9470";
  std::string refresh = "5s";
  std::string check_every = "60s";
  std::string lock_sample_every = "10s";
};

// "HOST:PORT", "[V6]:PORT" or ":PORT" (loopback); the port may be 0 for any free one.
std::pair<std::string, int> parse_listen(const std::string& text) {
  const auto colon = text.rfind(':');
  const auto bad = [&] {
    return Error(ErrorKind::invalid_argument, fmt::format("--listen wants HOST:PORT, got '{}'", text));
  };
  if (colon == std::string::npos) throw bad();
  std::string host = text.substr(0, colon);
  const std::string port_text = text.substr(colon + 1);
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos)
    throw bad();
  const int port = std::stoi(port_text);
  if (port > 65535) throw bad();
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "127.0.0.1";
  return {host, port};
}

bool is_loopback(const std::string& host) { return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0; }

void serve(const Globals& globals, const ServeArgs& args) {
  const auto [host, port] = parse_listen(args.listen);
  StatusOptions options;
  options.refresh = std::chrono::duration_cast<std::chrono::seconds>(parse_duration(args.refresh));
  options.check_every = std::chrono::duration_cast<std::chrono::seconds>(parse_duration(args.check_every));
  options.lock_sample_every =
      std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(args.lock_sample_every));
  Database db = open_database(globals);
  db.require_schema();

  // SIGINT and SIGTERM stop the server from a thread of their own: stop() is not async-signal-safe.
  // Blocked before the server's threads start, so they inherit the mask and only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  StatusServer server(db, options);
  const int bound = server.bind(host, port);
  if (!is_loopback(host))
    std::cerr << "rowguard serve: listening beyond loopback on " << host
              << "; the page and metrics have no authentication, so put them behind your own proxy or firewall\n";
  const std::string url = host.find(':') != std::string::npos ? fmt::format("http://[{}]:{}/", host, bound)
                                                              : fmt::format("http://{}:{}/", host, bound);
  emit(globals, {{"listening", url}},
       fmt::format("serving {} (metrics at {}metrics, health at {}healthz)", url, url, url));
  flush_output();

  std::thread stopper([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    server.stop();
  });
  server.run();
  // run() also returns when the server fails; wake the stopper if no signal did. It blocks SIGTERM
  // and takes it in sigwait(), so this signal wakes it; it does not terminate it.
  pthread_kill(stopper.native_handle(), SIGTERM);  // NOLINT(bugprone-bad-signal-to-kill-thread)
  stopper.join();
}

}  // namespace

void add_serve_command(CLI::App& app, Globals& globals) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve GET /metrics (Prometheus text: this process's counters and the database-wide view), /healthz "
      "(200 or 503, JSON) and / (a read-only status page that refreshes itself) until SIGINT or SIGTERM; other "
      "methods get 405. The page charts the last hour per minute: transfers applied and rejected (from the "
      "transfers table) and lock acquisitions and waiting processes (sampled from the locks table while serve "
      "runs). Reads only, and a bounded number of rows per request (totals and counts by aggregates, the "
      "charts grouped by minute, the page's lists with a LIMIT: 20 largest balances, 100 locks, 20 recent "
      "transfers); request bodies over 4 KiB get 413. Needs the schema at this version. No authentication: "
      "binds to loopback unless told otherwise.");
  cmd->add_option("--listen", args->listen,
                  "HOST:PORT to listen on; port 0 picks a free one (default: 127.0.0.1:9470)");
  cmd->add_option("--refresh", args->refresh, "How often the status page reloads itself (default: 5s)");
  cmd->add_option("--check-every", args->check_every,
                  "Run the ledger check (a scan of accounts and journal) at most this often (default: 60s)");
  cmd->add_option("--lock-sample-every", args->lock_sample_every,
                  "How often the lock chart samples the locks table, 100ms to 60s (default: 10s)");
  cmd->callback([&globals, args] { serve(globals, *args); });
}

}  // namespace rowguard::cli

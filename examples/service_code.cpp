// service_code: the helpers for a service's own code on an SQLite file. Database::transact retries
// a version-checked update as the ledger retries its own; Locks::run keeps a job's lease alive and
// asks the job to stop when the lease is lost.
// Run: ./service_code [sqlite:service_code.db]
#include <chrono>
#include <cstdio>
#include <stop_token>
#include <thread>
#include <vector>

#include <rowguard/rowguard.hpp>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  try {
    auto db = rowguard::Database::open(argc > 1 ? argv[1] : "sqlite:service_code.db");
    db.migrate();
    db.exec("CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, paid bigint NOT NULL, version bigint NOT NULL)");
    db.exec("DELETE FROM orders");
    db.exec("INSERT INTO orders (id, paid, version) VALUES (42, 0, 0)");

    // 1. Four threads pay parts of order 42 at once. Each payment reads the version and writes only
    //    if it did not move; a conflict runs the whole transaction again. fn touches nothing but tx,
    //    since it may run more than once.
    std::vector<std::thread> payers;
    for (int p = 0; p < 4; ++p)
      payers.emplace_back([&db] {
        for (int i = 0; i < 5; ++i)
          db.transact({}, [](rowguard::Transaction& tx) {
            const auto v = tx.exec("SELECT version FROM orders WHERE id = 42").one().i64(0);
            if (tx.exec("UPDATE orders SET paid = paid + 100, version = version + 1 WHERE id = 42 AND version = $1",
                        {v})
                    .affected == 0)
              throw rowguard::Error(rowguard::ErrorKind::conflict, "order 42 changed meanwhile");
          });
      });
    for (auto& t : payers) t.join();
    const auto paid = db.exec("SELECT paid FROM orders WHERE id = 42").one().i64(0);
    std::printf("order 42: %s paid in 20 payments, none lost\n", rowguard::format_money(paid, "EUR").c_str());

    // 2. The same loop for code that manages its own transaction.
    const auto version = rowguard::with_retries({}, [&db] {
      auto tx = db.begin();
      const auto v = tx.exec("SELECT version FROM orders WHERE id = 42").one().i64(0);
      tx.commit();
      return v;
    });
    std::printf("order 42 is at version %lld\n", static_cast<long long>(version));

    // 3. A job under a lease: renewed in the background while it runs, released when it returns.
    rowguard::Locks locks(db);
    const int batches = locks.run("nightly-export", 10s, [](const rowguard::Lease& lease, std::stop_token stop) {
      int n = 0;
      for (; n < 3 && !stop.stop_requested(); ++n) std::this_thread::sleep_for(10ms);  // one batch
      std::printf("export ran %d batches under token %lld\n", n, static_cast<long long>(lease.token()));
      return n;
    });
    std::printf("export finished %d batches and released the lock\n", batches);

    // 4. A lease lost while the job runs (an operator force-releases it): the job is asked to stop,
    //    and run() reports lock_lost instead of the job's result.
    rowguard::Locks operator_locks(db);
    rowguard::LockRunOptions options;
    options.heartbeat_interval = 20ms;
    try {
      locks.run(
          "nightly-export", 10s,
          [&](const rowguard::Lease&, std::stop_token stop) {
            operator_locks.force_release("nightly-export", "stuck job");
            while (!stop.stop_requested()) std::this_thread::sleep_for(5ms);
            std::printf("export was asked to stop\n");
          },
          options);
    } catch (const rowguard::Error& e) {
      std::printf("run: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
      if (e.kind() != rowguard::ErrorKind::lock_lost) return 1;
    }
    return 0;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "service_code: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

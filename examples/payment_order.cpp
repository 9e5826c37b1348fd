// payment_order: a payment order as a saga (create order, hold funds, call a payment provider,
// capture, mark paid; undone by cancel and void) with a simulated provider that declines or times
// out at random, and coordinators that may die anywhere. Every order must end either paid with
// its money moved exactly once, or cancelled with no money moved.
//
//   payment_order URL                       demo: setup, run 1 10, recover, check
//   payment_order URL setup                 tables and accounts (safe to repeat)
//   payment_order URL run SEED N [CRASH]    N orders "order-SEED-K"; with CRASH (0..1) the process
//                                           kills itself (SIGKILL) at that rate inside steps, as a crashed
//                                           coordinator
//   payment_order URL recover               finishes or compensates what dead coordinators left
//   payment_order URL check                 exit 0 when every order is paid once or cancelled cleanly
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>

#include <rowguard/rowguard.hpp>

using namespace std::chrono_literals;

namespace {

constexpr std::int64_t initial_funds = 100'000'000;
double crash_rate = 0;  // run mode only
std::mt19937_64 crash_rng{std::random_device{}()};

// A coordinator dying at an arbitrary point: no destructor runs, no lease is released.
void maybe_crash() {
  if (crash_rate > 0 && std::uniform_real_distribution<double>(0, 1)(crash_rng) < crash_rate) {
    ::kill(::getpid(), SIGKILL);  // no exit handler runs, as in a crash
    for (;;) ::pause();
  }
}

struct Order {
  std::int64_t amount = 0;
  std::uint64_t seed = 0;
};

Order parse(const std::string& payload) {
  Order o;
  unsigned long long seed = 0;
  long long amount = 0;
  if (std::sscanf(payload.c_str(), "amount=%lld seed=%llu", &amount, &seed) != 2)
    throw std::runtime_error("bad payload: " + payload);
  o.amount = amount;
  o.seed = seed;
  return o;
}

// The payment provider: charges are recorded under the caller's idempotency key, so a retried
// call after a timeout finds the charge it made instead of charging twice. A fence in front of it
// keeps the highest coordinator token seen per order: a coordinator that was paused past its lease
// cannot charge after the one that took the order over.
struct Provider {
  rowguard::Database& db;
  rowguard::Fence fence{db};
  // Declines 15% of calls; 15% of calls charge but "time out" (the reply is lost).
  void charge(const rowguard::StepContext& c, const Order& o) {
    if (!fence.admit("payment_provider:" + c.saga_id, c.token))
      throw std::runtime_error("provider: another coordinator took this order over");
    std::mt19937_64 rng(o.seed * 1'000'003 + std::hash<std::string>{}(c.idempotency_key()) + c.attempt);
    const int roll = static_cast<int>(rng() % 100);
    const bool charged =
        !db.exec("SELECT 1 FROM payment_provider WHERE idempotency_key = $1", {c.idempotency_key()}).empty();
    if (charged) return;  // the original reply, again
    if (roll < 15) throw std::runtime_error("provider: card declined");
    db.exec("INSERT INTO payment_provider (idempotency_key, order_id, amount, refunded) VALUES ($1, $2, $3, 0)",
            {c.idempotency_key(), c.saga_id, o.amount});
    if (roll < 30) throw rowguard::Error(rowguard::ErrorKind::in_doubt, "provider: timed out");
  }
  void refund(const rowguard::StepContext& c) {
    db.exec("UPDATE payment_provider SET refunded = 1 WHERE idempotency_key = $1", {c.idempotency_key()});
  }
};

void define(rowguard::Sagas& sagas, rowguard::Database& db, rowguard::Ledger& ledger, Provider& provider) {
  using rowguard::SagaStep;
  using rowguard::StepContext;
  using rowguard::Transaction;
  auto hold = [&ledger](StepContext& c, Transaction* tx) {
    const std::int64_t amount = parse(c.payload).amount;
    return tx ? ledger.hold(*tx, "customer", "merchant", amount, c.idempotency_key(), std::chrono::hours(24))
              : ledger.hold("customer", "merchant", amount, c.idempotency_key(), std::chrono::hours(24));
  };
  sagas.define(
      "payment_order",
      {{"create",
        [&db](StepContext& c) {
          maybe_crash();
          db.exec(
              "INSERT INTO payment_orders (id, amount, state) VALUES ($1, $2, 'created') ON CONFLICT (id) DO NOTHING",
              {c.saga_id, parse(c.payload).amount});
          maybe_crash();
          return std::string("created");
        },
        [&db](StepContext& c) {
          maybe_crash();
          db.exec(
              "INSERT INTO payment_orders (id, amount, state) VALUES ($1, $2, 'cancelled') "
              "ON CONFLICT (id) DO UPDATE SET state = 'cancelled'",
              {c.saga_id, parse(c.payload).amount});
        }},
       // The ledger's steps run in the transaction that records them done (SagaStep::in_transaction):
       // the hold and its done row commit together, so a coordinator that dies in between leaves
       // neither, and the step costs one commit instead of three.
       SagaStep::in_transaction(
           "hold",
           [hold](StepContext& c, Transaction& tx) {
             maybe_crash();
             const auto h = hold(c, &tx);
             maybe_crash();
             if (!h.ok()) throw std::runtime_error("insufficient funds");
             return std::to_string(h.hold_id);
           },
           // The step may have failed, its hold with it; asking again under the same key finds the
           // hold (or makes it, to be voided at once), so the void always finds its hold.
           [hold, &ledger](StepContext& c) {
             maybe_crash();
             const auto h = hold(c, nullptr);
             try {
               if (h.ok()) ledger.void_hold(h.hold_id);
             } catch (const rowguard::Error& e) {
               // Captured: the capture's own compensation has refunded it.
               if (e.kind() != rowguard::ErrorKind::hold_closed) throw;
             }
             maybe_crash();
           }),
       {"provider",
        [&provider](StepContext& c) {
          maybe_crash();
          provider.charge(c, parse(c.payload));
          maybe_crash();
          return std::string("charged");
        },
        [&provider](StepContext& c) {
          maybe_crash();
          provider.refund(c);
        }},
       SagaStep::in_transaction(
           "capture",
           [&ledger](StepContext& c, Transaction& tx) {
             maybe_crash();
             const auto r = ledger.capture(tx, std::stoll(*c.result_of("hold")), std::nullopt, c.idempotency_key());
             maybe_crash();
             return std::to_string(r.transfer_id);
           },
           [&ledger](StepContext& c) {
             // Only if the capture happened: refund it in full under the compensation key.
             try {
               ledger.reverse(c.idempotency_key(), parse(c.payload).amount, c.compensation_key());
             } catch (const rowguard::Error& e) {
               if (e.kind() != rowguard::ErrorKind::not_found) throw;
             }
           }),
       {"mark_paid",
        [&db](StepContext& c) {
          maybe_crash();
          db.exec("UPDATE payment_orders SET state = 'paid' WHERE id = $1", {c.saga_id});
          maybe_crash();
          return std::string("paid");
        },
        {}}});
}

void setup(rowguard::Database& db, rowguard::Ledger& ledger) {
  db.migrate();
  db.exec(
      "CREATE TABLE IF NOT EXISTS payment_orders (id TEXT PRIMARY KEY, amount BIGINT NOT NULL, state TEXT NOT NULL)");
  db.exec(
      "CREATE TABLE IF NOT EXISTS payment_provider (idempotency_key TEXT PRIMARY KEY, order_id TEXT NOT NULL, "
      "amount BIGINT NOT NULL, refunded BIGINT NOT NULL)");
  for (const char* id : {"customer", "merchant"}) {
    try {
      ledger.get(id);
    } catch (const rowguard::Error& e) {
      if (e.kind() != rowguard::ErrorKind::not_found) throw;
      ledger.open(id, "EUR");
    }
  }
  ledger.deposit("customer", initial_funds, "payment-order-initial-funds");
}

int run(rowguard::Sagas& sagas, std::uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  int paid = 0, cancelled = 0, left = 0;
  for (int k = 0; k < n; ++k) {
    const std::int64_t amount = 100 + static_cast<std::int64_t>(rng() % 10'000);
    const std::string id = "order-" + std::to_string(seed) + "-" + std::to_string(k);
    try {
      const auto o =
          sagas.run("payment_order", id, "amount=" + std::to_string(amount) + " seed=" + std::to_string(seed));
      (o.state == rowguard::SagaState::completed ? paid : cancelled) += 1;
    } catch (const rowguard::Error& e) {
      // This coordinator lost the saga's lease (a renewal came too late): it must stop driving it,
      // and recover() finishes it. The next order goes on.
      if (e.kind() != rowguard::ErrorKind::lock_lost) throw;
      std::fprintf(stderr, "payment_order: %s\n", e.what());
      ++left;
    }
  }
  std::printf("ran %d orders: %d paid, %d cancelled, %d left for recovery\n", n, paid, cancelled, left);
  return 0;
}

int recover(rowguard::Sagas& sagas) {
  // Dead coordinators' leases run out after lease_ttl: until then their sagas count as busy.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    const auto r = sagas.recover();
    std::printf("recover: %lld completed, %lld compensated, %lld busy, %zu unresolved\n",
                static_cast<long long>(r.completed), static_cast<long long>(r.compensated),
                static_cast<long long>(r.busy), r.unresolved.size());
    if (r.ok()) return 0;
    if (std::chrono::steady_clock::now() > deadline) return 1;
    std::this_thread::sleep_for(200ms);
  }
}

int check(rowguard::Database& db, rowguard::Ledger& ledger, rowguard::Sagas& sagas) {
  int problems = 0;
  auto problem = [&](const std::string& what) {
    std::fprintf(stderr, "check: %s\n", what.c_str());
    ++problems;
  };
  const auto report = ledger.check();
  for (const auto& v : report.violations) problem("ledger: " + v.what + " " + v.account + " " + v.detail);
  std::int64_t paid_total = 0;
  int paid = 0, cancelled = 0;
  for (const auto& s : sagas.list({std::nullopt, "payment_order", 100'000})) {
    const auto amount = parse(s.payload).amount;
    const auto order = db.exec("SELECT state FROM payment_orders WHERE id = $1", {s.id});
    const std::string state = order.empty() ? "" : order.rows[0].text(0);
    const auto charges =
        db.exec("SELECT count(*) FROM payment_provider WHERE order_id = $1 AND refunded = 0", {s.id}).one().i64(0);
    const auto info = sagas.get(s.id);
    const std::string* hold_id = nullptr;
    for (const auto& st : info->steps)
      if (st.name == "hold" && st.result) hold_id = &*st.result;
    if (s.state == rowguard::SagaState::completed) {
      ++paid;
      paid_total += amount;
      if (state != "paid") problem(s.id + ": completed but the order is '" + state + "'");
      if (charges != 1) problem(s.id + ": paid with " + std::to_string(charges) + " provider charges");
      if (!hold_id) {
        problem(s.id + ": paid without a hold");
      } else {
        const auto h = ledger.get_hold(std::stoll(*hold_id));
        if (h.state != rowguard::HoldState::captured || h.captured != amount)
          problem(s.id + ": its hold is " + std::string(rowguard::to_string(h.state)));
      }
    } else if (s.state == rowguard::SagaState::compensated) {
      ++cancelled;
      if (state != "cancelled") problem(s.id + ": compensated but the order is '" + state + "'");
      if (charges != 0) problem(s.id + ": cancelled with a provider charge not refunded");
      if (hold_id && ledger.get_hold(std::stoll(*hold_id)).state == rowguard::HoldState::held)
        problem(s.id + ": cancelled with its hold still open");
    } else {
      problem(s.id + ": left " + std::string(rowguard::to_string(s.state)));
    }
  }
  // Money moved once per paid order, and not at all for the others.
  const auto customer = ledger.get("customer");
  const auto merchant = ledger.get("merchant");
  if (merchant.balance != paid_total)
    problem("merchant has " + std::to_string(merchant.balance) + ", paid orders total " + std::to_string(paid_total));
  if (customer.balance != initial_funds - paid_total) problem("customer balance does not add up");
  if (customer.held != 0) problem("customer still has " + std::to_string(customer.held) + " held");
  std::printf("check: %d paid (%lld moved), %d cancelled, ledger %s: %s\n", paid, static_cast<long long>(paid_total),
              cancelled, report.ok() ? "ok" : "VIOLATED", problems == 0 ? "every order is consistent" : "PROBLEMS");
  return problems == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string url = argc > 1 ? argv[1] : "sqlite:payment_order.db";
    const std::string mode = argc > 2 ? argv[2] : "demo";
    auto db = rowguard::Database::open(url);
    rowguard::Ledger ledger(db);
    Provider provider{db};
    rowguard::SagaOptions options;
    options.lease_ttl = 1s;  // short, so that the demo's recovery does not wait long for dead coordinators
    rowguard::Sagas sagas(db, options);
    define(sagas, db, ledger, provider);
    if (mode == "setup") {
      setup(db, ledger);
      return 0;
    }
    if (mode == "run" && argc > 4) {
      if (argc > 5) crash_rate = std::atof(argv[5]);
      return run(sagas, std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]));
    }
    if (mode == "recover") return recover(sagas);
    if (mode == "check") return check(db, ledger, sagas);
    if (mode == "demo") {
      setup(db, ledger);
      const int rc = run(sagas, std::random_device{}(), 10);
      return rc != 0 ? rc : recover(sagas) != 0 ? 1 : check(db, ledger, sagas);
    }
    std::fprintf(stderr, "usage: payment_order URL [setup | run SEED N [CRASH] | recover | check]\n");
    return 2;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "payment_order: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

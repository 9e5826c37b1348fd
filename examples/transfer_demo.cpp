// transfer_demo: accounts, keyed transfers, a replayed retry, a rejection, a refund and the
// ledger check, on an SQLite file. Run: ./transfer_demo [sqlite:transfer_demo.db]
#include <cstdio>
#include <random>
#include <string>

#include <rowguard/rowguard.hpp>

int main(int argc, char** argv) {
  try {
    auto db = rowguard::Database::open(argc > 1 ? argv[1] : "sqlite:transfer_demo.db");
    db.migrate();
    rowguard::Ledger ledger(db);
    // Keys are unique per run so the demo can run again on the same file.
    const std::string run = std::to_string(std::random_device{}());
    const std::string customer = "customer-" + run, shop = "shop-" + run;
    ledger.open(customer, "EUR");
    ledger.open(shop, "EUR");
    ledger.deposit(customer, 10'000, "topup-" + run);  // 100.00 EUR, in cents

    const std::string order = "order-" + run;
    auto paid = ledger.transfer(customer, shop, 2'500, order);
    auto retry = ledger.transfer(customer, shop, 2'500, order);  // the reply was lost: retry, same key
    std::printf("order paid: transfer %lld; retry replayed: %s (same transfer %lld)\n",
                static_cast<long long>(paid.transfer_id), retry.replayed ? "yes" : "no",
                static_cast<long long>(retry.transfer_id));

    auto too_much = ledger.transfer(customer, shop, 1'000'000, "big-" + run);
    std::printf("a 10000.00 EUR order: %s\n", std::string(rowguard::to_string(too_much.status)).c_str());

    ledger.reverse(order, 500, "refund-" + run);  // a partial refund of 5.00
    std::printf("customer %lld, shop %lld cents\n", static_cast<long long>(ledger.get(customer).balance),
                static_cast<long long>(ledger.get(shop).balance));

    try {
      ledger.transfer(customer, shop, 2'600, order);  // the same key with another amount
    } catch (const rowguard::Error& e) {
      std::printf("key reused with another amount: %s\n", std::string(rowguard::to_string(e.kind())).c_str());
    }
    const auto report = ledger.check();
    std::printf("ledger check: %s (%lld accounts, %lld entries)\n", report.ok() ? "every invariant holds" : "VIOLATED",
                static_cast<long long>(report.accounts), static_cast<long long>(report.entries));
    return report.ok() ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "transfer_demo: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

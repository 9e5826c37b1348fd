// order_lookup: transfers that carry a code, an order number (reference) and metadata, found again
// by them: "which transfers belong to order 42?", "what did the web shop take?". On an SQLite file;
// the same code runs on PostgreSQL. Run: ./order_lookup [sqlite:order_lookup.db]
#include <cstdio>
#include <random>
#include <string>

#include <rowguard/rowguard.hpp>

namespace {
constexpr int payment = 10;  // the kinds of payment, as this team numbers them
constexpr int refund = 20;

void print(const rowguard::TransferPage& page) {
  for (const auto& t : page.items)
    std::printf("  #%lld %s %s -> %s (code %d, reference %s, metadata %s)\n", static_cast<long long>(t.id),
                rowguard::format_money(t.amount, t.currency).c_str(), t.from.value_or("outside").c_str(),
                t.to.value_or("outside").c_str(), t.details.code, t.details.reference.c_str(),
                t.details.metadata.c_str());
}
}  // namespace

int main(int argc, char** argv) {
  try {
    auto db = rowguard::Database::open(argc > 1 ? argv[1] : "sqlite:order_lookup.db");
    db.migrate();
    rowguard::Ledger ledger(db);
    // Ids and keys are unique per run so the example can run again on the same file.
    const std::string run = std::to_string(std::random_device{}());
    const std::string customer = "customer-" + run, shop = "shop-" + run, order = "order-42-" + run;
    ledger.open(customer, "EUR");
    ledger.open(shop, "EUR");
    ledger.deposit(customer, 10'000, "topup-" + run);

    // Two payments for one order, from two channels, and a partial refund of the first.
    ledger.transfer(customer, shop, 2'500, "pay-1-" + run,
                    {.code = payment, .reference = order, .metadata = R"({"channel":"web","item":"book"})"});
    const auto paid =
        ledger.transfer(customer, shop, 1'200, "pay-2-" + run,
                        {.code = payment, .reference = order, .metadata = R"({"channel":"app","item":"pen"})"});
    // The result carries both balances after the payment, as the journal entries record them.
    std::printf("after pay-2: %s has %s, %s has %s\n", customer.c_str(),
                rowguard::format_money(paid.from_balance.value_or(0), "EUR").c_str(), shop.c_str(),
                rowguard::format_money(paid.to_balance.value_or(0), "EUR").c_str());
    ledger.reverse("pay-1-" + run, 500, "refund-1-" + run,
                   {.code = refund, .reference = order, .metadata = R"({"why":"damaged"})"});

    // A retry of the same request replays; the same key with another reference is refused.
    const auto retry = ledger.transfer(customer, shop, 2'500, "pay-1-" + run,
                                       {.code = payment,
                                        .reference = order,
                                        .metadata = R"({ "item": "book", "channel": "web" })"});  // same JSON value
    std::printf("retry replayed: %s (the customer's balance after the original: %s)\n", retry.replayed ? "yes" : "no",
                rowguard::format_money(retry.from_balance.value_or(0), "EUR").c_str());
    try {
      ledger.transfer(customer, shop, 2'500, "pay-1-" + run,
                      {.code = payment, .reference = "order-43", .metadata = R"({"channel":"web","item":"book"})"});
    } catch (const rowguard::Error& e) {
      std::printf("key reused with another reference: %s\n", e.what());
    }

    rowguard::TransferQuery by_order;
    by_order.reference = order;  // indexed: one index range, newest first
    std::printf("transfers of %s:\n", order.c_str());
    print(ledger.transfers(by_order));

    rowguard::TransferQuery web_payments;
    web_payments.account = shop;
    web_payments.code = payment;
    web_payments.metadata = R"({"channel":"web"})";  // containment: jsonb @> on PostgreSQL
    std::printf("web payments to %s:\n", shop.c_str());
    print(ledger.transfers(web_payments));
    return ledger.check().ok() ? 0 : 1;
  } catch (const rowguard::Error& e) {
    std::fprintf(stderr, "order_lookup: %s: %s\n", rowguard::to_string(e.kind()).data(), e.what());
    return 1;
  }
}

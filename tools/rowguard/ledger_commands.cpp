// rowguard account open|show|list, deposit, withdraw, transfer, ledger check
#include <iostream>
#include <random>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct LedgerArgs {
  std::string id, from, to, key, currency = "EUR";
  std::int64_t amount = 0;
  std::int64_t min_balance = 0;
  DetailsArgs details;
};

nlohmann::json account_json(const Account& a) {
  return {{"id", a.id},          {"currency", a.currency},     {"balance", a.balance},
          {"held", a.held},      {"available", a.available()}, {"min_balance", a.min_balance},
          {"version", a.version}};
}

}  // namespace

void DetailsArgs::add_options(CLI::App* cmd) {
  cmd->add_option(
         "--code", code,
         fmt::format("The kind of payment as your team numbers them, 1 to {} (default 0: none)", max_transfer_code))
      ->check(decimal());
  cmd->add_option("--reference", reference,
                  fmt::format("An external id such as an order number, 1 to {} bytes (`ledger transfers --reference` "
                              "finds it)",
                              max_reference_bytes));
  cmd->add_option("--metadata", metadata,
                  fmt::format("A JSON object of at most {} bytes, e.g. '{{\"order\":\"42\"}}' (compared as a JSON "
                              "value when the key is reused)",
                              max_metadata_bytes));
  cmd->add_option("--event-at", event_at,
                  "When the payment took effect outside the ledger (imported transfers): 2026-01-31, "
                  "2026-01-31T12:30:00Z, an offset instead of Z, or @epoch-ms (the journal's own time stays the "
                  "database clock)");
}

TransferDetails DetailsArgs::details() const {
  TransferDetails d;
  if (code < 0 || code > max_transfer_code)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("--code is 0 (none) or 1 to {}, got {}", max_transfer_code, code));
  d.code = static_cast<int>(code);
  d.reference = reference;
  d.metadata = metadata;
  if (!event_at.empty()) d.event_at_ms = parse_time(event_at);
  return d;
}

void add_details_json(nlohmann::json& j, const TransferDetails& d) {
  j["code"] = d.code;
  j["reference"] = d.reference.empty() ? nlohmann::json() : nlohmann::json(d.reference);
  nlohmann::json metadata;
  if (!d.metadata.empty()) {
    try {
      metadata = nlohmann::json::parse(d.metadata);
    } catch (const nlohmann::json::exception&) {
      metadata = d.metadata;  // cannot happen (checked on the way in): shown as text rather than lost
    }
  }
  j["metadata"] = std::move(metadata);
  j["event_at"] = d.event_at_ms ? nlohmann::json(format_time(*d.event_at_ms)) : nlohmann::json();
  j["event_at_ms"] = d.event_at_ms ? nlohmann::json(*d.event_at_ms) : nlohmann::json();
}

std::string details_text(const TransferDetails& d) {
  std::string parts;
  auto add = [&](const std::string& part) { parts += (parts.empty() ? "" : ", ") + part; };
  if (d.code != 0) add(fmt::format("code {}", d.code));
  if (!d.reference.empty()) add(fmt::format("reference {}", d.reference));
  if (!d.metadata.empty()) add(fmt::format("metadata {}", d.metadata));
  if (d.event_at_ms) add(fmt::format("event at {}", format_time(*d.event_at_ms)));
  return parts.empty() ? parts : " [" + parts + "]";
}

std::string fresh_key() {
  std::random_device rd;
  return fmt::format("cli-{:08x}{:08x}{:08x}{:08x}", rd(), rd(), rd(), rd());
}

nlohmann::json balance_json(const std::optional<std::int64_t>& balance) {
  return balance ? nlohmann::json(*balance) : nlohmann::json(nullptr);
}

std::string balances_text(const TransferResult& r, const std::function<std::string()>& currency) {
  if (!r.from_balance && !r.to_balance) return {};
  const std::string code = currency();
  std::string parts;
  if (r.from_balance) parts = "from balance " + format_money(*r.from_balance, code);
  if (r.to_balance) parts += (parts.empty() ? "" : ", ") + ("to balance " + format_money(*r.to_balance, code));
  return "; " + parts;
}

void report(const Globals& globals, const TransferResult& r, const std::string& key, std::string_view what,
            const std::function<std::string()>& currency) {
  emit(globals,
       {{"transfer_id", r.transfer_id},
        {"status", std::string(to_string(r.status))},
        {"replayed", r.replayed},
        {"key", key},
        {"from_balance", balance_json(r.from_balance)},
        {"to_balance", balance_json(r.to_balance)}},
       globals.json ? std::string()
                    : fmt::format("{} {}{} (transfer {}, key {}{}{})", what,
                                  r.ok() ? "done" : "rejected: ", r.ok() ? "" : to_string(r.status), r.transfer_id, key,
                                  r.replayed ? ", replayed" : "", balances_text(r, currency)));
  if (!r.ok())
    throw Error(ErrorKind::insufficient_funds,
                fmt::format("{} rejected: insufficient funds (transfer {})", what, r.transfer_id));
}

void add_ledger_commands(CLI::App& app, Globals& globals) {
  static LedgerArgs a;
  auto* account = app.add_subcommand("account", "Accounts: open, show, list");
  account->require_subcommand(1);
  auto* open = account->add_subcommand(
      "open",
      "Open an account; opening it again with the same currency and minimum is fine (exit 0, \"opened\": false), "
      "with others exit 7");
  open->add_option("id", a.id, "Account id")->required();
  open->add_option("--currency", a.currency, "ISO 4217 code (default EUR)");
  open->add_option("--min-balance", a.min_balance,
                   "Lowest allowed balance in minor units (cents: -5000 is -50.00 EUR), <= 0 (default 0)")
      ->check(decimal());
  open->callback([&globals] {
    auto db = open_database(globals);
    CachedLedger l(db);
    const bool opened = l.ledger.open(a.id, a.currency, a.min_balance);
    auto j = account_json(l.ledger.get(a.id));
    j["opened"] = opened;
    emit(globals, j,
         fmt::format("{} {} in {} (min {})", opened ? "opened" : "already open:", a.id, a.currency,
                     format_money(a.min_balance, a.currency)));
  });
  auto* show = account->add_subcommand("show", "Show an account, read through the cache (exit 5 when there is none)");
  show->add_option("id", a.id, "Account id")->required();
  show->callback([&globals] {
    auto db = open_database(globals);
    const Account acc = CachedLedger(db).ledger.get(a.id);
    const auto money = [&](std::int64_t minor) { return format_money(minor, acc.currency); };
    emit(globals, account_json(acc),
         fmt::format("{} {} (held {}, available {}, min {}, version {})", acc.id, money(acc.balance), money(acc.held),
                     money(acc.available()), money(acc.min_balance), acc.version));
  });
  auto* list = account->add_subcommand("list", "List every account");
  list->callback([&globals] {
    auto db = open_database(globals);
    for (const auto& acc : Ledger(db).list())
      emit(globals, account_json(acc),
           fmt::format("{:<24} {:>24} (held {}, min {}, version {})", acc.id, format_money(acc.balance, acc.currency),
                       format_money(acc.held, acc.currency), format_money(acc.min_balance, acc.currency), acc.version));
  });

  auto keyed = [](CLI::App* cmd) {
    cmd->add_option("--key", a.key, "Idempotency key (default: a new one, printed; retry with it)");
  };
  auto* deposit = app.add_subcommand("deposit", "Deposit AMOUNT minor units into ID from outside");
  deposit->add_option("id", a.id, "Account id")->required();
  deposit->add_option("amount", a.amount, amount_help)->required()->check(decimal());
  keyed(deposit);
  a.details.add_options(deposit);
  deposit->callback([&globals] {
    const TransferDetails details = a.details.details();
    auto db = open_database(globals);
    const std::string key = a.key.empty() ? fresh_key() : a.key;
    CachedLedger l(db);
    report(globals, l.ledger.deposit(a.id, a.amount, key, details), key, "deposit",
           [&] { return l.ledger.get(a.id).currency; });
  });
  auto* withdraw = app.add_subcommand("withdraw", "Withdraw AMOUNT minor units from ID to outside (exit 4 when short)");
  withdraw->add_option("id", a.id, "Account id")->required();
  withdraw->add_option("amount", a.amount, amount_help)->required()->check(decimal());
  keyed(withdraw);
  a.details.add_options(withdraw);
  withdraw->callback([&globals] {
    const TransferDetails details = a.details.details();
    auto db = open_database(globals);
    const std::string key = a.key.empty() ? fresh_key() : a.key;
    CachedLedger l(db);
    report(globals, l.ledger.withdraw(a.id, a.amount, key, details), key, "withdrawal",
           [&] { return l.ledger.get(a.id).currency; });
  });
  auto* transfer = app.add_subcommand(
      "transfer", "Move AMOUNT minor units FROM -> TO and print both balances after it (exit 4 when short)");
  transfer->add_option("from", a.from, "Source account")->required();
  transfer->add_option("to", a.to, "Destination account")->required();
  transfer->add_option("amount", a.amount, amount_help)->required()->check(decimal());
  keyed(transfer);
  a.details.add_options(transfer);
  transfer->callback([&globals] {
    const TransferDetails details = a.details.details();
    auto db = open_database(globals);
    const std::string key = a.key.empty() ? fresh_key() : a.key;
    CachedLedger l(db);
    report(globals, l.ledger.transfer(a.from, a.to, a.amount, key, details), key, "transfer",
           [&] { return l.ledger.get(a.from).currency; });
  });

  auto* ledger = app.add_subcommand("ledger", "Ledger maintenance");
  ledger->require_subcommand(1);
  auto* check = ledger->add_subcommand("check", "Verify the invariants (exit 0 when all hold, 1 with the report)");
  check->callback([&globals] {
    auto db = open_database(globals);
    const CheckReport r = Ledger(db).check();
    nlohmann::json violations = nlohmann::json::array();
    for (const auto& v : r.violations)
      violations.push_back({{"what", v.what}, {"account", v.account}, {"detail", v.detail}});
    // Per currency, in integer minor units: amounts of different currencies are never added.
    nlohmann::json totals = nlohmann::json::object();
    std::string per_currency;
    for (const auto& t : r.totals) {
      totals[t.currency] = {{"balance", t.balance}, {"deposits", t.deposits}, {"withdrawals", t.withdrawals}};
      per_currency += fmt::format("{}{}", per_currency.empty() ? "" : ", ", format_money(t.balance, t.currency));
    }
    std::string text =
        fmt::format("{} accounts, {} entries, totals {}: {}", r.accounts, r.entries,
                    per_currency.empty() ? "none" : per_currency, r.ok() ? "every invariant holds" : "VIOLATIONS");
    for (const auto& v : r.violations) text += fmt::format("\n  {} {}: {}", v.what, v.account, v.detail);
    emit(globals,
         {{"ok", r.ok()},
          {"accounts", r.accounts},
          {"entries", r.entries},
          {"totals", totals},
          {"violations", violations}},
         text);
    if (!r.ok()) throw Error(ErrorKind::permanent, fmt::format("{} ledger invariant(s) violated", r.violations.size()));
  });
  auto* sweep = ledger->add_subcommand(
      "sweep-holds", "Close holds past their timeout (they stopped reserving money at their timeout already)");
  sweep->callback([&globals] {
    auto db = open_database(globals);
    const auto n = Ledger(db).sweep_holds();
    emit(globals, {{"closed", n}}, fmt::format("closed {} expired hold(s)", n));
  });
  static std::string older_than;
  auto* prune = ledger->add_subcommand(
      "prune-keys",
      "Forget idempotency keys older than DUR (transfers stay). DUR must be at least 24h (exit 2 otherwise): a "
      "client may retry a younger key, and its retry would then apply a second time");
  prune->add_option("--older-than", older_than, "Age, at least 24h, e.g. 90d, 2160h or 30d")->required();
  prune->callback([&globals] {
    auto db = open_database(globals);
    const auto n = Ledger(db).prune_keys(parse_duration(older_than));
    emit(globals, {{"pruned", n}}, fmt::format("pruned {} key(s)", n));
  });
}

}  // namespace rowguard::cli

// rowguard hold, capture, void, ledger sweep-holds: authorise now, capture or void later.
#include "cli.hpp"

namespace rowguard::cli {

namespace {
struct HoldArgs {
  std::string from, to, key, timeout;
  std::int64_t amount = 0;
  std::int64_t hold_id = 0;
  std::int64_t capture_amount = 0;
  DetailsArgs details;
};

nlohmann::json hold_json(const Hold& h) {
  nlohmann::json j{{"hold_id", h.id},
                   {"key", h.key},
                   {"from", h.from},
                   {"to", h.to},
                   {"amount", h.amount},
                   {"currency", h.currency},
                   {"state", std::string(to_string(h.state))},
                   {"captured", h.captured},
                   {"transfer_id", h.transfer_id},
                   {"expires_in_ms", h.expires_in_ms}};
  add_details_json(j, h.details);
  return j;
}
}  // namespace

void add_hold_commands(CLI::App& app, Globals& globals) {
  static HoldArgs a;
  auto* hold = app.add_subcommand(
      "hold",
      "Reserve AMOUNT minor units on FROM for a later capture to TO; prints the hold id (exit 4 when the "
      "available amount is short)");
  hold->add_option("from", a.from, "Source account")->required();
  hold->add_option("to", a.to, "Destination account, paid on capture")->required();
  hold->add_option("amount", a.amount, amount_help)->required()->check(decimal());
  hold->add_option("--key", a.key, "Idempotency key (default: a new one, printed; retry with it)");
  hold->add_option("--timeout", a.timeout,
                   "How long the hold reserves the money, on the database clock, e.g. 15m or 168h (at most 366 days)")
      ->required();
  a.details.add_options(hold);
  hold->callback([&globals] {
    const auto timeout = parse_duration(a.timeout);
    const TransferDetails details = a.details.details();
    auto db = open_database(globals);
    const std::string key = a.key.empty() ? fresh_key() : a.key;
    const HoldResult r = CachedLedger(db).ledger.hold(a.from, a.to, a.amount, key, timeout, details);
    emit(globals,
         {{"hold_id", r.hold_id}, {"status", std::string(to_string(r.status))}, {"replayed", r.replayed}, {"key", key}},
         r.ok() ? fmt::format("{}", r.hold_id)
                : fmt::format("hold {} rejected: insufficient funds (key {})", r.hold_id, key));
    if (!r.ok())
      throw Error(ErrorKind::insufficient_funds,
                  fmt::format("hold rejected: '{}' has less than {} available (hold {})", a.from,
                              format_money(a.amount, Ledger(db).get(a.from).currency), r.hold_id));
  });

  auto* capture = app.add_subcommand(
      "capture",
      "Post HOLD_ID as a transfer of AMOUNT (default: all of it) and release the rest (exit 13 when the "
      "hold was voided or expired)");
  capture->add_option("hold_id", a.hold_id, "The hold")->required()->check(decimal());
  auto* amount =
      capture->add_option("amount", a.capture_amount, "Minor units, 0 < AMOUNT <= held (default: the whole hold)")
          ->check(decimal());
  capture->add_option("--key", a.key, "Idempotency key of the capture's transfer (default: hold:<id>:capture)");
  capture->callback([&globals, amount] {
    auto db = open_database(globals);
    const std::optional<std::int64_t> take =
        amount->count() ? std::optional<std::int64_t>(a.capture_amount) : std::nullopt;
    CachedLedger l(db);
    const TransferResult r = l.ledger.capture(a.hold_id, take, a.key);
    report(globals, r, a.key.empty() ? fmt::format("hold:{}:capture", a.hold_id) : a.key, "capture",
           [&] { return l.ledger.get_hold(a.hold_id).currency; });
  });

  auto* void_cmd = app.add_subcommand(
      "void", "Release HOLD_ID; voiding a voided or expired hold again is fine (exit 13 when it was captured)");
  void_cmd->add_option("hold_id", a.hold_id, "The hold")->required()->check(decimal());
  void_cmd->callback([&globals] {
    auto db = open_database(globals);
    CachedLedger l(db);
    Hold h;
    try {
      h = l.ledger.void_hold(a.hold_id);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::hold_closed) throw;
      throw Error(ErrorKind::hold_closed, e.what() + reversal_hint(l.ledger, a.hold_id));
    }
    emit(globals, hold_json(h),
         fmt::format("hold {} {} ({} released)", h.id, to_string(h.state), format_money(h.amount, h.currency)));
  });

  auto* show = app.add_subcommand("hold-show", "Show HOLD_ID (exit 5 when there is none)");
  show->add_option("hold_id", a.hold_id, "The hold")->required()->check(decimal());
  show->callback([&globals] {
    auto db = open_database(globals);
    const Hold h = Ledger(db).get_hold(a.hold_id);
    // Its timeout as a time: expires_in_ms is from the database clock's now, read again here.
    const std::int64_t expires_at = db.now_ms() + h.expires_in_ms;
    const auto in = std::chrono::milliseconds(h.expires_in_ms);
    // Open by state but past its timeout is expired in fact (a sweep closes it later).
    const bool expired = h.state == HoldState::expired || (h.state == HoldState::held && h.expires_in_ms <= 0);
    const std::string state =
        expired ? fmt::format("expired at {} ({} ago)", format_time(expires_at), format_duration(-in))
        : h.state == HoldState::held
            ? fmt::format("held, expires at {} (in {})", format_time(expires_at), format_duration(in))
            : std::string(to_string(h.state));
    auto j = hold_json(h);
    j["expires_at"] = format_time(expires_at);
    emit(globals, j,
         fmt::format("hold {}: {} {} -> {}, {}{}{}", h.id, format_money(h.amount, h.currency), h.from, h.to, state,
                     h.captured ? fmt::format(" (captured {})", format_money(h.captured, h.currency)) : "",
                     details_text(h.details)));
  });
}

}  // namespace rowguard::cli

// rowguard reverse, batch: refunds, and many transfers in one transaction read as JSON Lines.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>

#include "cli.hpp"

namespace rowguard::cli {

namespace {
constexpr std::string_view batch_footer =
    R"(Input: JSON Lines, one transfer per line, as Ledger::transfer_batch takes them:
  {"from": "alice", "to": "bob", "amount": 2500, "key": "order-77", "linked": false}
from, to, amount and key are required; linked is optional (default false). amount is a JSON integer
of minor units, > 0 and within 64 bits: never a fraction, an exponent or a string. Optional, as
--code, --reference, --metadata and --event-at of `rowguard transfer`: "code" (an integer, 1 to
65535), "reference" (a string), "metadata" (a JSON object) and "event_at" (a string:
2026-01-31T12:30:00Z, an offset instead of Z, or @epoch-ms). Consecutive
transfers with "linked": true, together with the first one after them, form a chain that applies
whole or not at all; the last line cannot be linked. Blank lines are skipped. Every line is checked
before anything is sent: a bad one (not JSON, a missing, unknown or repeated field, a wrong type)
exits 2 naming its line number, and nothing is written. At most 10000 transfers (one transaction):
a longer input is refused the same way, split it yourself. An input without any transfer sends
nothing and exits 0, saying so on stderr.

Output: one JSON object per transfer, one per line, in input order, with or without --json:
  {"item":0,"key":"order-77","line":1,"replayed":false,"status":"ok","transfer_id":42}
status is "ok", "insufficient_funds" (rejected and recorded under its key, like `rowguard transfer`)
or "failed": then transfer_id is null and "error": {"kind", "message", "exit_code"} says why
(nothing of the item, or of its chain, was written; its key stays free, so it can be sent again).
Messages of the library name items by "item" (counted from 0). Running the same input again
replays every applied or rejected transfer ("replayed": true) and changes nothing.

Exit code: 0 when every transfer applied or was replayed as applied; otherwise that of the first
transfer in input order that did not: its error's code (5 no such account, 7 key reused with other
parameters, 12 currency mismatch, ...), or 4 for an insufficient_funds rejection; stderr names its
line. A failure of the whole batch (9 in doubt: run the same input again, 10 unreachable, 6
conflict) prints no transfer lines.)";

static_assert(max_batch_items == 10'000, "batch_footer names the limit");

// The fields of a batch line, as BatchItem names them.
constexpr std::string_view batch_fields = "from, to, amount, key, linked, code, reference, metadata and event_at";
constexpr std::string_view required_fields = "from, to, amount and key are required";

// Why a line is refused: exit 2, naming it.
Error bad_line(std::size_t line, std::string_view why) {
  return Error(ErrorKind::invalid_argument, fmt::format("line {}: {}", line, why));
}

// nlohmann's message without its "[json.exception...]" tag and its own line and column (always
// line 1 here): the column on the input line, then what went wrong.
std::string parse_problem(const nlohmann::json::parse_error& e) {
  const std::string what = e.what();
  const auto column = what.find("column ");
  const auto colon = column == std::string::npos ? std::string::npos : what.find(": ", column);
  const auto tag_end = what.find("] ");
  if (colon != std::string::npos) return what.substr(column, colon - column) + ": " + what.substr(colon + 2);
  return tag_end == std::string::npos ? what : what.substr(tag_end + 2);
}

std::string text_field(const nlohmann::json& j, const char* name, std::size_t line) {
  const auto it = j.find(name);
  if (it == j.end()) throw bad_line(line, fmt::format("\"{}\" is missing ({})", name, required_fields));
  if (!it->is_string()) throw bad_line(line, fmt::format("\"{}\" must be a JSON string, got {}", name, it->dump()));
  return it->get<std::string>();
}

// Index just past the JSON value that starts at text[i]; text is valid JSON (nlohmann parsed it).
std::size_t value_end(std::string_view text, std::size_t i) {
  int depth = 0;
  do {
    const char c = text[i];
    if (c == '"') {
      for (++i; text[i] != '"'; ++i)
        if (text[i] == '\\') ++i;
      ++i;
    } else if (c == '{' || c == '[') {
      ++depth, ++i;
    } else if (c == '}' || c == ']') {
      --depth, ++i;
    } else if (depth > 0) {
      ++i;  // inside: whitespace, ':', ',' and the scalars' characters
    } else {
      while (i < text.size() && std::string_view(",}] \t\r\n").find(text[i]) == std::string_view::npos) ++i;
    }
  } while (depth > 0);
  return i;
}

// The value of the top-level member `name` of a JSON object line, as the line spells it. nlohmann's
// dump() would spell it anew: numbers beyond a double's 17 digits rounded, and of two equal keys
// inside it only the last kept. The library checks the text itself (duplicate keys refused).
std::string raw_member(std::string_view text, const std::string& name) {
  std::size_t i = text.find('{') + 1;
  const auto space = [&] {
    while (i < text.size() && std::string_view(" \t\r\n").find(text[i]) != std::string_view::npos) ++i;
  };
  while (true) {
    space();
    const std::size_t key_end = value_end(text, i);
    const std::string key = nlohmann::json::parse(text.substr(i, key_end - i)).get<std::string>();  // escapes decoded
    i = key_end;
    space();
    ++i;  // ':'
    space();
    const std::size_t end = value_end(text, i);
    if (key == name) return std::string(text.substr(i, end - i));
    i = end;
    space();
    ++i;  // ','; the member is there (the caller found it), so the '}' is never reached
  }
}

// One line as a batch item: a JSON object of exactly the fields BatchItem has, each of its type.
// The library checks the values themselves (ids, keys, accounts) and answers per item.
BatchItem parse_line(const std::string& text, std::size_t line) {
  nlohmann::json j;
  std::set<std::string> seen;
  std::string repeated;
  try {
    // The callback sees each key of the top-level object (depth 1): a repeated field would
    // otherwise silently keep its last value.
    j = nlohmann::json::parse(text, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      if (event == nlohmann::json::parse_event_t::key && depth == 1 && repeated.empty() &&
          !seen.insert(parsed.get<std::string>()).second)
        repeated = parsed.get<std::string>();
      return true;
    });
  } catch (const nlohmann::json::parse_error& e) {
    throw bad_line(line, "not JSON: " + parse_problem(e));
  }
  if (!j.is_object())
    throw bad_line(line, fmt::format("expected a JSON object with {}, got {}", batch_fields, json_line(j)));
  if (!repeated.empty()) throw bad_line(line, fmt::format("the field \"{}\" appears twice", repeated));
  for (const auto& [name, value] : j.items())
    if (name != "from" && name != "to" && name != "amount" && name != "key" && name != "linked" && name != "code" &&
        name != "reference" && name != "metadata" && name != "event_at")
      throw bad_line(line, fmt::format("unknown field {} (a transfer has {})", json_line(name), batch_fields));
  BatchItem item;
  item.from = text_field(j, "from", line);
  item.to = text_field(j, "to", line);
  item.key = text_field(j, "key", line);
  const auto amount = j.find("amount");
  if (amount == j.end()) throw bad_line(line, fmt::format("\"amount\" is missing ({})", required_fields));
  // nlohmann reads 12.0, 1e3 and integers beyond 64 bits as floating point: all refused here.
  const bool fits = amount->is_number_unsigned()
                        ? amount->get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<std::int64_t>::max())
                        : amount->is_number_integer();
  if (!fits)
    throw bad_line(line, fmt::format("\"amount\" must be a JSON integer of minor units within 64 bits (no fraction, "
                                     "exponent or quotes), got {}",
                                     amount->dump()));
  item.amount = amount->get<std::int64_t>();
  if (item.amount <= 0) throw bad_line(line, fmt::format("\"amount\" must be > 0, got {}", item.amount));
  if (const auto linked = j.find("linked"); linked != j.end()) {
    if (!linked->is_boolean())
      throw bad_line(line, fmt::format("\"linked\" must be true or false, got {}", linked->dump()));
    item.linked = linked->get<bool>();
  }
  if (const auto code = j.find("code"); code != j.end()) {
    if (!code->is_number_integer() || code->get<std::int64_t>() < 0 || code->get<std::int64_t>() > max_transfer_code)
      throw bad_line(line,
                     fmt::format("\"code\" must be an integer from 0 to {}, got {}", max_transfer_code, code->dump()));
    item.details.code = code->get<int>();
  }
  if (j.contains("reference")) item.details.reference = text_field(j, "reference", line);
  if (const auto metadata = j.find("metadata"); metadata != j.end()) {
    if (!metadata->is_object())
      throw bad_line(line, fmt::format("\"metadata\" must be a JSON object, got {}", metadata->dump()));
    item.details.metadata = raw_member(text, "metadata");
  }
  if (j.contains("event_at")) {
    const std::string event_at = text_field(j, "event_at", line);
    try {
      item.details.event_at_ms = parse_time(event_at);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::invalid_argument) throw;
      throw bad_line(line, fmt::format("\"event_at\": {}", e.what()));
    }
  }
  return item;
}

// Every transfer of the input with its line number, all checked; Error(invalid_argument) naming
// the first bad line.
std::vector<BatchItem> read_batch(std::istream& in, std::vector<std::size_t>& lines) {
  std::vector<BatchItem> items;
  std::size_t line = 0;
  for (std::string text; std::getline(in, text);) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (items.size() == max_batch_items)
      throw bad_line(line, fmt::format("more than {} transfers: a batch is one transaction of at most {}; split the "
                                       "input",
                                       max_batch_items, max_batch_items));
    items.push_back(parse_line(text, line));
    lines.push_back(line);
  }
  if (in.bad()) throw Error(ErrorKind::permanent, fmt::format("reading the input failed after line {}", line));
  if (!items.empty() && items.back().linked)
    throw bad_line(lines.back(), "the last transfer is linked to nothing (a chain ends with an unlinked transfer)");
  return items;
}

nlohmann::json batch_result_json(const BatchResult& r, const BatchItem& item, std::size_t index, std::size_t line) {
  nlohmann::json j{{"line", line}, {"item", index}, {"key", item.key}};
  if (r.error) {
    j["status"] = "failed";
    j["transfer_id"] = nullptr;
    j["replayed"] = false;
    j["from_balance"] = nullptr;
    j["to_balance"] = nullptr;
    j["error"] = {
        {"kind", std::string(to_string(*r.error))}, {"message", r.message}, {"exit_code", exit_code(*r.error)}};
  } else {
    j["status"] = std::string(to_string(r.result.status));
    j["transfer_id"] = r.result.transfer_id;
    j["replayed"] = r.result.replayed;
    j["from_balance"] = r.result.from_balance ? nlohmann::json(*r.result.from_balance) : nlohmann::json(nullptr);
    j["to_balance"] = r.result.to_balance ? nlohmann::json(*r.result.to_balance) : nlohmann::json(nullptr);
  }
  return j;
}
}  // namespace

std::string reversal_hint(Ledger& ledger, std::int64_t hold_id) {
  try {
    const TransferRecord capture = ledger.find_transfer(ledger.get_hold(hold_id).transfer_id);
    if (!capture.key) return " (its capture's idempotency key was pruned: no reversal can name it)";
    std::string quoted = "'";  // for sh: ' ends the quote, so it is written '\''
    for (const char c : *capture.key) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return fmt::format(" (from the shell: rowguard reverse {}' [AMOUNT] --key NEW_KEY)", quoted);
  } catch (const Error&) {
    return {};  // the hint is a courtesy: the error it joins stands without it
  }
}

void add_reverse_command(CLI::App& app, Globals& globals) {
  static std::string original, key;
  static std::int64_t amount = 0;
  static DetailsArgs details;
  auto* reverse = app.add_subcommand(
      "reverse",
      "Refund the transfer recorded under ORIGINAL_KEY, whole or AMOUNT minor units of it, as a new transfer from its "
      "destination back to its source (exit 5 when no applied transfer has that key, 2 when its refunds would add up "
      "to more than it, 4 when the destination is short, 7 when --key was used for another request)");
  reverse->add_option("original_key", original, "Idempotency key of the transfer to refund")->required();
  auto* partial =
      reverse
          ->add_option("amount", amount,
                       "Minor units to refund, > 0 (default: the transfer's whole amount, so that a retry replays; "
                       "refused, exit 2, once part of it was refunded)")
          ->check(decimal());
  reverse
      ->add_option("--key", key,
                   "Idempotency key of the refund (required: a retry with the same key and amount replays it)")
      ->required();
  details.add_options(reverse);
  reverse->callback([&globals, partial] {
    const TransferDetails refund_details = details.details();
    auto db = open_database(globals);
    CachedLedger l(db);
    // The whole transfer is its full amount, not what is left of it: a retry of the same command
    // then asks for the same amount and replays (what is left would change with the refund).
    const TransferRecord target = l.ledger.find_transfer_by_key(original);
    const std::int64_t refund = partial->count() ? amount : target.amount;
    report(
        globals, l.ledger.reverse(original, refund, key, refund_details), key,
        fmt::format("reversal of {} of transfer {} ({})", format_money(refund, target.currency), target.id, original),
        [&] { return target.currency; });
  });
}

void add_batch_command(CLI::App& app, Globals& globals, int& exit_status) {
  static std::string file;
  auto* batch = app.add_subcommand(
      "batch",
      "Run the transfers of FILE (JSON Lines; stdin when FILE is absent or -) as one transaction, linked chains "
      "whole or not at all, and print one JSON result per transfer (see below)");
  batch->add_option("file", file, "JSON Lines file of transfers (default: stdin)");
  batch->footer(std::string(batch_footer));
  batch->callback([&globals, &exit_status] {
    std::vector<std::size_t> lines;
    std::vector<BatchItem> items;
    if (file.empty() || file == "-") {
      items = read_batch(std::cin, lines);
    } else {
      std::ifstream in(file);
      if (!in) throw Error(ErrorKind::permanent, fmt::format("cannot read '{}': {}", file, std::strerror(errno)));
      items = read_batch(in, lines);
    }
    if (items.empty()) {
      std::cerr << "rowguard: batch: the input holds no transfers; nothing was sent\n";
      return;
    }
    auto db = open_database(globals);
    const std::vector<BatchResult> results = CachedLedger(db).ledger.transfer_batch(items);
    std::optional<std::size_t> first_failed;
    std::size_t failed = 0;
    for (std::size_t i = 0; i < results.size(); ++i) {
      // Every result is the record of its item, also in text mode: the output is for scripts.
      std::cout << json_line(batch_result_json(results[i], items[i], i, lines[i])) << '\n';
      if (!results[i].ok()) {
        ++failed;
        if (!first_failed) first_failed = i;
      }
    }
    if (!first_failed) return;
    const BatchResult& r = results[*first_failed];
    exit_status = r.error ? exit_code(*r.error) : exit_code(ErrorKind::insufficient_funds);
    std::cout.flush();
    std::cerr << fmt::format("rowguard: batch: {} of {} transfers did not apply; the first, line {} (key {}): {}: {}\n",
                             failed, results.size(), lines[*first_failed], items[*first_failed].key,
                             r.error ? to_string(*r.error) : std::string_view("insufficient_funds"),
                             r.error ? r.message : "rejected, recorded under its key");
  });
}

}  // namespace rowguard::cli

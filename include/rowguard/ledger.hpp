#pragma once
// rowguard::Ledger: accounts with version-checked balances in integer minor units, atomic
// transfers with idempotency keys, and a journal that always adds up.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/retry.hpp"
#include "rowguard/standby.hpp"

namespace rowguard {

struct Account {
  std::string id;
  std::string currency;          // ISO 4217 code, e.g. "EUR"
  std::int64_t balance = 0;      // minor units (cents)
  std::int64_t min_balance = 0;  // a negative minimum allows an overdraft
  std::int64_t version = 0;      // +1 on every change
  std::int64_t held = 0;         // reserved by holds that are open and not yet expired
  // What a payment may take: balance - held, never below min_balance.
  std::int64_t available() const noexcept { return balance - held; }
};

enum class TransferStatus {
  ok,                  // applied
  insufficient_funds,  // rejected: the source would go below its minimum (recorded under the key)
};

std::string_view to_string(TransferStatus status) noexcept;

struct TransferResult {
  TransferStatus status = TransferStatus::ok;
  std::int64_t transfer_id = 0;  // the row in <prefix>transfers
  bool replayed = false;         // the key was seen before: this is the original outcome, nothing changed
  // Both accounts' balances right after this transfer, minor units, as its journal entries record
  // them (balance_after), written by the same statements: no read of the account afterwards.
  // Absent for the outside world's side (a deposit's from, a withdrawal's to) and for a rejected
  // transfer (nothing moved: read the balance with get() if needed). A replay returns the
  // original's, read from its entries, not today's balance.
  std::optional<std::int64_t> from_balance;
  std::optional<std::int64_t> to_balance;
  bool ok() const noexcept { return status == TransferStatus::ok; }
};

// One violation found by Ledger::check().
struct Violation {
  // "balance_mismatch", "below_minimum", "total_mismatch", "held_mismatch", "opening_mismatch"
  // (an opening balance differs from the archived entries it carries forward),
  // "balance_after_mismatch" (an entry's running balance is not the previous one's plus its amount,
  // or the newest one's is not the account's balance; the detail names the entry), ...
  std::string what;
  std::string account;  // empty for ledger-wide violations
  std::string detail;
};

// One currency's totals in a CheckReport: balances add up to deposits minus withdrawals
// (archived ones included), or check() reports total_mismatch for it.
struct CurrencyTotal {
  std::string currency;          // ISO 4217 code
  std::int64_t balance = 0;      // sum of the balances of its accounts, minor units
  std::int64_t deposits = 0;     // applied deposits, live and archived
  std::int64_t withdrawals = 0;  // applied withdrawals, live and archived
};

// One currency's accounts at one moment, for dashboards (rowguard serve): one aggregate.
struct CurrencySummary {
  std::string currency;  // ISO 4217 code
  std::int64_t accounts = 0;
  std::int64_t balance = 0;  // sum of the balances, minor units
  std::int64_t held = 0;     // sum of the amounts held (accounts.held: holds not yet closed)
};

struct CheckReport {
  std::vector<Violation> violations;
  std::int64_t accounts = 0;
  std::int64_t entries = 0;
  // Per currency, ordered by code; money of different currencies is never added together.
  // Sums in checked arithmetic: Error(permanent) on int64 overflow.
  std::vector<CurrencyTotal> totals;
  // The balance total when every account is in one currency; 0 when there are none or several
  // (read totals then). Kept for single-currency callers.
  std::int64_t total_balance = 0;
  bool ok() const noexcept { return violations.empty(); }
  // The totals of one currency (all zero when it has no accounts or transfers).
  CurrencyTotal total(std::string_view currency) const;
};

// What a team attaches to a transfer or a hold, to find it again and to tell payments apart
// (docs/ledger.md, "Codes, references and metadata"). All of it is part of the idempotency
// comparison: a key reused with another code, reference, metadata or event time is
// Error(idempotency_mismatch) naming the field. Checked on the way in, the same on every backend
// (Error(invalid_argument)). Default: none of them.
//
// Example:
//   ledger.transfer("alice", "bob", 2'500, "order-77",
//                   {.code = 10, .reference = "order-77", .metadata = R"({"channel":"web"})"});
struct TransferDetails {
  // The kind of payment, as the team numbers them: 0 = none, else 1..max_transfer_code.
  int code = 0;
  // An external id, e.g. an order number (indexed: TransferQuery::reference): empty = none, else 1 to
  // max_reference_bytes bytes of UTF-8 without control characters.
  std::string reference;
  // A JSON object (empty = none) of at most max_metadata_bytes bytes, without duplicate keys. Compared
  // as a JSON value, not as text: PostgreSQL stores jsonb (keys reordered, whitespace dropped) and
  // returns it in its own spelling; SQLite returns the text as given.
  std::string metadata;
  // When the payment took effect outside the ledger (imported transfers), epoch ms, years 1 to 9999.
  // The journal's own created_at stays the database clock. Default: none.
  std::optional<std::int64_t> event_at_ms;
  bool operator==(const TransferDetails&) const = default;
};

inline constexpr int max_transfer_code = 65'535;
inline constexpr std::size_t max_reference_bytes = 128;
inline constexpr std::size_t max_metadata_bytes = 4096;

// The youngest idempotency keys that may be forgotten: prune_keys() and archive() refuse ages
// below it (Error(invalid_argument)). A client retries a request whose outcome it did not learn
// (a lost reply, an in-doubt commit, a crashed worker picking up its queue) under the same key for
// as long as it keeps the request; once the key is forgotten such a retry applies a second time.
// A day covers the retry windows of payment clients (card networks and payment APIs keep keys
// for at least 24 hours); keep keys longer if your clients retry longer.
inline constexpr std::chrono::hours min_key_age{24};

// The most items Ledger::transfer_batch takes in one call (one transaction).
inline constexpr std::size_t max_batch_items = 10'000;

// One transfer of a batch. Consecutive items with linked = true, together with the first item
// after them, form a chain that succeeds or fails as a whole; other items stand alone.
struct BatchItem {
  std::string from;
  std::string to;
  std::int64_t amount = 0;
  std::string key;
  bool linked = false;
  TransferDetails details = {};
};

// The outcome of one batch item: a result, or the error that item met (nothing of it, or of its
// chain, was written; a failed chain records nothing under its keys, so they can be retried).
struct BatchResult {
  TransferResult result;
  std::optional<ErrorKind> error;  // set when the item (or another item of its chain) failed
  std::string message;
  bool ok() const noexcept { return !error && result.ok(); }
};

// Counters kept in process since the Ledger was made.
struct LedgerStats {
  std::uint64_t transfers_ok = 0;
  std::uint64_t transfers_rejected = 0;  // insufficient funds
  std::uint64_t holds_ok = 0;
  std::uint64_t holds_rejected = 0;  // insufficient funds
  std::uint64_t replays = 0;         // repeated idempotency keys answered from the record
  std::uint64_t conflicts = 0;       // conflicts and transient failures met (each was retried)
  std::uint64_t retries = 0;
};

// Where a hold stands. Only `held` reserves money; every other state is final.
enum class HoldState {
  held,      // reserving amount on the source until captured, voided or expired
  captured,  // posted as a transfer of `captured` (<= amount); the rest was released
  voided,    // released by void_hold()
  expired,   // its timeout passed on the database clock before capture
  rejected,  // refused for insufficient funds (recorded under its key, like a rejected transfer)
};

std::string_view to_string(HoldState state) noexcept;

struct Hold {
  std::int64_t id = 0;
  std::string key;  // empty once pruned
  std::string from;
  std::string to;
  std::int64_t amount = 0;  // reserved, minor units
  std::string currency;
  HoldState state = HoldState::held;
  std::int64_t captured = 0;       // the amount posted by capture()
  std::int64_t transfer_id = 0;    // the capture's transfer, 0 when not captured
  std::int64_t expires_in_ms = 0;  // from now on the database clock; <= 0 once past its timeout
  TransferDetails details;         // as hold() recorded them; its capture's transfer carries them too
};

struct HoldResult {
  TransferStatus status = TransferStatus::ok;  // ok, or insufficient_funds (the available amount)
  std::int64_t hold_id = 0;
  bool replayed = false;  // the key was seen before: this is the original outcome, nothing changed
  bool ok() const noexcept { return status == TransferStatus::ok; }
};

class Cache;

// ---- History and point-in-time balances (src/ledger/history.cpp) ----

enum class TransferKind { transfer, deposit, withdrawal, reversal };
std::string_view to_string(TransferKind kind) noexcept;

// One journal row: a signed change of one account's balance.
struct JournalEntry {
  std::int64_t id = 0;
  std::string account;
  std::int64_t amount = 0;  // minor units; negative = money left the account
  // The account's balance right after this entry (the previous entry's plus amount), minor units;
  // absent only in a ledger whose migration to schema step 011 has not finished.
  std::optional<std::int64_t> balance_after;
  // The account's version right after this entry; absent for entries written before schema step
  // 011 (the backfill cannot know it: holds and min_balance changes move the version too).
  std::optional<std::int64_t> account_version;
};

// One row of <prefix>transfers, with its journal entries when the call says so.
struct TransferRecord {
  std::int64_t id = 0;
  std::optional<std::string> key;  // absent once pruned (prune_keys)
  TransferKind kind = TransferKind::transfer;
  std::optional<std::string> from;  // absent = the outside world (a deposit)
  std::optional<std::string> to;    // absent = the outside world (a withdrawal)
  std::int64_t amount = 0;          // minor units, > 0
  std::string currency;
  std::string outcome;                     // "ok" (applied) or "insufficient_funds" (rejected, no entries)
  std::optional<std::int64_t> reverses;    // for a reversal: the transfer it refunds
  std::optional<std::int64_t> hold_id;     // for a hold's capture
  std::optional<std::string> global_txid;  // for a leg of a two-phase transfer
  std::int64_t created_at_ms = 0;          // database clock, milliseconds since the Unix epoch (UTC)
  TransferDetails details;                 // code, reference, metadata, event time (none: defaults)
  std::vector<JournalEntry> entries;
};

enum class HistoryOrder { newest_first, oldest_first };

// One page of an account's history, in the order of its journal entries (one per transfer).
// Keyset-paginated: pass the previous page's `next` as `after`; never OFFSET, so a page costs the
// same however deep it is.
struct HistoryQuery {
  std::optional<std::int64_t> after;  // a cursor: HistoryPage::next (the id of the account's entry that ended a page)
  int limit = 100;                    // REQUIRES: 1..1000, else Error(invalid_argument)
  HistoryOrder order = HistoryOrder::newest_first;
  std::optional<std::int64_t> since_ms;  // only transfers created at or after this (epoch ms)
  std::optional<std::int64_t> until_ms;  // only transfers created before this (epoch ms)
};

// One line of an account's history: a transfer that moved its balance.
struct HistoryItem {
  TransferRecord transfer;                    // with all its entries
  std::int64_t change = 0;                    // the account's own signed change in this transfer
  std::optional<std::int64_t> balance_after;  // the account's running balance after it (its entry's)
};

struct HistoryPage {
  std::vector<HistoryItem> items;
  std::optional<std::int64_t> next;  // pass as HistoryQuery::after for the next page; absent at the end
};

// The ledger-wide list of transfers (status page, audits), newest first, keyset-paginated.
struct TransferQuery {
  std::optional<std::int64_t> before;  // a cursor: only ids below it (TransferPage::next)
  int limit = 100;                     // REQUIRES: 1..1000
  std::optional<std::string> account;  // only transfers from or to this account
  bool include_entries = false;
  // Only transfers created at or after since_ms and before until_ms (epoch ms, database clock), as
  // in HistoryQuery. REQUIRES: since_ms <= until_ms when both are set. Default: no bound.
  std::optional<std::int64_t> since_ms;
  std::optional<std::int64_t> until_ms;
  // Only transfers with this code (1..max_transfer_code).
  std::optional<int> code;
  // Only transfers with exactly this reference.
  std::optional<std::string> reference;
  // Only transfers whose metadata contains this flat JSON object: every key of it is in the
  // transfer's metadata with an equal value. REQUIRES: keys of [A-Za-z0-9_-] (1 to 64 bytes) and
  // scalar values (string, number, true, false; not null, arrays or objects), so PostgreSQL (jsonb
  // @>, GIN-indexed) and SQLite (json_extract per key) answer alike. Error(invalid_argument) otherwise.
  std::optional<std::string> metadata;
};

struct TransferPage {
  std::vector<TransferRecord> items;
  std::optional<std::int64_t> next;
};

// ---- Archival of old journal rows (src/ledger/archive.cpp, docs/operations.md) ----

struct ArchiveOptions {
  // A cutoff later than now minus min_age is refused (Error(invalid_argument)): recent rows are
  // still needed for replays of idempotency keys and for reconciliation. Default: 30 days.
  // REQUIRES: >= min_key_age (24 hours): archiving forgets the keys of what it moves.
  std::chrono::milliseconds min_age{std::chrono::hours(24 * 30)};
  bool dry_run = false;  // count what would move, change nothing
};

struct ArchiveReport {
  std::int64_t cutoff_ms = 0;
  std::int64_t transfers = 0;  // moved out of the live tables (or that would be, dry_run)
  std::int64_t entries = 0;
  std::int64_t accounts = 0;  // accounts whose opening balance changed
  // Created before the cutoff but kept live: still referenced by a hold (its capture), by a
  // reversal after the cutoff (or kept with its original), or a leg of an unfinished two-phase
  // transaction. A later archive moves them once nothing refers to them.
  std::int64_t kept = 0;
  bool dry_run = false;
};

struct LedgerOptions {
  RetryPolicy retry;  // conflicts (and transient failures before commit) are retried under this
  // Reads accounts through this cache (it must outlive the Ledger): get() keeps each account for
  // cache_ttl under the key "ledger:account:<id>", and every change the ledger makes drops the
  // cached copies of the accounts it changed in the same transaction (inside the one-statement
  // transfer on PostgreSQL). Every Ledger that writes the accounts must use a cache too; one that
  // does not leaves cached copies stale for up to cache_ttl. update() and check() always read the
  // table. Default: none (get() reads the table).
  Cache* cache = nullptr;
  // Default: 5s. REQUIRES: > 0.
  std::chrono::milliseconds cache_ttl{5000};
  // history() and transfers() may read from a standby at most standby.max_staleness behind the
  // primary (an account the standby does not know is looked up on the primary); everything else,
  // balances, check() and every write included, reads the primary. Default: none.
  StandbyReads standby;
};

// Thread-safety: safe for concurrent use; every call runs in its own transaction on a pooled
// session. Any number of Ledgers, in any number of processes, may share the tables.
//
// Example:
//   rowguard::Ledger ledger(db);
//   ledger.open("alice", "EUR");
//   ledger.deposit("alice", 10'000, "dep-2024-0001");
//   auto r = ledger.transfer("alice", "bob", 2'500, "order-77");
//   if (r.status == rowguard::TransferStatus::insufficient_funds) ...
class Ledger {
 public:
  explicit Ledger(Database& db, LedgerOptions options = {});
  ~Ledger();

  // Opens account id at balance 0. Idempotent: true when this call opened it, false when it was
  // already open with the same currency and min_balance (nothing changes). Error(idempotency_mismatch)
  // naming the difference when it is open with others ("account 'a' is open with currency EUR, not
  // USD"), Error(invalid_argument) for a bad id, currency or min_balance. Of concurrent opens of a
  // new account one opens it and the others find it open: never a unique violation.
  bool open(std::string_view id, std::string_view currency, std::int64_t min_balance = 0);
  // Error(not_found) when there is no such account. Through LedgerOptions::cache when set.
  Account get(std::string_view id);
  std::vector<Account> list();
  // Per currency, ordered by code; balances of different currencies are never added together.
  std::vector<CurrencySummary> currencies();
  // The `limit` accounts with the largest balances, largest first (ties by id). REQUIRES: 1..10000.
  std::vector<Account> largest_accounts(std::size_t limit);

  // Money from / to the outside world, recorded as transfers with one side NULL.
  TransferResult deposit(std::string_view account, std::int64_t amount, std::string_view key,
                         const TransferDetails& details = {});
  TransferResult withdraw(std::string_view account, std::int64_t amount, std::string_view key,
                          const TransferDetails& details = {});
  // The same inside the caller's transaction, recorded with global_txid set: one leg of a transfer
  // between databases (rowguard::TwoPhase, two_phase.hpp), tied to its other leg by that id.
  // REQUIRES: tx is a transaction on this ledger's database. No retries and no commit (the caller
  // owns tx); the key still makes the leg idempotent (a replay returns the original outcome). A
  // replay compares the account, the amount and that the record is a leg of the same direction
  // (a plain deposit's or withdrawal's key is Error(idempotency_mismatch), and the reverse), but not
  // the global_txid itself: it names the coordinator's attempt, and TwoPhase retries one transfer
  // under fresh ids.
  TransferResult deposit(Transaction& tx, std::string_view account, std::int64_t amount, std::string_view key,
                         std::string_view global_txid);
  TransferResult withdraw(Transaction& tx, std::string_view account, std::int64_t amount, std::string_view key,
                          std::string_view global_txid);
  // Moves amount atomically: both balances, the journal entries and the idempotency record commit
  // together or not at all. A key seen before with the same request returns the original result
  // and changes nothing; a key recorded for any other request (another field, or another operation:
  // a deposit, a hold, a capture, a refund, a two-phase leg; keys of transfers and holds share one
  // namespace) is Error(idempotency_mismatch) naming the first difference (docs/ledger.md lists
  // what each operation compares). Errors: not_found, currency_mismatch, invalid_argument (amount <= 0,
  // from == to, a balance that would overflow int64, bad ids or key), conflict after all retries.
  TransferResult transfer(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key,
                          const TransferDetails& details = {});
  // The same inside the caller's transaction, e.g. a saga's step (SagaStep::in_transaction), so
  // that the transfer commits with whatever else tx writes, or not at all. REQUIRES: tx is a
  // transaction on this ledger's database. No retries and no commit (the caller owns tx and
  // retries it whole; the key makes that safe: a replay returns the original outcome).
  TransferResult transfer(Transaction& tx, std::string_view from, std::string_view to, std::int64_t amount,
                          std::string_view key, const TransferDetails& details = {});
  // As transfer(), but Error(insufficient_funds) instead of a rejected result.
  TransferResult transfer_or_throw(std::string_view from, std::string_view to, std::int64_t amount,
                                   std::string_view key, const TransferDetails& details = {});

  // Many transfers in one transaction, a result per item (see BatchItem for linked chains).
  // Error(invalid_argument) for an empty batch or more than max_batch_items.
  std::vector<BatchResult> transfer_batch(const std::vector<BatchItem>& items);

  // Reserves amount on `from` for a later capture to `to`: the source's available amount drops at
  // once, its balance only when captured. The hold stops counting at its timeout on the database
  // clock, whether or not a sweep has closed it. Idempotent on key like transfer(); a hold that
  // would take the available amount below the minimum comes back as insufficient_funds and is
  // recorded under the key. The key's replay compares from, to, amount, timeout and details. Errors as
  // transfer(), plus invalid_argument for a timeout outside (0, 366 days].
  HoldResult hold(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key,
                  std::chrono::milliseconds timeout, const TransferDetails& details = {});
  // hold() and capture() inside the caller's transaction, as transfer(tx, ...): same checks, outcomes
  // and errors, no retries and no commit.
  HoldResult hold(Transaction& tx, std::string_view from, std::string_view to, std::int64_t amount,
                  std::string_view key, std::chrono::milliseconds timeout, const TransferDetails& details = {});
  TransferResult capture(Transaction& tx, std::int64_t hold_id, std::optional<std::int64_t> amount = std::nullopt,
                         std::string_view key = {});
  // Posts an open hold as a transfer of amount (default: all of it; REQUIRES 0 < amount <= held)
  // and releases the rest. The capture's transfer is recorded under key (default
  // "hold:<id>:capture"), with the hold's TransferDetails. Capturing a captured hold again with the same amount and key
  // replays the original result; Error(idempotency_mismatch) for another amount, or a key recorded for anything else
  // (another hold's capture, a transfer, a hold). Error(hold_closed) when the hold was voided or has expired,
  // Error(not_found) when there is no such hold or it was rejected.
  TransferResult capture(std::int64_t hold_id, std::optional<std::int64_t> amount = std::nullopt,
                         std::string_view key = {});
  // Releases an open hold. Idempotent: voiding a voided or expired hold changes nothing and returns
  // it. Error(hold_closed) for a captured hold, Error(not_found) for no such hold or a rejected one.
  Hold void_hold(std::int64_t hold_id);
  // Error(not_found) when there is no such hold.
  Hold get_hold(std::int64_t hold_id);
  // Closes holds past their timeout (state expired), releasing what they still count in
  // accounts.held. Only tidies: an expired hold has already stopped reserving money. Returns how many.
  std::int64_t sweep_holds();

  // Refunds all or part of the transfer recorded under original_key, as a new transfer (kind
  // "reversal") from its destination back to its source. The refunds of one transfer never add up
  // to more than it: Error(invalid_argument) otherwise; Error(not_found) when there is no such
  // applied transfer. The refund itself may be rejected for insufficient funds, like a transfer.
  // The key's replay compares which transfer is refunded, the amount and the details: refunding another
  // transfer under a refund's key is Error(idempotency_mismatch), never a replay of that refund.
  TransferResult reverse(std::string_view original_key, std::int64_t amount, std::string_view key,
                         const TransferDetails& details = {});

  // The version-checked read-modify-write: reads the account, lets fn change it, writes it back
  // only if its version is still the one read (UPDATE ... WHERE version = :read), and retries on
  // conflict under the RetryPolicy. fn may change min_balance only (balances move through
  // transfers, so the journal always adds up); it may run more than once. Returns what was written.
  Account update(std::string_view id, const std::function<void(Account&)>& fn);

  // Forgets idempotency keys older than the given age (their transfers stay; the key becomes NULL
  // and may be used again). Keys are kept forever unless this is called. Returns how many.
  // REQUIRES: older_than >= min_key_age (24 hours), else Error(invalid_argument).
  std::int64_t prune_keys(std::chrono::milliseconds older_than);

  // Verifies: every balance equals its opening balance (archive()) plus the sum of its entries; per
  // currency, the sum of balances equals deposits minus withdrawals; no available amount (balance - held) is below its
  // minimum; every account's held equals the sum of its open holds; every captured hold has its transfer. Reads one
  // consistent snapshot.
  CheckReport check();

  // An account's transfers that moved its balance (applied ones; rejections have no entries),
  // with their entries. Error(not_found) for no such account, invalid_argument for a bad query.
  HistoryPage history(std::string_view account, const HistoryQuery& query = {});
  // One transfer with its entries, by id or by idempotency key. Error(not_found) when there is none
  // (an archived transfer is not found: it left the live tables).
  TransferRecord find_transfer(std::int64_t id);
  TransferRecord find_transfer_by_key(std::string_view key);
  // Transfers of the whole ledger (or one account), newest first, including rejected ones.
  // Error(not_found) for an unknown account, invalid_argument for a bad query (limit, cursor, or
  // since_ms after until_ms).
  TransferPage transfers(const TransferQuery& query = {});
  // The account's balance just before at_ms (epoch ms, database clock): its opening balance plus
  // its entries created before at_ms. Error(invalid_argument) when at_ms falls before the account's
  // archived history (opening balance as_of), Error(not_found) for no such account.
  std::int64_t balance_at(std::string_view account, std::int64_t at_ms);

  // Moves the transfers and entries created before cutoff_ms into <prefix>transfers_archive /
  // <prefix>entries_archive, carrying their sums forward into <prefix>opening_balances and
  // <prefix>archived_totals in the same transaction, so check() and balance_at() stay valid.
  // Transfers still referenced by a live row (an open hold's capture, a reversal after the cutoff,
  // a prepared two-phase leg) are kept. See ArchiveOptions for refusals.
  ArchiveReport archive(std::int64_t cutoff_ms, const ArchiveOptions& options = {});

  LedgerStats stats() const;

 private:
  struct Impl;  // src/<component>/: the state and statements behind the handle
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard

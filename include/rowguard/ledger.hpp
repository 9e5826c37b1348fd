#pragma once
// rowguard::Ledger: accounts with version-checked balances in integer minor units, atomic
// transfers with idempotency keys, and a journal that always adds up.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "rowguard/database.hpp"
#include "rowguard/retry.hpp"

namespace rowguard {

struct Account {
  std::string id;
  std::string currency;           // ISO 4217 code, e.g. "EUR"
  std::int64_t balance = 0;       // minor units (cents)
  std::int64_t min_balance = 0;   // a negative minimum allows an overdraft
  std::int64_t version = 0;       // +1 on every change
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
  bool ok() const noexcept { return status == TransferStatus::ok; }
};

// One violation found by Ledger::check().
struct Violation {
  std::string what;     // "balance_mismatch", "below_minimum", "total_mismatch"
  std::string account;  // empty for ledger-wide violations
  std::string detail;
};

struct CheckReport {
  std::vector<Violation> violations;
  std::int64_t accounts = 0;
  std::int64_t entries = 0;
  std::int64_t total_balance = 0;  // sum of balances (checked: Error(permanent) on int64 overflow)
  bool ok() const noexcept { return violations.empty(); }
};

// Counters kept in process since the Ledger was made.
struct LedgerStats {
  std::uint64_t transfers_ok = 0;
  std::uint64_t transfers_rejected = 0;  // insufficient funds
  std::uint64_t replays = 0;             // repeated idempotency keys answered from the record
  std::uint64_t conflicts = 0;           // conflicts and transient failures met (each was retried)
  std::uint64_t retries = 0;
};

struct LedgerOptions {
  RetryPolicy retry;  // conflicts (and transient failures before commit) are retried under this
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

  // Error(invalid_argument) for a bad id or currency, Error(permanent, 23505) when it exists.
  void open(std::string_view id, std::string_view currency, std::int64_t min_balance = 0);
  // Error(not_found) when there is no such account.
  Account get(std::string_view id);
  std::vector<Account> list();

  // Money from / to the outside world, recorded as transfers with one side NULL.
  TransferResult deposit(std::string_view account, std::int64_t amount, std::string_view key);
  TransferResult withdraw(std::string_view account, std::int64_t amount, std::string_view key);
  // Moves amount atomically: both balances, the journal entries and the idempotency record commit
  // together or not at all. A key seen before with the same parameters returns the original result
  // and changes nothing; with other parameters it is Error(idempotency_mismatch) naming the first
  // field that differs. Errors: not_found, currency_mismatch, invalid_argument (amount <= 0,
  // from == to, a balance that would overflow int64, bad ids or key), conflict after all retries.
  TransferResult transfer(std::string_view from, std::string_view to, std::int64_t amount, std::string_view key);
  // As transfer(), but Error(insufficient_funds) instead of a rejected result.
  TransferResult transfer_or_throw(std::string_view from, std::string_view to, std::int64_t amount,
                                   std::string_view key);

  // Verifies: every balance equals the sum of its entries; the sum of balances equals deposits
  // minus withdrawals; no balance is below its minimum. Reads one consistent snapshot.
  CheckReport check();

  LedgerStats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace rowguard

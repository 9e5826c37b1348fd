#pragma once
// rowguard::Error: the one exception family of the library, classified by what the caller can do.

#include <stdexcept>
#include <string>
#include <string_view>

namespace rowguard {

// What a caller can do about an error. The CLI maps each kind onto a fixed exit code.
enum class ErrorKind {
  conflict,              // version mismatch, 40001, 40P01, SQLITE_BUSY past its timeout: retry the transaction
  transient,             // connection lost before a write was sent, server restarting: reconnect, then retry
  in_doubt,              // the outcome of a write or COMMIT is unknown: retry only with the same idempotency key
  lock_busy,             // a lock is held by someone else, or was not acquired in time
  lock_lost,             // a lease was taken over or expired while held
  insufficient_funds,    // a balance would go below its minimum
  not_found,             // account, transfer, lock or cache key does not exist
  currency_mismatch,     // a transfer between accounts of different currencies
  idempotency_mismatch,  // an idempotency key reused with other parameters
  invalid_argument,      // bad input: nothing was written
  hold_closed,           // a hold that was voided, expired or captured cannot be captured (or voided) now
  schema_mismatch,       // the database's schema version is not the one this library expects
  permanent,             // anything else: retrying will not help
};

// The stable lower-case name of a kind ("conflict", "in_doubt", ...), as printed by the CLI.
std::string_view to_string(ErrorKind kind) noexcept;

// Thrown for invalid input, infrastructure failures, exhausted retries and calls that promised success.
// Thread-safety: an Error is an immutable value.
// Example: try { db.migrate(); } catch (const rowguard::Error& e) { if (e.kind() == ErrorKind::transient) ...; }
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, std::string sqlstate = {})
      : std::runtime_error(message), kind_(kind), sqlstate_(std::move(sqlstate)) {}

  ErrorKind kind() const noexcept { return kind_; }
  // The five-character SQLSTATE when the database reported one ("23505", "40001"), else empty.
  // SQLite's result codes are mapped onto the same SQLSTATEs where one applies (a unique violation is "23505").
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  bool retriable() const noexcept { return kind_ == ErrorKind::conflict || kind_ == ErrorKind::transient; }

 private:
  ErrorKind kind_;
  std::string sqlstate_;
};

}  // namespace rowguard

#include "rowguard/error.hpp"

namespace rowguard {

std::string_view to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::conflict: return "conflict";
    case ErrorKind::transient: return "transient";
    case ErrorKind::in_doubt: return "in_doubt";
    case ErrorKind::lock_busy: return "lock_busy";
    case ErrorKind::lock_lost: return "lock_lost";
    case ErrorKind::insufficient_funds: return "insufficient_funds";
    case ErrorKind::not_found: return "not_found";
    case ErrorKind::currency_mismatch: return "currency_mismatch";
    case ErrorKind::idempotency_mismatch: return "idempotency_mismatch";
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::hold_closed: return "hold_closed";
    case ErrorKind::schema_mismatch: return "schema_mismatch";
    case ErrorKind::permanent: return "permanent";
  }
  return "permanent";
}

int exit_code(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument: return 2;
    case ErrorKind::lock_busy: return 3;
    case ErrorKind::insufficient_funds: return 4;
    case ErrorKind::not_found: return 5;
    case ErrorKind::conflict: return 6;
    case ErrorKind::idempotency_mismatch: return 7;
    case ErrorKind::lock_lost: return 8;
    case ErrorKind::in_doubt: return 9;
    case ErrorKind::transient: return 10;
    case ErrorKind::schema_mismatch: return 11;
    case ErrorKind::currency_mismatch: return 12;
    case ErrorKind::hold_closed: return 13;
    case ErrorKind::permanent: return 1;
  }
  return 1;
}

}  // namespace rowguard

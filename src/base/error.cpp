#include "rowguard/error.hpp"

namespace rowguard {

std::string_view to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::conflict:
      return "conflict";
    case ErrorKind::transient:
      return "transient";
    case ErrorKind::in_doubt:
      return "in_doubt";
    case ErrorKind::lock_busy:
      return "lock_busy";
    case ErrorKind::lock_lost:
      return "lock_lost";
    case ErrorKind::insufficient_funds:
      return "insufficient_funds";
    case ErrorKind::not_found:
      return "not_found";
    case ErrorKind::currency_mismatch:
      return "currency_mismatch";
    case ErrorKind::idempotency_mismatch:
      return "idempotency_mismatch";
    case ErrorKind::invalid_argument:
      return "invalid_argument";
    case ErrorKind::hold_closed:
      return "hold_closed";
    case ErrorKind::schema_mismatch:
      return "schema_mismatch";
    case ErrorKind::permanent:
      return "permanent";
  }
  return "permanent";
}

}  // namespace rowguard

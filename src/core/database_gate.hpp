#pragma once
// The gate through which rowguard's own components reach a Database's backend and start
// transactions on a backend they hold (the idea of libpqxx's internal gates and leveldb's
// WriteBatchInternal): the public classes name it a friend, and only src/ can include it, so the
// public headers keep no back door ("for rowguard's own components") open to users.

#include <memory>

#include "rowguard/database.hpp"
#include "rowguard/transaction.hpp"

#include "backend/backend.hpp"

namespace rowguard::detail {

struct DatabaseGate {
  static Backend& backend(const Database& db) noexcept { return *db.backend_; }
  static const std::shared_ptr<Backend>& shared_backend(const Database& db) noexcept { return db.backend_; }
  // A Database over a backend built elsewhere (the adapters of rowguard/postgres.hpp and rowguard/soci.hpp).
  static Database wrap(std::shared_ptr<Backend> backend) { return Database(std::move(backend)); }
  // A transaction on a session borrowed from backend, for components that keep the backend rather
  // than the Database they were built from.
  static Transaction begin(Backend& backend, TxOptions options = {}) { return Transaction(backend.borrow(), options); }
};

}  // namespace rowguard::detail

#pragma once
// The SQL of the ledger's account reads and writes, built once per Ledger from the dialect and
// the table prefix: one place for a DBA to read what the ledger asks of the accounts table.
// (The transfer, hold and history statements are still built beside their logic, in
// ledger.cpp, holds.cpp and history.cpp.)

#include <string>

#include "backend/backend.hpp"

namespace rowguard::detail {

struct AccountStatements {
  // $1 id, $2 currency, $3 min_balance -> an account at balance 0.
  std::string open;
  // $1 id -> (id, currency, balance, min_balance, version, held): held counts only the open holds
  // not yet past their timeout, as a reader sees it (accounts.held also counts expired holds no
  // one has closed yet).
  std::string get;
  // -> every account, the columns of get, by id.
  std::string list;
  // -> (currency, accounts, sum of balances, sum of accounts.held) per currency, by code: one aggregate.
  std::string currencies;
  // $1 limit -> (id, currency, balance, min_balance, version, held), the largest balances first.
  std::string largest;

  explicit AccountStatements(const Backend& backend);
};

}  // namespace rowguard::detail

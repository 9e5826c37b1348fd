#pragma once
// Cache statements other components embed in their own SQL (the ledger's one-statement transfer
// invalidates cached balances inside its data-modifying CTE).

#include <string>
#include <string_view>

namespace rowguard::detail {

class Backend;

// An upsert that leaves an expired tombstone with a higher generation for every key that
// "SELECT key_expr <tail>" yields, so any load that began earlier cannot store afterwards. tail
// must contain a WHERE (SQLite's upsert grammar needs one after INSERT ... SELECT).
std::string cache_invalidate_sql(const Backend& backend, std::string_view key_expr, std::string_view tail);

}  // namespace rowguard::detail

#pragma once
// The baselines a user would write or deploy instead of rowguard, each doing the same work on the
// same server: hand-written code straight on the driver (raw libpqxx, raw sqlite3), a ShedLock-style
// lock, PostgreSQL advisory locks, a pessimistic (SELECT ... FOR UPDATE) transfer, and Redis.

#include <random>
#include <string>
#include <utility>
#include <vector>

#include "runner.hpp"

namespace bench {

// Where rowguard's tables live (prefix + "accounts" etc.), shared by rowguard and the raw baselines
// so both do the same work on the same rows.
struct Tables {
  std::string prefix;
  std::string accounts() const { return prefix + "accounts"; }
  std::string transfers() const { return prefix + "transfers"; }
  std::string entries() const { return prefix + "entries"; }
  std::string locks() const { return prefix + "locks"; }
  std::string cache() const { return prefix + "cache"; }
};

std::string account_id(int n);
// The accounts a transfer workload picks two distinct ones from at random.
using Accounts = std::vector<std::string>;
Accounts account_pool(int n);
std::pair<std::string, std::string> pick_pair(std::mt19937_64& rng, const Accounts& accounts);

// --- PostgreSQL, hand-written on libpqxx 6.4 --------------------------------------------
// How a baseline sends its statements: prepared once per connection (what hand-written code does
// on a direct connection), or unnamed on every call (what it must do through a transaction-pooling
// PgBouncer 1.18, which cannot keep a session's prepared statements).
enum class Sent { prepared, unnamed };
// url without rowguard's own option rowguard_pooling=transaction, which libpq would refuse.
std::string libpq_url(const std::string& url);
// A transfer as one data-modifying statement: record, both balances under the minimum-balance
// condition, both journal entries (the single-statement floor the issue measured).
Op pg_raw_transfer(const std::string& url, const Tables& t, const Accounts& accounts, const std::string& run,
                   int client, Sent sent = Sent::prepared);
// The pessimistic transfer: BEGIN, SELECT both rows FOR UPDATE in key order, two UPDATEs, the
// record, the entries, COMMIT: seven round trips.
Op pg_pessimistic_transfer(const std::string& url, const Tables& t, const Accounts& accounts, const std::string& run,
                           int client);
// Acquire (one conditional upsert) and release (one update) of a lease, hand-written.
Op pg_raw_lock(const std::string& url, const Tables& t, const std::string& run, int client, Sent sent = Sent::prepared);
// ShedLock's default JDBC algorithm: INSERT the lock row the first time (an UPDATE where expired
// after that, as ShedLock remembers rows it created), release by setting lock_until to now.
void pg_create_shedlock_table(const std::string& url);
Op pg_shedlock(const std::string& url, const std::string& run, int client);
// pg_try_advisory_lock + pg_advisory_unlock: session-scoped, no expiry, no fencing token.
Op pg_advisory_lock(const std::string& url, int client);
// A primary-key SELECT of a cached value.
Op pg_raw_cache_get(const std::string& url, const Tables& t, int keys, Sent sent = Sent::prepared);

// --- SQLite, hand-written on the sqlite3 C API, with rowguard's PRAGMAs ---------------------
Op sqlite_raw_transfer(const std::string& path, const Tables& t, const Accounts& accounts, const std::string& run,
                       int client);
Op sqlite_raw_lock(const std::string& path, const Tables& t, const std::string& run, int client);
Op sqlite_raw_cache_get(const std::string& path, const Tables& t, int keys);

// --- Redis (Debian's redis-server on loopback), through hiredis ---------------------------
// SET NX PX, then compare-and-delete (a Lua script) to release: the usual single-instance lock.
Op redis_lock(const std::string& host, int port, const std::string& run, int client);
void redis_fill(const std::string& host, int port, int keys, const std::string& value);
Op redis_get(const std::string& host, int port, int keys);

std::string cache_key(int n);

}  // namespace bench

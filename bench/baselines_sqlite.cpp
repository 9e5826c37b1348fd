#include <memory>
#include <random>
#include <sqlite3.h>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "baselines.hpp"

namespace bench {

namespace {
// One connection with rowguard's settings (WAL, synchronous=FULL, foreign keys, 5 s busy timeout)
// and its prepared statements.
class Connection {
 public:
  explicit Connection(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK)
      throw std::runtime_error(fmt::format("sqlite3_open_v2({}): {}", path, sqlite3_errmsg(db_)));
    sqlite3_busy_timeout(db_, 5'000);
    exec("PRAGMA foreign_keys = ON");
    exec("PRAGMA journal_mode = WAL");
    exec("PRAGMA synchronous = FULL");
  }
  ~Connection() {
    for (auto* s : statements_) sqlite3_finalize(s);
    sqlite3_close_v2(db_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK)
      throw std::runtime_error(fmt::format("{}: {}", sql, sqlite3_errmsg(db_)));
  }
  sqlite3_stmt* prepare(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK)
      throw std::runtime_error(fmt::format("prepare {}: {}", sql, sqlite3_errmsg(db_)));
    statements_.push_back(s);
    return s;
  }
  // Binds text and integers in order, steps once; returns whether a row came back.
  template <class... Args>
  bool step(sqlite3_stmt* s, const Args&... args) {
    sqlite3_reset(s);
    int i = 0;
    (bind(s, ++i, args), ...);
    const int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      const std::string message = sqlite3_errmsg(db_);
      sqlite3_reset(s);
      throw std::runtime_error(message);
    }
    return rc == SQLITE_ROW;
  }

 private:
  static void bind(sqlite3_stmt* s, int i, const std::string& v) {
    sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  static void bind(sqlite3_stmt* s, int i, std::int64_t v) { sqlite3_bind_int64(s, i, v); }
  sqlite3* db_ = nullptr;
  std::vector<sqlite3_stmt*> statements_;
};

// The database clock in milliseconds, written as rowguard's SQLite dialect writes it.
constexpr const char* now_ms = "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";
}  // namespace

Op sqlite_raw_transfer(const std::string& path, const Tables& t, const Accounts& accounts, const std::string& run,
                       int client) {
  auto c = std::make_shared<Connection>(path);
  auto begin = c->prepare("BEGIN IMMEDIATE");
  auto commit = c->prepare("COMMIT");
  auto rollback = c->prepare("ROLLBACK");
  auto find_key = c->prepare(fmt::format("SELECT id FROM {} WHERE idempotency_key = ?1", t.transfers()));
  auto lock = c->prepare(fmt::format("SELECT id, balance, min_balance FROM {} WHERE id IN (?1, ?2)", t.accounts()));
  auto debit =
      c->prepare(fmt::format("UPDATE {} SET balance = balance - ?2, version = version + 1, updated_at = {} "
                             "WHERE id = ?1",
                             t.accounts(), now_ms));
  auto credit =
      c->prepare(fmt::format("UPDATE {} SET balance = balance + ?2, version = version + 1, updated_at = {} "
                             "WHERE id = ?1",
                             t.accounts(), now_ms));
  auto record = c->prepare(fmt::format(
      "INSERT INTO {0} (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, created_at) "
      "VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM {0}), ?1, 'transfer', ?2, ?3, ?4, 'EUR', ?5, {1}) RETURNING id",
      t.transfers(), now_ms));
  auto entry =
      c->prepare(fmt::format("INSERT INTO {0} (id, transfer_id, account_id, amount, created_at) VALUES "
                             "((SELECT COALESCE(MAX(id), 0) + 1 FROM {0}), ?1, ?2, ?3, {1})",
                             t.entries(), now_ms));
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  const std::string nonce = fmt::format("{:016x}", (*rng)());  // keys unique across measurements
  return [=](std::uint64_t i) {
    const auto [from, to] = pick_pair(*rng, accounts);
    const std::string key = fmt::format("raw-{}-{}-{}-{}", run, nonce, client, i);
    const auto amount = static_cast<std::int64_t>(1 + (*rng)() % 100);
    c->step(begin);
    try {
      if (c->step(find_key, key)) throw std::runtime_error("key seen");
      std::int64_t balance = 0, min_balance = 0;
      c->step(lock, from, to);
      do {
        if (std::string(reinterpret_cast<const char*>(sqlite3_column_text(lock, 0))) == from)
          balance = sqlite3_column_int64(lock, 1), min_balance = sqlite3_column_int64(lock, 2);
      } while (sqlite3_step(lock) == SQLITE_ROW);
      const bool ok = balance - amount >= min_balance;
      if (ok) {
        c->step(debit, from, amount);
        c->step(credit, to, amount);
      }
      c->step(record, key, from, to, amount, std::string(ok ? "ok" : "insufficient_funds"));
      const std::int64_t id = sqlite3_column_int64(record, 0);
      sqlite3_reset(record);
      if (ok) {
        c->step(entry, id, from, -amount);
        c->step(entry, id, to, amount);
      }
      c->step(commit);
    } catch (...) {
      c->step(rollback);
      throw;
    }
  };
}

Op sqlite_raw_lock(const std::string& path, const Tables& t, const std::string& run, int client) {
  auto c = std::make_shared<Connection>(path);
  auto acquire = c->prepare(fmt::format(
      "INSERT INTO {0} AS l (name, owner, token, acquired_at, expires_at) VALUES (?1, ?2, 1, {1}, {1} + ?3) "
      "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = l.token + 1, acquired_at = "
      "excluded.acquired_at, "
      "expires_at = excluded.expires_at, released_at = NULL WHERE l.expires_at IS NULL OR l.expires_at <= {1} "
      "RETURNING token",
      t.locks(), now_ms));
  auto release =
      c->prepare(fmt::format("UPDATE {} SET expires_at = NULL, released_at = {} "
                             "WHERE name = ?1 AND owner = ?2 AND token = ?3",
                             t.locks(), now_ms));
  const std::string name = fmt::format("raw-{}-{}", run, client), owner = fmt::format("raw-owner-{}", client);
  return [=](std::uint64_t) {
    if (!c->step(acquire, name, owner, std::int64_t{30'000})) throw std::runtime_error("raw lock busy");
    const std::int64_t token = sqlite3_column_int64(acquire, 0);
    sqlite3_reset(acquire);
    c->step(release, name, owner, token);
  };
}

Op sqlite_raw_cache_get(const std::string& path, const Tables& t, int keys) {
  auto c = std::make_shared<Connection>(path);
  auto get = c->prepare(fmt::format("SELECT value FROM {} WHERE key = ?1", t.cache()));
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  return [=](std::uint64_t) {
    if (!c->step(get, cache_key(static_cast<int>((*rng)() % static_cast<unsigned>(keys)))))
      throw std::runtime_error("raw cache miss");
    const std::string value(static_cast<const char*>(sqlite3_column_blob(get, 0)),
                            static_cast<std::size_t>(sqlite3_column_bytes(get, 0)));
    sqlite3_reset(get);
  };
}

}  // namespace bench

#include <map>
#include <memory>
#include <random>

#include <fmt/format.h>
#include <pqxx/pqxx>

#include "baselines.hpp"

namespace bench {

std::string account_id(int n) { return fmt::format("acct-{:05}", n); }
std::string cache_key(int n) { return fmt::format("key-{:05}", n); }

Accounts account_pool(int n) {
  Accounts out;
  for (int a = 0; a < n; ++a) out.push_back(account_id(a));
  return out;
}

std::string libpq_url(const std::string& url) {
  static const std::string option = "rowguard_pooling=transaction";
  std::string out = url;
  const auto at = out.find(option);
  if (at == std::string::npos) return out;
  std::size_t from = at, to = at + option.size();
  if (to < out.size() && out[to] == '&')
    ++to;  // "?option&rest" or "&option&rest": keep the separator before it
  else if (from > 0 && (out[from - 1] == '&' || out[from - 1] == '?'))
    --from;  // the last parameter: drop the separator before it too
  out.erase(from, to - from);
  return out;
}

namespace {
// A baseline's statements, sent as the baseline's Sent says: prepared once per connection, or
// unnamed on every call (parse, bind, execute in one round trip), as a client of a
// transaction-pooling PgBouncer 1.18 must, since its next transaction may run on another server
// connection.
class Statements {
 public:
  Statements(const std::string& url, Sent sent)
      : connection_(std::make_shared<pqxx::connection>(libpq_url(url))), unnamed_(sent == Sent::unnamed) {}
  void add(const std::string& name, std::string sql) {
    if (!unnamed_) connection_->prepare(name, sql);
    sql_[name] = std::move(sql);
  }
  template <class... Args>
  pqxx::result exec(pqxx::transaction_base& t, const std::string& name, Args&&... args) const {
    return unnamed_ ? t.exec_params(sql_.at(name), std::forward<Args>(args)...)
                    : t.exec_prepared(name, std::forward<Args>(args)...);
  }
  pqxx::connection& connection() const { return *connection_; }

 private:
  std::shared_ptr<pqxx::connection> connection_;
  bool unnamed_;
  std::map<std::string, std::string> sql_;
};
}  // namespace

std::pair<std::string, std::string> pick_pair(std::mt19937_64& rng, const Accounts& accounts) {
  const std::size_t a = rng() % accounts.size();
  std::size_t b = rng() % (accounts.size() - 1);
  if (b >= a) ++b;
  return {accounts[a], accounts[b]};
}

Op pg_raw_transfer(const std::string& url, const Tables& t, const Accounts& accounts, const std::string& run,
                   int client, Sent sent) {
  auto st = std::make_shared<Statements>(url, sent);
  st->add(
      "transfer",
      fmt::format(
          "WITH d AS (UPDATE {acc} SET balance = balance - CAST($3 AS bigint), version = version + 1, "
          "updated_at = clock_timestamp() WHERE id = CAST($1 AS text) AND balance - CAST($3 AS bigint) >= min_balance "
          "RETURNING id), "
          "c AS (UPDATE {acc} SET balance = balance + CAST($3 AS bigint), version = version + 1, "
          "updated_at = clock_timestamp() WHERE id = CAST($2 AS text) AND EXISTS (SELECT 1 FROM d) RETURNING id), "
          "t AS (INSERT INTO {tr} (idempotency_key, kind, from_account, to_account, amount, currency, outcome, "
          "created_at) "
          "SELECT CAST($4 AS text), 'transfer', CAST($1 AS text), CAST($2 AS text), CAST($3 AS bigint), 'EUR', "
          "CASE WHEN EXISTS (SELECT 1 FROM d) THEN 'ok' ELSE 'insufficient_funds' END, clock_timestamp() "
          "RETURNING id, outcome), "
          "e AS (INSERT INTO {en} (transfer_id, account_id, amount, created_at) SELECT t.id, x.a, x.m, "
          "clock_timestamp() "
          "FROM t, (VALUES (CAST($1 AS text), -CAST($3 AS bigint)), (CAST($2 AS text), CAST($3 AS bigint))) AS x(a, m) "
          "WHERE t.outcome = 'ok') "
          "SELECT id, outcome FROM t",
          fmt::arg("acc", t.accounts()), fmt::arg("tr", t.transfers()), fmt::arg("en", t.entries())));
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  const std::string nonce = fmt::format("{:016x}", (*rng)());  // keys unique across measurements
  return [=](std::uint64_t i) {
    const auto [from, to] = pick_pair(*rng, accounts);
    pqxx::nontransaction n(st->connection());
    if (st->exec(n, "transfer", from, to, static_cast<std::int64_t>(1 + (*rng)() % 100),
                 fmt::format("raw-{}-{}-{}-{}", run, nonce, client, i))
            .size() != 1)
      throw std::runtime_error("raw transfer recorded nothing");
  };
}

Op pg_pessimistic_transfer(const std::string& url, const Tables& t, const Accounts& accounts, const std::string& run,
                           int client) {
  auto c = std::make_shared<pqxx::connection>(url);
  c->prepare("lock", fmt::format("SELECT id, balance, min_balance FROM {} WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
                                 t.accounts()));
  c->prepare("debit", fmt::format("UPDATE {} SET balance = balance - $2, version = version + 1, "
                                  "updated_at = clock_timestamp() WHERE id = $1",
                                  t.accounts()));
  c->prepare("credit", fmt::format("UPDATE {} SET balance = balance + $2, version = version + 1, "
                                   "updated_at = clock_timestamp() WHERE id = $1",
                                   t.accounts()));
  c->prepare("record", fmt::format("INSERT INTO {} (idempotency_key, kind, from_account, to_account, amount, currency, "
                                   "outcome, created_at) VALUES ($1, 'transfer', $2, $3, $4, 'EUR', $5, "
                                   "clock_timestamp()) RETURNING id",
                                   t.transfers()));
  c->prepare("entries", fmt::format("INSERT INTO {} (transfer_id, account_id, amount, created_at) VALUES "
                                    "($1, $2, -CAST($4 AS bigint), clock_timestamp()), "
                                    "($1, $3, CAST($4 AS bigint), clock_timestamp())",
                                    t.entries()));
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  const std::string nonce = fmt::format("{:016x}", (*rng)());  // keys unique across measurements
  return [=](std::uint64_t i) {
    const auto [from, to] = pick_pair(*rng, accounts);
    const auto amount = static_cast<std::int64_t>(1 + (*rng)() % 100);
    pqxx::work w(*c);
    const pqxx::result rows = w.exec_prepared("lock", from, to);
    std::int64_t balance = 0, min_balance = 0;
    for (const auto& r : rows)
      if (r[0].as<std::string>() == from) balance = r[1].as<std::int64_t>(), min_balance = r[2].as<std::int64_t>();
    const bool ok = balance - amount >= min_balance;
    if (ok) {
      w.exec_prepared0("debit", from, amount);
      w.exec_prepared0("credit", to, amount);
    }
    const auto id = w.exec_prepared1("record", fmt::format("pess-{}-{}-{}-{}", run, nonce, client, i), from, to, amount,
                                     ok ? "ok" : "insufficient_funds")[0]
                        .as<std::int64_t>();
    if (ok) w.exec_prepared0("entries", id, from, to, amount);
    w.commit();
  };
}

Op pg_raw_lock(const std::string& url, const Tables& t, const std::string& run, int client, Sent sent) {
  auto st = std::make_shared<Statements>(url, sent);
  st->add(
      "acquire",
      fmt::format(
          "INSERT INTO {0} AS l (name, owner, token, acquired_at, expires_at) VALUES ($1, $2, 1, clock_timestamp(), "
          "clock_timestamp() + CAST($3 AS bigint) * INTERVAL '1 millisecond') ON CONFLICT (name) DO UPDATE SET "
          "owner = excluded.owner, token = l.token + 1, acquired_at = excluded.acquired_at, expires_at = "
          "excluded.expires_at, "
          "released_at = NULL WHERE l.expires_at IS NULL OR l.expires_at <= clock_timestamp() RETURNING token",
          t.locks()));
  st->add("release", fmt::format("UPDATE {} SET expires_at = NULL, released_at = clock_timestamp() "
                                 "WHERE name = $1 AND owner = $2 AND token = $3",
                                 t.locks()));
  const std::string name = fmt::format("raw-{}-{}", run, client), owner = fmt::format("raw-owner-{}", client);
  return [=](std::uint64_t) {
    pqxx::nontransaction n(st->connection());
    const pqxx::result r = st->exec(n, "acquire", name, owner, std::int64_t{30'000});
    if (r.empty()) throw std::runtime_error("raw lock busy");
    if (st->exec(n, "release", name, owner, r[0][0].as<std::int64_t>()).affected_rows() != 1)
      throw std::runtime_error("raw lock release found no lease");
  };
}

void pg_create_shedlock_table(const std::string& url) {
  pqxx::connection c(url);
  pqxx::nontransaction n(c);
  // ShedLock's documented PostgreSQL table.
  n.exec0(
      "CREATE TABLE IF NOT EXISTS bench_shedlock (name VARCHAR(64) NOT NULL PRIMARY KEY, "
      "lock_until TIMESTAMP NOT NULL, locked_at TIMESTAMP NOT NULL, locked_by VARCHAR(255) NOT NULL)");
}

Op pg_shedlock(const std::string& url, const std::string& run, int client) {
  auto c = std::make_shared<pqxx::connection>(url);
  c->prepare("insert",
             "INSERT INTO bench_shedlock (name, lock_until, locked_at, locked_by) VALUES "
             "($1, timezone('utc', CURRENT_TIMESTAMP) + CAST($2 AS bigint) * INTERVAL '1 millisecond', "
             "timezone('utc', CURRENT_TIMESTAMP), $3)");
  c->prepare("update",
             "UPDATE bench_shedlock SET lock_until = timezone('utc', CURRENT_TIMESTAMP) + "
             "CAST($2 AS bigint) * INTERVAL '1 millisecond', locked_at = timezone('utc', CURRENT_TIMESTAMP), "
             "locked_by = $3 WHERE name = $1 AND lock_until <= timezone('utc', CURRENT_TIMESTAMP)");
  c->prepare("unlock", "UPDATE bench_shedlock SET lock_until = timezone('utc', CURRENT_TIMESTAMP) WHERE name = $1");
  const std::string name = fmt::format("shed-{}-{}", run, client), by = fmt::format("host-{}", client);
  auto created = std::make_shared<bool>(false);  // ShedLock's LockRecordRegistry
  return [=](std::uint64_t) {
    pqxx::nontransaction n(*c);
    bool acquired = false;
    if (!*created) {
      try {
        n.exec_prepared0("insert", name, std::int64_t{30'000}, by);
        acquired = true;
      } catch (const pqxx::unique_violation&) {
      }
      *created = true;
    }
    if (!acquired) acquired = n.exec_prepared("update", name, std::int64_t{30'000}, by).affected_rows() == 1;
    if (!acquired) throw std::runtime_error("shedlock busy");
    n.exec_prepared0("unlock", name);
  };
}

Op pg_advisory_lock(const std::string& url, int client) {
  auto c = std::make_shared<pqxx::connection>(url);
  c->prepare("try", "SELECT pg_try_advisory_lock($1)");
  c->prepare("unlock", "SELECT pg_advisory_unlock($1)");
  const std::int64_t key = 7'000'000 + client;
  return [=](std::uint64_t) {
    pqxx::nontransaction n(*c);
    if (!n.exec_prepared1("try", key)[0].as<bool>()) throw std::runtime_error("advisory lock busy");
    n.exec_prepared1("unlock", key);
  };
}

Op pg_raw_cache_get(const std::string& url, const Tables& t, int keys, Sent sent) {
  auto st = std::make_shared<Statements>(url, sent);
  st->add("get", fmt::format("SELECT value FROM {} WHERE key = $1", t.cache()));
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  return [=](std::uint64_t) {
    pqxx::nontransaction n(st->connection());
    const pqxx::result r = st->exec(n, "get", cache_key(static_cast<int>((*rng)() % static_cast<unsigned>(keys))));
    if (r.empty()) throw std::runtime_error("raw cache miss");
    (void)pqxx::binarystring(r[0][0]).size();
  };
}

}  // namespace bench

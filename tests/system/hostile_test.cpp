// Hostile input against the library and the CLI, on every backend: each gets a clear error of the
// documented kind (or exit code) and leaves the database as it was. docs/reliability.md keeps the
// table of these inputs with their results.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "support/support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {
// Everything a hostile call could have changed: row counts of every table and the balance total.
std::string snapshot(Database& db) {
  const std::string p = db.table_prefix();
  const Row r = db.exec(fmt::format("SELECT (SELECT count(*) FROM {0}locks), (SELECT count(*) FROM {0}accounts), "
                                    "(SELECT count(*) FROM {0}transfers), (SELECT count(*) FROM {0}entries), "
                                    "(SELECT count(*) FROM {0}cache), (SELECT count(*) FROM {0}fences), "
                                    "(SELECT count(*) FROM {0}holds), "
                                    "(SELECT CAST(COALESCE(SUM(balance), 0) AS bigint) FROM {0}accounts), "
                                    "(SELECT CAST(COALESCE(SUM(held), 0) AS bigint) FROM {0}accounts)",
                                    p))
                    .one();
  std::string s;
  for (std::size_t c = 0; c < r.size(); ++c) s += fmt::format("{},", r.i64(c));
  return s;
}

const std::string nul_inside("a\0b", 3);
const std::string bad_utf8 = "caf\xc3";        // cut in the middle of a two-byte character
const std::string overlong = "\xc0\xaf";       // an overlong '/'
const std::string surrogate = "\xed\xa0\x80";  // U+D800
const std::string sql_text = "x'); DROP TABLE rowguard_locks; --";
}  // namespace

TEST_CASE("hostile: names, keys and ids with NUL, broken UTF-8 or oversize are invalid_argument, SQL is just data",
          "[backend]") {
  TestDb t;
  t.db().migrate();
  Locks locks(t.db());
  Ledger ledger(t.db());
  Cache cache(t.db());
  Fence fence(t.db());
  ledger.open("src", "EUR");
  ledger.open("dst", "EUR");
  ledger.deposit("src", 1'000, "seed");
  const std::string before = snapshot(t.db());

  for (const std::string& bad : {std::string(), nul_inside, bad_utf8, overlong, surrogate, std::string(10'000, 'n')}) {
    INFO("input of " << bad.size() << " bytes");
    CHECK(kind_of([&] { locks.try_acquire(bad, 10s); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { locks.try_acquire("ok", 10s, bad); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.open(bad, "EUR"); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.transfer("src", bad, 1, "k1"); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.transfer("src", "dst", 1, bad); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.hold("src", bad, 1, "k1", 10s); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.hold("src", "dst", 1, bad, 10s); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.capture(1, std::nullopt, bad.empty() ? std::string(300, 'k') : bad); }) ==
          ErrorKind::invalid_argument);
    CHECK(kind_of([&] { cache.put(bad, "v", 10s); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { cache.get(bad); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { fence.admit(bad, 1); }) == ErrorKind::invalid_argument);
  }
  CHECK(snapshot(t.db()) == before);

  // SQL in a name, key or id is stored verbatim and runs nowhere: values are always bound.
  auto lease = locks.try_acquire(sql_text, 10s);
  REQUIRE(lease);
  CHECK(locks.list().at(0).name == sql_text);
  ledger.open(sql_text, "EUR");
  CHECK(ledger.transfer("src", sql_text, 5, sql_text).ok());
  cache.put(sql_text, sql_text, 10s);
  CHECK(cache.get(sql_text) == sql_text);
  lease->release();
  CHECK(rows_in(t.db(), "locks") == 1);  // the table is still there
  CHECK(ledger.check().ok());
}

TEST_CASE("hostile: extreme amounts, overflowing balances and bad durations change nothing", "[backend]") {
  TestDb t;
  t.db().migrate();
  Ledger ledger(t.db());
  Locks locks(t.db());
  Cache cache(t.db());
  ledger.open("a", "EUR");
  ledger.open("b", "EUR");
  ledger.deposit("a", std::numeric_limits<std::int64_t>::max() - 10, "big");
  const std::string before = snapshot(t.db());
  constexpr auto max = std::numeric_limits<std::int64_t>::max();
  constexpr auto min = std::numeric_limits<std::int64_t>::min();
  for (const std::int64_t amount : {std::int64_t{0}, std::int64_t{-1}, min, min + 1})
    CHECK(kind_of([&] { ledger.transfer("a", "b", amount, fmt::format("bad{}", amount)); }) ==
          ErrorKind::invalid_argument);
  // A deposit that would take the balance past INT64_MAX is refused before anything is written.
  std::string message;
  const ErrorKind overflow = kind_of([&] { ledger.deposit("a", 11, "overflow"); }, &message);
  INFO(message);
  CHECK(overflow == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { ledger.deposit("a", max, "overflow2"); }) == ErrorKind::invalid_argument);
  // Durations: zero, negative and past the maximum.
  for (const auto ttl : {0ms, -1ms, std::chrono::milliseconds(min), std::chrono::milliseconds(max),
                         std::chrono::duration_cast<std::chrono::milliseconds>(99'999'999h)}) {
    INFO("ttl " << ttl.count() << " ms");
    CHECK(kind_of([&] { locks.try_acquire("l", ttl); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { cache.put("k", "v", ttl); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.hold("a", "b", 1, "h", ttl); }) == ErrorKind::invalid_argument);
  }
  // Holds: amounts and ids out of range, and a hold larger than anything the account has.
  for (const std::int64_t amount : {std::int64_t{0}, std::int64_t{-1}, min})
    CHECK(kind_of([&] { ledger.hold("a", "b", amount, "h", 1min); }) == ErrorKind::invalid_argument);
  for (const std::int64_t id : {std::int64_t{0}, std::int64_t{-1}, min}) {
    CHECK(kind_of([&] { ledger.capture(id); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { ledger.void_hold(id); }) == ErrorKind::invalid_argument);
  }
  CHECK(kind_of([&] { ledger.capture(max); }) == ErrorKind::not_found);
  CHECK(kind_of([&] { ledger.capture(max, min); }) == ErrorKind::invalid_argument);
  CHECK(snapshot(t.db()) == before);
  CHECK(ledger.check().ok());
}

TEST_CASE("hostile: a value over the cache's limit is refused, NUL bytes in values round-trip", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions o;
  o.max_value_bytes = 1 << 20;
  Cache cache(t.db(), o);
  const std::string before = snapshot(t.db());
  CHECK(kind_of([&] { cache.put("huge", std::string((1 << 20) + 1, 'x'), 10s); }) == ErrorKind::invalid_argument);
  CHECK(snapshot(t.db()) == before);
  const std::string binary("\0\xff\x00\xc3", 4);
  cache.put("binary", binary, 10s);
  CHECK(cache.get("binary") == binary);
}

TEST_CASE("hostile: a database with a newer or a damaged schema is refused with a clear error", "[backend]") {
  TestDb t;
  t.db().migrate();
  const std::string versions = t.db().table_prefix() + "schema_version";
  t.db().exec(fmt::format("INSERT INTO {} (version, name) VALUES (999, '999_from_the_future')", versions));
  std::string message;
  CHECK(kind_of([&] { t.db().require_schema(); }, &message) == ErrorKind::schema_mismatch);
  CHECK(message.find("999") != std::string::npos);
  CHECK(kind_of([&] { t.db().migrate(); }) == ErrorKind::schema_mismatch);
  t.db().exec(fmt::format("DELETE FROM {} WHERE version = 999", versions));
  // A table dropped by hand: the error names it, and says what failed.
  t.db().exec(fmt::format("DROP TABLE {}cache", t.db().table_prefix()));
  Cache cache(t.db());
  CHECK(kind_of([&] { cache.get("k"); }, &message) == ErrorKind::permanent);
  CHECK(message.find("cache") != std::string::npos);
}

TEST_CASE("hostile: the CLI refuses bad durations, amounts and text with exit 2 and writes nothing",
          "[backend][shared-db][threads][cli]") {
  TestDb t;
  t.db().migrate();
  Ledger ledger(t.db());
  ledger.open("a", "EUR");
  ledger.open("b", "EUR");
  ledger.deposit("a", 100, "seed");
  const std::string before = snapshot(t.db());
  const std::vector<std::string> base{"--db", t.url(), "--prefix", t.db().table_prefix()};
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), base.begin(), base.end());
    return run_cli(args);
  };
  for (const char* d : {"-1s", "0s", "99999999h", "1.5s", "10", "abc", "", "9223372036854775807ms", "1s2"}) {
    INFO("duration '" << d << "'");
    CHECK(run({"lock", "acquire", "l", "--ttl", d}) == 2);
    CHECK(run({"cache", "put", "k", "v", "--ttl", d}) == 2);
  }
  for (const char* a : {"0", "-5", "1e3", "0x10", "12.50", "9223372036854775808", "", " 7", "7 "}) {
    INFO("amount '" << a << "'");
    CHECK(run({"transfer", "a", "b", a, "--key", "cli-bad"}) == 2);
  }
  for (const std::string& text : {bad_utf8, overlong, std::string(10'000, 'x')}) {
    CHECK(run({"account", "open", text}) == 2);
    CHECK(run({"lock", "acquire", text, "--ttl", "1s"}) == 2);
    CHECK(run({"transfer", "a", "b", "1", "--key", text}) == 2);
  }
  // --json never aborts on bytes that are not UTF-8: an echoed bad argument is replaced, a binary
  // cache value comes back as base64 (it used to abort the dump with exit 134).
  std::string out;
  CHECK(
      run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "--json", "lock", "acquire", "l", "--ttl", bad_utf8},
              &out) == 2);
  CHECK(nlohmann::json::parse(out).at("error").at("kind") == "invalid_argument");
  CHECK(snapshot(t.db()) == before);
  Cache(t.db()).put("binary", std::string("ok\xff", 3), 60s);
  CHECK(run_cli({"--db", t.url(), "--prefix", t.db().table_prefix(), "--json", "cache", "get", "binary"}, &out) == 0);
  CHECK(nlohmann::json::parse(out).at("value_base64") == "b2v/");
}

TEST_CASE("hostile: SQLite files that are read-only, full or not a database fail clearly and keep their data",
          "[unit]") {
  // The native SQLite backend's own file: read-only through a URI filename, full through
  // max_page_count (what SQLite reports on a full disk).
  const auto dir = scratch_dir();
  const std::string path = (dir / "pay.db").string();
  {
    auto db = Database::open("sqlite:" + path);
    db.migrate();
    Ledger ledger(db);
    ledger.open("a", "EUR");
    ledger.open("b", "EUR");
    ledger.deposit("a", 1'000, "seed");
  }
  {
    // A file that is not a database at all (or was overwritten): a clear error, at open or first use.
    const std::string garbage = (dir / "garbage.db").string();
    std::FILE* f = std::fopen(garbage.c_str(), "wb");
    REQUIRE(f != nullptr);
    for (int i = 0; i < 4096; ++i) std::fputc((i * 131 + 7) & 0xff, f);
    std::fclose(f);
    std::string message;
    CHECK(kind_of([&] { Database::open("sqlite:" + garbage).migrate(); }, &message) == ErrorKind::permanent);
    CHECK(message.find("not a database") != std::string::npos);
  }
  {
    auto ro = Database::open("sqlite:file:" + path + "?mode=ro");
    Ledger ledger(ro);
    std::string message;
    CHECK(kind_of([&] { ledger.transfer("a", "b", 10, "ro"); }, &message) == ErrorKind::permanent);
    CHECK(message.find("readonly") != std::string::npos);
    CHECK(ledger.get("a").balance == 1'000);
  }
  {
    Options one;
    one.pool_size = 1;  // max_page_count is per connection
    auto db = Database::open("sqlite:" + path, one);
    const std::string before = snapshot(db);
    const std::int64_t pages = db.exec("PRAGMA page_count").one().i64(0);
    db.exec(fmt::format("PRAGMA max_page_count = {}", pages));
    Cache cache(db);
    std::string message;
    const ErrorKind kind = kind_of([&] { cache.put("big", std::string(200'000, 'x'), 60s); }, &message);
    INFO(message);
    CHECK(kind == ErrorKind::transient);  // documented: rolled back, nothing applied, retry when space is back
    CHECK(message.find("full") != std::string::npos);
    CHECK(snapshot(db) == before);
    CHECK(Ledger(db).check().ok());
  }
}

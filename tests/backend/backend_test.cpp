// Behaviour of the backend on every engine: values, the database clock, transactions, sessions.
#include <chrono>
#include <optional>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "support/support.hpp"

using namespace rowguard;
using rowguard::test::dialect_of;
using rowguard::test::TestDb;

namespace {
std::string scratch_table(TestDb& t) { return t.db().table_prefix() + "scratch"; }

void create_scratch(TestDb& t) {
  t.db().exec(
      fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, n bigint, s text, b {})", scratch_table(t), t.blob_type()));
}
}  // namespace

TEST_CASE("values round-trip: int64 limits, UTF-8 text, binary blobs, NULL", "[backend]") {
  TestDb t;
  create_scratch(t);
  auto& d = dialect_of(t.db());
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  bytes += std::string("\0\0end", 5);
  const std::string text = "zürich € 支付 \"quoted\" 'single'";
  const std::string table = scratch_table(t);
  const std::string insert =
      fmt::format("INSERT INTO {} (id, n, s, b) VALUES ($1, $2, $3, {})", table, d.blob_param("$4"));
  CHECK(t.db().exec(insert, {std::int64_t{1}, std::numeric_limits<std::int64_t>::max(), text, Blob{bytes}}).affected ==
        1);
  t.db().exec(insert, {std::int64_t{2}, std::numeric_limits<std::int64_t>::min(), std::string(), Blob{}});
  t.db().exec(insert, {std::int64_t{3}, nullptr, nullptr, nullptr});

  const auto rows = t.db().exec(fmt::format("SELECT id, n, s, {} FROM {} ORDER BY id", d.blob_column("b"), table)).rows;
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].i64(1) == std::numeric_limits<std::int64_t>::max());
  CHECK(rows[0].text(2) == text);
  CHECK(rows[0].bytes(3) == bytes);
  CHECK(rows[1].i64(1) == std::numeric_limits<std::int64_t>::min());
  CHECK(rows[1].text(2).empty());
  CHECK(rows[1].bytes(3).empty());
  CHECK(rows[2].is_null(1));
  CHECK(rows[2].is_null(2));
  CHECK(rows[2].is_null(3));
  CHECK_FALSE(rows[2].opt_i64(1).has_value());
  CHECK_THROWS_AS(rows[2].i64(1), Error);

  // A repeated statement reuses its prepared form with new values.
  for (std::int64_t id = 10; id < 20; ++id) t.db().exec(insert, {id, id * 3, std::string("x"), Blob{"y"}});
  CHECK(t.db()
            .exec(fmt::format("SELECT CAST(SUM(n) AS bigint) FROM {} WHERE id >= $1", table), {std::int64_t{10}})
            .one()
            .i64(0) == 3 * (10 + 19) * 10 / 2);
}

TEST_CASE("a string whose text changes in place runs its new text, not the statement first prepared at its address",
          "[backend]") {
  // The PostgreSQL session finds a statement by the address of its text before hashing it (the
  // callers' statements are long-lived strings); the same buffer holding another text must not
  // run the old statement.
  TestDb t;
  std::string sql = "SELECT CAST($1 AS bigint) + 1";
  const char* buffer = sql.data();
  CHECK(t.db().exec(sql, {std::int64_t{1}}).one().i64(0) == 2);
  sql.replace(sql.size() - 1, 1, "2");  // "... + 2": same length, same buffer
  REQUIRE(sql.data() == buffer);
  CHECK(t.db().exec(sql, {std::int64_t{1}}).one().i64(0) == 3);
  sql.replace(sql.size() - 1, 1, "1");  // the first text again, at the same address
  CHECK(t.db().exec(sql, {std::int64_t{1}}).one().i64(0) == 2);
  // And one text at several addresses is one statement, whichever copy is passed.
  for (int i = 0; i < 3; ++i) CHECK(t.db().exec(std::string(sql), {std::int64_t{i}}).one().i64(0) == i + 1);
}

TEST_CASE("a statement with the wrong number of parameters is rejected", "[backend]") {
  TestDb t;
  CHECK_THROWS_AS(t.db().exec("SELECT $1, $2", {std::int64_t{1}}), Error);
  CHECK(t.db().exec("SELECT 1").one().i64(0) == 1);  // the session is still usable
}

TEST_CASE("the database clock is milliseconds since the epoch and advances inside a transaction", "[backend]") {
  TestDb t;
  const auto wall =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  const std::int64_t db_now = t.db().now_ms();
  CHECK(std::llabs(db_now - wall) < 60'000);  // same machine: only a sanity bound on the unit
  auto tx = t.db().begin();
  const std::string clock = fmt::format("SELECT {}", dialect_of(t.db()).now_ms());
  const std::int64_t first = tx.exec(clock).one().i64(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const std::int64_t second = tx.exec(clock).one().i64(0);
  CHECK(second - first >= 25);  // clock_timestamp(), not the transaction's start time
  tx.commit();
  // Timestamps round-trip through the engine's column type.
  const auto& d = dialect_of(t.db());
  CHECK(t.db()
            .exec(fmt::format("SELECT {}", d.timestamp_to_ms(d.ms_to_timestamp("$1"))), {std::int64_t{1700000000123}})
            .one()
            .i64(0) == 1700000000123);
}

TEST_CASE("transactions commit, roll back, and roll back when dropped", "[backend]") {
  TestDb t;
  create_scratch(t);
  const std::string table = scratch_table(t);
  const std::string insert = fmt::format("INSERT INTO {} (id, n) VALUES ($1, $2)", table);
  const std::string count = fmt::format("SELECT count(*) FROM {}", table);
  {
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{1}, std::int64_t{1}});
    tx.commit();
    CHECK_FALSE(tx.active());
    CHECK_THROWS_AS(tx.exec(count), Error);
  }
  {
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{2}, std::int64_t{2}});
    tx.rollback();
  }
  {
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{3}, std::int64_t{3}});
  }  // dropped without commit
  CHECK(t.db().exec(count).one().i64(0) == 1);
  {
    auto tx = t.db().begin({Isolation::repeatable_read, TxAccess::read_only});
    CHECK(tx.exec(count).one().i64(0) == 1);
    tx.commit();
  }
  const auto stats = t.db().pool_stats();
  CHECK(stats.open == stats.idle);  // every session came back
}

TEST_CASE("every session of one Database sees the same data", "[backend][threads]") {
  Options options;
  options.pool_size = 4;
  TestDb t(options);
  create_scratch(t);
  const std::string table = scratch_table(t);
  // Hold three sessions at once so the fourth statement must use another connection.
  auto a = t.db().begin({Isolation::read_committed, TxAccess::read_only});
  auto b = t.db().begin({Isolation::read_committed, TxAccess::read_only});
  auto c = t.db().begin({Isolation::read_committed, TxAccess::read_only});
  t.db().exec(fmt::format("INSERT INTO {} (id, n) VALUES (1, 42)", table));
  a.rollback();
  b.rollback();
  c.rollback();
  CHECK(t.db().pool_stats().open >= 2);
  std::vector<std::thread> readers;
  std::atomic<int> seen{0};
  for (int i = 0; i < 4; ++i)
    readers.emplace_back([&] {
      auto tx = t.db().begin({Isolation::read_committed, TxAccess::read_only});
      if (tx.exec(fmt::format("SELECT n FROM {} WHERE id = 1", table)).one().i64(0) == 42) ++seen;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    });
  for (auto& r : readers) r.join();
  CHECK(seen == 4);
}

TEST_CASE("64-bit integers survive every read path, including SOCI's sqlite3 backend", "[backend]") {
  TestDb t;
  t.db().migrate();
  const std::int64_t big = 5'000'000'000'123;  // past 32 bits, like a millisecond timestamp
  t.db().exec(fmt::format("INSERT INTO {}fences (resource, last_token, updated_at) VALUES ('r', $1, {})",
                          t.db().table_prefix(), dialect_of(t.db()).ms_to_timestamp("$2")),
              {big, big});
  const Row row = t.db()
                      .exec(fmt::format("SELECT last_token, {} FROM {}fences",
                                        dialect_of(t.db()).timestamp_to_ms("updated_at"), t.db().table_prefix()))
                      .one();
  CHECK(row.i64(0) == big);
  CHECK(row.i64(1) == big);
  if (rowguard::test::can().narrows_integer_columns) {
    // A service's own column declared INTEGER would be truncated by SOCI: rowguard refuses it.
    t.db().exec(fmt::format("CREATE TABLE {}narrow (n INTEGER)", t.db().table_prefix()));
    t.db().exec(fmt::format("INSERT INTO {}narrow VALUES ($1)", t.db().table_prefix()), {big});
    CHECK_THROWS_AS(t.db().exec(fmt::format("SELECT n FROM {}narrow", t.db().table_prefix())), Error);
    CHECK(t.db().exec(fmt::format("SELECT n + 0 FROM {}narrow", t.db().table_prefix())).one().i64(0) == big);
  }
}

TEST_CASE("a transaction outlives the Database object it began on", "[backend]") {
  // The backend is shared: the session must still go back to a live pool (this was a
  // use-after-free before SessionLease kept the backend alive).
  TestDb t;
  t.db().migrate();
  std::optional<Transaction> tx;
  {
    auto other = t.another();
    tx.emplace(other->begin());
  }
  CHECK(tx->exec("SELECT CAST(1 AS bigint)").one().i64(0) == 1);
  tx->commit();
  auto again = t.another()->begin();
  again.rollback();
}

TEST_CASE("a transaction in which a statement failed refuses to commit unless rolled back to a savepoint",
          "[backend]") {
  // PostgreSQL aborts a transaction at its first failed statement and answers COMMIT with ROLLBACK;
  // SQLite carries on. rowguard's Transaction behaves as PostgreSQL on every backend: commit()
  // throws, the on_commit hooks do not run and nothing of the transaction stays.
  TestDb t;
  create_scratch(t);
  const std::string table = scratch_table(t);
  const std::string insert = fmt::format("INSERT INTO {} (id, n) VALUES ($1, $2)", table);
  auto rows = [&](std::int64_t id) {
    return t.db().exec(fmt::format("SELECT count(*) FROM {} WHERE id = $1", table), {id}).one().i64(0);
  };
  auto duplicate_fails = [&](Transaction& tx) {
    CHECK(rowguard::test::kind_of([&] {
            tx.exec(insert, {std::int64_t{1}, std::int64_t{0}});
          }) == ErrorKind::permanent);
  };
  t.db().exec(insert, {std::int64_t{1}, std::int64_t{1}});
  {
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{2}, std::int64_t{2}});
    bool hook_ran = false;
    tx.on_commit([&] { hook_ran = true; });
    duplicate_fails(tx);  // the caller catches the error and goes on
    std::optional<Error> refused;
    try {
      tx.commit();
    } catch (const Error& e) {
      refused = e;
    }
    REQUIRE(refused);
    INFO(refused->what());
    CHECK(refused->kind() == ErrorKind::permanent);
    CHECK(refused->sqlstate() == "25P02");
    CHECK_THAT(refused->what(), Catch::Contains("a statement in this transaction failed"));
    CHECK_FALSE(hook_ran);
    CHECK_FALSE(tx.active());
  }
  CHECK(rows(2) == 0);
  {
    // Rolled back to a savepoint taken before the failure, the transaction commits (what the
    // ledger's batch does for each linked chain); nested savepoints too.
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{3}, std::int64_t{3}});
    tx.exec("SAVEPOINT outer_item");
    tx.exec(insert, {std::int64_t{4}, std::int64_t{4}});
    tx.exec("SAVEPOINT inner_item");
    duplicate_fails(tx);
    tx.exec("ROLLBACK TO SAVEPOINT outer_item");
    tx.exec(insert, {std::int64_t{5}, std::int64_t{5}});
    tx.exec("RELEASE SAVEPOINT outer_item");
    tx.commit();
  }
  CHECK(rows(3) == 1);
  CHECK(rows(4) == 0);
  CHECK(rows(5) == 1);
  {
    // A savepoint released after the failure (PostgreSQL refuses the RELEASE itself) does not
    // undo it, nor does one taken after it.
    auto tx = t.db().begin();
    tx.exec(insert, {std::int64_t{6}, std::int64_t{6}});
    tx.exec("SAVEPOINT item");
    duplicate_fails(tx);
    try {
      tx.exec("RELEASE SAVEPOINT item");
    } catch (const Error&) {
    }
    try {
      tx.exec("SAVEPOINT late");
      tx.exec("ROLLBACK TO SAVEPOINT late");
    } catch (const Error&) {
    }
    CHECK(rowguard::test::kind_of([&] { tx.commit(); }) == ErrorKind::permanent);
  }
  CHECK(rows(6) == 0);
  const auto stats = t.db().pool_stats();
  CHECK(stats.open == stats.idle);  // every session came back, none left in a transaction
  CHECK(t.db().exec("SELECT 1").one().i64(0) == 1);
}

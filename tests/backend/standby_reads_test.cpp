// Read routing to a streaming-replication standby (rowguard/standby.hpp): cache hits and ledger
// history come from the standby while it is within max_staleness of the primary, and from the
// primary otherwise. The routed test runs under scripts/pg-replicated.sh --async (ctest -L
// failover), so that the primary goes on acknowledging while the standby lags.
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/replication.hpp"
#include "support/support.hpp"

using namespace rowguard;
using namespace rowguard::test;
using namespace std::chrono_literals;

namespace {

double standby_reads(const char* result) {
  return metrics().value("rowguard_standby_reads_total", {{"result", result}});
}

// Pauses or resumes WAL replay on the standby: it keeps receiving (and so stays 'streaming') but
// its data stops moving, which is how a lagging standby looks.
void replay(Database& standby, bool paused) {
  auto tx = standby.begin(TxOptions{Isolation::read_committed, TxAccess::read_only});
  // Through a subquery: SOCI cannot fetch the functions' void result.
  tx.exec(paused ? "SELECT 1 FROM (SELECT pg_wal_replay_pause()) AS p"
                 : "SELECT 1 FROM (SELECT pg_wal_replay_resume()) AS r");
  tx.commit();
}

std::optional<std::string> never_load() {
  FAIL("the loader ran: the hit should have come from the standby");
  return std::nullopt;
}

}  // namespace

TEST_CASE("standby reads: need PostgreSQL on both sides, the same table prefix and a positive bound", "[backend]") {
  TestDb t;
  t.db().migrate();
  CacheOptions cache_options;
  LedgerOptions ledger_options;
  cache_options.standby = ledger_options.standby = StandbyReads{&t.db(), 1s};
  if (!can().standbys) {
    CHECK(kind_of([&] { Cache c(t.db(), cache_options); }) == ErrorKind::invalid_argument);
    CHECK(kind_of([&] { Ledger l(t.db(), ledger_options); }) == ErrorKind::invalid_argument);
    return;
  }
  { Cache accepted(t.db(), cache_options); }
  cache_options.standby.max_staleness = ledger_options.standby.max_staleness = 0ms;
  CHECK(kind_of([&] { Cache c(t.db(), cache_options); }) == ErrorKind::invalid_argument);
  CHECK(kind_of([&] { Ledger l(t.db(), ledger_options); }) == ErrorKind::invalid_argument);
  Options other = t.options();
  other.table_prefix = "other_";
  auto elsewhere = Database::open(t.url(), other);
  cache_options.standby = StandbyReads{&elsewhere, 1s};
  std::string message;
  CHECK(kind_of([&] { Cache c(t.db(), cache_options); }, &message) == ErrorKind::invalid_argument);
  CHECK_THAT(message, Catch::Contains("table prefix"));
}

TEST_CASE("standby reads: cache hits and ledger history come from a standby within the bound, else from the primary",
          "[.standby-reads][cli]") {
  TestDb t;  // on the primary
  t.db().migrate();
  auto standby = Database::open(standby_url(t.url()), t.options());
  const auto routed = [&](std::chrono::milliseconds bound) {
    CacheOptions c;
    c.standby = StandbyReads{&standby, bound};
    LedgerOptions l;
    l.standby = c.standby;
    return std::make_pair(c, l);
  };
  const auto [lax_cache_options, lax_ledger_options] = routed(10s);
  const auto [strict_cache_options, strict_ledger_options] = routed(300ms);
  Cache lax(t.db(), lax_cache_options);
  Cache strict(t.db(), strict_cache_options);
  CacheOptions tiered_options = lax_cache_options;
  tiered_options.local_max_bytes = 1 << 20;
  tiered_options.local_ttl = 1ms;  // get() reads the table again almost every time
  Cache tiered(t.db(), tiered_options);
  Ledger ledger(t.db());
  Ledger lax_ledger(t.db(), lax_ledger_options);
  Ledger strict_ledger(t.db(), strict_ledger_options);

  ledger.open("a", "EUR");
  ledger.deposit("a", 500, "d1");
  lax.put("k", "v1", 60s);  // writes go to the primary, whatever the options say
  failover("caught-up");

  // A standby that streams and has replayed everything serves the hits and the history.
  double answered = standby_reads("answered");
  CHECK(lax.get("k") == "v1");
  CHECK(tiered.get("k") == "v1");
  CHECK(lax.get_or_load("k", 60s, never_load) == "v1");
  CHECK(lax_ledger.history("a").items.size() == 1);
  CHECK(lax_ledger.transfers({}).items.size() == 1);
  CHECK(standby_reads("answered") - answered == 5);

  // A lagging standby: replay paused, the primary moves on. Within the lax bound the standby's
  // older data is what a routed read sees; past the strict bound reads go to the primary.
  replay(standby, true);
  lax.put("k", "v2", 60s);
  ledger.deposit("a", 200, "d2");
  ledger.open("c", "EUR");  // an account the standby does not know yet
  std::this_thread::sleep_for(600ms);
  answered = standby_reads("answered");
  const double stale = standby_reads("stale");
  CHECK(lax.get("k") == "v1");
  CHECK(lax_ledger.history("a").items.size() == 1);
  CHECK(strict.get("k") == "v2");
  CHECK(strict_ledger.history("a").items.size() == 2);
  CHECK(strict_ledger.transfers({}).items.size() == 2);
  CHECK(lax_ledger.history("c").items.empty());  // not found on the standby: asked the primary
  CHECK(standby_reads("answered") - answered == 3);
  CHECK(standby_reads("stale") - stale == 3);
  // A miss on the standby is never the answer: the primary's value is.
  CHECK(lax.get_or_load("fresh", 60s, [] { return std::optional<std::string>("loaded"); }) == "loaded");
  lax.put("only-on-primary", "p", 60s);
  CHECK(lax.get("only-on-primary") == "p");

  // Replay resumed and caught up: the standby serves the new data.
  replay(standby, false);
  failover("caught-up");
  CHECK(lax.get("k") == "v2");
  CHECK(lax_ledger.history("a").items.size() == 2);

  // The CLI's --standby: the same page; a standby that is not PostgreSQL is a usage error.
  const std::vector<std::string> history{"--db",     t.url(),   "--prefix", t.db().table_prefix(), "--json",
                                         "ledger",   "history", "a",        "--max-staleness",     "10s",
                                         "--standby"};
  std::string out;
  auto with = [&](const std::string& standby_arg) {
    auto args = history;
    args.push_back(standby_arg);
    return args;
  };
  REQUIRE(run_cli(with(standby_url(t.url())), &out) == 0);
  CHECK(nlohmann::json::parse(out).at("items").size() == 2);
  CHECK(run_cli(with("sqlite::memory:")) == 2);

  // A standby that stopped receiving is never used, however fresh it was.
  failover("detach-standby");
  lax.put("k", "v3", 60s);
  const double stale_before = standby_reads("stale");
  CHECK(lax.get("k") == "v3");
  CHECK(standby_reads("stale") - stale_before == 1);
  failover("attach-standby");
  CHECK(ledger.check().ok());
}

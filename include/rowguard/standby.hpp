#pragma once
// rowguard::StandbyReads: reads that may be served by a PostgreSQL streaming-replication standby
// when the caller accepts data up to a bound behind the primary (docs/scaling.md, "Read routing").
// Only cache hits (CacheOptions::standby) and ledger history (LedgerOptions::standby: history() and
// transfers()) use it; writes, lock operations, balances and the ledger's own checks never do.

#include <chrono>

namespace rowguard {

class Database;

struct StandbyReads {
  // A Database opened on the standby's URL (its own pool; the same table prefix as the primary's).
  // Null: every read goes to the primary. The standby's sessions are kept alive by the reader, so
  // this Database object itself need not outlive it.
  Database* database = nullptr;
  // How far behind its primary the standby may be for a read to go there, checked in the read's
  // own snapshot: while streaming, the time since the standby last heard from the primary (and,
  // while it is still replaying, since the last commit it replayed); a standby that is not
  // streaming, or not a standby any more, is never used. Too stale, unreachable or failing: the
  // read goes to the primary. Needs pg_read_all_stats (or pg_monitor) on the standby. Default: 1s.
  // REQUIRES: > 0.
  std::chrono::milliseconds max_staleness{1000};
};

}  // namespace rowguard

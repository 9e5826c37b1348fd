#include <fmt/format.h>

#include "backend/dialects.hpp"

namespace rowguard::detail {
namespace {

// PostgreSQL: times are timestamptz; the clock is clock_timestamp(), which advances inside a
// transaction, unlike now().
class PostgresDialect final : public Dialect {
 public:
  explicit PostgresDialect(BlobTransport blobs) : blobs_(blobs) {}
  std::string_view name() const noexcept override { return "postgres"; }
  std::string now_ms() const override { return "CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)"; }
  std::string ms_to_timestamp(std::string_view ms_expr) const override {
    return fmt::format("(TIMESTAMPTZ 'epoch' + CAST({} AS bigint) * INTERVAL '1 millisecond')", ms_expr);
  }
  std::string timestamp_to_ms(std::string_view ts_expr) const override {
    return fmt::format("CAST(floor(EXTRACT(EPOCH FROM {}) * 1000) AS bigint)", ts_expr);
  }
  std::string blob_param(std::string_view param) const override {
    return blobs_ == BlobTransport::hex_text ? fmt::format("decode({}, 'hex')", param) : std::string(param);
  }
  std::string blob_column(std::string_view expr) const override {
    return blobs_ == BlobTransport::hex_text ? fmt::format("encode({}, 'hex')", expr) : std::string(expr);
  }
  std::string now_timestamp() const override { return "clock_timestamp()"; }
  std::string timestamp_plus_ms(std::string_view ts_expr, std::string_view ms_param) const override {
    return fmt::format("({} + CAST({} AS bigint) * INTERVAL '1 millisecond')", ts_expr, ms_param);
  }
  // Its data is the primary's as of some moment no earlier than its last replayed commit; when it
  // has also replayed all the WAL the primary had when it sent its last message (latest_end_lsn),
  // as of that message, received at last_msg_receipt_time. pg_last_xact_replay_timestamp() is the
  // commit time on the primary's clock: the bound assumes the two clocks agree (NTP), as lease
  // expiry does across a failover. NULL also while behind with no commit replayed yet.
  std::string standby_staleness() const override {
    return "SELECT CASE WHEN pg_is_in_recovery() THEN ("
           "SELECT (extract(epoch FROM clock_timestamp() - CASE WHEN pg_last_wal_replay_lsn() >= w.latest_end_lsn "
           "THEN greatest(w.last_msg_receipt_time, pg_last_xact_replay_timestamp()) "
           "ELSE pg_last_xact_replay_timestamp() END) * 1000)::bigint "
           "FROM pg_stat_wal_receiver w WHERE w.status = 'streaming') END";
  }
  std::string share_lock() const override { return " FOR SHARE"; }
  // The rows are locked to change columns that are no key, so the mode is NO KEY UPDATE, which is
  // also what such an UPDATE takes. FOR UPDATE would block the KEY SHARE lock a foreign-key check
  // takes: a hold on A -> B would then wait for a transfer holding B, which waits for A (deadlocks
  // measured in the holds concurrency test, each costing deadlock_timeout).
  std::string for_update() const override { return " FOR NO KEY UPDATE"; }
  // An uncorrelated subquery runs once, before the scan that finds (and waits for) the row.
  std::string lock_wait_limit(std::string_view ms_param) const override {
    return fmt::format("(SELECT set_config('lock_timeout', CAST({} AS text), true)) IS NOT NULL", ms_param);
  }
  bool has_server_statements() const noexcept override { return true; }
  bool has_notify() const noexcept override { return true; }
  bool has_prepared_transactions() const noexcept override { return true; }
  std::string next_id(std::string_view) const override { return "DEFAULT"; }
  std::string table_exists() const override {
    return "SELECT CASE WHEN to_regclass(CAST($1 AS text)) IS NULL THEN 0 ELSE 1 END";
  }
  std::string begin(const TxOptions& options) const override {
    static constexpr const char* levels[] = {"READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"};
    return fmt::format("BEGIN ISOLATION LEVEL {}{}", levels[static_cast<int>(options.isolation)],
                       options.access == TxAccess::read_only ? " READ ONLY" : "");
  }
  // Transaction-scoped advisory locks, so they also work behind a transaction-pooling PgBouncer.
  // Wrapped so the statement returns a plain integer (SOCI cannot read a void column).
  std::string transaction_lock() const override {
    return "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS named_lock";
  }

 private:
  BlobTransport blobs_;
};

}  // namespace

std::shared_ptr<const Dialect> postgres_dialect(BlobTransport blobs) {
  return std::make_shared<PostgresDialect>(blobs);
}

}  // namespace rowguard::detail

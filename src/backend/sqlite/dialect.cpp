#include <fmt/format.h>

#include "backend/dialects.hpp"

namespace rowguard::detail {
namespace {

// SQLite: times are INTEGER milliseconds since the epoch; write transactions begin IMMEDIATE so a
// writer queues on the busy timeout up front instead of failing at its first write.
class SqliteDialect final : public Dialect {
 public:
  explicit SqliteDialect(BlobTransport blobs) : blobs_(blobs) {}
  std::string_view name() const noexcept override { return "sqlite"; }
  // 'now' is fixed for the duration of one sqlite3_step(), and SQLite keeps it as whole
  // milliseconds of a Julian day, so this is exact. (strftime would format and parse text: the
  // cache's hit read spent a fifth of its time there.)
  std::string now_ms() const override { return "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"; }
  std::string ms_to_timestamp(std::string_view ms_expr) const override { return fmt::format("({})", ms_expr); }
  std::string timestamp_to_ms(std::string_view ts_expr) const override { return fmt::format("({})", ts_expr); }
  std::string blob_param(std::string_view param) const override {
    return blobs_ == BlobTransport::hex_text ? fmt::format("rowguard_unhex({})", param) : std::string(param);
  }
  std::string blob_column(std::string_view expr) const override {
    // hex(NULL) is '', so keep NULL apart from an empty blob.
    return blobs_ == BlobTransport::hex_text ? fmt::format("CASE WHEN {0} IS NULL THEN NULL ELSE hex({0}) END", expr)
                                             : std::string(expr);
  }
  std::string now_timestamp() const override { return now_ms(); }
  std::string timestamp_plus_ms(std::string_view ts_expr, std::string_view ms_param) const override {
    return fmt::format("({} + {})", ts_expr, ms_param);
  }
  std::string next_id(std::string_view table) const override {
    return fmt::format("(SELECT COALESCE(MAX(id), 0) + 1 FROM {})", table);
  }
  bool has_single_writer() const noexcept override { return true; }
  std::string table_exists() const override {
    return "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1";
  }
  std::string begin(const TxOptions& options) const override {
    return options.access == TxAccess::read_only ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE";
  }

 private:
  BlobTransport blobs_;
};

}  // namespace

std::shared_ptr<const Dialect> sqlite_dialect(BlobTransport blobs) { return std::make_shared<SqliteDialect>(blobs); }

}  // namespace rowguard::detail

#pragma once
// Values bound to and read from statements: null, int64, text and blob. Nothing else crosses the backend.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace rowguard {

// Binary data. Kept apart from text so that each backend binds it as BLOB or bytea.
struct Blob {
  std::string bytes;
  friend bool operator==(const Blob&, const Blob&) = default;
};

// A bound parameter or a result cell. Money is always std::int64_t minor units, never floating point.
using Value = std::variant<std::nullptr_t, std::int64_t, std::string, Blob>;

// One result row. Accessors throw Error(permanent) on a NULL or a cell of the wrong type,
// so a schema drift shows up as an error, never as a silently wrong number.
class Row {
 public:
  // hex_text_blobs: the backend returns blob columns as hex text (the SOCI adapter does, since
  // SOCI 4.0 cannot carry bytea or NUL bytes); bytes() then decodes text cells from hex.
  explicit Row(std::vector<Value> cells, bool hex_text_blobs = false)
      : cells_(std::move(cells)), hex_text_blobs_(hex_text_blobs) {}
  std::size_t size() const noexcept { return cells_.size(); }
  bool is_null(std::size_t column) const;
  std::int64_t i64(std::size_t column) const;
  std::string text(std::size_t column) const;
  // Reads a column that was selected through the dialect's blob expression (see docs/backend.md).
  std::string bytes(std::size_t column) const;
  std::optional<std::int64_t> opt_i64(std::size_t column) const;
  std::optional<std::string> opt_text(std::size_t column) const;
  const Value& operator[](std::size_t column) const;

 private:
  std::vector<Value> cells_;
  bool hex_text_blobs_ = false;
};

// The rows a statement returned and how many rows it changed.
struct Result {
  std::vector<Row> rows;
  std::int64_t affected = 0;

  bool empty() const noexcept { return rows.empty(); }
  // The only row; Error(permanent) when there is not exactly one.
  const Row& one() const;
};

}  // namespace rowguard

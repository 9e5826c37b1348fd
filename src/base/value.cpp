#include "rowguard/value.hpp"

#include <charconv>

#include <fmt/format.h>

#include "rowguard/error.hpp"

#include "base/sql_text.hpp"

namespace rowguard {

const Value& Row::operator[](std::size_t column) const {
  if (column >= cells_.size())
    throw Error(ErrorKind::permanent, fmt::format("result column {} out of range (row has {})", column, cells_.size()));
  return cells_[column];
}

bool Row::is_null(std::size_t column) const { return std::holds_alternative<std::nullptr_t>((*this)[column]); }

std::int64_t Row::i64(std::size_t column) const {
  const Value& v = (*this)[column];
  if (const auto* i = std::get_if<std::int64_t>(&v)) return *i;
  if (const auto* s = std::get_if<std::string>(&v)) {  // numeric columns arrive as text on PostgreSQL
    std::int64_t out = 0;
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), out);
    if (ec == std::errc() && end == s->data() + s->size()) return out;
    throw Error(ErrorKind::permanent, fmt::format("result column {} is '{}', not a 64-bit integer", column, *s));
  }
  throw Error(ErrorKind::permanent,
              fmt::format("result column {} is {}, not an integer", column, is_null(column) ? "NULL" : "a blob"));
}

std::string Row::text(std::size_t column) const {
  const Value& v = (*this)[column];
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  if (const auto* i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
  throw Error(ErrorKind::permanent,
              fmt::format("result column {} is {}, not text", column, is_null(column) ? "NULL" : "a blob"));
}

std::string Row::bytes(std::size_t column) const {
  const Value& v = (*this)[column];
  if (const auto* b = std::get_if<Blob>(&v)) return b->bytes;
  if (const auto* s = std::get_if<std::string>(&v)) return hex_text_blobs_ ? detail::from_hex(*s) : *s;
  throw Error(ErrorKind::permanent,
              fmt::format("result column {} is {}, not a blob", column, is_null(column) ? "NULL" : "an integer"));
}

std::optional<std::int64_t> Row::opt_i64(std::size_t column) const {
  if (is_null(column)) return std::nullopt;
  return i64(column);
}

std::optional<std::string> Row::opt_text(std::size_t column) const {
  if (is_null(column)) return std::nullopt;
  return text(column);
}

const Row& Result::one() const {
  if (rows.size() != 1)
    throw Error(ErrorKind::permanent, fmt::format("expected exactly one row, the statement returned {}", rows.size()));
  return rows.front();
}

}  // namespace rowguard

#include "backend/libpqxx/statement.hpp"

#include <charconv>
#include <stdexcept>

#include <fmt/format.h>
#include <pqxx/nontransaction>
#include <pqxx/prepared_statement>
#include <pqxx/result>

#include "backend/libpqxx/driver.hpp"
#include "backend/postgres/engine.hpp"

namespace rowguard::detail {

namespace {
// Type OIDs from pg_type.h that rowguard reads as integers or bytes; everything else is text.
constexpr pqxx::oid bool_oid = 16, bytea_oid = 17, int8_oid = 20, int2_oid = 21, int4_oid = 23, oid_oid = 26;

std::int64_t integer(std::string_view text) {
  std::int64_t n = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (error != std::errc() || end != text.data() + text.size())
    throw std::invalid_argument(fmt::format("not an integer: '{}'", text));  // cannot happen for these types
  return n;
}

Value cell(const pqxx::field& field, pqxx::oid type) {
  if (field.is_null()) return nullptr;
  const std::string_view text(field.c_str(), field.size());
  switch (type) {
    case int8_oid:
    case int2_oid:
    case int4_oid:
    case oid_oid:
      return integer(text);
    case bool_oid:
      return static_cast<std::int64_t>(text == "t" ? 1 : 0);
    case bytea_oid:
      return Blob{from_hex(text)};  // text-format bytea is "\x" followed by hex digits
    default:
      return std::string(text);
  }
}

bool is_transaction_control(std::string_view sql) {
  for (const std::string_view word : {"BEGIN", "COMMIT", "ROLLBACK", "END"})
    if (sql.substr(0, word.size()) == word) return true;
  return false;
}

// The parameters as libpqxx 6.4 passes them to libpq, built in place: text, integers in decimal,
// blobs in bytea's "\x" hex form, NULL as a null pointer. tx.exec_prepared(name, params) moves
// them on (its variadic form would convert and copy each value once more).
pqxx::internal::params text_params(const std::vector<Value>& values) {
  pqxx::internal::params p;
  p.strings.reserve(values.size());
  p.lengths.reserve(values.size());
  p.nonnulls.reserve(values.size());
  p.binaries.reserve(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const Value& v = values[i];
    p.binaries.push_back(0);
    if (std::holds_alternative<std::nullptr_t>(v)) {
      p.lengths.push_back(0);
      p.nonnulls.push_back(0);
      continue;
    }
    if (const auto* n = std::get_if<std::int64_t>(&v)) {
      char digits[24];
      const auto end = std::to_chars(digits, digits + sizeof digits, *n).ptr;
      p.strings.emplace_back(digits, end);
    } else if (const auto* s = std::get_if<std::string>(&v)) {
      if (s->find('\0') != std::string::npos)
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("text parameter ${} contains a NUL byte; PostgreSQL text cannot hold one", i + 1));
      p.strings.push_back(*s);
    } else {
      p.strings.push_back("\\x" + to_hex(std::get<Blob>(v).bytes));
    }
    p.lengths.push_back(static_cast<int>(p.strings.back().size()));
    p.nonnulls.push_back(1);
  }
  return p;
}
}  // namespace

PgStatementTraits PgStatementTraits::of(std::string_view sql) {
  PgStatementTraits t;
  t.effect = effect_of(sql);
  t.rollback = sql == "ROLLBACK";
  t.begin = sql.substr(0, 5) == "BEGIN";
  t.rollback_to = savepoint_statement(sql).op == SavepointOp::rollback_to;
  return t;
}

PgStatements::PgStatements(pqxx::connection_base& connection, bool unnamed)
    : connection_(connection), unnamed_(unnamed) {}

const PgStatement& PgStatements::find(std::string_view sql) {
  Recent& recent = recent_[(reinterpret_cast<std::uintptr_t>(sql.data()) >> 4) % recent_.size()];
  if (recent.data == sql.data() && recent.statement->sql == sql) return *recent.statement;
  auto hit = by_text_.find(sql);
  if (hit == by_text_.end()) {
    PgStatement s;
    s.sql = std::string(sql);
    s.control = is_transaction_control(sql);
    s.traits = PgStatementTraits::of(sql);
    if (!unnamed_ && sql.substr(0, plan_each_call_marker.size()) != plan_each_call_marker) {
      s.name = fmt::format("rowguard_{}", by_text_.size() + 1);
      connection_.prepare(s.name, s.sql);
    }
    hit = by_text_.emplace(s.sql, std::move(s)).first;
  }
  recent = {sql.data(), &hit->second};
  return hit->second;
}

Result PgStatements::run(pqxx::transaction_base& tx, const PgStatement& statement, const std::vector<Value>& params) {
  const pqxx::result r = params.empty() && statement.control ? tx.exec(statement.sql)
                         : statement.name.empty()            ? tx.exec_params(statement.sql, text_params(params))
                                                             : tx.exec_prepared(statement.name, text_params(params));
  Result result;
  result.affected = static_cast<std::int64_t>(r.affected_rows());
  const auto columns = static_cast<std::size_t>(r.columns());
  std::vector<pqxx::oid> types(columns);
  for (std::size_t c = 0; c < columns; ++c) types[c] = r.column_type(static_cast<pqxx::row::size_type>(c));
  result.rows.reserve(r.size());
  for (const auto& row : r) {
    std::vector<Value> cells;
    cells.reserve(columns);
    for (std::size_t c = 0; c < columns; ++c)
      cells.push_back(cell(row[static_cast<pqxx::row::size_type>(c)], types[c]));
    result.rows.emplace_back(std::move(cells));
  }
  return result;
}

}  // namespace rowguard::detail

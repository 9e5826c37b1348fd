#include "backend/libpqxx/statement.hpp"

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

Value cell(const pqxx::field& field, pqxx::oid type) {
  if (field.is_null()) return nullptr;
  const std::string_view text(field.c_str(), field.size());
  switch (type) {
    case int8_oid:
    case int2_oid:
    case int4_oid:
    case oid_oid:
      return static_cast<std::int64_t>(std::stoll(std::string(text)));
    case bool_oid:
      return static_cast<std::int64_t>(text == "t" ? 1 : 0);
    case bytea_oid:
      return Blob{from_hex(text)};  // text-format bytea is "\x" followed by hex digits
    default:
      return std::string(text);
  }
}
}  // namespace

PgStatements::PgStatements(pqxx::connection_base& connection, bool unnamed)
    : connection_(connection), unnamed_(unnamed) {}

const std::string& PgStatements::name_for(std::string_view sql) {
  const auto hit = names_.find(std::string(sql));
  if (hit != names_.end()) return hit->second;
  std::string name = fmt::format("rowguard_{}", names_.size() + 1);
  connection_.prepare(name, std::string(sql));
  return names_.emplace(std::string(sql), std::move(name)).first->second;
}

Result PgStatements::run(pqxx::transaction_base& tx, std::string_view sql, const std::vector<Value>& params) {
  // Parameters go as text: integers in decimal, blobs in bytea's "\x" hex form, NULL as a null pointer.
  std::vector<std::string> storage(params.size());
  std::vector<const char*> pointers(params.size(), nullptr);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Value& v = params[i];
    if (std::holds_alternative<std::nullptr_t>(v)) continue;
    if (const auto* n = std::get_if<std::int64_t>(&v)) {
      storage[i] = std::to_string(*n);
    } else if (const auto* s = std::get_if<std::string>(&v)) {
      if (s->find('\0') != std::string::npos)
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("text parameter ${} contains a NUL byte; PostgreSQL text cannot hold one", i + 1));
      storage[i] = *s;
    } else {
      storage[i] = "\\x" + to_hex(std::get<Blob>(v).bytes);
    }
    pointers[i] = storage[i].c_str();
  }
  const pqxx::result r = params.empty() && is_transaction_control(sql) ? tx.exec(std::string(sql))
                         : unnamed_ ? tx.exec_params(std::string(sql), pqxx::prepare::make_dynamic_params(pointers))
                                    : tx.exec_prepared(name_for(sql), pqxx::prepare::make_dynamic_params(pointers));

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

bool PgStatements::is_transaction_control(std::string_view sql) {
  for (const std::string_view word : {"BEGIN", "COMMIT", "ROLLBACK", "END"})
    if (sql.substr(0, word.size()) == word) return true;
  return false;
}

}  // namespace rowguard::detail

#include "backend/soci/statement.hpp"

#include <cctype>
#include <ctime>

#include <fmt/format.h>
#include <soci/soci.h>

#include "rowguard/error.hpp"

#include "base/sql_text.hpp"

namespace rowguard::detail {

namespace {
constexpr std::size_t max_cached_statements = 128;

// SOCI needs to know up front whether a statement yields rows (into a soci::row) or not.
bool returns_rows(std::string_view sql) {
  if (effect_of(sql) == StatementEffect::read || sql.substr(0, writes_marker.size()) == writes_marker) return true;
  std::string upper(sql);
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return upper.find("RETURNING") != std::string::npos;
}

char kind_of(const Value& v) {
  if (std::holds_alternative<std::nullptr_t>(v)) return 'n';
  if (std::holds_alternative<std::int64_t>(v)) return 'i';
  if (std::holds_alternative<std::string>(v)) return 't';
  return 'b';
}

Value cell(const soci::row& row, std::size_t i, bool sqlite) {
  if (row.get_indicator(i) == soci::i_null) return nullptr;
  switch (row.get_properties(i).get_data_type()) {
    case soci::dt_integer:
      // SOCI's sqlite3 backend reads a column declared INTEGER as a 32-bit int and truncates
      // larger values without a word: refuse rather than return a wrong number.
      if (sqlite)
        throw Error(ErrorKind::permanent,
                    fmt::format("soci+sqlite3: column '{}' is declared INTEGER, which SOCI reads as 32 bits; declare "
                                "it BIGINT (or select an expression such as col + 0)",
                                row.get_properties(i).get_name()));
      return static_cast<std::int64_t>(row.get<int>(i));
    case soci::dt_long_long:
      return static_cast<std::int64_t>(row.get<long long>(i));
    case soci::dt_unsigned_long_long:
      return static_cast<std::int64_t>(row.get<unsigned long long>(i));
    case soci::dt_double:
      return fmt::format("{}", row.get<double>(i));
    case soci::dt_date: {
      const std::tm t = row.get<std::tm>(i);
      return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour,
                         t.tm_min, t.tm_sec);
    }
    case soci::dt_string:
    case soci::dt_xml:
      return row.get<std::string>(i);
    default:
      throw Error(ErrorKind::permanent, "soci: a blob column must be selected through the dialect's blob_column()");
  }
}
}  // namespace

// One prepared statement with the storage its parameters are bound to (SOCI binds by reference).
struct SociStatements::Prepared {
  std::string signature;  // parameter kinds; a change of kinds re-prepares
  std::vector<long long> ints;
  std::vector<std::string> texts;
  std::vector<soci::indicator> indicators;
  soci::row row;
  bool rows = false;
  std::unique_ptr<soci::statement> statement;
};

SociStatements::SociStatements(soci::session& session)
    : session_(session), sqlite_(session.get_backend_name() == "sqlite3") {}
SociStatements::~SociStatements() { clear(); }
void SociStatements::clear() noexcept { cache_.clear(); }

Result SociStatements::run(std::string_view sql, const std::vector<Value>& params) {
  std::string signature;
  for (const auto& p : params) signature += kind_of(p);
  auto& slot = cache_[std::string(sql)];
  if (!slot || slot->signature != signature) {
    if (!slot && cache_.size() > max_cached_statements) {
      cache_.clear();
      return run(sql, params);
    }
    auto prepared = std::make_unique<Prepared>();
    prepared->signature = signature;
    prepared->ints.assign(params.size(), 0);
    prepared->texts.assign(params.size(), std::string());
    prepared->indicators.assign(params.size(), soci::i_ok);
    prepared->rows = returns_rows(sql);
    // SOCI leaves an unbound :pN as NULL; refuse the mismatch as the native drivers do.
    if (const std::size_t wanted = placeholder_count(sql); wanted != params.size())
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("statement takes {} parameters, {} were given", wanted, params.size()));
    prepared->statement = std::make_unique<soci::statement>(session_);
    auto& st = *prepared->statement;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const std::string name = fmt::format("p{}", i + 1);
      if (signature[i] == 'i')
        st.exchange(soci::use(prepared->ints[i], prepared->indicators[i], name));
      else
        st.exchange(soci::use(prepared->texts[i], prepared->indicators[i], name));
    }
    if (prepared->rows) st.exchange(soci::into(prepared->row));
    st.alloc();
    st.prepare(rewrite_placeholders(sql, PlaceholderStyle::colon_named));
    st.define_and_bind();
    slot = std::move(prepared);
  }
  Prepared& p = *slot;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Value& v = params[i];
    p.indicators[i] = soci::i_ok;
    switch (signature[i]) {
      case 'n':
        p.indicators[i] = soci::i_null;
        p.texts[i].clear();
        break;
      case 'i':
        p.ints[i] = std::get<std::int64_t>(v);
        break;
      case 't':
        if (std::get<std::string>(v).find('\0') != std::string::npos)
          throw Error(ErrorKind::invalid_argument,
                      fmt::format("text parameter ${} contains a NUL byte, which SOCI cannot bind", i + 1));
        p.texts[i] = std::get<std::string>(v);
        break;
      default:
        p.texts[i] = to_hex(std::get<Blob>(v).bytes);
    }
  }
  Result result;
  auto& st = *p.statement;
  try {
    // execute(true) even without rows: SOCI's sqlite3 backend does not step a statement executed
    // without data exchange.
    bool got = st.execute(true);
    while (p.rows && got) {
      std::vector<Value> cells;
      cells.reserve(p.row.size());
      for (std::size_t c = 0; c < p.row.size(); ++c) cells.push_back(cell(p.row, c, sqlite_));
      result.rows.emplace_back(std::move(cells), /*hex_text_blobs=*/true);
      got = st.fetch();
    }
    result.affected = p.rows && effect_of(sql) == StatementEffect::read ? 0 : st.get_affected_rows();
  } catch (...) {
    cache_.erase(std::string(sql));  // a failed SOCI statement may be left mid-fetch: prepare afresh
    throw;
  }
  // Prepared afresh next time, so PostgreSQL plans it for that call's values (its first runs of a
  // prepared statement get a plan of their own; sql_text.hpp says why these need one).
  if (sql.substr(0, plan_each_call_marker.size()) == plan_each_call_marker) cache_.erase(std::string(sql));
  return result;
}

}  // namespace rowguard::detail

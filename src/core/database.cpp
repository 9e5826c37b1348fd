#include "rowguard/database.hpp"

#include <filesystem>

#include <fmt/format.h>

#include "rowguard/config.hpp"

#include "backend/backend.hpp"
#include "backend/sqlite3/driver.hpp"
#include "backend/url.hpp"

#include "core/database_gate.hpp"
#include "core/schema_scripts.hpp"
#if ROWGUARD_HAVE_POSTGRES
#include "backend/libpqxx/driver.hpp"
#endif
#if ROWGUARD_HAVE_SOCI
#include "backend/soci/driver.hpp"
#endif

namespace rowguard {

namespace {
std::shared_ptr<detail::Backend> open_backend(std::string_view url, const Options& options) {
  detail::validate_options(options);
  const detail::ParsedUrl parsed = detail::parse_url(url);
  const bool sqlite_file = (parsed.engine == detail::Engine::sqlite || parsed.engine == detail::Engine::soci_sqlite3) &&
                           !parsed.memory && parsed.target.rfind("file:", 0) != 0;
  // SOCI 4.0.3 always opens SQLite with SQLITE_OPEN_CREATE: the file is looked for here, for both
  // drivers alike (the native one also opens without SQLITE_OPEN_CREATE, so no file appears even
  // when this one is removed meanwhile).
  if (!options.create_if_missing && sqlite_file && !std::filesystem::exists(parsed.target))
    throw Error(ErrorKind::not_found, fmt::format("no SQLite database at {}: the file does not exist", parsed.display));
  switch (parsed.engine) {
    case detail::Engine::sqlite:
      return detail::open_sqlite(parsed, options);
    case detail::Engine::postgres:
#if ROWGUARD_HAVE_POSTGRES
      return detail::open_postgres(parsed, options);
#else
      throw Error(ErrorKind::invalid_argument,
                  "this rowguard was built without PostgreSQL (ROWGUARD_WITH_POSTGRES=OFF)");
#endif
    case detail::Engine::soci_sqlite3:
    case detail::Engine::soci_postgresql:
#if ROWGUARD_HAVE_SOCI
      return detail::open_soci(parsed, options);
#else
      throw Error(ErrorKind::invalid_argument, "this rowguard was built without SOCI (ROWGUARD_WITH_SOCI=OFF)");
#endif
  }
  throw Error(ErrorKind::invalid_argument, "unsupported database URL");
}

// Borrows (and so opens) one session, so a wrong path or an unreachable server fails at open().
Database checked(std::shared_ptr<detail::Backend> backend) {
  { auto session = backend->borrow(); }
  return detail::DatabaseGate::wrap(std::move(backend));
}
}  // namespace

Database Database::open(std::string_view url, const Options& options) { return checked(open_backend(url, options)); }

Database::Database(std::shared_ptr<detail::Backend> backend) : backend_(std::move(backend)) {}
Database::Database(Database&&) noexcept = default;
Database& Database::operator=(Database&&) noexcept = default;
Database::~Database() = default;

std::string_view Database::backend_name() const noexcept { return backend_->name(); }
const std::string& Database::display_url() const noexcept { return backend_->display_url(); }
const std::string& Database::table_prefix() const noexcept { return backend_->options().table_prefix; }
const Options& Database::options() const noexcept { return backend_->options(); }
PoolStats Database::pool_stats() const { return backend_->stats(); }

int Database::library_schema_version() noexcept {
  // The last step's number (the steps are numbered 1 to N without a gap: the unit tests check it).
  static const int latest = [] {
    const auto steps = detail::migrations("sqlite");
    return steps.empty() ? 0 : steps.back().version;
  }();
  return latest;
}

namespace {
int recorded_version(detail::Session& session, const detail::Backend& backend) {
  const std::string table = backend.table("schema_version");
  if (session.exec(session.dialect().table_exists(), {table}).one().i64(0) == 0) return 0;
  return static_cast<int>(
      session.exec(fmt::format("SELECT CAST(COALESCE(MAX(version), 0) AS bigint) FROM {}", table), {}).one().i64(0));
}

Error newer_schema(int found, int expected) {
  return Error(ErrorKind::schema_mismatch,
               fmt::format("the database's rowguard schema is version {}, newer than this library's version {}; "
                           "upgrade rowguard",
                           found, expected));
}
}  // namespace

int Database::migrate() {
  auto& backend = *backend_;
  const std::string dialect(backend.dialect().name());
  const auto steps = detail::migrations(dialect);
  const auto* version_table = detail::find_script(dialect, "000_schema_version");
  if (!version_table) throw Error(ErrorKind::permanent, "schema script 000_schema_version is missing from the build");
  const int latest = library_schema_version();
  int applied = 0;
  for (const auto& step : steps) {
    auto session = backend.borrow();
    (*session)->begin(TxOptions{});
    const std::string lock = backend.dialect().transaction_lock();  // one migrator at a time
    if (!lock.empty()) (*session)->exec(lock, {backend.table("migrate")});
    if ((*session)->exec((*session)->dialect().table_exists(), {backend.table("schema_version")}).one().i64(0) == 0)
      (*session)->exec_script(detail::with_prefix(version_table->sql, backend.options().table_prefix));
    const int current = recorded_version(**session, backend);
    if (current > latest) throw newer_schema(current, latest);
    if (current >= step.version) {
      (*session)->commit();
      continue;
    }
    (*session)->exec_script(detail::with_prefix(step.script->sql, backend.options().table_prefix));
    (*session)->commit();
    ++applied;
  }
  return applied;
}

int Database::schema_version() {
  auto session = backend_->borrow();
  return recorded_version(**session, *backend_);
}

void Database::require_schema() {
  const int found = schema_version();
  const int expected = library_schema_version();
  if (found > expected) throw newer_schema(found, expected);
  if (found < expected)
    throw Error(ErrorKind::schema_mismatch,
                fmt::format("the database's rowguard schema is version {}, this library needs version {}; "
                            "run `rowguard migrate`",
                            found, expected));
}

std::int64_t Database::now_ms() {
  auto session = backend_->borrow();
  return (*session)->exec(fmt::format("SELECT {}", (*session)->dialect().now_ms()), {}).one().i64(0);
}

Result Database::exec(std::string_view sql, const std::vector<Value>& params) {
  auto session = backend_->borrow();
  return (*session)->exec(sql, params);
}

Transaction Database::begin(TxOptions options) { return detail::DatabaseGate::begin(*backend_, options); }

}  // namespace rowguard

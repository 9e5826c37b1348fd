#include "support/support.hpp"

#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <regex>
#include <stdexcept>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/wait.h>

namespace rowguard::test {

namespace {
std::string& current() {
  static std::string name;
  return name;
}

std::string unique_token() {
  static std::atomic<unsigned> counter{0};
  static const unsigned seed = std::random_device{}();
  return fmt::format("{}_{:x}_{}", ::getpid(), seed & 0xffffff, counter.fetch_add(1));
}

struct ScratchRoot {
  std::filesystem::path path;
  ScratchRoot() {
    path = std::filesystem::temp_directory_path() / fmt::format("rowguard-test-{}", unique_token());
    std::filesystem::create_directories(path);
  }
  ~ScratchRoot() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};
}  // namespace

bool set_backend(const std::string& name) {
  for (const char* known : {"sqlite-file", "sqlite-memory", "postgres", "soci-sqlite3", "soci-postgresql", "pgbouncer"})
    if (name == known) {
      current() = name;
      return true;
    }
  return false;
}

const std::string& backend() {
  if (current().empty()) FAIL("this test needs --backend NAME");
  return current();
}

const Capabilities& can() {
  static const std::map<std::string, Capabilities> table = [] {
    Capabilities sqlite;
    Capabilities memory = sqlite;
    memory.shared_database = false;
    Capabilities soci_sqlite = sqlite;
    soci_sqlite.narrows_integer_columns = true;
    Capabilities postgres;
    postgres.shared_server = postgres.timestamptz = postgres.bytea = postgres.row_locks = postgres.notify = true;
    postgres.serialization_failures = postgres.standbys = postgres.partitioning = true;
    Capabilities libpqxx = postgres;
    libpqxx.named_prepared_statements = true;
    Capabilities pooled = postgres;
    pooled.transaction_pooler = true;
    return std::map<std::string, Capabilities>{{"sqlite-file", sqlite},       {"sqlite-memory", memory},
                                               {"soci-sqlite3", soci_sqlite}, {"postgres", libpqxx},
                                               {"soci-postgresql", postgres}, {"pgbouncer", pooled}};
  }();
  const auto found = table.find(backend());
  if (found == table.end()) FAIL("no capabilities known for backend " << backend());
  return found->second;
}

std::string pg_url() {
  const char* url = std::getenv("ROWGUARD_TEST_PG");
  if (url == nullptr || *url == '\0')
    FAIL("ROWGUARD_TEST_PG is not set: run the suite through scripts/test.sh (or scripts/pg-throwaway.sh -- ctest)");
  return url;
}

std::string pgbouncer_url() {
  const char* url = std::getenv("ROWGUARD_TEST_PGBOUNCER");
  if (url == nullptr || *url == '\0')
    FAIL("ROWGUARD_TEST_PGBOUNCER is not set: run the suite through scripts/test.sh (pg-throwaway.sh --pgbouncer)");
  return url;
}

std::filesystem::path scratch_dir() {
  static ScratchRoot root;
  auto dir = root.path / unique_token();
  std::filesystem::create_directories(dir);
  return dir;
}

TestDb::TestDb(Options options, const std::function<std::string(const std::string&)>& route)
    : options_(std::move(options)) {
  const std::string& b = backend();
  if (b == "sqlite-file")
    url_ = "sqlite:" + (scratch_dir() / "test.db").string();
  else if (b == "sqlite-memory")
    url_ = "sqlite::memory:";
  else if (b == "soci-sqlite3")
    url_ = "soci+sqlite3:" + (scratch_dir() / "test.db").string();
  else if (b == "postgres")
    url_ = pg_url();
  else if (b == "pgbouncer")
    url_ = pgbouncer_url();
  else
    url_ = "soci+" + pg_url();
  if (route) url_ = route(url_);
  // On PostgreSQL every test gets its own tables through its own prefix.
  if (can().shared_server) options_.table_prefix += "t" + unique_token() + "_";
  primary_ = std::make_shared<Database>(Database::open(url_, options_));
}

std::shared_ptr<Database> TestDb::another(Options options) {
  if (!can().shared_database) return primary_;
  return std::make_shared<Database>(Database::open(url_, options));
}

std::string TestDb::blob_type() const { return can().bytea ? "bytea" : "BLOB"; }

std::int64_t rows_in(Database& db, const char* table) {
  return db.exec(fmt::format("SELECT count(*) FROM {}{}", db.table_prefix(), table)).one().i64(0);
}

RefusedUpdates::RefusedUpdates(Database& db, const std::string& table) : db_(db), table_(table) {
  const std::string p = db.table_prefix();
  if (dialect_of(db).name() == "postgres") {
    db.exec(
        fmt::format("CREATE FUNCTION {0}refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE EXCEPTION 'the test refuses updates of this table'; END $$",
                    p));
    db.exec(
        fmt::format("CREATE TRIGGER {0}refuse_update BEFORE UPDATE ON {0}{1} FOR EACH ROW EXECUTE FUNCTION "
                    "{0}refuse_update()",
                    p, table));
  } else {
    db.exec(
        fmt::format("CREATE TRIGGER {0}refuse_update BEFORE UPDATE ON {0}{1} BEGIN "
                    "SELECT RAISE(ABORT, 'the test refuses updates of this table'); END",
                    p, table));
  }
}

RefusedUpdates::~RefusedUpdates() {
  const std::string p = db_.table_prefix();
  try {
    if (dialect_of(db_).name() == "postgres") {
      db_.exec(fmt::format("DROP TRIGGER {0}refuse_update ON {0}{1}", p, table_));
      db_.exec(fmt::format("DROP FUNCTION {0}refuse_update()", p));
    } else {
      db_.exec(fmt::format("DROP TRIGGER {0}refuse_update", p));
    }
  } catch (const std::exception& e) {
    FAIL_CHECK("could not drop the trigger that refuses updates: " << e.what());
  }
}

ErrorKind kind_of(const std::function<void()>& f, std::string* message) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.kind();
  }
  FAIL("no rowguard::Error was thrown");
  return ErrorKind::permanent;
}

namespace {
void require_cli() {
  if (std::string_view(ROWGUARD_CLI).empty())
    FAIL("this build has no CLI (ROWGUARD_BUILD_TOOLS=OFF): tag this test [cli]");
}
}  // namespace

int run_cli(const std::vector<std::string>& args, std::string* out, bool with_stderr) {
  require_cli();
  if (!current().empty() && !can().shared_database)
    FAIL("another process cannot open an in-memory database: tag this test [shared-db]");
  std::string command = ROWGUARD_CLI;
  for (const auto& a : args) {
    std::string quoted = "'";
    for (const char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    command += " " + quoted + "'";
  }
  command += with_stderr ? " 2>&1" : " 2>/dev/null";
  return run_command(command, out);
}

std::string own_database(const std::string& url, const std::string& name) {
  auto admin = Database::open(pg_url());
  try {
    (*backend_of(admin).borrow())->exec_script("CREATE DATABASE " + name);
  } catch (const Error& e) {
    // 42P04: made by an earlier run on this server; 23505: by a concurrent one just now.
    if (e.sqlstate() != "42P04" && e.sqlstate() != "23505") throw;
  }
  const std::string current = "/rowguard_test";
  const auto at = url.find(current);
  if (at == std::string::npos) throw std::runtime_error("own_database: no /rowguard_test in " + url);
  return url.substr(0, at) + "/" + name + url.substr(at + current.size());
}

std::string keyword_form(const std::string& url, const std::string& extra) {
  static const std::regex uri(R"(^(soci\+)?postgres(?:ql)?://([^@/]+)@([^:/]+):([0-9]+)/([^?]+)(?:\?(.*))?$)");
  std::smatch m;
  if (!std::regex_match(url, m, uri)) throw std::runtime_error("keyword_form: not a test server URI: " + url);
  std::string keywords = fmt::format("{}host={} port={} dbname={} user={}", m[1].matched ? "soci+postgresql:" : "",
                                     m[3].str(), m[4].str(), m[5].str(), m[2].str());
  std::string query = m[6].str();
  for (std::size_t start = 0; start < query.size();) {
    std::size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    keywords += " " + query.substr(start, end - start);
    start = end + 1;
  }
  return extra.empty() ? keywords : keywords + " " + extra;
}

int run_command(const std::string& command, std::string* output) {
  FILE* pipe = ::popen(command.c_str(), "r");
  // No Catch2 assertion here: run_cli is called from worker threads, and Catch2 is not thread-safe.
  if (pipe == nullptr) throw std::runtime_error("popen failed for " + command);
  std::string text;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) text.append(buffer, n);
  const int status = ::pclose(pipe);
  if (output) *output = std::move(text);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int start_cli_holding(TestDb& t, const std::vector<std::string>& args, const std::string& held) {
  require_cli();
  if (!current().empty() && !can().shared_database)
    FAIL("another process cannot open an in-memory database: tag this test [shared-db]");
  std::vector<std::string> all{ROWGUARD_CLI, "--db", t.url(), "--prefix", t.db().table_prefix()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::execv(ROWGUARD_CLI, argv.data());
    ::_exit(127);
  }
  Locks probe(t.db());
  for (int i = 0; i < 250; ++i) {
    for (const auto& l : probe.list())
      if (l.name == held && l.held) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL(fmt::format("the CLI process never took the lock '{}'", held));
  return pid;
}

void require_mismatches(Database& db, Ledger& ledger,
                        const std::vector<std::pair<std::string, std::function<void()>>>& calls) {
  auto state = [&] {
    std::vector<std::int64_t> v{rows_in(db, "transfers"), rows_in(db, "entries"), rows_in(db, "holds")};
    for (const auto& a : ledger.list()) v.insert(v.end(), {a.balance, a.held});
    return v;
  };
  const auto before = state();
  for (const auto& [field, call] : calls) {
    INFO("changed: " << field);
    std::string message;
    CHECK(kind_of(call, &message) == ErrorKind::idempotency_mismatch);
    CHECK_THAT(message, Catch::Contains(field + " differs"));
  }
  CHECK(state() == before);
  CHECK(ledger.check().ok());
}

int race_through_gate(Transaction gate, const std::vector<std::function<void()>>& calls) {
  std::barrier start(static_cast<std::ptrdiff_t>(calls.size()) + 1);
  std::atomic<std::size_t> entered{0};
  std::atomic<int> returned{0};
  std::vector<std::thread> threads;
  for (const auto& call : calls)
    threads.emplace_back([&, f = &call] {
      start.arrive_and_wait();
      ++entered;
      try {
        (*f)();
      } catch (...) {
      }
      ++returned;
    });
  start.arrive_and_wait();
  while (entered < calls.size()) std::this_thread::yield();
  // Time for every call to reach the gate's lock; nothing is asserted on it.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const int early = returned.load();
  gate.rollback();
  for (auto& t : threads) t.join();
  return early;
}

}  // namespace rowguard::test

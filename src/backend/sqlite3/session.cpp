#include <atomic>
#include <sqlite3.h>
#include <unistd.h>

#include <fmt/format.h>

#include "backend/dialects.hpp"
#include "backend/sqlite/engine.hpp"
#include "backend/sqlite3/driver.hpp"
#include "backend/sqlite3/statement.hpp"

namespace rowguard::detail {

namespace {

// One sqlite3 connection. WAL for files (readers never block the writer), a busy timeout so
// writers queue instead of failing, foreign keys on.
class SqliteSession final : public Session {
 public:
  SqliteSession(const std::string& filename, bool memory, const Options& options,
                std::shared_ptr<const Dialect> dialect)
      : dialect_(std::move(dialect)) {
    // Without create_if_missing a file that vanished after Database::open looked for it is not made anew.
    const bool create = memory || options.create_if_missing;
    const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX;
    const int rc = sqlite3_open_v2(filename.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) {
      const std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close_v2(db_);
      db_ = nullptr;
      throw sqlite_error(rc, fmt::format("opening '{}'", memory ? std::string(":memory:") : filename), message);
    }
    statements_ = std::make_unique<SqliteStatements>(db_);
    try {
      sqlite3_extended_result_codes(db_, 1);
      sqlite3_busy_timeout(db_, static_cast<int>(options.busy_timeout.count()));
      exec_script("PRAGMA foreign_keys = ON");
      if (!memory) {
        const Result mode = statements_->run("PRAGMA journal_mode = WAL", {});
        if (mode.rows.empty() || mode.rows[0].text(0) != "wal")
          throw Error(ErrorKind::permanent, fmt::format("sqlite: '{}' could not be switched to WAL mode", filename));
        exec_script("PRAGMA synchronous = FULL");
      }
    } catch (...) {
      statements_.reset();
      sqlite3_close_v2(db_);
      throw;
    }
  }

  ~SqliteSession() override {
    statements_.reset();
    sqlite3_close_v2(db_);
  }

  const Dialect& dialect() const noexcept override { return *dialect_; }

  Result exec(std::string_view sql, const std::vector<Value>& params) override {
    try {
      return statements_->run(sql, params);
    } catch (...) {
      // Some errors (IOERR, FULL, a BUSY on COMMIT) make SQLite roll the transaction back itself.
      if (in_transaction_ && sqlite3_get_autocommit(db_)) in_transaction_ = false;
      throw;
    }
  }

  void exec_script(const std::string& script) override {
    char* message = nullptr;
    const int rc = sqlite3_exec(db_, script.c_str(), nullptr, nullptr, &message);
    if (rc != SQLITE_OK) {
      const std::string text = message ? message : sqlite3_errmsg(db_);
      sqlite3_free(message);
      throw sqlite_error(rc, "running a script", text);
    }
  }

  bool transaction_open() const noexcept override { return !sqlite3_get_autocommit(db_); }

  void rollback() override {
    if (sqlite3_get_autocommit(db_)) {  // already rolled back by SQLite
      in_transaction_ = false;
      return;
    }
    Session::rollback();
  }

 private:
  sqlite3* db_ = nullptr;
  std::unique_ptr<SqliteStatements> statements_;
  std::shared_ptr<const Dialect> dialect_;
};

// sqlite::memory: is one database shared by all sessions of a Database: the memdb VFS shares a
// database between connections when its name starts with '/'.
std::string memory_filename() {
  static std::atomic<unsigned> counter{0};
  return fmt::format("file:/rowguard-memory-{}-{}?vfs=memdb", ::getpid(), counter.fetch_add(1));
}

}  // namespace

std::shared_ptr<Backend> open_sqlite(const ParsedUrl& url, const Options& options) {
  const std::string filename = url.memory ? memory_filename() : url.target;
  auto dialect = sqlite_dialect(BlobTransport::native);
  auto factory = [filename, memory = url.memory, options, dialect]() -> std::unique_ptr<Session> {
    return std::make_unique<SqliteSession>(filename, memory, options, dialect);
  };
  auto backend = std::make_shared<Backend>("sqlite", url.display, options, dialect, factory);
  // An in-memory database lives as long as one connection to it: keep one open for the backend's life.
  if (url.memory) backend->keep_alive(std::shared_ptr<Session>(factory()));
  return backend;
}

}  // namespace rowguard::detail

#pragma once
// The sqlite3 C API driver of the SQLite engine (backend/sqlite/engine.hpp).

#include <memory>
#include <string_view>

#include "backend/backend.hpp"
#include "backend/url.hpp"

namespace rowguard::detail {

// Opens the backend for sqlite:PATH or sqlite::memory:.
std::shared_ptr<Backend> open_sqlite(const ParsedUrl& url, const Options& options);

// A failed sqlite3 call as a rowguard Error: the kind and SQLSTATE of its result code (the engine's
// mapping), the context and SQLite's own message.
Error sqlite_error(int result_code, std::string_view context, std::string_view message);

}  // namespace rowguard::detail

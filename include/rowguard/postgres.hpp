#pragma once
// Opt-in: rowguard over libpqxx 6.4 connections made by the service's own factory.

#include <functional>
#include <memory>

#include <pqxx/connection>

#include "rowguard/database.hpp"

namespace rowguard {

// The factory is called whenever the pool needs a new session (at most options.pool_size open),
// from any thread. rowguard owns each connection it returns.
// Example: auto db = rowguard::from_pqxx([] { return std::make_unique<pqxx::connection>("dbname=app"); });
// (libpqxx 6.4's connection_base has no virtual destructor, so the factory returns the concrete type.)
Database from_pqxx(std::function<std::unique_ptr<pqxx::connection>()> factory, const Options& options = {});

}  // namespace rowguard

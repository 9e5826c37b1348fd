#pragma once
// Shared state of a Locks object: its statements, in-process wake-ups and the LISTEN thread.
// Leases keep it alive, so a Lease may outlive the Locks that made it.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "backend/backend.hpp"
#include "core/lock_statements.hpp"
#include "rowguard/locks.hpp"

namespace rowguard {

struct Locks::Impl {
  Impl(std::shared_ptr<detail::Backend> backend, LockOptions options);
  ~Impl();

  Result run(const std::string& sql, const std::vector<Value>& params);
  void validate_name(std::string_view name) const;
  void validate_ttl(std::chrono::milliseconds ttl) const;
  void validate_owner(std::string_view owner) const;

  // In-process wake-ups: a release in this process, or a NOTIFY, bumps the name's generation.
  std::uint64_t generation(const std::string& name);
  void wake(const std::string& name);
  // Waits until the generation of name moves past seen, or timeout. Returns early on stop.
  void wait_for_change(const std::string& name, std::uint64_t seen, std::chrono::milliseconds timeout,
                       const std::stop_token& stop);
  // Starts the LISTEN thread once, when the backend has one. True while it is connected.
  bool ensure_listener();

  std::shared_ptr<detail::Backend> backend;
  LockOptions options;
  std::string table;
  std::string channel;
  detail::LockStatements sql;
  std::string owner_prefix;

  // Wake-ups are process-wide (every Locks on the same database and table shares them), keyed by
  // "<database url>|<table>|<name>".
  std::string wake_prefix;
  // The process's LISTEN connection for this database and channel, shared by every Locks on it;
  // started by the first wait that needs it, stopped with the last Locks.
  struct ListenerThread;
  std::mutex mutex;  // guards listener
  std::shared_ptr<ListenerThread> listener;
};

}  // namespace rowguard

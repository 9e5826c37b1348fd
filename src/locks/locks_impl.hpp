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

#include "rowguard/locks.hpp"

#include "backend/backend.hpp"

#include "locks/locks_sql.hpp"

namespace rowguard {

namespace detail {
struct WakeEntry;  // src/core/locks.cpp
}

struct Locks::Impl {
  Impl(std::shared_ptr<detail::Backend> backend, LockOptions options);
  ~Impl();

  Result run(const std::string& sql, const std::vector<Value>& params);
  // params, plus the row lock timeout when the statement takes one (LockStatements::row_lock_timeout_param).
  std::vector<Value> bounded(std::vector<Value> params) const;
  void validate_name(std::string_view name) const;
  void validate_ttl(std::chrono::milliseconds ttl) const;
  void validate_owner(std::string_view owner) const;

  // In-process wake-ups: a release or force-release in this process, or a NOTIFY, wakes the
  // name's waiters in every Locks of the process. A name nobody here waits on has nobody to wake.
  void wake(const std::string& name);

  // One waiter of one name. The process's map of names holds an entry only while a Watch of that
  // name exists (reference-counted), so it stays as small as the number of names being waited on,
  // however many distinct names the process locks over its life.
  class Watch {
   public:
    Watch(Impl& impl, const std::string& name);
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    // Moves on every wake-up of the name while this Watch lives.
    std::uint64_t generation() const;
    // Waits until the generation moves past seen, or timeout. Returns early on stop.
    void wait_for_change(std::uint64_t seen, std::chrono::milliseconds timeout, const std::stop_token& stop) const;

   private:
    std::string key_;
    detail::WakeEntry* entry_;  // owned by the process's map; lives while it has watchers
  };
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

namespace detail {
// The one door from rowguard's own code (and its tests) into a Locks and its leases: Locks::Impl,
// Lease::State and Lease's constructor are private, and this gate is their friend.
struct LocksAccess {
  using Impl = Locks::Impl;
  using LeaseData = Lease::State;
  static Impl& impl(Locks& locks) noexcept { return *locks.impl_; }
  static Lease lease(std::shared_ptr<LeaseData> state) { return Lease(std::move(state)); }
};
using LocksImpl = LocksAccess::Impl;
using LeaseData = LocksAccess::LeaseData;
// Entries in the process's map of waited-on lock names, across every Locks: for tests.
std::size_t wake_entries();
// A lease's State leaves the process's registry of held (name, owner) pairs when it is destroyed
// (the Lease was destroyed, moved over or detached). Called by ~Lease::State only.
void forget_held(const std::string& key) noexcept;
// Entries in that registry (one per live Lease made by any Locks of the process, or acquire in
// flight): for tests.
std::size_t held_entries();
}  // namespace detail

}  // namespace rowguard

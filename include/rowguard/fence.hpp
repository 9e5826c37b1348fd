#pragma once
// rowguard::Fence: rejects writes that carry a fencing token older than one already seen.

#include <cstdint>
#include <memory>
#include <string_view>

#include "rowguard/database.hpp"
#include "rowguard/transaction.hpp"

namespace rowguard {

// For resources outside the lock's own rows: a storage service, a file, a remote API. The
// resource (or a gate in front of it) records the highest token it has seen and rejects lower
// ones, so a paused holder whose lease was taken over cannot write after it wakes up.
// A fence rejects an evicted holder only once a newer token has been presented to it.
// Thread-safety: safe for concurrent use.
//
// Example:
//   rowguard::Fence fence(db);
//   if (!fence.admit("s3://bucket/report.csv", lease.token())) return;  // a newer holder wrote already
class Fence {
 public:
  explicit Fence(Database& db);
  // Records token for resource unless a higher one was seen; true when the write may go ahead.
  // The same token is admitted again (one holder, several writes). One statement.
  bool admit(std::string_view resource, std::int64_t token);
  // Inside the caller's transaction: Error(lock_lost) when token is older than the highest seen.
  void guard(Transaction& tx, std::string_view resource, std::int64_t token);
  // The highest token seen for resource, or 0.
  std::int64_t highest(std::string_view resource);

 private:
  struct Impl;  // src/locks/fence.cpp: the backend and the statements (src/locks/locks_sql.cpp)
  std::shared_ptr<const Impl> impl_;
};

}  // namespace rowguard

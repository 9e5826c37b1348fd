#pragma once
// The cache's optional in-process tier: a bounded LRU (by bytes) of recently read values with a
// short ttl, in front of the cache table.

#include <array>
#include <chrono>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace rowguard::detail {

// Thread-safety: safe for concurrent use (one mutex; every call is short and does no I/O).
//
// A fill races with invalidations made through this process: a reader may read a value from the
// table, then an invalidation commits and drops the key here, then the reader stores what it read.
// So every drop bumps a stamp (one of 64 stripes by key hash), readers take the stamp before
// reading the table, and fill() stores only while the stamp is unchanged: once drop() has returned,
// no copy older than the committed write can be filled. In the moment between a commit and its
// drop, a reader may read the new value from the table while a slower one fills the old; fill()
// never replaces a copy of a higher table generation, which narrows that, and the drop ends it.
class LocalTier {
 public:
  using Clock = std::chrono::steady_clock;

  LocalTier(std::size_t max_bytes, std::chrono::milliseconds ttl) : max_bytes_(max_bytes), ttl_(ttl) {}

  // Outer optional: found and fresh; inner: the value, or a cached "absent".
  std::optional<std::optional<std::string>> get(std::string_view key);
  // Taken before reading the table, handed to fill().
  std::uint64_t stamp(std::string_view key);
  // Keeps value (of the table's generation) for min(ttl, life) unless key was dropped since stamp
  // was taken or a copy of a higher generation is held.
  void fill(std::string_view key, const std::optional<std::string>& value, std::int64_t generation,
            std::chrono::milliseconds life, std::uint64_t stamp);
  void drop(std::string_view key);
  void drop_prefix(std::string_view prefix);

  std::size_t bytes();
  std::uint64_t evictions();

 private:
  struct Entry {
    std::string key;
    std::optional<std::string> value;
    std::int64_t generation;
    Clock::time_point expires;
    std::size_t bytes;
  };
  static std::size_t stripe(std::string_view key) { return std::hash<std::string_view>{}(key) % 64; }
  void erase(std::list<Entry>::iterator it);  // REQUIRES: mutex_ held

  const std::size_t max_bytes_;
  const std::chrono::milliseconds ttl_;
  std::mutex mutex_;
  std::list<Entry> lru_;                                                    // most recently used first
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;  // views into lru_ keys
  std::array<std::uint64_t, 64> stamps_{};
  std::size_t bytes_ = 0;
  std::uint64_t evictions_ = 0;
};

}  // namespace rowguard::detail

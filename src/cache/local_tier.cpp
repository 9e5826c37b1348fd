#include "cache/local_tier.hpp"

#include <algorithm>

namespace rowguard::detail {

namespace {
// Bookkeeping per entry beyond its key and value bytes: list node, map slot, strings.
constexpr std::size_t overhead_bytes = 128;
}  // namespace

std::optional<std::optional<std::string>> LocalTier::get(std::string_view key) {
  std::lock_guard lock(mutex_);
  const auto found = index_.find(key);
  if (found == index_.end()) return std::nullopt;
  const auto it = found->second;
  if (it->expires <= Clock::now()) {
    erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it);
  return it->value;
}

std::uint64_t LocalTier::stamp(std::string_view key) {
  std::lock_guard lock(mutex_);
  return stamps_[stripe(key)];
}

void LocalTier::fill(std::string_view key, const std::optional<std::string>& value, std::int64_t generation,
                     std::chrono::milliseconds life, std::uint64_t stamp) {
  const std::size_t size = key.size() + (value ? value->size() : 0) + overhead_bytes;
  const auto keep = std::min(life, ttl_);
  if (size > max_bytes_ || keep.count() <= 0) return;
  std::lock_guard lock(mutex_);
  if (stamps_[stripe(key)] != stamp) return;  // dropped since the caller read the table
  if (const auto found = index_.find(key); found != index_.end()) {
    if (found->second->generation > generation) return;  // a newer copy is already here
    erase(found->second);
  }
  lru_.push_front(Entry{std::string(key), value, generation, Clock::now() + keep, size});
  index_.emplace(lru_.front().key, lru_.begin());
  bytes_ += size;
  while (bytes_ > max_bytes_) {
    erase(std::prev(lru_.end()));
    ++evictions_;
  }
}

void LocalTier::drop(std::string_view key) {
  std::lock_guard lock(mutex_);
  ++stamps_[stripe(key)];
  if (const auto found = index_.find(key); found != index_.end()) erase(found->second);
}

void LocalTier::drop_prefix(std::string_view prefix) {
  std::lock_guard lock(mutex_);
  for (auto& s : stamps_) ++s;
  for (auto it = lru_.begin(); it != lru_.end();) {
    const auto next = std::next(it);
    if (std::string_view(it->key).substr(0, prefix.size()) == prefix) erase(it);
    it = next;
  }
}

std::size_t LocalTier::bytes() {
  std::lock_guard lock(mutex_);
  return bytes_;
}

std::uint64_t LocalTier::evictions() {
  std::lock_guard lock(mutex_);
  return evictions_;
}

void LocalTier::erase(std::list<Entry>::iterator it) {
  index_.erase(std::string_view(it->key));
  bytes_ -= it->bytes;
  lru_.erase(it);
}

}  // namespace rowguard::detail

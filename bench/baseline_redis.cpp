#include <memory>
#include <random>
#include <stdexcept>

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include "baselines.hpp"

namespace bench {

namespace {
using Context = std::shared_ptr<redisContext>;
using Reply = std::unique_ptr<redisReply, void (*)(void*)>;

Context connect(const std::string& host, int port) {
  Context c(redisConnect(host.c_str(), port), redisFree);
  if (!c || c->err) throw std::runtime_error(fmt::format("redis {}:{}: {}", host, port, c ? c->errstr : "no memory"));
  return c;
}

template <class... Args>
Reply command(const Context& c, const char* format, Args... args) {
  Reply r(static_cast<redisReply*>(redisCommand(c.get(), format, args...)), freeReplyObject);
  if (!r) throw std::runtime_error(fmt::format("redis: {}", c->errstr));
  if (r->type == REDIS_REPLY_ERROR) throw std::runtime_error(fmt::format("redis: {}", r->str));
  return r;
}

// Deletes the key only if it still holds this owner's value.
constexpr const char* compare_and_delete =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
}  // namespace

Op redis_lock(const std::string& host, int port, const std::string& run, int client) {
  auto c = connect(host, port);
  const std::string name = fmt::format("lock:{}:{}", run, client), owner = fmt::format("owner-{}", client);
  const std::string sha = command(c, "SCRIPT LOAD %s", compare_and_delete)->str;
  return [=](std::uint64_t) {
    if (command(c, "SET %s %s NX PX 30000", name.c_str(), owner.c_str())->type != REDIS_REPLY_STATUS)
      throw std::runtime_error("redis lock busy");
    command(c, "EVALSHA %s 1 %s %s", sha.c_str(), name.c_str(), owner.c_str());
  };
}

void redis_fill(const std::string& host, int port, int keys, const std::string& value) {
  auto c = connect(host, port);
  for (int k = 0; k < keys; ++k) command(c, "SET %s %b PX 3600000", cache_key(k).c_str(), value.data(), value.size());
}

Op redis_get(const std::string& host, int port, int keys) {
  auto c = connect(host, port);
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  return [=](std::uint64_t) {
    const auto r = command(c, "GET %s", cache_key(static_cast<int>((*rng)() % static_cast<unsigned>(keys))).c_str());
    if (r->type != REDIS_REPLY_STRING) throw std::runtime_error("redis cache miss");
  };
}

}  // namespace bench

#pragma once
// Prepared SOCI statements of one session, keyed by SQL text and parameter types.

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rowguard/value.hpp"

namespace soci {
class session;
}

namespace rowguard::detail {

// Thread-safety: none; owned by one session.
class SociStatements {
 public:
  explicit SociStatements(soci::session& session);
  ~SociStatements();
  // Binds text, integers and NULLs by name (:p1, :p2, ...); blobs go as hex text, which the
  // dialect's blob_param() decodes in SQL.
  Result run(std::string_view sql, const std::vector<Value>& params);
  void clear() noexcept;

 private:
  struct Prepared;
  soci::session& session_;
  bool sqlite_;
  std::unordered_map<std::string, std::unique_ptr<Prepared>> cache_;
};

}  // namespace rowguard::detail

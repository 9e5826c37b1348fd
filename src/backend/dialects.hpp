#pragma once
// The two SQL dialects. The SOCI adapter reuses them with blobs carried as hex text, because
// SOCI 4.0 binds PostgreSQL blobs as large objects and cuts strings at a NUL byte.

#include <memory>

#include "backend/backend.hpp"

namespace rowguard::detail {

enum class BlobTransport { native, hex_text };

std::shared_ptr<const Dialect> sqlite_dialect(BlobTransport blobs);
std::shared_ptr<const Dialect> postgres_dialect(BlobTransport blobs);

}  // namespace rowguard::detail

// Decoding of params.sparse (docs/bundle-format.md, "Sparse params"): back to the exact params.bin
// bytes, checked against the SHA-256 in its header. Mirrors edgepack/bundle/sparse_params.py.
#ifndef EDGEPACK_NATIVE_SPARSE_PARAMS_H_
#define EDGEPACK_NATIVE_SPARSE_PARAMS_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "sha256.h"

namespace edgepack {

constexpr const char kSparseParamsEncoding[] = "sparse-words-v1";

namespace sparse_detail {
inline uint64_t ReadLe(const std::string& data, size_t offset, int bytes) {
  uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(data[offset + i]);
  return value;
}
}  // namespace sparse_detail

// Layout: "EPSPARSE", u32 version (1), u32 reserved, u64 dense length, 32-byte SHA-256 of the dense
// bytes, a bitmap with one bit per 4-byte dense word (LSB first; 1 = nonzero), the nonzero words.
// Returns false with `error` set when the file is damaged; `dense` receives the params.bin bytes.
inline bool DecodeSparseParams(const std::string& data, std::string* dense, std::string* error) {
  constexpr size_t kHeader = 56;
  if (data.size() < kHeader || data.compare(0, 8, "EPSPARSE") != 0 || sparse_detail::ReadLe(data, 8, 4) != 1) {
    *error = "not a version-1 sparse params file";
    return false;
  }
  const uint64_t length = sparse_detail::ReadLe(data, 16, 8);
  const uint64_t words = (length + 3) / 4;
  const uint64_t bitmap_bytes = (words + 7) / 8;
  if (length > (uint64_t(1) << 40) || data.size() < kHeader + bitmap_bytes) {
    *error = "sparse params file is truncated";
    return false;
  }
  const char* bitmap = data.data() + kHeader;
  uint64_t nonzero = 0;
  for (uint64_t i = 0; i < words; ++i) nonzero += (static_cast<uint8_t>(bitmap[i / 8]) >> (i % 8)) & 1;
  if (data.size() != kHeader + bitmap_bytes + 4 * nonzero) {
    *error = "sparse params file is truncated or inconsistent";
    return false;
  }
  std::string out(words * 4, '\0');
  const char* value = data.data() + kHeader + bitmap_bytes;
  for (uint64_t i = 0; i < words; ++i) {
    if ((static_cast<uint8_t>(bitmap[i / 8]) >> (i % 8)) & 1) {
      std::memcpy(&out[i * 4], value, 4);
      value += 4;
    }
  }
  out.resize(length);
  Sha256 hash;
  hash.Update(out.data(), out.size());
  std::string expected;
  static const char kHex[] = "0123456789abcdef";
  for (size_t i = 24; i < kHeader; ++i) {
    expected += kHex[static_cast<uint8_t>(data[i]) >> 4];
    expected += kHex[static_cast<uint8_t>(data[i]) & 15];
  }
  if (hash.HexDigest() != expected) {
    *error = "decoded params do not match their SHA-256";
    return false;
  }
  *dense = std::move(out);
  return true;
}

}  // namespace edgepack

#endif  // EDGEPACK_NATIVE_SPARSE_PARAMS_H_

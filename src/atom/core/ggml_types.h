// GGML tensor types as stored in GGUF files, with their block geometry. Shared by the GGUF
// reader (io/) and the CPU backend's dequantization and quantized matmul (backends/cpu/quants.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace atom {

// Values are the on-disk ids of ggml.h; do not renumber.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct GgmlTypeInfo {
  std::string_view name;  // "Q4_1"
  int64_t block_size;     // elements per block (1 for plain types)
  size_t type_size;       // bytes per block
  bool supported;         // atom can dequantize it
};

// Null for ids atom does not know at all (corrupt or newer file).
const GgmlTypeInfo* ggml_type_info(uint32_t id);
inline const GgmlTypeInfo& ggml_type_info(GgmlType t) { return *ggml_type_info(uint32_t(t)); }

// Bytes of one row of n elements (n must be a multiple of the block size).
inline size_t ggml_row_bytes(GgmlType t, int64_t n) {
  const auto& info = ggml_type_info(t);
  return size_t(n / info.block_size) * info.type_size;
}

}  // namespace atom

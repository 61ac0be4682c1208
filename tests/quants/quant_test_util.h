// Helpers shared by the quants tests: the committed dequantization vectors and random weights.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "atom/core/dtype.h"
#include "atom/core/ggml_types.h"

namespace atom::cpu::testing {

// tests/data/quants/<TYPE>.bin, written by scripts/gen_quant_vectors.py:
//   "AQV1"; u32 type; u32 n; u32 n_bytes; u8 raw[n_bytes]; f32 expected[n]
struct QuantVector {
  GgmlType type = GgmlType::kF32;
  int64_t n = 0;
  std::vector<uint8_t> raw;
  std::vector<float> expected;
};

inline bool read_quant_vector(const std::string& path, QuantVector* v) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  char magic[4];
  uint32_t header[3];
  f.read(magic, 4);
  f.read(reinterpret_cast<char*>(header), sizeof(header));
  if (!f || std::memcmp(magic, "AQV1", 4) != 0) return false;
  v->type = GgmlType(header[0]);
  v->n = header[1];
  v->raw.resize(header[2]);
  v->expected.resize(header[1]);
  f.read(reinterpret_cast<char*>(v->raw.data()), std::streamsize(v->raw.size()));
  f.read(reinterpret_cast<char*>(v->expected.data()), std::streamsize(v->expected.size() * 4));
  return bool(f);
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Random but well-formed weights: [rows, cols] of `type` as GGML rows. Quantized types get random
// payload bytes with f16 scales of about 1e-2 (and Q4_1/Q4_K mins of either sign), so values
// stay in a realistic range and no scale is inf/NaN.
inline std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t cols,
                                           std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_real_distribution<float> scale(0.005f, 0.02f);
  std::uniform_int_distribution<int> byte(0, 255);
  const auto& info = ggml_type_info(type);
  const int64_t n_blocks = rows * (cols / info.block_size);
  std::vector<uint8_t> raw(size_t(n_blocks) * info.type_size);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(raw.data() + at, &v, 2); };
  switch (type) {
    case GgmlType::kF32:
      for (int64_t i = 0; i < n_blocks; ++i) {
        const float v = unit(rng);
        std::memcpy(raw.data() + i * 4, &v, 4);
      }
      return raw;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n_blocks; ++i) put16(size_t(i) * 2, f32_to_f16(unit(rng)));
      return raw;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n_blocks; ++i) put16(size_t(i) * 2, f32_to_bf16(unit(rng)));
      return raw;
    default:
      break;
  }
  for (auto& b : raw) b = uint8_t(byte(rng));
  for (int64_t i = 0; i < n_blocks; ++i) {
    const size_t at = size_t(i) * info.type_size;
    switch (type) {
      case GgmlType::kQ4_0:
      case GgmlType::kQ8_0:
        put16(at, f32_to_f16(scale(rng)));
        break;
      case GgmlType::kQ4_1:
        put16(at, f32_to_f16(scale(rng)));
        put16(at + 2, f32_to_f16(unit(rng) * 0.15f));
        break;
      case GgmlType::kQ4_K:
        put16(at, f32_to_f16(scale(rng) * 0.1f));
        put16(at + 2, f32_to_f16(unit(rng) * 0.002f));
        break;
      case GgmlType::kQ6_K:
        put16(at + 208, f32_to_f16(scale(rng) * 0.05f));
        break;
      default:
        break;
    }
  }
  return raw;
}

inline std::vector<float> random_floats(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& f : v) f = unit(rng);
  return v;
}

}  // namespace atom::cpu::testing

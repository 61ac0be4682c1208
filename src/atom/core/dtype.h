// Element types of atom tensors. Block-quantized GGUF types (Q4_1, Q6_K, ...) are not DTypes:
// they live in io/gguf.h as GgmlType and are either dequantized at load or consumed by the
// quantized matmul of the CPU backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace atom {

enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3, kI8, kU8, kI32, kI64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);

// --- scalar conversions (round-to-nearest-even, as torch does) ---
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float fp8e4m3_to_f32(uint8_t v);
// Saturates to +-448, as fp8 quantization kernels clamp before casting (a bare torch cast of an
// out-of-range value gives NaN instead).
uint8_t f32_to_fp8e4m3(float f);

}  // namespace atom

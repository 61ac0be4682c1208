// Internal to the CPU backend: the SIMD kernels behind quants.h and the scalar helpers they share.
// quants.cpp validates arguments and dispatches; quants_simd.cpp holds the AVX2/AVX-512 kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "atom/backends/cpu/quants.h"

namespace atom::cpu::internal {

// GGML block geometry (ggml-common.h). Block types store their f16 scales little-endian and
// possibly unaligned (a Q4_1 block is 20 bytes), so fields are read with memcpy.
constexpr int64_t kQk = 32;         // elements per Q4_0/Q4_1/Q8_0 block
constexpr int64_t kQkK = 256;       // elements per Q4_K/Q6_K super-block
constexpr size_t kQ4_0Bytes = 18;   // {f16 d; u8 qs[16]}
constexpr size_t kQ4_1Bytes = 20;   // {f16 d, m; u8 qs[16]}
constexpr size_t kQ8_0Bytes = 34;   // {f16 d; i8 qs[32]}
constexpr size_t kQ4_KBytes = 144;  // {f16 d, dmin; u8 scales[12]; u8 qs[128]}
constexpr size_t kQ6_KBytes = 210;  // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Q4_K packs 8 six-bit (scale, min) pairs into 12 bytes: pairs 0..3 in the low 6 bits of bytes
// 0..3 (scales) and 4..7 (mins); pairs 4..7 split into a low nibble in bytes 8..11 and the top
// 2 bits in the spare bits of bytes 0..7.
inline void q4_k_scale_min(const uint8_t* scales, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *mn = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    *mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// Elements per block of a type atom supports (1 for F32/F16/BF16).
int64_t block_elems(GgmlType type);

// dst[0..count) = elements [first, first + count) of a plain (F32/F16/BF16) row.
void dequantize_plain_range(GgmlType type, const uint8_t* row, int64_t first, int64_t count,
                            float* dst);

// The portable kernels (quants.cpp). Arguments are already validated.
void dequantize_row_scalar(GgmlType type, const uint8_t* src, float* dst, int64_t n);
void matmul_scalar(const float* x, int64_t m, const QMatrix& w, float* y);

// The SIMD kernels (quants_simd.cpp); without AVX2 in the build they run the scalar ones.
const char* simd_level();
void dequantize_row_simd(GgmlType type, const uint8_t* src, float* dst, int64_t n);
void matmul_simd(const float* x, int64_t m, const QMatrix& w, float* y);

// Whether a matmul of this many multiply-adds is worth waking the OpenMP team for.
inline bool worth_threading(int64_t macs) { return macs >= (int64_t(1) << 16); }

}  // namespace atom::cpu::internal

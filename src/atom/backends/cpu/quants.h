// CPU dequantization and matmul over GGML block formats. Activations stay f32 (no activation
// quantization as llama.cpp does), so results equal "dequantize the weight to f32, then matmul"
// up to float summation order: this is what lets the CPU backend match HF transformers, which
// dequantizes GGUF to f32 at load.
#pragma once

#include <cstddef>
#include <cstdint>

#include "atom/core/ggml_types.h"

namespace atom::cpu {

// Types dequantize_row and matmul accept: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
bool quant_type_supported(GgmlType t);

// dst[0..n) = dequantized src; n must be a multiple of the type's block size.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// A weight matrix in GGML layout: `rows` output features, each row `cols` input features stored
// contiguously as GGML blocks (row_bytes = ggml_row_bytes(type, cols)). PyTorch's [out, in].
struct QMatrix {
  GgmlType type = GgmlType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;  // N (out features)
  int64_t cols = 0;  // K (in features)
  size_t row_bytes = 0;

  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes; }
};

// y[m, rows] = x[m, cols] * w^T. x and y are row-major f32 with leading dimensions cols and
// rows. Multi-threaded (OpenMP) over output features; SIMD where the CPU has it.
void matmul(const float* x, int64_t m, const QMatrix& w, float* y);

// out[i, :] = dequantized row ids[i] of `table` (embedding lookup). Ids must be in range.
void embedding(const QMatrix& table, const int32_t* ids, int64_t n, float* out);

// Which kernels run: the best SIMD ones this build was compiled for (AVX-512 or AVX2/FMA), or the
// portable scalar ones. The calls above use kBest; tests run both and compare.
enum class QuantKernels { kBest, kScalar };
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n, QuantKernels kernels);
void matmul(const float* x, int64_t m, const QMatrix& w, float* y, QuantKernels kernels);

// "avx512", "avx2" or "scalar": the SIMD level kBest uses in this build.
const char* quant_simd_level();

// A QMatrix over `data` (rows x cols of `type`), with row_bytes filled in.
QMatrix make_qmatrix(GgmlType type, const void* data, int64_t rows, int64_t cols);

}  // namespace atom::cpu

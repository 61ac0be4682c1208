// Dense GEMM on cuBLASLt for the linear layers and the LM head:
//   y[m, n] = x[m, k] · W[n, k]^T (+ bias[n])
// x and W bf16 (W in HF's nn.Linear layout, [out_features, in_features] row-major), f32
// accumulation (CUBLAS_COMPUTE_32F, split-K partial sums reduced in f32 too), y bf16 (rounded
// once, the bias added in f32 before the rounding, as torch's addmm epilogue does) or f32 (the
// LM head's logits).
//
// A Gemm owns a cuBLASLt handle and a workspace allocated once at construction on the current
// device; each call picks the algorithm cuBLASLt's heuristic chose for its (m, n, k, output type,
// bias, pointer alignments) the first time that combination was seen, and caches it. Calls only
// enqueue work on the stream (no allocation, no synchronization), so they can be captured in a
// CUDA graph once each shape has run once. One Gemm serves one stream at a time: calls must not
// overlap on different host threads or streams, since they share the workspace.
//
// Any k works: cuBLASLt's heuristic is asked with the real leading dimensions and pointer
// alignments, so a k that is not a multiple of 8, or a pointer off 16-byte alignment, gets an
// algorithm that supports it. Should cuBLASLt offer none, the first call with that shape throws
// atom::Error(kUnsupported) naming the shape.
//
// Small m (decode): a GEMM of m <= gemv_max_rows() rows is a memory-bound stream over W, which
// cuBLASLt reads below the card's bandwidth (and follows with a split-K reduce kernel). Those
// calls go to a GEMV kernel of our own instead: one pass over W with 16-byte loads, many bytes in
// flight per SM, f32 accumulation, the bias added in f32 and one rounding, so y means the same
// as on the cuBLASLt path. It needs k % 8 == 0 and x and W 16-byte aligned (each W row then
// starts on a 16-byte boundary); other calls take cuBLASLt whatever m is. The GEMV makes no plan
// (num_plans() counts cuBLASLt's only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "atom/core/tensor.h"

namespace atom::cuda {

class Gemm {
 public:
  // cuBLAS's recommended workspace on Hopper.
  static constexpr size_t kDefaultWorkspaceBytes = size_t(32) << 20;
  // The most x rows the GEMV kernel serves: each thread holds a 16-byte slice of every x row
  // per W load, and m * 4 rows of f32 sums, so 8 rows is the register budget's limit.
  static constexpr int kGemvRowsLimit = 8;
  // Calls with m <= this take the GEMV (when k and the pointers allow). Measured on an H100 at
  // the 8B decode shapes (`atom bench ceilings`, table small_m_gemm): m = 1 6 to 18% faster than
  // cuBLASLt, m = 4 level to 9% faster, m = 2 level on most shapes (down_proj 8% slower), m = 8
  // 3 to 14% slower (its 8 f32 FMAs per weight byte pair bind), so m > 4 stays on cuBLASLt.
  static constexpr int kDefaultGemvMaxRows = 4;

  explicit Gemm(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // --- launchers on device pointers ---
  // x: [m, k]; w: [n, k]; bias: [n] or null; y: [m, n]. m == 0 launches nothing.
  void launch(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias,
              __nv_bfloat16* y, int64_t m, int64_t n, int64_t k, cudaStream_t stream);
  // f32 output (LM head logits); the bias, if any, is f32 as the output.
  void launch(const __nv_bfloat16* x, const __nv_bfloat16* w, const float* bias, float* y,
              int64_t m, int64_t n, int64_t k, cudaStream_t stream);

  // --- entry point ---
  // x: [m, k] bf16; w: [n, k] bf16; bias: [n] of y's dtype, or an undefined Tensor for none;
  // y: [m, n] bf16 or f32. All contiguous on the GPU.
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
              cudaStream_t stream);

  // Calls with 1 <= m <= rows (and k % 8 == 0, x and W 16-byte aligned) take the GEMV kernel;
  // 0 sends every call to cuBLASLt. For tests and benchmarks; rows in [0, kGemvRowsLimit].
  void set_gemv_max_rows(int rows);
  int gemv_max_rows() const;

  // Algorithms chosen so far (one per shape, output type, bias and alignment class).
  size_t num_plans() const;
  size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::cuda

// RMSNorm on the GPU, as HF's LlamaRMSNorm computes it: f32 accumulation of mean(x^2), then
//   out = weight * to_dtype(x * rsqrt(mean(x^2) + eps))
// (for bf16 the normalized row is rounded to bf16 before the weight multiplies it, as HF does).
// Three levels: __global__ kernels (norm.cu), launchers on raw device pointers and a stream, and
// entry points on Tensors that check shapes, dtypes and devices and dispatch on the dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "atom/core/tensor.h"

namespace atom::cuda {

// --- launchers: rows of `dim` contiguous elements, one thread block per row ---
// out[t, :] = rms_norm(x[t, :]) * weight     x, out: [n, dim]; weight: [dim]; out may alias x.
void launch_rms_norm(const float* x, const float* weight, float* out, int64_t n, int64_t dim,
                     float eps, cudaStream_t stream);
void launch_rms_norm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out,
                     int64_t n, int64_t dim, float eps, cudaStream_t stream);

// Fused residual add + RMSNorm (vLLM's fused_add_rms_norm), all [n, dim]:
//   residual[t, :] = to_dtype(residual[t, :] + x[t, :]);  out[t, :] = rms_norm(residual[t, :])
// The norm reads the rounded residual, as HF's separate add then norm does. out may alias x.
void launch_add_rms_norm(const float* x, float* residual, const float* weight, float* out,
                         int64_t n, int64_t dim, float eps, cudaStream_t stream);
void launch_add_rms_norm(const __nv_bfloat16* x, __nv_bfloat16* residual,
                         const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t n, int64_t dim,
                         float eps, cudaStream_t stream);

// --- entry points ---
// x, out: [..., dim] contiguous, f32 or bf16, on the GPU; weight: [dim] of the same dtype.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
              cudaStream_t stream);
// x, residual, out: [..., dim]; residual is updated in place.
void add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                  const Tensor& out, cudaStream_t stream);

}  // namespace atom::cuda

// Device helpers shared by the CUDA kernels that must round exactly alike: bf16 conversions, the
// 16-byte packet, RMSNorm's scale and bf16 rounding, and the NeoX rotation. norm.cu's rms_norm,
// ops.cu's rope_cache_kernel and the fused qkv_rope_cache_kernel all use these, so the fused
// kernel gives the unfused sequence's bits by construction of the same f32 operations.
// Internal to backends/cuda: include from .cu files only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace atom::cuda::device {

// kVec elements moved by one load or store (16 bytes for kVec * sizeof(T) == 16).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Packet {
  T v[kVec];
};

__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float v) { return __float2bfloat16_rn(v); }
// v rounded to bf16 and back: the value a bf16 tensor op would hand to the next op.
__device__ __forceinline__ float round_bf16(float v) { return to_f32(to_bf16(v)); }

// --- RMSNorm (HF's LlamaRMSNorm) ---

// 1 / sqrt in IEEE precision (rsqrtf is 2 ulp), matching the CPU op.
__device__ __forceinline__ float inv_rms(float sum_sq, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_sq / float(dim) + eps);
}

// HF: weight * (x * rsqrt(var + eps)).to(dtype); for f32 the cast is a no-op, for bf16 the
// normalized value is rounded before the weight multiplies it and the product is rounded again.
__device__ __forceinline__ float apply_norm(float x, float r, float w) { return w * (x * r); }
__device__ __forceinline__ __nv_bfloat16 apply_norm(__nv_bfloat16 x, float r, __nv_bfloat16 w) {
  const float y = round_bf16(to_f32(x) * r);
  return to_bf16(to_f32(w) * y);
}

// --- NeoX rotary embedding ---

// HF: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), every product and sum a
// bf16 op. (a, b) = (x[i], x[i + half]); c, s are bf16 values. A product of two bf16 values is
// exact in f32, so rounding it to bf16 is exactly torch's bf16 multiply.
__device__ __forceinline__ void rotate(float a, float b, float c, float s, __nv_bfloat16& out_a,
                                       __nv_bfloat16& out_b) {
  out_a = to_bf16(round_bf16(a * c) - round_bf16(b * s));
  out_b = to_bf16(round_bf16(b * c) + round_bf16(a * s));
}

}  // namespace atom::cuda::device

// Device helpers shared by the CUDA kernels that must round exactly alike: bf16 conversions, the
// 16-byte packet, RMSNorm's scale and bf16 rounding, and the NeoX rotation. norm.cu's rms_norm,
// ops.cu's rope_cache_kernel and the fused qkv_rope_cache_kernel all use these, so the fused
// kernel gives the unfused sequence's bits by construction of the same f32 operations. Also the
// block-wide first maximum that the greedy argmax and the sampler both pick tokens with.
// Internal to backends/cuda: include from .cu files only.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

namespace atom::cuda::device {

// kVec elements moved by one load or store (16 bytes for kVec * sizeof(T) == 16).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Packet {
  T v[kVec];
};

__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float v) { return __float2bfloat16_rn(v); }
// f32 to T (f32 or bf16, round to nearest even).
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return to_bf16(v);
}
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

// Sum of v over the block, returned to every thread. blockDim.x is a multiple of 32. A kernel that
// calls it again (another row) must __syncthreads() between the calls: the slots are reused.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The block size of the norm kernels for a row of `packets` packets: one thread per packet up to
// 1024, a whole number of warps. The fused all-reduce + norm must use the same (same sums).
inline int norm_threads(int64_t packets) {
  const int64_t warps = std::clamp<int64_t>((packets + 31) / 32, 1, 32);
  return int(warps * 32);
}

// out = apply_norm(x, r, weight) over one row of [dim], by the whole block: the second pass of
// the norm kernels, once r is known. Each thread visits the packets its first pass visited.
template <typename T, int kVec>
__device__ __forceinline__ void write_normed_row(const T* x, const T* __restrict__ weight, T* out,
                                                 int64_t dim, float r) {
  using P = Packet<T, kVec>;
  const P* xr = reinterpret_cast<const P*>(x);
  const P* wr = reinterpret_cast<const P*>(weight);
  P* orow = reinterpret_cast<P*>(out);
  for (int64_t i = threadIdx.x; i < dim / kVec; i += blockDim.x) {
    const P p = xr[i];
    const P w = wr[i];
    P o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) o.v[j] = apply_norm(p.v[j], r, w.v[j]);
    orow[i] = o;
  }
}

// One row of add + RMSNorm, by the whole block: residual = T(residual + addend), out =
// rms_norm(residual) * weight. addend(i, a) fills a[0, kVec) with packet i's addends as f32 (the
// plain kernel reads x; the fused all-reduce sums its peers' parts). residual, weight, out: the
// row's [dim], 16-byte aligned when kVec * sizeof(T) == 16. Each thread reads back only the
// residual packets it wrote itself. Every caller therefore gives the same bits for the same sums.
template <typename T, int kVec, class Addend>
__device__ __forceinline__ void add_rms_norm_row(Addend addend, T* residual,
                                                 const T* __restrict__ weight, T* out, int64_t dim,
                                                 float eps) {
  using P = Packet<T, kVec>;
  P* res = reinterpret_cast<P*>(residual);
  const int64_t packets = dim / kVec;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < packets; i += blockDim.x) {
    float a[kVec];
    addend(i, a);
    P s = res[i];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      s.v[j] = from_f32<T>(to_f32(s.v[j]) + a[j]);
      const float f = to_f32(s.v[j]);
      sum_sq += f * f;
    }
    res[i] = s;
  }
  write_normed_row<T, kVec>(residual, weight, out, dim, inv_rms(block_sum(sum_sq), dim, eps));
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

// --- First maximum (atom::argmax, torch.argmax) ---

// (v, i) beats (best_v, best_i): larger, or equal at a lower index. A NaN never beats anything.
__device__ __forceinline__ bool beats(float v, int i, float best_v, int best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

// The block's first maximum of a row. Each thread passes the best (v, i) of the indices it
// visited by `beats` (-inf, INT_MAX: none); every thread gets the winner's index. As
// atom::argmax, which starts at index 0 and moves only on a strictly larger value, a NaN row[0]
// or a row of NaNs gives 0. blockDim.x: a multiple of 32; s_v, s_i: 32 shared entries each,
// s_best: one shared int. Synchronizes the block (every thread must call it).
__device__ __forceinline__ int block_first_max(float best_v, int best_i, const float* row,
                                               float* s_v, int* s_i, int* s_best) {
  constexpr unsigned kAll = 0xffffffffu;
  const auto warp_reduce = [&] {
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(kAll, best_v, o);
      const int i = __shfl_xor_sync(kAll, best_i, o);
      if (beats(v, i, best_v, best_i)) {
        best_v = v;
        best_i = i;
      }
    }
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  warp_reduce();
  if (lane == 0) {
    s_v[warp] = best_v;
    s_i[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    const bool filled = lane < int(blockDim.x / 32);
    best_v = filled ? s_v[lane] : -INFINITY;
    best_i = filled ? s_i[lane] : INT_MAX;
    warp_reduce();
    if (lane == 0) *s_best = (isnan(row[0]) || best_i == INT_MAX) ? 0 : best_i;
  }
  __syncthreads();
  return *s_best;
}

}  // namespace atom::cuda::device

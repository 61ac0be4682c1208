// Element-wise decoder kernels: embedding, QKV split, SiLU-and-multiply, RoPE + KV-cache write,
// the fused split + q/k norm + RoPE + KV-cache write, argmax. Row copies move 16-byte packets when
// the rows and pointers allow them; the rest is scalar bf16 with f32 math, rounded where HF's bf16
// ops round.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/device_math.cuh"
#include "atom/backends/cuda/ops.h"
#include "atom/backends/cuda/pdl.cuh"
#include "atom/core/error.h"

namespace atom::cuda {

namespace {

using bf16 = __nv_bfloat16;
// Shared with norm.cu (device_math.cuh): the fused q/k-norm + RoPE kernel below must round as
// rms_norm_kernel and rope_cache_kernel do.
using device::apply_norm;
using device::beats;
using device::block_first_max;
using device::inv_rms;
using device::Packet;
using device::rotate;
using device::round_bf16;
using device::to_bf16;
using device::to_f32;

constexpr int kBf16Vec = 16 / sizeof(bf16);
// Thread blocks stride over a row's packets; grid.y splits long rows (at most 65535 blocks).
constexpr int kMaxGridY = 65535;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A whole number of warps, one thread per unit of work up to `max_threads`.
int threads_for(int64_t work, int max_threads) {
  const int64_t warps = std::clamp<int64_t>((work + 31) / 32, 1, max_threads / 32);
  return int(warps * 32);
}

// grid.y blocks so that `threads` threads per block cover `work` units, capped.
unsigned blocks_y(int64_t work, int threads) {
  return unsigned(std::clamp<int64_t>((work + threads - 1) / threads, 1, kMaxGridY));
}

void check_rows(const char* op, int64_t n) {
  ATOM_CHECK(n >= 0, kInvalidArgument, "{}: negative token count {}", op, n);
  ATOM_CHECK(n <= INT_MAX, kOutOfRange, "{}: {} rows exceed one launch", op, n);
}

// --- embedding / row gather ---

// grid = (n, y); out row t = table row ids[t], or zeros for an id outside [0, vocab).
// table: [vocab, hidden]; out: [n, hidden]; kVec divides hidden.
template <int kVec>
__global__ void embedding_kernel(const bf16* __restrict__ table, int64_t vocab, int64_t hidden,
                                 const int32_t* __restrict__ ids, bf16* __restrict__ out) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  using P = Packet<bf16, kVec>;
  const int64_t t = blockIdx.x;
  const int64_t packets = hidden / kVec;
  const int64_t begin = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.y) * blockDim.x;
  const int64_t id = ids[t];
  P* o = reinterpret_cast<P*>(out + t * hidden);
  if (id < 0 || id >= vocab) {
    P zero;
#pragma unroll
    for (int j = 0; j < kVec; ++j) zero.v[j] = to_bf16(0.0f);
    for (int64_t i = begin; i < packets; i += step) o[i] = zero;
    return;
  }
  const P* src = reinterpret_cast<const P*>(table + id * hidden);
  for (int64_t i = begin; i < packets; i += step) o[i] = src[i];
}

// --- QKV split ---

// grid = (n, y); row t of qkv [n, q_size + 2 * kv_size] into q, k, v. kVec divides q_size and
// kv_size, so no packet straddles two outputs.
template <int kVec>
__global__ void split_qkv_kernel(const bf16* __restrict__ qkv, bf16* __restrict__ q,
                                 bf16* __restrict__ k, bf16* __restrict__ v, int64_t q_size,
                                 int64_t kv_size) {
  using P = Packet<bf16, kVec>;
  const int64_t t = blockIdx.x;
  const int64_t qp = q_size / kVec, kvp = kv_size / kVec;
  const P* src = reinterpret_cast<const P*>(qkv + t * (q_size + 2 * kv_size));
  P* qo = reinterpret_cast<P*>(q + t * q_size);
  P* ko = reinterpret_cast<P*>(k + t * kv_size);
  P* vo = reinterpret_cast<P*>(v + t * kv_size);
  const int64_t step = int64_t(gridDim.y) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; i < qp + 2 * kvp; i += step) {
    const P p = src[i];
    if (i < qp) {
      qo[i] = p;
    } else if (i < qp + kvp) {
      ko[i - qp] = p;
    } else {
      vo[i - qp - kvp] = p;
    }
  }
}

// --- SiLU and multiply ---

// HF on bf16 tensors: act_fn(gate) is torch's silu, x / (1 + exp(-x)) in f32 rounded to bf16;
// `* up` multiplies two bf16 values in f32 and rounds again.
__device__ __forceinline__ bf16 silu_mul(bf16 gate, bf16 up) {
  const float g = to_f32(gate);
  const float s = round_bf16(g / (1.0f + expf(-g)));
  return to_bf16(s * to_f32(up));
}

// grid = (n, y). x: [n, 2 * d]; out: [n, d]; kVec divides d.
template <int kVec>
__global__ void silu_and_mul_kernel(const bf16* __restrict__ x, bf16* __restrict__ out, int64_t d) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  using P = Packet<bf16, kVec>;
  const int64_t t = blockIdx.x;
  const P* gate = reinterpret_cast<const P*>(x + t * 2 * d);
  const P* up = reinterpret_cast<const P*>(x + t * 2 * d + d);
  P* o = reinterpret_cast<P*>(out + t * d);
  const int64_t packets = d / kVec;
  const int64_t step = int64_t(gridDim.y) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; i < packets; i += step) {
    const P g = gate[i];
    const P u = up[i];
    P r;
#pragma unroll
    for (int j = 0; j < kVec; ++j) r.v[j] = silu_mul(g.v[j], u.v[j]);
    o[i] = r;
  }
}

// --- RoPE and KV-cache write ---

struct RopeCacheKernelArgs {
  bf16* q;        // [n, num_heads, head_dim] or null
  bf16* k;        // [n, num_kv_heads, head_dim] or null
  const bf16* v;  // [n, num_kv_heads, head_dim] or null
  const int32_t* positions;
  const float* inv_freq;  // [half]
  float attention_factor;
  const int32_t* slot_mapping;  // null: no cache write
  bf16* k_cache;                // [num_slots, num_kv_heads, head_dim]
  bf16* v_cache;
  int64_t num_slots;
  int num_heads;     // heads of q rotated (0: none)
  int num_kv_heads;  // heads of k rotated and/or written
  int head_dim;
  int half;  // rotary_dim / 2 (0: no rotation)
};

// One token's cos and sin as HF's rotary embedding returns them in bf16, computed by the block's
// threads together: cos_sin[i] = cos, cos_sin[half + i] = sin of position * inv_freq[i] (f32),
// times attention_factor, rounded to bf16. The caller syncs before reading.
//   inv_freq: [half]; cos_sin: [2 * half] (shared)
__device__ __forceinline__ void fill_cos_sin(int32_t position, const float* __restrict__ inv_freq,
                                             float attention_factor, int half, float* cos_sin) {
  const float pos = float(position);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    cos_sin[i] = round_bf16(c * attention_factor);
    cos_sin[half + i] = round_bf16(s * attention_factor);
  }
}

// grid = n tokens; dynamic shared memory: 2 * half floats (this token's cos, then sin).
// Every element is read and written by one thread only, so in-place rotation needs no barrier
// after the cos/sin table.
__global__ void rope_cache_kernel(RopeCacheKernelArgs p) {
  extern __shared__ float cos_sin[];
  const int64_t t = blockIdx.x;
  const int half = p.half;
  const int hd = p.head_dim;
  if (half > 0) {
    fill_cos_sin(p.positions[t], p.inv_freq, p.attention_factor, half, cos_sin);
    __syncthreads();
  }
  const float* cs = cos_sin;
  const float* sn = cos_sin + half;

  if (p.q != nullptr && half > 0) {
    bf16* qt = p.q + t * p.num_heads * hd;
    for (int idx = threadIdx.x; idx < p.num_heads * half; idx += blockDim.x) {
      const int h = idx / half, i = idx % half;
      bf16* x = qt + h * hd;
      rotate(to_f32(x[i]), to_f32(x[i + half]), cs[i], sn[i], x[i], x[i + half]);
    }
  }

  int64_t slot = -1;
  if (p.slot_mapping != nullptr) {
    slot = p.slot_mapping[t];
    if (slot >= p.num_slots) slot = -1;  // the host validates slots; never write past the cache
  }
  const int64_t row = int64_t(p.num_kv_heads) * hd;  // one token's K (or V), all heads
  bf16* kc = slot >= 0 ? p.k_cache + slot * row : nullptr;
  bf16* vc = slot >= 0 ? p.v_cache + slot * row : nullptr;

  if (p.k != nullptr) {
    bf16* kt = p.k + t * row;
    if (half > 0) {
      for (int idx = threadIdx.x; idx < p.num_kv_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        bf16* x = kt + h * hd;
        bf16 a, b;
        rotate(to_f32(x[i]), to_f32(x[i + half]), cs[i], sn[i], a, b);
        x[i] = a;
        x[i + half] = b;
        if (kc != nullptr) {
          kc[h * hd + i] = a;
          kc[h * hd + i + half] = b;
        }
      }
    }
    if (kc != nullptr) {  // the dims past rotary_dim, as they are
      const int pass = hd - 2 * half;
      for (int idx = threadIdx.x; idx < p.num_kv_heads * pass; idx += blockDim.x) {
        const int h = idx / pass, i = 2 * half + idx % pass;
        kc[h * hd + i] = kt[h * hd + i];
      }
    }
  }
  if (p.v != nullptr && vc != nullptr) {
    const bf16* vt = p.v + t * row;
    for (int64_t i = threadIdx.x; i < row; i += blockDim.x) vc[i] = vt[i];
  }
}

// Checks shared by the RoPE launchers.
void check_rope(const char* op, const RopeArgs& rope, int64_t head_dim) {
  ATOM_CHECK(rope.rotary_dim > 0 && rope.rotary_dim % 2 == 0 && rope.rotary_dim <= head_dim,
             kInvalidArgument, "{}: rotary dimension {} must be even and within head_dim {}", op,
             rope.rotary_dim, head_dim);
  ATOM_CHECK(rope.positions != nullptr && rope.inv_freq != nullptr, kInvalidArgument,
             "{}: positions and inv_freq are required", op);
}

void check_heads(const char* op, int64_t heads, int64_t head_dim) {
  ATOM_CHECK(heads > 0 && head_dim > 0, kInvalidArgument, "{}: bad head shape [{}, {}]", op, heads,
             head_dim);
  ATOM_CHECK(heads * head_dim <= INT_MAX / 2, kOutOfRange, "{}: {} heads of {} are too wide", op,
             heads, head_dim);
}

// fp8: whether the fused kernel (the only one that writes fp8) may take this cache.
void check_cache(const char* op, const KvCacheWrite& cache, bool fp8_ok) {
  ATOM_CHECK(cache.slot_mapping != nullptr && cache.k_cache != nullptr &&
                 cache.v_cache != nullptr && cache.num_slots >= 0,
             kInvalidArgument, "{}: the KV cache write needs slot_mapping, k_cache and v_cache",
             op);
  const bool fp8 = cache.dtype == DType::kF8E4M3;
  ATOM_CHECK(cache.dtype == DType::kBF16 || (fp8 && fp8_ok), kUnsupported,
             "{}: a {} KV cache is not supported ({})", op, dtype_name(cache.dtype),
             fp8_ok ? "bf16, f8e4m3" : "bf16; launch_qkv_rope_and_cache writes f8e4m3");
  if (fp8) {
    ATOM_CHECK(std::isfinite(cache.k_scale) && cache.k_scale > 0.0f &&
                   std::isfinite(cache.v_scale) && cache.v_scale > 0.0f,
               kInvalidArgument, "{}: fp8 KV cache scales must be positive and finite (k {}, v {})",
               op, cache.k_scale, cache.v_scale);
  }
}

void launch_rope_cache(const RopeCacheKernelArgs& args, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t rot_work = int64_t(args.num_heads + args.num_kv_heads) * args.half;
  const int64_t copy_work = int64_t(args.num_kv_heads) * args.head_dim;
  const int threads = threads_for(std::max(rot_work, copy_work), 256);
  const size_t smem = size_t(2 * args.half) * sizeof(float);
  ATOM_CHECK(smem <= 48 * 1024, kOutOfRange, "rope: rotary dimension {} is too large",
             2 * args.half);
  rope_cache_kernel<<<unsigned(n), threads, smem, stream>>>(args);
  ATOM_CUDA_CHECK(cudaGetLastError());
}

// --- fused QKV split + q/k RMSNorm + RoPE + KV-cache write ---

// Threads of one block of qkv_rope_cache_kernel at most (the launcher picks 32 to this many).
constexpr int kQkvMaxThreads = 128;

struct QkvRopeCacheKernelArgs {
  const bf16* qkv;     // [n, (num_heads + 2 * num_kv_heads) * head_dim]
  const bf16* q_norm;  // [head_dim], or null (then k_norm is null too): no q/k norm
  const bf16* k_norm;  // [head_dim], or null
  float eps;
  const int32_t* positions;  // [n]
  const float* inv_freq;     // [half]
  float attention_factor;
  const int32_t* slot_mapping;  // [n]
  void* k_cache;                // [num_slots, num_kv_heads, head_dim] bf16 or fp8 e4m3
  void* v_cache;                // [num_slots, num_kv_heads, head_dim] bf16 or fp8 e4m3
  int64_t num_slots;
  float k_scale;  // fp8: the stored value is e4m3(x / scale)
  float v_scale;
  bf16* q_out;  // [n, num_heads, head_dim]
  int num_heads;
  int num_kv_heads;
  int head_dim;         // a multiple of kBf16Vec, at most kLanes * kBf16Vec
  int half;             // rotary_dim / 2, > 0
  int heads_per_block;  // blockDim.x / kLanes
};

// A packet of 8 bf16 values as 8 e4m3 bytes (element j in byte j): each value divided by `scale`
// in f32 (IEEE division, as the host's reference), then rounded to nearest even with saturation
// to +-448 (cvt.rn.satfinite.e4m3x2.f32; NaN stays NaN).
__device__ __forceinline__ uint2 to_e4m3x8(const Packet<bf16, kBf16Vec>& x, float scale) {
  static_assert(kBf16Vec == 8);
  uint32_t word[2];
#pragma unroll
  for (int w = 0; w < 2; ++w) {
    uint32_t bytes = 0;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float2 f = make_float2(__fdiv_rn(to_f32(x.v[4 * w + 2 * j]), scale),
                                   __fdiv_rn(to_f32(x.v[4 * w + 2 * j + 1]), scale));
      const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
      bytes |= uint32_t(pair) << (16 * j);  // f.x in the low byte of the pair
    }
    word[w] = bytes;
  }
  return make_uint2(word[0], word[1]);
}

// Sum of v over each group of kLanes consecutive lanes (kLanes a power of two <= 32), returned to
// every lane of the group; all 32 lanes of the warp call it. Each xor step adds the same two
// values on both lanes (a + b == b + a), so the group's lanes end bitwise equal. For a row of at
// most kLanes packets, one per lane from lane 0 and zeros beyond, this is bitwise norm.cu's
// block_sum of rms_norm_kernel over the same per-lane partials: rms_norm_kernel runs one warp for
// rows of at most 32 packets, and its xor steps wider than kLanes and its second stage add exact
// zeros (+0.0f to a sum of squares leaves it unchanged).
template <int kLanes>
__device__ __forceinline__ float group_sum(float v) {
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid = (n tokens, groups of heads); block = heads_per_block groups of kLanes lanes, one group
// per head of the token's qkv row: q heads [0, nh), k heads [nh, nh + nkv), v heads after them.
// Lane g of a group holds the head's elements [8 g, 8 g + 8) in registers from one 16-byte load
// to one 16-byte store (lanes past head_dim / 8 hold nothing). Per head, as the unfused sequence
// split_qkv -> rms_norm (q, k) -> rope_cache_kernel computes it:
//   q, k: RMSNorm with the sum of squares reduced in rms_norm_kernel's order (group_sum) and
//         rounded by the same apply_norm; then the rotation by the same `rotate`, each lane
//         reading its pairs' other halves from the group's normed row staged in shared memory;
//   q -> q_out; k and v -> the caches at slot_mapping[t] (a slot of -1 or >= num_slots: none),
//   as they are (bf16) or, kFp8, quantized by to_e4m3x8 (one 8-byte store a lane).
// Dynamic shared memory: 2 * half floats (the token's cos, then sin), filled once per block.
// Every lane reaches each barrier and shuffle: control flow is uniform until the stores.
template <int kLanes, bool kFp8>
__global__ void __launch_bounds__(kQkvMaxThreads) qkv_rope_cache_kernel(QkvRopeCacheKernelArgs p) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  using P = Packet<bf16, kBf16Vec>;
  extern __shared__ float cos_sin[];
  __shared__ P stage[kQkvMaxThreads];  // each thread's packet after the norm

  const int64_t t = blockIdx.x;
  const int hd = p.head_dim, half = p.half;
  const int g = int(threadIdx.x) % kLanes;
  const int first_head = int(blockIdx.y) * p.heads_per_block;
  const int head = first_head + int(threadIdx.x) / kLanes;
  const int rotated_heads = p.num_heads + p.num_kv_heads;  // q and k
  const int heads = rotated_heads + p.num_kv_heads;
  const int e0 = g * kBf16Vec;  // this lane's first element in the head
  const bool active = head < heads && e0 < hd;
  const bool is_q = head < p.num_heads, is_v = head >= rotated_heads;

  // The global loads first, so that their latency overlaps the cos/sin table.
  P x;
  if (active) {
    const int64_t width = int64_t(heads) * hd;
    x = *reinterpret_cast<const P*>(p.qkv + t * width + int64_t(head) * hd + e0);
  }
  const bool normed = p.q_norm != nullptr;  // kernel-uniform: q and k both or neither
  P w;
  if (normed && active && !is_v) w = *reinterpret_cast<const P*>((is_q ? p.q_norm : p.k_norm) + e0);
  int64_t slot = -1;
  if (!is_q) {
    slot = p.slot_mapping[t];
    if (slot >= p.num_slots) slot = -1;  // the host validates slots; never write past the cache
  }
  if (first_head < rotated_heads) {  // block-uniform: blocks of v heads only need no table
    fill_cos_sin(p.positions[t], p.inv_freq, p.attention_factor, half, cos_sin);
    __syncthreads();
  }

  if (normed) {
    float sum_sq = 0.0f;  // this lane's packet, in rms_norm_kernel's order
    if (active) {
#pragma unroll
      for (int j = 0; j < kBf16Vec; ++j) {
        const float f = to_f32(x.v[j]);
        sum_sq += f * f;
      }
    }
    const float r = inv_rms(group_sum<kLanes>(sum_sq), hd, p.eps);
    if (active && !is_v) {
#pragma unroll
      for (int j = 0; j < kBf16Vec; ++j) x.v[j] = apply_norm(x.v[j], r, w.v[j]);
    }
  }

  if (active) stage[threadIdx.x] = x;
  __syncwarp();
  if (active && !is_v && e0 < 2 * half) {
    const float* cs = cos_sin;
    const float* sn = cos_sin + half;
    P o = x;
    if (half % kBf16Vec == 0) {
      // Pairs align with packets: the other halves sit in one packet of the lane half / 8 away.
      const int hp = half / kBf16Vec;
      if (g < hp) {
        const P b = stage[threadIdx.x + hp];
#pragma unroll
        for (int j = 0; j < kBf16Vec; ++j) {
          bf16 unused;
          rotate(to_f32(x.v[j]), to_f32(b.v[j]), cs[e0 + j], sn[e0 + j], o.v[j], unused);
        }
      } else {
        const P a = stage[threadIdx.x - hp];
        const int i0 = e0 - half;
#pragma unroll
        for (int j = 0; j < kBf16Vec; ++j) {
          bf16 unused;
          rotate(to_f32(a.v[j]), to_f32(x.v[j]), cs[i0 + j], sn[i0 + j], unused, o.v[j]);
        }
      }
    } else {
      // Element by element from the group's row: [head_dim] starting at its lane 0's packet.
      const bf16* row = reinterpret_cast<const bf16*>(stage + (threadIdx.x - g));
#pragma unroll
      for (int j = 0; j < kBf16Vec; ++j) {
        const int e = e0 + j;
        bf16 unused;
        if (e < half) {
          rotate(to_f32(x.v[j]), to_f32(row[e + half]), cs[e], sn[e], o.v[j], unused);
        } else if (e < 2 * half) {
          const int i = e - half;
          rotate(to_f32(row[i]), to_f32(x.v[j]), cs[i], sn[i], unused, o.v[j]);
        }  // dims past rotary_dim stay as they are
      }
    }
    x = o;
  }

  if (!active) return;
  if (is_q) {
    *reinterpret_cast<P*>(p.q_out + (t * p.num_heads + head) * hd + e0) = x;
  } else if (slot >= 0) {
    const int kv_head = head - (is_v ? rotated_heads : p.num_heads);
    const int64_t at = (slot * p.num_kv_heads + kv_head) * hd + e0;  // element index
    if constexpr (kFp8) {
      unsigned char* cache = static_cast<unsigned char*>(is_v ? p.v_cache : p.k_cache);
      *reinterpret_cast<uint2*>(cache + at) = to_e4m3x8(x, is_v ? p.v_scale : p.k_scale);
    } else {
      bf16* cache = static_cast<bf16*>(is_v ? p.v_cache : p.k_cache);
      *reinterpret_cast<P*>(cache + at) = x;
    }
  }
}

// --- argmax ---

// grid = n rows; blockDim.x a multiple of 32. kVec consecutive logits per load (kVec divides
// vocab); each thread visits its indices in increasing order.
template <int kVec>
__global__ void argmax_kernel(const float* __restrict__ logits, int64_t vocab,
                              int32_t* __restrict__ out) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  using P = Packet<float, kVec>;
  const int64_t t = blockIdx.x;
  const float* row = logits + t * vocab;
  const P* packets = reinterpret_cast<const P*>(row);
  const int n_packets = int(vocab / kVec);
  float best_v = -INFINITY;
  int best_i = INT_MAX;  // none yet
  for (int i = threadIdx.x; i < n_packets; i += blockDim.x) {
    const P p = packets[i];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (beats(p.v[j], i * kVec + j, best_v, best_i)) {
        best_v = p.v[j];
        best_i = i * kVec + j;
      }
    }
  }
  __shared__ float s_v[32];
  __shared__ int s_i[32];
  __shared__ int s_best;
  const int best = block_first_max(best_v, best_i, row, s_v, s_i, &s_best);
  if (threadIdx.x == 0) out[t] = best;
}

// --- Tensor checks ---

void check_gpu(const char* op, const char* name, const Tensor& t, DType dtype) {
  ATOM_CHECK(t.defined() && t.device() == Device::kCuda, kInvalidArgument,
             "{}: {} must be a tensor on the GPU", op, name);
  ATOM_CHECK(t.dtype() == dtype, kInvalidArgument, "{}: {} is {}, expected {}", op, name,
             dtype_name(t.dtype()), dtype_name(dtype));
  ATOM_CHECK(t.is_contiguous(), kInvalidArgument, "{}: {} must be contiguous", op, name);
}

void check_shape(const char* op, const char* name, const Tensor& t,
                 std::initializer_list<int64_t> shape) {
  bool ok = t.ndim() == int(shape.size());
  int d = 0;
  std::string want = "[";
  for (const int64_t s : shape) {
    ok = ok && t.size(d) == s;
    want += (d++ ? ", " : "") + std::to_string(s);
  }
  ATOM_CHECK(ok, kInvalidArgument, "{}: {} has shape {}, expected {}]", op, name, t.shape_str(),
             want);
}

}  // namespace

// --- launchers ---

void launch_embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                      bf16* out, int64_t n, cudaStream_t stream) {
  check_rows("embedding", n);
  ATOM_CHECK(vocab > 0 && hidden > 0, kInvalidArgument, "embedding: bad table shape [{}, {}]",
             vocab, hidden);
  if (n == 0) return;
  if (hidden % kBf16Vec == 0 && aligned16(table) && aligned16(out)) {
    const int64_t packets = hidden / kBf16Vec;
    const int threads = threads_for(packets, 256);
    launch_pdl(embedding_kernel<kBf16Vec>, dim3(unsigned(n), blocks_y(packets, threads)), threads,
               0, stream, table, vocab, hidden, ids, out);
  } else {
    const int threads = threads_for(hidden, 256);
    launch_pdl(embedding_kernel<1>, dim3(unsigned(n), blocks_y(hidden, threads)), threads, 0,
               stream, table, vocab, hidden, ids, out);
  }
}

void launch_split_qkv(const bf16* qkv, bf16* q, bf16* k, bf16* v, int64_t n, int64_t q_size,
                      int64_t kv_size, cudaStream_t stream) {
  check_rows("split_qkv", n);
  ATOM_CHECK(q_size > 0 && kv_size > 0, kInvalidArgument, "split_qkv: bad sizes q {} kv {}", q_size,
             kv_size);
  if (n == 0) return;
  if (q_size % kBf16Vec == 0 && kv_size % kBf16Vec == 0 && aligned16(qkv) && aligned16(q) &&
      aligned16(k) && aligned16(v)) {
    const int64_t packets = (q_size + 2 * kv_size) / kBf16Vec;
    const int threads = threads_for(packets, 256);
    split_qkv_kernel<kBf16Vec>
        <<<dim3(unsigned(n), blocks_y(packets, threads)), threads, 0, stream>>>(qkv, q, k, v,
                                                                                q_size, kv_size);
  } else {
    const int64_t width = q_size + 2 * kv_size;
    const int threads = threads_for(width, 256);
    split_qkv_kernel<1><<<dim3(unsigned(n), blocks_y(width, threads)), threads, 0, stream>>>(
        qkv, q, k, v, q_size, kv_size);
  }
  ATOM_CUDA_CHECK(cudaGetLastError());
}

void launch_silu_and_mul(const bf16* x, bf16* out, int64_t n, int64_t d, cudaStream_t stream) {
  check_rows("silu_and_mul", n);
  ATOM_CHECK(d > 0, kInvalidArgument, "silu_and_mul of [{}, 2 * {}]", n, d);
  if (n == 0) return;
  if (d % kBf16Vec == 0 && aligned16(x) && aligned16(out)) {
    const int64_t packets = d / kBf16Vec;
    const int threads = threads_for(packets, 256);
    launch_pdl(silu_and_mul_kernel<kBf16Vec>, dim3(unsigned(n), blocks_y(packets, threads)),
               threads, 0, stream, x, out, d);
  } else {
    const int threads = threads_for(d, 256);
    launch_pdl(silu_and_mul_kernel<1>, dim3(unsigned(n), blocks_y(d, threads)), threads, 0, stream,
               x, out, d);
  }
}

void launch_rope_neox(bf16* x, const RopeArgs& rope, int64_t n, int64_t num_heads, int64_t head_dim,
                      cudaStream_t stream) {
  check_rows("rope_neox", n);
  check_heads("rope_neox", num_heads, head_dim);
  check_rope("rope_neox", rope, head_dim);
  RopeCacheKernelArgs args{};
  args.q = x;
  args.positions = rope.positions;
  args.inv_freq = rope.inv_freq;
  args.attention_factor = rope.attention_factor;
  args.num_heads = int(num_heads);
  args.head_dim = int(head_dim);
  args.half = int(rope.rotary_dim / 2);
  launch_rope_cache(args, n, stream);
}

void launch_reshape_and_cache(const bf16* k, const bf16* v, const KvCacheWrite& cache, int64_t n,
                              int64_t num_kv_heads, int64_t head_dim, cudaStream_t stream) {
  check_rows("reshape_and_cache", n);
  check_heads("reshape_and_cache", num_kv_heads, head_dim);
  check_cache("reshape_and_cache", cache, false);
  RopeCacheKernelArgs args{};
  // The kernel reads k only to rotate it or to copy it to the cache; without rotation it is
  // never written.
  args.k = const_cast<bf16*>(k);
  args.v = v;
  args.slot_mapping = cache.slot_mapping;
  args.k_cache = static_cast<bf16*>(cache.k_cache);
  args.v_cache = static_cast<bf16*>(cache.v_cache);
  args.num_slots = cache.num_slots;
  args.num_kv_heads = int(num_kv_heads);
  args.head_dim = int(head_dim);
  launch_rope_cache(args, n, stream);
}

void launch_rope_and_cache(bf16* q, bf16* k, const bf16* v, const RopeArgs& rope,
                           const KvCacheWrite& cache, int64_t n, int64_t num_heads,
                           int64_t num_kv_heads, int64_t head_dim, cudaStream_t stream) {
  check_rows("rope_and_cache", n);
  check_heads("rope_and_cache", num_heads, head_dim);
  check_heads("rope_and_cache", num_kv_heads, head_dim);
  check_rope("rope_and_cache", rope, head_dim);
  check_cache("rope_and_cache", cache, false);
  RopeCacheKernelArgs args{};
  args.q = q;
  args.k = k;
  args.v = v;
  args.positions = rope.positions;
  args.inv_freq = rope.inv_freq;
  args.attention_factor = rope.attention_factor;
  args.slot_mapping = cache.slot_mapping;
  args.k_cache = static_cast<bf16*>(cache.k_cache);
  args.v_cache = static_cast<bf16*>(cache.v_cache);
  args.num_slots = cache.num_slots;
  args.num_heads = int(num_heads);
  args.num_kv_heads = int(num_kv_heads);
  args.head_dim = int(head_dim);
  args.half = int(rope.rotary_dim / 2);
  launch_rope_cache(args, n, stream);
}

void launch_qkv_rope_and_cache(const bf16* qkv, const bf16* q_norm, const bf16* k_norm, float eps,
                               const RopeArgs& rope, const KvCacheWrite& cache, bf16* q_out,
                               int64_t n, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               cudaStream_t stream) {
  const char* op = "qkv_rope_and_cache";
  check_rows(op, n);
  ATOM_CHECK(num_heads > 0 && num_kv_heads > 0, kInvalidArgument, "{}: bad head counts q {} kv {}",
             op, num_heads, num_kv_heads);
  check_heads(op, num_heads + 2 * num_kv_heads, head_dim);  // one token's qkv row
  check_rope(op, rope, head_dim);
  check_cache(op, cache, true);
  ATOM_CHECK(qkv != nullptr && q_out != nullptr, kInvalidArgument, "{}: qkv and q_out are required",
             op);
  ATOM_CHECK((q_norm == nullptr) == (k_norm == nullptr), kInvalidArgument,
             "{}: q_norm and k_norm come together (q/k norm) or not at all", op);
  // One 16-byte packet per lane and one group of at most a warp per head.
  constexpr int64_t kMaxHeadDim = 32 * kBf16Vec;
  ATOM_CHECK(head_dim % kBf16Vec == 0 && head_dim <= kMaxHeadDim, kUnsupported,
             "{}: head_dim {} is not supported (multiples of {} up to {})", op, head_dim, kBf16Vec,
             kMaxHeadDim);
  ATOM_CHECK(
      aligned16(qkv) && aligned16(q_out) && aligned16(cache.k_cache) && aligned16(cache.v_cache) &&
          (q_norm == nullptr || aligned16(q_norm)) && (k_norm == nullptr || aligned16(k_norm)),
      kUnsupported, "{}: qkv, q_out, the caches and the norm weights must be 16-byte aligned", op);
  if (n == 0) return;

  QkvRopeCacheKernelArgs args{};
  args.qkv = qkv;
  args.q_norm = q_norm;
  args.k_norm = k_norm;
  args.eps = eps;
  args.positions = rope.positions;
  args.inv_freq = rope.inv_freq;
  args.attention_factor = rope.attention_factor;
  args.slot_mapping = cache.slot_mapping;
  args.k_cache = cache.k_cache;
  args.v_cache = cache.v_cache;
  args.num_slots = cache.num_slots;
  args.k_scale = cache.k_scale;
  args.v_scale = cache.v_scale;
  args.q_out = q_out;
  args.num_heads = int(num_heads);
  args.num_kv_heads = int(num_kv_heads);
  args.head_dim = int(head_dim);
  args.half = int(rope.rotary_dim / 2);

  // The smallest power-of-two group of lanes that holds a head in packets; up to four warps a
  // block, fewer when the token has fewer heads, so that small batches still spread over SMs.
  const int lanes = head_dim <= 8 * kBf16Vec ? 8 : head_dim <= 16 * kBf16Vec ? 16 : 32;
  const int64_t heads = num_heads + 2 * num_kv_heads;
  const int64_t heads_per_warp = 32 / lanes;
  const int64_t warps =
      std::clamp<int64_t>((heads + heads_per_warp - 1) / heads_per_warp, 1, kQkvMaxThreads / 32);
  args.heads_per_block = int(warps * heads_per_warp);
  const int64_t groups = (heads + args.heads_per_block - 1) / args.heads_per_block;
  ATOM_CHECK(groups <= kMaxGridY, kOutOfRange, "{}: {} heads exceed one launch", op, heads);
  const dim3 grid{unsigned(n), unsigned(groups)};
  const int threads = int(warps * 32);
  const size_t smem = size_t(2 * args.half) * sizeof(float);  // <= 1 KiB: head_dim <= 256
  const bool fp8 = cache.dtype == DType::kF8E4M3;
  switch (lanes) {
    case 8:
      launch_pdl(fp8 ? qkv_rope_cache_kernel<8, true> : qkv_rope_cache_kernel<8, false>, grid,
                 threads, smem, stream, args);
      break;
    case 16:
      launch_pdl(fp8 ? qkv_rope_cache_kernel<16, true> : qkv_rope_cache_kernel<16, false>, grid,
                 threads, smem, stream, args);
      break;
    default:
      launch_pdl(fp8 ? qkv_rope_cache_kernel<32, true> : qkv_rope_cache_kernel<32, false>, grid,
                 threads, smem, stream, args);
      break;
  }
}

void launch_argmax(const float* logits, int32_t* out, int64_t n, int64_t vocab,
                   cudaStream_t stream) {
  check_rows("argmax", n);
  ATOM_CHECK(vocab > 0 && vocab <= INT_MAX, kInvalidArgument, "argmax: bad vocabulary size {}",
             vocab);
  if (n == 0) return;
  constexpr int kVec = 4;
  if (vocab % kVec == 0 && aligned16(logits)) {
    launch_pdl(argmax_kernel<kVec>, unsigned(n), threads_for(vocab / kVec, 1024), 0, stream, logits,
               vocab, out);
  } else {
    launch_pdl(argmax_kernel<1>, unsigned(n), threads_for(vocab, 1024), 0, stream, logits, vocab,
               out);
  }
}

// --- entry points ---

void embedding(const Tensor& table, const Tensor& ids, const Tensor& out, cudaStream_t stream) {
  check_gpu("embedding", "table", table, DType::kBF16);
  check_gpu("embedding", "ids", ids, DType::kI32);
  check_gpu("embedding", "out", out, DType::kBF16);
  ATOM_CHECK(table.ndim() == 2 && ids.ndim() == 1, kInvalidArgument,
             "embedding: table {} must be [vocab, hidden] and ids {} [n]", table.shape_str(),
             ids.shape_str());
  check_shape("embedding", "out", out, {ids.size(0), table.size(1)});
  launch_embedding(table.data_as<bf16>(), table.size(0), table.size(1), ids.data_as<int32_t>(),
                   out.data_as<bf16>(), ids.size(0), stream);
}

void silu_and_mul(const Tensor& x, const Tensor& out, cudaStream_t stream) {
  check_gpu("silu_and_mul", "x", x, DType::kBF16);
  check_gpu("silu_and_mul", "out", out, DType::kBF16);
  ATOM_CHECK(x.ndim() >= 1 && x.size(-1) > 0 && x.size(-1) % 2 == 0, kInvalidArgument,
             "silu_and_mul: x {} must end in an even, non-zero width", x.shape_str());
  const int64_t d = x.size(-1) / 2;
  bool same_rows = out.ndim() == x.ndim() && out.size(-1) == d;
  for (int i = 0; same_rows && i + 1 < x.ndim(); ++i) same_rows = out.size(i) == x.size(i);
  ATOM_CHECK(same_rows, kInvalidArgument, "silu_and_mul: out {} does not match x {}",
             out.shape_str(), x.shape_str());
  launch_silu_and_mul(x.data_as<bf16>(), out.data_as<bf16>(), x.numel() / (2 * d), d, stream);
}

void rope_and_cache(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                    const Tensor& inv_freq, float attention_factor, int64_t rotary_dim,
                    const Tensor& slot_mapping, const Tensor& k_cache, const Tensor& v_cache,
                    cudaStream_t stream) {
  const char* op = "rope_and_cache";
  check_gpu(op, "q", q, DType::kBF16);
  check_gpu(op, "k", k, DType::kBF16);
  check_gpu(op, "v", v, DType::kBF16);
  check_gpu(op, "positions", positions, DType::kI32);
  check_gpu(op, "inv_freq", inv_freq, DType::kF32);
  check_gpu(op, "slot_mapping", slot_mapping, DType::kI32);
  check_gpu(op, "k_cache", k_cache, DType::kBF16);
  check_gpu(op, "v_cache", v_cache, DType::kBF16);
  ATOM_CHECK(q.ndim() == 3 && k.ndim() == 3, kInvalidArgument,
             "{}: q {} and k {} must be [n, heads, head_dim]", op, q.shape_str(), k.shape_str());
  const int64_t n = q.size(0), head_dim = q.size(2), num_kv_heads = k.size(1);
  check_shape(op, "k", k, {n, num_kv_heads, head_dim});
  check_shape(op, "v", v, {n, num_kv_heads, head_dim});
  check_shape(op, "positions", positions, {n});
  check_shape(op, "slot_mapping", slot_mapping, {n});
  check_shape(op, "inv_freq", inv_freq, {rotary_dim / 2});
  ATOM_CHECK(k_cache.ndim() == 4, kInvalidArgument,
             "{}: k_cache {} must be [num_blocks, block_size, num_kv_heads, head_dim]", op,
             k_cache.shape_str());
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  check_shape(op, "k_cache", k_cache, {num_blocks, block_size, num_kv_heads, head_dim});
  check_shape(op, "v_cache", v_cache, {num_blocks, block_size, num_kv_heads, head_dim});
  const RopeArgs rope{positions.data_as<int32_t>(), inv_freq.data_as<float>(), attention_factor,
                      rotary_dim};
  const KvCacheWrite cache{slot_mapping.data_as<int32_t>(), k_cache.data_as<bf16>(),
                           v_cache.data_as<bf16>(), num_blocks * block_size};
  launch_rope_and_cache(q.data_as<bf16>(), k.data_as<bf16>(), v.data_as<bf16>(), rope, cache, n,
                        q.size(1), num_kv_heads, head_dim, stream);
}

void argmax(const Tensor& logits, const Tensor& out, cudaStream_t stream) {
  check_gpu("argmax", "logits", logits, DType::kF32);
  check_gpu("argmax", "out", out, DType::kI32);
  ATOM_CHECK(logits.ndim() == 2, kInvalidArgument, "argmax: logits {} must be [n, vocab]",
             logits.shape_str());
  check_shape("argmax", "out", out, {logits.size(0)});
  launch_argmax(logits.data_as<float>(), out.data_as<int32_t>(), logits.size(0), logits.size(1),
                stream);
}

}  // namespace atom::cuda

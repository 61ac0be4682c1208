// Custom all-reduce: one-shot, two-shot and fused all-reduce + residual add + RMSNorm kernels
// over peer memory, and their host side. custom_allreduce.h explains the algorithms, the barrier
// and why buffers may be reused without a second barrier.
#include "atom/backends/cuda/custom_allreduce.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdint>
#include <exception>
#include <string>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/device_math.cuh"
#include "atom/backends/cuda/norm.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom::cuda {

namespace {

constexpr int kMaxRanks = kCustomAllReduceMaxRanks;
constexpr int kMaxBlocks = kCustomAllReduceMaxBlocks;
constexpr int kThreads = 512;  // block size of the one-shot and two-shot kernels
constexpr int kGroup = 32;     // values per quantization group (one f32 scale each)

// One per rank, in its own device memory; zeroed at creation.
struct Signal {
  // flags[barrier][block][from_rank]: the epoch the sender's block last reached at that barrier.
  uint32_t flags[2][kMaxBlocks][kMaxRanks];
  uint32_t call;  // calls this rank has finished (epoch of call c is c + 1; buffer parity c % 2)
  uint32_t done;  // blocks of the current call that have finished
};

// Kernel argument: every rank's buffers, by rank.
struct RankPtrs {
  char* recv[kMaxRanks];    // [2 parities][world slots][slot_bytes]; slot s holds rank s's data
  char* gather[kMaxRanks];  // [2 parities][gather_bytes]; bf16 sums of every shard (two-shot)
  Signal* sig[kMaxRanks];
  int64_t slot_bytes;
  int64_t gather_bytes;
  uint64_t timeout_ns;  // 0 = spin forever
  int rank;
  int world;
};

// --- memory ordering and the barrier ---

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The call count of this rank, read once per block when the kernel starts (from memory, so
// graph replays see the current count).
__device__ __forceinline__ uint32_t read_call(const RankPtrs& r) {
  __shared__ uint32_t call;
  if (threadIdx.x == 0) call = *reinterpret_cast<volatile const uint32_t*>(&r.sig[r.rank]->call);
  __syncthreads();
  return call;
}

// Block blockIdx.x of every rank meets here. The block's stores to peer memory are issued before
// the __syncthreads; thread p then fences at system scope and publishes the epoch to rank p with a
// release store, so rank p's acquire of that flag makes all of them visible there. Thread p also
// waits for rank p's flag in our Signal; the final __syncthreads hands that to the whole block.
__device__ void block_barrier(const RankPtrs& r, int which, uint32_t epoch) {
  __syncthreads();
  if (threadIdx.x < unsigned(r.world)) {
    const int peer = int(threadIdx.x);
    __threadfence_system();
    store_release_sys(&r.sig[peer]->flags[which][blockIdx.x][r.rank], epoch);
    const uint32_t* flag = &r.sig[r.rank]->flags[which][blockIdx.x][peer];
    uint64_t start = 0;
    uint32_t spins = 0;
    // Wrap-safe "flag >= epoch": a peer may already be at the next call's epoch.
    while (int32_t(load_acquire_sys(flag) - epoch) < 0) {
      if (r.timeout_ns != 0 && (++spins & 1023u) == 0) {
        const uint64_t now = global_timer_ns();
        if (start == 0) {
          start = now;
        } else if (now - start > r.timeout_ns) {
          __trap();
        }
      }
    }
  }
  __syncthreads();
}

// The last block to finish advances the call count; the next kernel on the stream starts after
// this one has completed, so it reads the new count.
__device__ void finish_call(const RankPtrs& r, uint32_t call) {
  __syncthreads();
  if (threadIdx.x == 0) {
    Signal* self = r.sig[r.rank];
    __threadfence();
    if (atomicAdd(&self->done, 1u) == gridDim.x - 1) {
      atomicExch(&self->done, 0u);
      atomicExch(&self->call, call + 1);
    }
  }
}

__device__ __forceinline__ char* recv_slot(const RankPtrs& r, int owner, uint32_t parity,
                                           int sender) {
  return r.recv[owner] + (int64_t(parity) * r.world + sender) * r.slot_bytes;
}

__device__ __forceinline__ char* gather_half(const RankPtrs& r, int owner, uint32_t parity) {
  return r.gather[owner] + int64_t(parity) * r.gather_bytes;
}

// --- bf16 units: K values as K/2 words of raw bits, element 2k in the low half of word k ---

__device__ __forceinline__ float bits_to_f32(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ uint32_t f32_to_bits(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Elements [e0, e0 + K) of x: [n]; zero past n. `aligned`: x is 16-byte aligned (e0 % 8 == 0).
template <int K>
__device__ __forceinline__ void load_bits(const __nv_bfloat16* x, int64_t n, int64_t e0,
                                          bool aligned, uint32_t (&w)[K / 2]) {
  if (aligned && e0 + K <= n) {
    const uint4* p = reinterpret_cast<const uint4*>(x + e0);
#pragma unroll
    for (int k = 0; k < K / 8; ++k) {
      const uint4 v = p[k];
      w[4 * k] = v.x;
      w[4 * k + 1] = v.y;
      w[4 * k + 2] = v.z;
      w[4 * k + 3] = v.w;
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < K / 2; ++k) {
    const int64_t e = e0 + 2 * k;
    const uint32_t lo = e < n ? __bfloat16_as_ushort(x[e]) : 0u;
    const uint32_t hi = e + 1 < n ? __bfloat16_as_ushort(x[e + 1]) : 0u;
    w[k] = lo | (hi << 16);
  }
}

// Writes elements [e0, e0 + K) of out: [n] that are below n.
template <int K>
__device__ __forceinline__ void store_bits(__nv_bfloat16* out, int64_t n, int64_t e0, bool aligned,
                                           const uint32_t (&w)[K / 2]) {
  if (aligned && e0 + K <= n) {
    uint4* p = reinterpret_cast<uint4*>(out + e0);
#pragma unroll
    for (int k = 0; k < K / 8; ++k) {
      p[k] = make_uint4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < K / 2; ++k) {
    const int64_t e = e0 + 2 * k;
    if (e < n) out[e] = __ushort_as_bfloat16(static_cast<unsigned short>(w[k] & 0xffffu));
    if (e + 1 < n) out[e + 1] = __ushort_as_bfloat16(static_cast<unsigned short>(w[k] >> 16));
  }
}

template <int K>
__device__ __forceinline__ void pack_bf16(const float (&acc)[K], uint32_t (&w)[K / 2]) {
#pragma unroll
  for (int k = 0; k < K / 2; ++k)
    w[k] = f32_to_bits(acc[2 * k]) | (f32_to_bits(acc[2 * k + 1]) << 16);
}

// --- codecs: how one unit of a contribution is laid out in a slot ---
// A slot holding `units` units: payloads [units][kPayload] at offset 0, then (quantized codecs)
// the f32 scales [units] at scale_off = round_up(units * kPayload, 16). Decoders address values
// by element index within the slot and read with __ldcg: the data was written by other GPUs
// into our L2, past this SM's L1.

struct CodecBf16 {
  static constexpr int kUnit = 8;
  static constexpr int kPayload = 16;
  struct Enc {
    uint4 p;
  };
  static __device__ __forceinline__ Enc encode(const uint32_t (&w)[kUnit / 2]) {
    return Enc{make_uint4(w[0], w[1], w[2], w[3])};
  }
  static __device__ __forceinline__ void store(char* slot, int64_t scale_off, int64_t u,
                                               const Enc& e) {
    reinterpret_cast<uint4*>(slot)[u] = e.p;
  }
  // Values [e, e + 8) of the slot, e % 8 == 0.
  static __device__ __forceinline__ void decode8(const char* slot, int64_t scale_off, int64_t e,
                                                 float (&v)[8]) {
    const uint4 p = __ldcg(reinterpret_cast<const uint4*>(slot) + e / 8);
    const uint32_t w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[2 * k] = bits_to_f32(w[k] & 0xffffu);
      v[2 * k + 1] = bits_to_f32(w[k] >> 16);
    }
  }
  static __device__ __forceinline__ float decode1(const char* slot, int64_t scale_off, int64_t e) {
    return bits_to_f32(__ldcg(reinterpret_cast<const unsigned short*>(slot) + e));
  }
};

// Symmetric integer groups of kGroup values: scale = amax / qmax, q = rint(v / scale) clamped to
// [-qmax, qmax]; two's complement, value j of a group in byte j (8 bits) or in nibble j of the
// little-endian bytes (4 bits, even values in the low nibble). The host test repeats these exact
// f32 operations.
template <int kBits>
struct CodecInt {
  static constexpr int kUnit = kGroup;
  static constexpr int kQMax = kBits == 8 ? 127 : 7;
  static constexpr int kPayload = kUnit * kBits / 8;  // 32 or 16 bytes
  static constexpr int kWords = kPayload / 4;
  struct Enc {
    uint32_t w[kWords];
    float scale;
  };

  static __device__ __forceinline__ Enc encode(const uint32_t (&bits)[kUnit / 2]) {
    float v[kUnit];
#pragma unroll
    for (int k = 0; k < kUnit / 2; ++k) {
      v[2 * k] = bits_to_f32(bits[k] & 0xffffu);
      v[2 * k + 1] = bits_to_f32(bits[k] >> 16);
    }
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) amax = fmaxf(amax, fabsf(v[j]));
    Enc e;
    e.scale = __fdiv_rn(amax, float(kQMax));
#pragma unroll
    for (int k = 0; k < kWords; ++k) e.w[k] = 0;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      int q = 0;
      if (e.scale > 0.0f) {
        q = int(rintf(__fdiv_rn(v[j], e.scale)));
        q = min(max(q, -kQMax), kQMax);
      }
      if constexpr (kBits == 8) {
        e.w[j / 4] |= (uint32_t(q) & 0xffu) << (8 * (j % 4));
      } else {
        e.w[j / 8] |= (uint32_t(q) & 0xfu) << (4 * (j % 8));
      }
    }
    return e;
  }

  static __device__ __forceinline__ void store(char* slot, int64_t scale_off, int64_t u,
                                               const Enc& e) {
    uint4* p = reinterpret_cast<uint4*>(slot + u * kPayload);
#pragma unroll
    for (int k = 0; k < kWords / 4; ++k) {
      p[k] = make_uint4(e.w[4 * k], e.w[4 * k + 1], e.w[4 * k + 2], e.w[4 * k + 3]);
    }
    reinterpret_cast<float*>(slot + scale_off)[u] = e.scale;
  }

  static __device__ __forceinline__ int nibble(uint32_t word, int i) {
    return int(uint32_t(word << (28 - 4 * i))) >> 28;  // sign-extended nibble i
  }

  // Values [e, e + 8) of the slot, e % 8 == 0 (inside one group).
  static __device__ __forceinline__ void decode8(const char* slot, int64_t scale_off, int64_t e,
                                                 float (&v)[8]) {
    const int64_t u = e / kUnit;
    const int k0 = int(e % kUnit);
    const float scale = __ldcg(reinterpret_cast<const float*>(slot + scale_off) + u);
    if constexpr (kBits == 8) {
      const uint2 p = __ldcg(reinterpret_cast<const uint2*>(slot + u * kPayload + k0));
      const uint32_t w[2] = {p.x, p.y};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int q = int(uint32_t(w[j / 4] << (24 - 8 * (j % 4)))) >> 24;
        v[j] = __fmul_rn(float(q), scale);
      }
    } else {
      const uint32_t w =
          __ldcg(reinterpret_cast<const unsigned int*>(slot + u * kPayload + k0 / 2));
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = __fmul_rn(float(nibble(w, j)), scale);
    }
  }

  static __device__ __forceinline__ float decode1(const char* slot, int64_t scale_off, int64_t e) {
    const int64_t u = e / kUnit;
    const int k = int(e % kUnit);
    const float scale = __ldcg(reinterpret_cast<const float*>(slot + scale_off) + u);
    int q;
    if constexpr (kBits == 8) {
      q = int(__ldcg(reinterpret_cast<const signed char*>(slot + u * kPayload + k)));
    } else {
      const uint32_t b =
          __ldcg(reinterpret_cast<const unsigned char*>(slot + u * kPayload + k / 2));
      q = nibble(b, k % 2);
    }
    return __fmul_rn(float(q), scale);
  }
};

// Sum over ranks 0..world-1, in that order, of values [e, e + 8) of every sender's slot in our
// receive buffer. __fadd_rn keeps the decoders' products from being fused into the additions, so
// the sum is the plain f32 sequence the host test repeats.
template <class C>
__device__ __forceinline__ void reduce8(const RankPtrs& r, uint32_t parity, int64_t scale_off,
                                        int64_t e, float (&acc)[8]) {
  C::decode8(recv_slot(r, r.rank, parity, 0), scale_off, e, acc);
  for (int s = 1; s < r.world; ++s) {
    float v[8];
    C::decode8(recv_slot(r, r.rank, parity, s), scale_off, e, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = __fadd_rn(acc[j], v[j]);
  }
}

template <class C>
__device__ __forceinline__ float reduce1(const RankPtrs& r, uint32_t parity, int64_t scale_off,
                                         int64_t e) {
  float acc = C::decode1(recv_slot(r, r.rank, parity, 0), scale_off, e);
  for (int s = 1; s < r.world; ++s) {
    acc = __fadd_rn(acc, C::decode1(recv_slot(r, r.rank, parity, s), scale_off, e));
  }
  return acc;
}

// Unit `slot_unit` of every slot, summed: acc[kUnit].
template <class C>
__device__ __forceinline__ void reduce_unit(const RankPtrs& r, uint32_t parity, int64_t scale_off,
                                            int64_t slot_unit, float (&acc)[C::kUnit]) {
#pragma unroll
  for (int p = 0; p < C::kUnit / 8; ++p) {
    float a[8];
    reduce8<C>(r, parity, scale_off, slot_unit * C::kUnit + p * 8, a);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[p * 8 + j] = a[j];
  }
}

// --- one-shot: in, out: [n]; units = ceil(n / kUnit); thread t of the grid owns units
// t, t + grid, ... in both phases, so the per-block barrier covers every value it reads ---
template <class C>
__global__ void __launch_bounds__(kThreads)
    one_shot_kernel(RankPtrs r, const __nv_bfloat16* in, __nv_bfloat16* out, int64_t n,
                    int64_t units, int64_t scale_off, bool in_aligned, bool out_aligned) {
  const uint32_t call = read_call(r);
  const uint32_t parity = call & 1u;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = first; u < units; u += stride) {
    uint32_t w[C::kUnit / 2];
    load_bits<C::kUnit>(in, n, u * C::kUnit, in_aligned, w);
    const typename C::Enc enc = C::encode(w);
    for (int i = 0; i < r.world; ++i) {
      const int peer = (r.rank + i) % r.world;  // staggered so the links fill evenly
      C::store(recv_slot(r, peer, parity, r.rank), scale_off, u, enc);
    }
  }
  block_barrier(r, 0, call + 1);
  for (int64_t u = first; u < units; u += stride) {
    float acc[C::kUnit];
    reduce_unit<C>(r, parity, scale_off, u, acc);
    uint32_t w[C::kUnit / 2];
    pack_bf16<C::kUnit>(acc, w);
    store_bits<C::kUnit>(out, n, u * C::kUnit, out_aligned, w);
  }
  finish_call(r, call);
}

// --- two-shot: shard s = units [s * shard, (s + 1) * shard) belongs to rank s. Thread t owns
// index i = t, t + grid, ... of every shard in all three phases ---
template <class C>
__global__ void __launch_bounds__(kThreads)
    two_shot_kernel(RankPtrs r, const __nv_bfloat16* in, __nv_bfloat16* out, int64_t n,
                    int64_t units, int64_t shard, int64_t scale_off, bool in_aligned,
                    bool out_aligned) {
  const uint32_t call = read_call(r);
  const uint32_t parity = call & 1u;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  // Reduce-scatter: shard p of our input goes to slot `rank` of rank p (at shard index i).
  for (int64_t i = first; i < shard; i += stride) {
    for (int k = 0; k < r.world; ++k) {
      const int peer = (r.rank + k) % r.world;
      const int64_t u = peer * shard + i;
      if (u >= units) continue;
      uint32_t w[C::kUnit / 2];
      load_bits<C::kUnit>(in, n, u * C::kUnit, in_aligned, w);
      C::store(recv_slot(r, peer, parity, r.rank), scale_off, i, C::encode(w));
    }
  }
  block_barrier(r, 0, call + 1);
  // Sum our shard; its bf16 bits go to every rank's gather buffer (flat element layout).
  for (int64_t i = first; i < shard; i += stride) {
    const int64_t u = r.rank * shard + i;
    if (u >= units) continue;
    float acc[C::kUnit];
    reduce_unit<C>(r, parity, scale_off, i, acc);
    uint32_t w[C::kUnit / 2];
    pack_bf16<C::kUnit>(acc, w);
    for (int k = 0; k < r.world; ++k) {
      const int peer = (r.rank + k) % r.world;
      uint4* g = reinterpret_cast<uint4*>(gather_half(r, peer, parity)) + u * (C::kUnit / 8);
#pragma unroll
      for (int q = 0; q < C::kUnit / 8; ++q) {
        g[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
      }
    }
  }
  block_barrier(r, 1, call + 1);
  // All-gather: copy every shard's sums out of our gather buffer.
  const uint4* g = reinterpret_cast<const uint4*>(gather_half(r, r.rank, parity));
  for (int64_t i = first; i < shard; i += stride) {
    for (int s = 0; s < r.world; ++s) {
      const int64_t u = s * shard + i;
      if (u >= units) continue;
      uint32_t w[C::kUnit / 2];
#pragma unroll
      for (int q = 0; q < C::kUnit / 8; ++q) {
        const uint4 v = __ldcg(g + u * (C::kUnit / 8) + q);
        w[4 * q] = v.x;
        w[4 * q + 1] = v.y;
        w[4 * q + 2] = v.z;
        w[4 * q + 3] = v.w;
      }
      store_bits<C::kUnit>(out, n, u * C::kUnit, out_aligned, w);
    }
  }
  finish_call(r, call);
}

// --- fused one-shot all-reduce + residual add + RMSNorm ---

// x: [rows, dim] (this rank's part); residual, out: [rows, dim]; weight: [dim]. Block b owns rows
// b, b + grid, ...: it sends their units (dim % kUnit == 0, so units never straddle rows), meets
// the peers' block b, then for each row does exactly add_rms_norm_kernel<bf16, kVec> with x
// replaced by the bf16-rounded sum: same block size, same packet order per thread, same f32
// operations, hence the same bits. out may equal x: a block reads only its own rows of x, all
// before the barrier, and writes only its own rows of out after it.
template <class C, int kVec>
__global__ void __launch_bounds__(1024)
    fused_add_rms_norm_kernel(RankPtrs r, const __nv_bfloat16* x, __nv_bfloat16* residual,
                              const __nv_bfloat16* __restrict__ weight, __nv_bfloat16* out,
                              int64_t rows, int64_t dim, float eps, int64_t scale_off,
                              bool x_aligned) {
  using device::to_bf16;
  using device::to_f32;
  const uint32_t call = read_call(r);
  const uint32_t parity = call & 1u;
  const int64_t n = rows * dim;
  const int64_t row_units = dim / C::kUnit;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) {
      const int64_t u = row * row_units + j;
      uint32_t w[C::kUnit / 2];
      load_bits<C::kUnit>(x, n, u * C::kUnit, x_aligned, w);
      const typename C::Enc enc = C::encode(w);
      for (int i = 0; i < r.world; ++i) {
        const int peer = (r.rank + i) % r.world;
        C::store(recv_slot(r, peer, parity, r.rank), scale_off, u, enc);
      }
    }
  }
  block_barrier(r, 0, call + 1);

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    // The peers' parts of packet i summed in f32, rounded to bf16 as the plain all-reduce's
    // output is, then added as add_rms_norm adds x.
    const auto addend = [&](int64_t i, float(&a)[kVec]) {
      const int64_t e = row * dim + i * kVec;
      float acc[kVec];
      if constexpr (kVec == 8) {
        reduce8<C>(r, parity, scale_off, e, acc);
      } else {
        acc[0] = reduce1<C>(r, parity, scale_off, e);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) a[j] = to_f32(to_bf16(acc[j]));
    };
    device::add_rms_norm_row<__nv_bfloat16, kVec>(addend, residual + row * dim, weight,
                                                  out + row * dim, dim, eps);
    __syncthreads();  // block_sum's shared slots are reused by the next row
  }
  finish_call(r, call);
}

// --- host helpers ---

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int unit_elems(AllReduceQuant q) { return q == AllReduceQuant::kNone ? 8 : kGroup; }
int64_t payload_bytes(AllReduceQuant q) {
  switch (q) {
    case AllReduceQuant::kNone:
      return CodecBf16::kPayload;
    case AllReduceQuant::kInt8:
      return CodecInt<8>::kPayload;
    case AllReduceQuant::kInt4:
      return CodecInt<4>::kPayload;
  }
  return 0;
}
// Where the scales of a slot holding `units` units start (and its payload ends).
int64_t scale_offset(AllReduceQuant q, int64_t units) {
  return round_up(units * payload_bytes(q), 16);
}
// Bytes a slot holding `units` units needs.
int64_t slot_need(AllReduceQuant q, int64_t units) {
  return scale_offset(q, units) + (q == AllReduceQuant::kNone ? 0 : units * 4);
}

void free_device(void* p, int device) {
  if (p == nullptr) return;
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) current = -1;
  cudaSetDevice(device);
  cudaFree(p);
  if (current >= 0) cudaSetDevice(current);
  cudaGetLastError();  // a destructor reports nothing
}

}  // namespace

// --- quantization setting ---

AllReduceQuant parse_quick_reduce_quantization(std::optional<std::string_view> value) {
  if (!value) return AllReduceQuant::kNone;
  std::string up;
  for (const char c : *value) {
    if (!std::isspace(static_cast<unsigned char>(c))) {
      up += char(std::toupper(static_cast<unsigned char>(c)));
    }
  }
  if (up.empty() || up == "NONE" || up == "FP") return AllReduceQuant::kNone;
  if (up == "INT8" || up == "INT6") return AllReduceQuant::kInt8;
  if (up == "INT4") return AllReduceQuant::kInt4;
  throw_error(ErrorCode::kInvalidArgument,
              "AITER_QUICK_REDUCE_QUANTIZATION=\"{}\" is not one of INT8, INT6, INT4, FP, NONE",
              *value);
}

AllReduceQuant quick_reduce_quantization_from_env() {
  const std::optional<std::string> v = envs::AITER_QUICK_REDUCE_QUANTIZATION();
  if (!v) return AllReduceQuant::kNone;
  return parse_quick_reduce_quantization(std::string_view(*v));
}

const char* all_reduce_quant_name(AllReduceQuant quant) {
  switch (quant) {
    case AllReduceQuant::kNone:
      return "bf16";
    case AllReduceQuant::kInt8:
      return "int8";
    case AllReduceQuant::kInt4:
      return "int4";
  }
  return "?";
}

const char* all_reduce_algo_name(AllReduceAlgo algo) {
  switch (algo) {
    case AllReduceAlgo::kAuto:
      return "auto";
    case AllReduceAlgo::kOneShot:
      return "one-shot";
    case AllReduceAlgo::kTwoShot:
      return "two-shot";
    case AllReduceAlgo::kNccl:
      return "nccl";
  }
  return "?";
}

// --- thresholds ---

AllReduceThresholds default_all_reduce_thresholds(int world_size, int64_t max_bytes) {
  const int64_t kKiB = 1024;
  const int64_t one = world_size <= 2 ? 1024 * kKiB : world_size <= 4 ? 512 * kKiB : 256 * kKiB;
  return AllReduceThresholds{std::min(one, max_bytes), max_bytes};
}

AllReduceAlgo choose_all_reduce_algo(const AllReduceThresholds& t, int64_t bytes) {
  if (bytes <= t.one_shot_max_bytes) return AllReduceAlgo::kOneShot;
  if (bytes <= t.two_shot_max_bytes) return AllReduceAlgo::kTwoShot;
  return AllReduceAlgo::kNccl;
}

// --- rendezvous ---

CustomAllReduceGroup::CustomAllReduceGroup(int world_size)
    : world_size_(world_size),
      peers_(size_t(std::max(world_size, 0))),
      errors_(size_t(std::max(world_size, 0))),
      done_(size_t(std::max(world_size, 0)), false) {
  ATOM_CHECK(world_size >= 2 && world_size <= kMaxRanks, kInvalidArgument,
             "custom all-reduce: a group of {} ranks (2 to {} supported)", world_size, kMaxRanks);
}

std::vector<CustomAllReducePeer> CustomAllReduceGroup::exchange(int rank,
                                                                const CustomAllReducePeer& mine,
                                                                const std::string& error) {
  std::unique_lock<std::mutex> lock(mu_);
  ATOM_CHECK(rank >= 0 && rank < world_size_, kInvalidArgument,
             "custom all-reduce: rank {} outside a group of {}", rank, world_size_);
  ATOM_CHECK(!done_[size_t(rank)], kInvalidArgument,
             "custom all-reduce: rank {} joined its group twice", rank);
  done_[size_t(rank)] = true;
  peers_[size_t(rank)] = mine;
  errors_[size_t(rank)] = error;
  ++published_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return published_ == world_size_; });
  std::string failed;
  for (int r = 0; r < world_size_; ++r) {
    if (!errors_[size_t(r)].empty()) {
      failed += fmt::format("{}rank {}: {}", failed.empty() ? "" : "; ", r, errors_[size_t(r)]);
    }
  }
  ATOM_CHECK(failed.empty(), kUnsupported, "custom all-reduce unavailable ({})", failed);
  return peers_;
}

// --- CustomAllReduce ---

CustomAllReduce::DeviceMemory::~DeviceMemory() { free_device(ptr, device); }

std::string CustomAllReduce::peer_access_problem(std::span<const int> devices) {
  for (size_t i = 0; i < devices.size(); ++i) {
    for (size_t j = 0; j < devices.size(); ++j) {
      if (i == j) continue;
      if (devices[i] == devices[j]) {
        return fmt::format("ranks {} and {} share GPU {}", i, j, devices[i]);
      }
      int can = 0;
      const cudaError_t e = cudaDeviceCanAccessPeer(&can, devices[i], devices[j]);
      if (e != cudaSuccess) {
        cudaGetLastError();
        return fmt::format("cudaDeviceCanAccessPeer({}, {}) failed: {}", devices[i], devices[j],
                           cudaGetErrorString(e));
      }
      if (!can) {
        return fmt::format("GPU {} cannot access GPU {} directly (no peer-to-peer path)",
                           devices[i], devices[j]);
      }
    }
  }
  return {};
}

CustomAllReduce::CustomAllReduce(std::shared_ptr<CustomAllReduceGroup> group, int rank,
                                 std::span<const int> devices, const CustomAllReduceConfig& config)
    : group_(std::move(group)),
      rank_(rank),
      world_(int(devices.size())),
      device_(rank >= 0 && rank < int(devices.size()) ? devices[size_t(rank)] : -1),
      max_blocks_(config.max_blocks),
      max_bytes_(config.max_bytes),
      quant_(config.quant) {
  ATOM_CHECK(group_ != nullptr, kInvalidArgument, "custom all-reduce: no group");
  ATOM_CHECK(rank >= 0 && rank < group_->world_size(), kInvalidArgument,
             "custom all-reduce: rank {} outside a group of {}", rank, group_->world_size());
  CustomAllReducePeer mine;
  std::string error;
  try {
    ATOM_CHECK(world_ == group_->world_size(), kInvalidArgument,
               "custom all-reduce: {} devices for a group of {}", world_, group_->world_size());
    ATOM_CHECK(config.max_bytes >= 16 && config.max_bytes <= (int64_t(1) << 30), kInvalidArgument,
               "custom all-reduce: max_bytes {} outside [16, 1 GiB]", config.max_bytes);
    ATOM_CHECK(config.max_blocks >= 1 && config.max_blocks <= kMaxBlocks, kInvalidArgument,
               "custom all-reduce: max_blocks {} outside [1, {}]", config.max_blocks, kMaxBlocks);
    ATOM_CHECK(config.barrier_timeout_ms >= 0, kInvalidArgument,
               "custom all-reduce: negative barrier timeout {}", config.barrier_timeout_ms);
    timeout_ns_ = uint64_t(config.barrier_timeout_ms) * 1000000u;
    AllReduceThresholds t =
        config.thresholds.value_or(default_all_reduce_thresholds(world_, max_bytes_));
    t.two_shot_max_bytes = std::clamp<int64_t>(t.two_shot_max_bytes, 0, max_bytes_);
    t.one_shot_max_bytes = std::clamp<int64_t>(t.one_shot_max_bytes, 0, t.two_shot_max_bytes);
    // A slot holds one whole one-shot message or one two-shot shard; the gather buffer one
    // two-shot message. The slack covers the rounding of units and shards (custom_allreduce.h
    // budget: a one-shot slot needs <= 2n + 36 bytes for n values, a shard <= 2n/W + 72).
    slot_bytes_ = round_up(std::max(t.one_shot_max_bytes, ceil_div(max_bytes_, world_)) + 256, 256);
    gather_bytes_ = round_up(max_bytes_ + 2 * kGroup * (kMaxRanks + 1) + 256, 256);
    const std::string p2p = peer_access_problem(devices);
    ATOM_CHECK(p2p.empty(), kUnsupported, "custom all-reduce needs peer access: {}; use NCCL", p2p);
    ATOM_CUDA_CHECK(cudaSetDevice(device_));
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(devices[size_t(p)], 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();
      } else {
        ATOM_CUDA_CHECK(e);
      }
    }
    const int64_t recv_bytes = 2 * world_ * slot_bytes_;
    const int64_t gather_total = 2 * gather_bytes_;
    for (DeviceMemory* m : {&recv_, &gather_, &signal_}) m->device = device_;
    ATOM_CUDA_CHECK(cudaMalloc(&recv_.ptr, size_t(recv_bytes)));
    ATOM_CUDA_CHECK(cudaMalloc(&gather_.ptr, size_t(gather_total)));
    ATOM_CUDA_CHECK(cudaMalloc(&signal_.ptr, sizeof(Signal)));
    ATOM_CUDA_CHECK(cudaMemset(recv_.ptr, 0, size_t(recv_bytes)));
    ATOM_CUDA_CHECK(cudaMemset(gather_.ptr, 0, size_t(gather_total)));
    ATOM_CUDA_CHECK(cudaMemset(signal_.ptr, 0, sizeof(Signal)));
    // The zeroed flags must be in place before any peer can write its first epoch into them.
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    thresholds_ = t;
    mine = CustomAllReducePeer{device_, recv_.ptr, gather_.ptr, signal_.ptr};
  } catch (const std::exception& e) {
    error = e.what();
  }
  peers_ = group_->exchange(rank_, mine, error);
}

CustomAllReduce::~CustomAllReduce() {
  // Peers write into our buffers only inside calls whose barriers we also pass, so once our own
  // device is idle no peer touches them any more.
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && cudaSetDevice(device_) == cudaSuccess) {
    cudaDeviceSynchronize();
    if (current >= 0) cudaSetDevice(current);
  }
  cudaGetLastError();
}

void CustomAllReduce::set_thresholds(const AllReduceThresholds& t) {
  ATOM_CHECK(t.one_shot_max_bytes >= 0 && t.one_shot_max_bytes <= t.two_shot_max_bytes &&
                 t.two_shot_max_bytes <= max_bytes_,
             kInvalidArgument,
             "custom all-reduce: thresholds one-shot {} / two-shot {} must satisfy "
             "0 <= one-shot <= two-shot <= max_bytes {}",
             t.one_shot_max_bytes, t.two_shot_max_bytes, max_bytes_);
  for (const AllReduceQuant q :
       {AllReduceQuant::kNone, AllReduceQuant::kInt8, AllReduceQuant::kInt4}) {
    const int64_t n = t.one_shot_max_bytes / 2;
    const int64_t units = ceil_div(n, unit_elems(q));
    ATOM_CHECK(slot_need(q, units) <= slot_bytes_, kOutOfRange,
               "custom all-reduce: one-shot up to {} bytes needs larger buffers (slot {} bytes); "
               "raise it in the config at construction",
               t.one_shot_max_bytes, slot_bytes_);
  }
  thresholds_ = t;
}

bool CustomAllReduce::fits(AllReduceAlgo algo, int64_t n) const {
  return fits_with(algo == AllReduceAlgo::kAuto ? choose(2 * n) : algo, n, quant_);
}

bool CustomAllReduce::fits_with(AllReduceAlgo algo, int64_t n, AllReduceQuant q) const {
  if (n < 0 || 2 * n > max_bytes_) return false;
  const int64_t unit = unit_elems(q);
  const int64_t units = ceil_div(n, unit);
  if (algo == AllReduceAlgo::kOneShot) return slot_need(q, units) <= slot_bytes_;
  if (algo == AllReduceAlgo::kTwoShot) {
    const int64_t shard = ceil_div(units, world_);
    return slot_need(q, shard) <= slot_bytes_ && world_ * shard * unit * 2 <= gather_bytes_;
  }
  return false;
}

AllReduceAlgo CustomAllReduce::resolve(AllReduceAlgo algo, int64_t n, AllReduceQuant q) const {
  ATOM_CHECK(algo != AllReduceAlgo::kNccl, kInvalidArgument,
             "custom all-reduce: asked to run the NCCL algorithm");
  if (algo == AllReduceAlgo::kAuto) {
    algo = choose(2 * n);
    ATOM_CHECK(algo != AllReduceAlgo::kNccl, kOutOfRange,
               "custom all-reduce: {} bytes are above two_shot_max_bytes {}; use NCCL", 2 * n,
               thresholds_.two_shot_max_bytes);
  }
  ATOM_CHECK(fits_with(algo, n, q), kOutOfRange,
             "custom all-reduce: {} values do not fit the {} buffers (max_bytes {})", n,
             all_reduce_algo_name(algo), max_bytes_);
  return algo;
}

void CustomAllReduce::check_device(const char* op) const {
  int current = -1;
  ATOM_CUDA_CHECK(cudaGetDevice(&current));
  ATOM_CHECK(current == device_, kInvalidArgument,
             "custom all-reduce {}: current device {} is not rank {}'s device {}", op, current,
             rank_, device_);
}

namespace {

RankPtrs make_rank_ptrs(const std::vector<CustomAllReducePeer>& peers, int rank, int64_t slot_bytes,
                        int64_t gather_bytes, uint64_t timeout_ns) {
  RankPtrs r{};
  for (size_t p = 0; p < peers.size(); ++p) {
    r.recv[p] = static_cast<char*>(peers[p].recv);
    r.gather[p] = static_cast<char*>(peers[p].gather);
    r.sig[p] = static_cast<Signal*>(peers[p].signal);
  }
  r.slot_bytes = slot_bytes;
  r.gather_bytes = gather_bytes;
  r.timeout_ns = timeout_ns;
  r.rank = rank;
  r.world = int(peers.size());
  return r;
}

template <class C>
void launch_all_reduce(const RankPtrs& r, AllReduceAlgo algo, const __nv_bfloat16* in,
                       __nv_bfloat16* out, int64_t n, int max_blocks, cudaStream_t stream) {
  const int64_t units = ceil_div(n, C::kUnit);
  const bool in_aligned = aligned16(in);
  const bool out_aligned = aligned16(out);
  if (algo == AllReduceAlgo::kOneShot) {
    const int blocks = int(std::clamp<int64_t>(ceil_div(units, kThreads), 1, max_blocks));
    one_shot_kernel<C><<<blocks, kThreads, 0, stream>>>(
        r, in, out, n, units, round_up(units * C::kPayload, 16), in_aligned, out_aligned);
  } else {
    const int64_t shard = ceil_div(units, r.world);
    const int blocks = int(std::clamp<int64_t>(ceil_div(shard, kThreads), 1, max_blocks));
    two_shot_kernel<C><<<blocks, kThreads, 0, stream>>>(
        r, in, out, n, units, shard, round_up(shard * C::kPayload, 16), in_aligned, out_aligned);
  }
  ATOM_CUDA_CHECK(cudaGetLastError());
}

template <class C>
void launch_fused(const RankPtrs& r, const __nv_bfloat16* x, __nv_bfloat16* residual,
                  const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows, int64_t dim,
                  float eps, int max_blocks, cudaStream_t stream) {
  const int64_t units = rows * dim / C::kUnit;
  const int64_t scale_off = round_up(units * C::kPayload, 16);
  const int blocks = int(std::min<int64_t>(rows, max_blocks));
  // add_rms_norm's choice of packet: 16 bytes when the row and its pointers allow (the plain
  // path's all-reduce output is aligned by assumption).
  if (dim % 8 == 0 && aligned16(residual) && aligned16(weight) && aligned16(out)) {
    fused_add_rms_norm_kernel<C, 8><<<blocks, device::norm_threads(dim / 8), 0, stream>>>(
        r, x, residual, weight, out, rows, dim, eps, scale_off, aligned16(x));
  } else {
    fused_add_rms_norm_kernel<C, 1><<<blocks, device::norm_threads(dim), 0, stream>>>(
        r, x, residual, weight, out, rows, dim, eps, scale_off, aligned16(x));
  }
  ATOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void CustomAllReduce::all_reduce(const __nv_bfloat16* in, __nv_bfloat16* out, int64_t n,
                                 cudaStream_t stream, AllReduceAlgo algo,
                                 std::optional<AllReduceQuant> quant) {
  ATOM_CHECK(n >= 0, kInvalidArgument, "custom all-reduce: negative size {}", n);
  if (n == 0) return;
  ATOM_CHECK(in != nullptr && out != nullptr, kInvalidArgument, "custom all-reduce: null buffer");
  check_device("all_reduce");
  const AllReduceQuant q = quant.value_or(quant_);
  const AllReduceAlgo a = resolve(algo, n, q);
  const RankPtrs r = make_rank_ptrs(peers_, rank_, slot_bytes_, gather_bytes_, timeout_ns_);
  switch (q) {
    case AllReduceQuant::kNone:
      launch_all_reduce<CodecBf16>(r, a, in, out, n, max_blocks_, stream);
      return;
    case AllReduceQuant::kInt8:
      launch_all_reduce<CodecInt<8>>(r, a, in, out, n, max_blocks_, stream);
      return;
    case AllReduceQuant::kInt4:
      launch_all_reduce<CodecInt<4>>(r, a, in, out, n, max_blocks_, stream);
      return;
  }
}

void CustomAllReduce::all_reduce_add_rms_norm(const __nv_bfloat16* x, __nv_bfloat16* residual,
                                              const __nv_bfloat16* weight, __nv_bfloat16* out,
                                              int64_t rows, int64_t dim, float eps,
                                              cudaStream_t stream, AllReduceAlgo algo,
                                              std::optional<AllReduceQuant> quant) {
  ATOM_CHECK(rows >= 0 && dim > 0, kInvalidArgument,
             "custom all-reduce + rms_norm: bad shape [{}, {}]", rows, dim);
  ATOM_CHECK(rows <= INT_MAX, kOutOfRange, "custom all-reduce + rms_norm: {} rows", rows);
  if (rows == 0) return;
  ATOM_CHECK(x != nullptr && residual != nullptr && weight != nullptr && out != nullptr,
             kInvalidArgument, "custom all-reduce + rms_norm: null buffer");
  check_device("all_reduce_add_rms_norm");
  const int64_t n = rows * dim;
  const AllReduceQuant q = quant.value_or(quant_);
  const AllReduceAlgo a = resolve(algo, n, q);
  if (a != AllReduceAlgo::kOneShot || dim % unit_elems(q) != 0) {
    // Two kernels, the definition of the fused result.
    all_reduce(x, out, n, stream, a, q);
    launch_add_rms_norm(out, residual, weight, out, rows, dim, eps, stream);
    return;
  }
  const RankPtrs r = make_rank_ptrs(peers_, rank_, slot_bytes_, gather_bytes_, timeout_ns_);
  switch (q) {
    case AllReduceQuant::kNone:
      launch_fused<CodecBf16>(r, x, residual, weight, out, rows, dim, eps, max_blocks_, stream);
      return;
    case AllReduceQuant::kInt8:
      launch_fused<CodecInt<8>>(r, x, residual, weight, out, rows, dim, eps, max_blocks_, stream);
      return;
    case AllReduceQuant::kInt4:
      launch_fused<CodecInt<4>>(r, x, residual, weight, out, rows, dim, eps, max_blocks_, stream);
      return;
  }
}

}  // namespace atom::cuda

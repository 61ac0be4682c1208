// Paged attention kernels (see attention.h): a decode kernel with key splits and their merge, and a
// flash-attention prefill kernel, both on 16-bit tensor cores with f32 softmax and accumulation;
// each is instantiated for a bf16 cache (bf16 mma) and an fp8 e4m3 cache (f16 mma).
//
// Scores are kept in log2 units (q . k * scale * log2(e)) so the softmax uses exp2. Each warp
// keeps, per query row, the running max m, the running sum l of exp2(s - m) and the unnormalized
// output o = sum exp2(s - m) v; a new tile of keys rescales them by exp2(m_old - m_new). The
// probabilities enter the P V product rounded to bf16 (f16 for an fp8 cache: the tensor cores'
// input); l sums them in f32, as FlashAttention does.
//
// An fp8 cache: its tiles are copied to shared memory as they are (half the bytes of bf16, so the
// same 64-key tiles take half the shared memory) and converted while the mma fragments are built,
// not in a shared-memory pass: a pass would add a barrier per tile, a read of the fp8 tile and a
// write of a bf16 one, and the fragments would then read twice the bytes, three times the
// shared-memory traffic of converting in registers. The fragments are f16, not bf16: e4m3 -> f16
// is exact and one cvt per pair, while sm_90 has no e4m3 -> bf16 conversion (through f16 and f32
// it takes four a pair). q is rounded to f16 once per block (exact for bf16 values of magnitude
// 2^-17 to 65504, saturated above), and the probabilities enter the P V product as f16 (3 more
// bits of precision than bf16). The scales cost nothing in the loop:
// k_scale is folded into the softmax scale (scores are q . k_e4m3 * (scale * k_scale)) and v_scale
// into the output normalization (o = sum p v_e4m3 * v_scale / l).
//   K fragments: ldmatrix of the fp8 rows as b16 gives a lane 4 consecutive bytes of one key, dims
//     16 j + 4 quad .. + 3 of k-step j; they are b0 (the first two) and b1 (the last two) of that
//     k-step, so the q fragments take their columns in the same order (a dot product does not
//     depend on the order of its terms): load_q_fragments_f16.
//   V fragments: ldmatrix.trans of the rows as b16 gives a lane bytes (key 2 quad, dim 2 group),
//     (2 quad, 2 group + 1), (2 quad + 1, 2 group), (2 quad + 1, 2 group + 1) of a 16-dim block;
//     one byte permute makes the key pairs of the even dim and of the odd dim, the b operands of
//     two 8-column output tiles whose column c is dim 16 b + 2 c and 16 b + 2 c + 1. A lane then
//     holds dims 16 b + 4 quad .. + 3 of the output: even tile, odd tile, even, odd.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/attention_mma.cuh"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/pdl.cuh"
#include "atom/core/error.h"

namespace atom::cuda {

namespace {

using attention_detail::bf16x2_to_f16x2;
using attention_detail::cp_async16;
using attention_detail::cp_async_commit;
using attention_detail::cp_async_wait;
using attention_detail::e4m3x2_to_f16x2;
using attention_detail::kKeyTile;
using attention_detail::kThreads;
using attention_detail::kv_row_bytes;
using attention_detail::KvSource;
using attention_detail::kWarps;
using attention_detail::ldmatrix_x4;
using attention_detail::ldmatrix_x4_trans;
using attention_detail::load_kv_tile;
using attention_detail::mma_16816;
using attention_detail::mma_16816_f16;
using attention_detail::pack_bf16x2;
using attention_detail::pack_f16x2;
using attention_detail::smem_row;

constexpr int kRowTile = 64;     // (query row, group head) pairs per prefill block, 16 a warp
constexpr int kDecodeRows = 16;  // group heads per decode block: the rows of one mma tile
// Most key splits paged_decode_num_splits picks (a launch may ask for more, up to 65535).
constexpr int kMaxSplits = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Shared memory per multiprocessor on sm_90 (228 KB) and what the hardware keeps per block (1 KB).
constexpr size_t kSmemPerSm = 228 * 1024;
constexpr size_t kSmemPerBlockReserved = 1024;

// K/V stages of the decode pipeline. A decode block's work is pure streaming: per 64-key tile it
// reads 64 x 2 x head_dim x 2 bytes (32 KB at head_dim 128) and does 64 small mma (16 a warp),
// a few hundred cycles, against ~1 us of loaded DRAM latency. With kStages stages a block keeps
// kStages - 1 tiles in flight while it waits and while it computes. Shared memory at head_dim
// 128 (rows of 136 bf16 = 272 bytes): Q 16 rows = 4.25 KB, a stage 2 x 64 rows = 34 KB, so 3
// stages = 106.25 KB, 2 blocks a multiprocessor (2 x 107.25 <= 228); 2 stages = 72.25 KB, 3
// blocks (registers, ~155 a thread = 20 K of the 64 K a block, allow 3 either way). In flight a
// multiprocessor: 3 stages x 2 blocks = 4 tiles (128 KB), 2 stages x 3 blocks = 3 tiles (96 KB).
// Both exceed what Little's law asks at full bandwidth (3.35 TB/s x ~1 us / 132 = ~25 KB), but
// a block's tiles are serialized behind its own waits, so the deeper queue per block is what
// keeps a multiprocessor's stream going when its blocks wait at the same time. At head_dim 64
// (rows of 144 bytes) 3 stages take 56.25 KB: 3 blocks a multiprocessor.
// Measured on an H100 80GB HBM3 at the Llama-3.1-8B shape (8 kv heads x 4, head_dim 128, blocks
// of 16), per layer with the merge, against 2 stages and 3 blocks a multiprocessor (splits from
// the same rule for its slots): batch 64 x 2048 keys 197 vs 204 us (2.73 vs 2.63 TB/s), x 1024 104
// vs 113 us, batch 128 x 1536 290 vs 306 us, batch 256 x 2048 761 vs 781 us, batch 1 x 200 8.3
// vs 8.6 us.
// An fp8 cache halves a stage (rows of 144 bytes at head_dim 128: 18 KB a stage), so it takes 4
// stages: 4.25 + 72 = 76.25 KB, still 2 blocks a multiprocessor as for bf16 (the split choice,
// which does not know the cache's type, assumes one figure for both), with 3 tiles of 18 KB in
// flight per block: 108 KB a multiprocessor against bf16's 136 KB, both far above the ~25 KB
// Little's law asks, and 384 keys in flight against bf16's 256.
template <int kHeadDim, bool kFp8>
constexpr int decode_stages() {
  return kFp8 ? 4 : 3;
}

template <int kHeadDim, bool kFp8>
constexpr size_t decode_smem_bytes() {
  return size_t(kDecodeRows) * smem_row<kHeadDim>() * sizeof(__nv_bfloat16) +
         size_t(2 * decode_stages<kHeadDim, kFp8>() * kKeyTile) * kv_row_bytes<kHeadDim, kFp8>();
}

template <int kHeadDim, bool kFp8>
constexpr size_t decode_blocks_per_sm() {
  return kSmemPerSm / (decode_smem_bytes<kHeadDim, kFp8>() + kSmemPerBlockReserved);
}

// Decode blocks one multiprocessor holds at once: the smallest of what shared memory allows for
// either head dim and cache type (registers allow 3).
constexpr int kDecodeBlocksPerSm =
    int(std::min({decode_blocks_per_sm<128, false>(), decode_blocks_per_sm<64, false>(),
                  decode_blocks_per_sm<128, true>(), decode_blocks_per_sm<64, true>(), size_t(3)}));
static_assert(kDecodeBlocksPerSm >= 2);

extern __shared__ __align__(16) unsigned char attention_smem[];

struct Params {
  const __nv_bfloat16* q;             // [num_tokens, num_heads, head_dim]
  __nv_bfloat16* out;                 // [num_tokens, num_heads, head_dim]
  const unsigned char* k_cache;       // [num_blocks, block_size, num_kv_heads, head_dim] bf16/fp8
  const unsigned char* v_cache;       // [num_blocks, block_size, num_kv_heads, head_dim] bf16/fp8
  const int32_t* cu_seqlens_q;        // [num_seqs + 1]
  const int32_t* seq_lens;            // [num_seqs]
  const int32_t* block_tables;        // [num_seqs, stride]
  const int32_t* block_table_stride;  // device: the row stride, or null for max_blocks_per_seq
  int64_t num_blocks;
  int64_t max_blocks_per_seq;
  int num_seqs;
  int block_size;
  int num_heads;
  int num_kv_heads;
  int group;         // query heads per kv head
  float scale_log2;  // scale * log2(e), times k_scale for an fp8 cache
  float v_scale;     // an fp8 cache's v_scale (the bf16 kernels do not read it)
  // Decode key splits of the grid: each sequence cuts its own context into up to num_splits
  // chunks (decode_split_keys), the blocks past its last chunk return at once.
  int num_splits;
  float* part_out;  // [num_seqs, num_heads, num_splits, head_dim] unnormalized outputs
  float* part_max;  // [num_seqs, num_heads, num_splits] running max (log2 units)
  float* part_sum;  // [num_seqs, num_heads, num_splits] sum of exp2(s - max)
};

// head_bytes: one kv head's row of one slot (head_dim times the element size).
__device__ __forceinline__ KvSource kv_source(const Params& p, int seq, int kv_head,
                                              int head_bytes) {
  return KvSource{p.k_cache,
                  p.v_cache,
                  p.block_tables + int64_t(seq) * (p.block_table_stride != nullptr
                                                       ? int64_t(*p.block_table_stride)
                                                       : p.max_blocks_per_seq),
                  p.num_blocks,
                  p.block_size,
                  int64_t(p.num_kv_heads) * head_bytes,
                  int64_t(kv_head) * head_bytes};
}

// Max over the 4 lanes of a quad (the lanes holding one row of an mma tile).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One online-softmax step for the two rows (i = 0: lane / 4, i = 1: lane / 4 + 8) a thread holds
// of a warp's 16 x (8 * kTiles) score tile s, already in log2 units with -inf for masked keys.
// Rescales o, m, l, and turns s into the probabilities exp2(s - m). A row that has seen no
// unmasked key yet keeps m = -inf and gets zeros (exp2 against 0, never -inf - -inf).
template <int kTiles, int kDTiles>
__device__ __forceinline__ void online_softmax(float (&s)[kTiles][4], float (&o)[kDTiles][4],
                                               float (&row_max)[2], float (&row_sum)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kTiles; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
    const float new_max = fmaxf(row_max[i], quad_max(mx));
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float alpha = exp2f(row_max[i] - base);
    row_max[i] = new_max;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      s[n][2 * i] = exp2f(s[n][2 * i] - base);
      s[n][2 * i + 1] = exp2f(s[n][2 * i + 1] - base);
      sum += s[n][2 * i] + s[n][2 * i + 1];
    }
    row_sum[i] = row_sum[i] * alpha + sum;
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      o[d][2 * i] *= alpha;
      o[d][2 * i + 1] *= alpha;
    }
  }
}

// o += P V for one 16-key step: P is the probabilities of 8-key tiles `n` and `n + 1` (C layout,
// reused as the A operand), V the 16 rows from `v_rows` ([16][kv_row_bytes], shared memory).
// bf16 cache: o[d] is output dims [8 d, 8 d + 8) in order. fp8 cache: o[2 b] and o[2 b + 1] are
// the even and the odd dims of [16 b, 16 b + 16), column c being dim 16 b + 2 c (+ 1) (see the
// top of the file).
template <int kHeadDim, bool kFp8, int kTiles, int kDTiles>
__device__ __forceinline__ void accumulate_pv(const float (&s)[kTiles][4], int n,
                                              const unsigned char* v_rows, float (&o)[kDTiles][4]) {
  const int lane = threadIdx.x % 32;
  if constexpr (kFp8) {
    constexpr int kRowBytes = kv_row_bytes<kHeadDim, true>();
    const uint32_t a[4] = {pack_f16x2(s[n][0], s[n][1]), pack_f16x2(s[n][2], s[n][3]),
                           pack_f16x2(s[n + 1][0], s[n + 1][1]),
                           pack_f16x2(s[n + 1][2], s[n + 1][3])};
    // Matrix m = lane / 8 of each ldmatrix: keys 8 (m % 2) .. + 7, bytes 16 (m / 2) .. + 15 of
    // the 32 dims of step i.
    const unsigned char* base =
        v_rows + (((lane / 8) % 2) * 8 + lane % 8) * kRowBytes + (lane / 16) * 16;
#pragma unroll
    for (int i = 0; i < kHeadDim / 32; ++i) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, base + i * 32);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Bytes (key, dim) (2q, 2g), (2q, 2g+1), (2q+1, 2g), (2q+1, 2g+1) -> the even dim's key
        // pair in the low half, the odd dim's in the high half.
        const uint32_t k0 = __byte_perm(b[2 * h], 0, 0x3120);      // keys 0-7 of the step
        const uint32_t k8 = __byte_perm(b[2 * h + 1], 0, 0x3120);  // keys 8-15
        mma_16816_f16(o[4 * i + 2 * h], a, e4m3x2_to_f16x2(k0), e4m3x2_to_f16x2(k8));
        mma_16816_f16(o[4 * i + 2 * h + 1], a, e4m3x2_to_f16x2(k0 >> 16),
                      e4m3x2_to_f16x2(k8 >> 16));
      }
    }
  } else {
    constexpr int kRow = smem_row<kHeadDim>();
    const uint32_t a[4] = {pack_bf16x2(s[n][0], s[n][1]), pack_bf16x2(s[n][2], s[n][3]),
                           pack_bf16x2(s[n + 1][0], s[n + 1][1]),
                           pack_bf16x2(s[n + 1][2], s[n + 1][3])};
    const __nv_bfloat16* base = reinterpret_cast<const __nv_bfloat16*>(v_rows) +
                                (lane % 8 + ((lane / 8) % 2) * 8) * kRow + (lane / 16) * 8;
#pragma unroll
    for (int d = 0; d < kDTiles; d += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, base + d * 8);
      mma_16816(o[d], a, b[0], b[1]);
      mma_16816(o[d + 1], a, b[2], b[3]);
    }
  }
}

// s += Q K^T for the warp's 16 query rows (fragments qf: load_q_fragments for a bf16 cache,
// load_q_fragments_f16 for fp8) against 16 keys from `k_rows` ([16][kv_row_bytes], shared
// memory) into 8-key tiles n and n + 1.
template <int kHeadDim, bool kFp8, int kTiles>
__device__ __forceinline__ void accumulate_qk(const uint32_t (&qf)[kHeadDim / 16][4],
                                              const unsigned char* k_rows, int n,
                                              float (&s)[kTiles][4]) {
  const int lane = threadIdx.x % 32;
  if constexpr (kFp8) {
    constexpr int kRowBytes = kv_row_bytes<kHeadDim, true>();
    // Matrix m = lane / 8 of each ldmatrix: keys 8 (m % 2) .. + 7 (tile n or n + 1), bytes
    // 16 (m / 2) .. + 15 of the 32 dims of step i (k-step 2 i or 2 i + 1). A lane's register
    // holds dims 4 quad .. + 3 of its k-step for key `group`: b0 the first pair, b1 the second.
    const unsigned char* base =
        k_rows + (((lane / 8) % 2) * 8 + lane % 8) * kRowBytes + (lane / 16) * 16;
#pragma unroll
    for (int i = 0; i < kHeadDim / 32; ++i) {
      uint32_t b[4];
      ldmatrix_x4(b, base + i * 32);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        mma_16816_f16(s[n + m % 2], qf[2 * i + m / 2], e4m3x2_to_f16x2(b[m]),
                      e4m3x2_to_f16x2(b[m] >> 16));
      }
    }
  } else {
    constexpr int kRow = smem_row<kHeadDim>();
    const __nv_bfloat16* base = reinterpret_cast<const __nv_bfloat16*>(k_rows) +
                                ((lane / 16) * 8 + lane % 8) * kRow + ((lane / 8) % 2) * 8;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, base + kk * 16);
      mma_16816(s[n], qf[kk], b[0], b[1]);
      mma_16816(s[n + 1], qf[kk], b[2], b[3]);
    }
  }
}

// A fragments of 16 query rows from `q_rows` ([16][smem_row], shared memory).
template <int kHeadDim>
__device__ __forceinline__ void load_q_fragments(const __nv_bfloat16* q_rows,
                                                 uint32_t (&qf)[kHeadDim / 16][4]) {
  constexpr int kRow = smem_row<kHeadDim>();
  const int lane = threadIdx.x % 32;
  const __nv_bfloat16* base = q_rows + (lane % 8 + ((lane / 8) % 2) * 8) * kRow + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) ldmatrix_x4(qf[kk], base + kk * 16);
}

// As load_q_fragments, as f16 and with the columns in the order of the fp8 K fragments: k-step
// kk's columns 2 quad, 2 quad + 1 (a0, a1) are dims 16 kk + 4 quad, + 1 and its columns
// 8 + 2 quad, + 1 (a2, a3) are dims 16 kk + 4 quad + 2, + 3. Once per block: plain loads.
template <int kHeadDim>
__device__ __forceinline__ void load_q_fragments_f16(const __nv_bfloat16* q_rows,
                                                     uint32_t (&qf)[kHeadDim / 16][4]) {
  constexpr int kRow = smem_row<kHeadDim>();
  const int lane = threadIdx.x % 32;
  const __nv_bfloat16* row0 = q_rows + (lane / 4) * kRow + (lane % 4) * 4;  // row `group`
  const __nv_bfloat16* row8 = row0 + 8 * kRow;                              // row group + 8
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    const uint2 lo = *reinterpret_cast<const uint2*>(row0 + kk * 16);
    const uint2 hi = *reinterpret_cast<const uint2*>(row8 + kk * 16);
    qf[kk][0] = bf16x2_to_f16x2(lo.x);
    qf[kk][1] = bf16x2_to_f16x2(hi.x);
    qf[kk][2] = bf16x2_to_f16x2(lo.y);
    qf[kk][3] = bf16x2_to_f16x2(hi.y);
  }
}

// Loads the warp's q fragments in the form the cache's K fragments need.
template <int kHeadDim, bool kFp8>
__device__ __forceinline__ void load_q(const __nv_bfloat16* q_rows,
                                       uint32_t (&qf)[kHeadDim / 16][4]) {
  if constexpr (kFp8) {
    load_q_fragments_f16<kHeadDim>(q_rows, qf);
  } else {
    load_q_fragments<kHeadDim>(q_rows, qf);
  }
}

// --- prefill ---

// First row-tile block of sequence s in the prefill grid: floor(cu_seqlens_q[s] * group /
// kRowTile) + s. Consecutive values differ by floor(b) - floor(a) + 1 >= ceil(b - a) (in tiles),
// so every sequence gets at least the ceil(q_len * group / kRowTile) blocks it needs, with
// floor(num_tokens * group / kRowTile) + num_seqs blocks in all: no host-side lengths needed,
// and a long prefill next to many decodes launches no empty blocks beyond one per sequence.
__device__ __forceinline__ int64_t prefill_first_block(const Params& p, int seq) {
  return int64_t(p.cu_seqlens_q[seq]) * p.group / kRowTile + seq;
}

// grid = (row-tile blocks, num_kv_heads), kThreads threads. A block takes kRowTile consecutive
// (query row, group head) pairs of one sequence and kv head; pair f is query row f / group, head
// kv_head * group + f % group, so the heads of a GQA group share every K/V tile. Warp w holds
// pairs [16 w, 16 w + 16) of the tile. Shared memory: Q [kRowTile][row] (row =
// smem_row<kHeadDim>() bf16 elements), K and V [2 stages][kKeyTile][kv_row_bytes] (bf16 or fp8
// rows as the cache holds them).
template <int kHeadDim, bool kFp8>
__global__ void __launch_bounds__(kThreads) paged_prefill_kernel(const Params p) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  constexpr int kRow = smem_row<kHeadDim>();
  constexpr int kKvRow = kv_row_bytes<kHeadDim, kFp8>();
  constexpr int kStageBytes = kKeyTile * kKvRow;  // one K (or V) stage
  constexpr int kChunks = kHeadDim / 8;           // 16-byte chunks per q row
  constexpr int kDTiles = kHeadDim / 8;           // 8-column tiles of the output
  constexpr int kTiles = kKeyTile / 8;            // 8-key tiles of the scores
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(attention_smem);
  unsigned char* sk = reinterpret_cast<unsigned char*>(sq + kRowTile * kRow);
  unsigned char* sv = sk + 2 * kStageBytes;

  // This block's sequence: the number of sequences whose first block is at or before it, less
  // one (first blocks increase with the sequence), counted by all threads in parallel.
  __shared__ int seqs_before;
  if (threadIdx.x == 0) seqs_before = 0;
  __syncthreads();
  int mine = 0;
  for (int s = threadIdx.x; s < p.num_seqs; s += kThreads) {
    mine += prefill_first_block(p, s) <= int64_t(blockIdx.x);
  }
  if (mine > 0) atomicAdd(&seqs_before, mine);
  __syncthreads();
  const int seq = seqs_before - 1;
  if (seq < 0) return;  // before the first sequence's rows (cu_seqlens_q[0] > 0)

  const int kv_head = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int seq_len = p.seq_lens[seq];
  const int group = p.group;
  const int num_pairs = q_len * group;
  const int seq_tiles = (num_pairs + kRowTile - 1) / kRowTile;
  const int local = int(blockIdx.x - prefill_first_block(p, seq));
  if (q_len <= 0 || seq_len < q_len || local >= seq_tiles) return;
  const int tile = seq_tiles - 1 - local;  // a sequence's longest causal rows start first
  const int pair0 = tile * kRowTile;
  const int ctx_start = seq_len - q_len;  // position of the first new token
  const int head0 = kv_head * group;

  for (int i = threadIdx.x; i < kRowTile * kChunks; i += kThreads) {
    const int r = i / kChunks;
    const int c = i % kChunks;
    const int f = pair0 + r;
    const bool valid = f < num_pairs;
    const __nv_bfloat16* src = p.q;
    if (valid) {
      src += (int64_t(q_begin + f / group) * p.num_heads + head0 + f % group) * kHeadDim + c * 8;
    }
    cp_async16(sq + r * kRow + c * 8, src, valid);
  }
  cp_async_commit();
  const int last_pair = min(num_pairs, pair0 + kRowTile) - 1;
  const int key_end = ctx_start + last_pair / group + 1;   // keys the last pair sees
  const int unmasked_end = ctx_start + pair0 / group + 1;  // keys every pair sees
  const int num_tiles = (key_end + kKeyTile - 1) / kKeyTile;
  const KvSource kv = kv_source(p, seq, kv_head, kHeadDim * (kFp8 ? 1 : 2));
  load_kv_tile<kHeadDim, kFp8>(kv, 0, key_end, sk, sv);
  cp_async_commit();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane % 4;
  // Positions of this thread's two rows; padding pairs past the end take the last pair's
  // position, so their (discarded) results stay finite.
  int row_pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int f = min(pair0 + warp * 16 + lane / 4 + 8 * i, num_pairs - 1);
    row_pos[i] = ctx_start + f / group;
  }

  cp_async_wait<1>();  // the Q tile; K/V tile 0 may still be in flight
  __syncthreads();
  uint32_t qf[kHeadDim / 16][4];
  load_q<kHeadDim, kFp8>(sq + warp * 16 * kRow, qf);
  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};

  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < num_tiles) {
      load_kv_tile<kHeadDim, kFp8>(kv, (t + 1) * kKeyTile, key_end, sk + (stage ^ 1) * kStageBytes,
                                   sv + (stage ^ 1) * kStageBytes);
    }
    cp_async_commit();
    cp_async_wait<1>();  // tile t has landed
    __syncthreads();
    const unsigned char* k_tile = sk + stage * kStageBytes;
    const unsigned char* v_tile = sv + stage * kStageBytes;

    float s[kTiles][4];
#pragma unroll
    for (int n = 0; n < kTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < kTiles; n += 2) {
      accumulate_qk<kHeadDim, kFp8>(qf, k_tile + n * 8 * kKvRow, n, s);
    }

    const int tile_start = t * kKeyTile;
    const bool needs_mask = tile_start + kKeyTile > unmasked_end;
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[n][j] *= p.scale_log2;
        if (needs_mask && tile_start + n * 8 + quad * 2 + (j & 1) > row_pos[j / 2]) {
          s[n][j] = -INFINITY;
        }
      }
    }
    online_softmax(s, o, row_max, row_sum);
#pragma unroll
    for (int n = 0; n < kTiles; n += 2) {
      accumulate_pv<kHeadDim, kFp8>(s, n, v_tile + n * 8 * kKvRow, o);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Every row sees key 0, so l >= 1. An fp8 cache's v_scale joins the normalization.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int f = pair0 + warp * 16 + lane / 4 + 8 * i;
    const float inv = (kFp8 ? p.v_scale : 1.0f) / quad_sum(row_sum[i]);
    if (f >= num_pairs) continue;
    __nv_bfloat16* dst =
        p.out + (int64_t(q_begin + f / group) * p.num_heads + head0 + f % group) * kHeadDim;
    if constexpr (kFp8) {
      // Dims 16 b + 4 quad .. + 3: even tile, odd tile, even, odd (accumulate_pv).
#pragma unroll
      for (int b = 0; b < kDTiles / 2; ++b) {
        *reinterpret_cast<uint2*>(dst + b * 16 + quad * 4) =
            make_uint2(pack_bf16x2(o[2 * b][2 * i] * inv, o[2 * b + 1][2 * i] * inv),
                       pack_bf16x2(o[2 * b][2 * i + 1] * inv, o[2 * b + 1][2 * i + 1] * inv));
      }
    } else {
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        *reinterpret_cast<uint32_t*>(dst + d * 8 + quad * 2) =
            pack_bf16x2(o[d][2 * i] * inv, o[d][2 * i + 1] * inv);
      }
    }
  }
}

// --- decode ---

// Keys per split of a sequence with seq_len context tokens in a grid of num_splits splits: the
// context divided evenly, rounded up to whole tiles (at least one). Each sequence divides its OWN
// context, so under a CUDA graph captured for the longest context a short one still spreads
// over the grid: a 200-key context in 33 splits runs as 4 one-tile blocks, not 1 block of 4
// tiles. Needs seq_len <= INT_MAX / 2 (checked against max_seq_len on the host).
__device__ __forceinline__ int decode_split_keys(int seq_len, int num_splits) {
  const int per_split = (max(seq_len, 1) + num_splits - 1) / num_splits;
  return (per_split + kKeyTile - 1) / kKeyTile * kKeyTile;
}

// Splits of that sequence holding keys: ceil(seq_len / split_keys) <= num_splits, as split_keys
// >= seq_len / num_splits. 0 for an empty context.
__device__ __forceinline__ int decode_active_splits(int seq_len, int split_keys) {
  return seq_len <= 0 ? 0 : (seq_len + split_keys - 1) / split_keys;
}

// grid = (num_seqs, num_kv_heads * head passes, num_splits), kThreads threads. A block takes the
// one query row of a sequence, up to kDecodeRows heads of a GQA group (a group larger than that
// takes several passes) as the rows of an mma tile, and the keys of one split. Each K/V tile of
// kKeyTile keys is shared by the 4 warps, 16 keys each, every warp with its own softmax state;
// the block merges the four at the end. A sequence whose context fits one split writes its
// output directly; otherwise each split leaves its partial state in the workspace for
// merge_splits_kernel. Shared memory: Q [kDecodeRows][row] (bf16), K and V
// [kStages][kKeyTile][kv_row_bytes] (bf16 or fp8 rows as the cache holds them); after the loop
// the K/V stages hold the warps' states.
template <int kHeadDim, int kStages, bool kFp8>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const Params p) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  static_assert(kStages >= 2);
  constexpr int kRow = smem_row<kHeadDim>();
  constexpr int kKvRow = kv_row_bytes<kHeadDim, kFp8>();
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per q row
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kStageBytes = kKeyTile * kKvRow;  // one K (or V) stage
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(attention_smem);
  unsigned char* sk = reinterpret_cast<unsigned char*>(sq + kDecodeRows * kRow);
  unsigned char* sv = sk + kStages * kStageBytes;

  const int seq = blockIdx.x;
  const int passes = (p.group + kDecodeRows - 1) / kDecodeRows;
  const int kv_head = blockIdx.y / passes;
  const int first_head = kv_head * p.group + (blockIdx.y % passes) * kDecodeRows;
  const int num_rows = min(kDecodeRows, (kv_head + 1) * p.group - first_head);
  const int split = blockIdx.z;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  if (q_len <= 0) return;
  const int token = q_begin + q_len - 1;  // the decode row; it sees the whole context
  const int seq_len = p.seq_lens[seq];
  const int split_keys = decode_split_keys(seq_len, p.num_splits);
  const int active = decode_active_splits(seq_len, split_keys);
  if (split >= active) {
    // A split past the context writes nothing (the merge reads only active splits); an unsplit
    // row with an empty context, which valid input never has, gets zeros (split rows get them
    // from the merge).
    if (p.num_splits == 1) {
      for (int i = threadIdx.x; i < num_rows * kHeadDim; i += kThreads) {
        p.out[(int64_t(token) * p.num_heads + first_head) * kHeadDim + i] =
            __float2bfloat16_rn(0.0f);
      }
    }
    return;
  }
  const bool direct = active == 1;           // the whole context is this block's: no merge
  const int key_begin = split * split_keys;  // < seq_len, as split < active
  const int key_end = min(seq_len, key_begin + split_keys);

  for (int i = threadIdx.x; i < kDecodeRows * kChunks; i += kThreads) {
    const int r = i / kChunks;
    const int c = i % kChunks;
    const bool valid = r < num_rows;
    const __nv_bfloat16* src = p.q;
    if (valid) src += (int64_t(token) * p.num_heads + first_head + r) * kHeadDim + c * 8;
    cp_async16(sq + r * kRow + c * 8, src, valid);
  }
  cp_async_commit();
  // Prologue: tiles 0 .. kStages - 2, one copy group each (empty past the last tile).
  const int num_tiles = (key_end - key_begin + kKeyTile - 1) / kKeyTile;
  const KvSource kv = kv_source(p, seq, kv_head, kHeadDim * (kFp8 ? 1 : 2));
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < num_tiles) {
      load_kv_tile<kHeadDim, kFp8>(kv, key_begin + t * kKeyTile, key_end, sk + t * kStageBytes,
                                   sv + t * kStageBytes);
    }
    cp_async_commit();
  }

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane % 4;
  cp_async_wait<kStages - 1>();  // the Q rows; the prologue's tiles may still be in flight
  __syncthreads();
  uint32_t qf[kHeadDim / 16][4];
  load_q<kHeadDim, kFp8>(sq, qf);
  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};

  int stage = 0;             // t % kStages: where tile t sits
  int refill = kStages - 1;  // (t + kStages - 1) % kStages: the stage of tile t - 1
  for (int t = 0; t < num_tiles; ++t) {
    // Groups committed so far: Q, then kStages - 1 + t tiles; with at most kStages - 2 pending,
    // tiles 0 .. t have landed.
    cp_async_wait<kStages - 2>();
    // Tile t is visible to every warp, and every warp is done with tile t - 1, whose stage the
    // next load refills.
    __syncthreads();
    const int next = t + kStages - 1;
    if (next < num_tiles) {
      load_kv_tile<kHeadDim, kFp8>(kv, key_begin + next * kKeyTile, key_end,
                                   sk + refill * kStageBytes, sv + refill * kStageBytes);
    }
    cp_async_commit();

    float s[2][4] = {};
    accumulate_qk<kHeadDim, kFp8>(qf, sk + stage * kStageBytes + warp * 16 * kKvRow, 0, s);
    const int key0 = key_begin + t * kKeyTile + warp * 16;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[n][j] *= p.scale_log2;
        if (key0 + n * 8 + quad * 2 + (j & 1) >= key_end) s[n][j] = -INFINITY;
      }
    }
    online_softmax(s, o, row_max, row_sum);
    accumulate_pv<kHeadDim, kFp8>(s, 0, sv + stage * kStageBytes + warp * 16 * kKvRow, o);
    stage = stage == kStages - 1 ? 0 : stage + 1;
    refill = refill == kStages - 1 ? 0 : refill + 1;
  }
  cp_async_wait<0>();  // only empty groups remain, but the stages are about to be reused
  __syncthreads();     // every warp is done reading the last tile's stage

  // The warps' states: o [kWarps][kDecodeRows][kHeadDim], m and l [kWarps][kDecodeRows], f32.
  float* so = reinterpret_cast<float*>(sk);
  float* sm = so + kWarps * kDecodeRows * kHeadDim;
  float* sl = sm + kWarps * kDecodeRows;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * kDecodeRows + lane / 4 + 8 * i;
    const float l = quad_sum(row_sum[i]);
    if constexpr (kFp8) {
      // Dims 16 b + 4 quad .. + 3: even tile, odd tile, even, odd (accumulate_pv).
#pragma unroll
      for (int b = 0; b < kDTiles / 2; ++b) {
        *reinterpret_cast<float4*>(so + r * kHeadDim + b * 16 + quad * 4) = make_float4(
            o[2 * b][2 * i], o[2 * b + 1][2 * i], o[2 * b][2 * i + 1], o[2 * b + 1][2 * i + 1]);
      }
    } else {
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        *reinterpret_cast<float2*>(so + r * kHeadDim + d * 8 + quad * 2) =
            make_float2(o[d][2 * i], o[d][2 * i + 1]);
      }
    }
    if (quad == 0) {
      sm[r] = row_max[i];
      sl[r] = l;
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < num_rows * kHeadDim; i += kThreads) {
    const int r = i / kHeadDim;
    const int d = i % kHeadDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm[w * kDecodeRows + r]);
    float acc = 0.0f;
    float sum = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float weight = exp2f(sm[w * kDecodeRows + r] - m);
        sum += weight * sl[w * kDecodeRows + r];
        acc += weight * so[(w * kDecodeRows + r) * kHeadDim + d];
      }
    }
    // An fp8 cache's v_scale: the outputs, partial or not, are linear in V.
    if constexpr (kFp8) acc *= p.v_scale;
    const int head = first_head + r;
    if (direct) {
      p.out[(int64_t(token) * p.num_heads + head) * kHeadDim + d] =
          __float2bfloat16_rn(sum > 0.0f ? acc / sum : 0.0f);
    } else {
      const int64_t part = (int64_t(seq) * p.num_heads + head) * p.num_splits + split;
      p.part_out[part * kHeadDim + d] = acc;
      if (d == 0) {
        p.part_max[part] = m;
        p.part_sum[part] = sum;
      }
    }
  }
}

// Merges the key splits of each (sequence, head): grid = (num_seqs, num_heads), any block size.
// Only the sequence's active splits were written; the rest of the workspace is stale. A
// sequence with one active split was written by the decode kernel and is left alone; one with
// an empty context gets zeros.
template <int kHeadDim>
__global__ void merge_splits_kernel(const Params p) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  const int seq = blockIdx.x;
  const int head = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  if (q_len <= 0) return;
  const int token = q_begin + q_len - 1;
  const int seq_len = p.seq_lens[seq];
  const int active = decode_active_splits(seq_len, decode_split_keys(seq_len, p.num_splits));
  if (active == 1) return;
  const int64_t first = (int64_t(seq) * p.num_heads + head) * p.num_splits;
  float m = -INFINITY;
  for (int i = 0; i < active; ++i) m = fmaxf(m, p.part_max[first + i]);
  float sum = 0.0f;
  if (m != -INFINITY) {
    for (int i = 0; i < active; ++i)
      sum += exp2f(p.part_max[first + i] - m) * p.part_sum[first + i];
  }
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int d = threadIdx.x; d < kHeadDim; d += blockDim.x) {
    float acc = 0.0f;
    if (m != -INFINITY) {
      for (int i = 0; i < active; ++i) {
        acc += exp2f(p.part_max[first + i] - m) * p.part_out[(first + i) * kHeadDim + d];
      }
    }
    p.out[(int64_t(token) * p.num_heads + head) * kHeadDim + d] = __float2bfloat16_rn(acc * inv);
  }
}

// --- host side ---

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int head_passes(int64_t group) { return int(ceil_div(group, kDecodeRows)); }

void check_heads(int64_t num_heads, int64_t num_kv_heads) {
  ATOM_CHECK(num_kv_heads > 0 && num_heads > 0 && num_heads % num_kv_heads == 0, kInvalidArgument,
             "paged_attention: {} query heads is not a multiple of {} kv heads", num_heads,
             num_kv_heads);
}

// Checks shared by both launchers; the batch must be non-empty.
void check_launch(const char* op, const __nv_bfloat16* q, int64_t num_heads,
                  const PagedKvCache& cache, const PagedAttentionBatch& batch,
                  const __nv_bfloat16* out) {
  ATOM_CHECK(cache.head_dim == 64 || cache.head_dim == 128, kUnsupported,
             "{}: head_dim {} is not supported on CUDA (64, 128)", op, cache.head_dim);
  check_heads(num_heads, cache.num_kv_heads);
  ATOM_CHECK(num_heads <= 65535 && cache.num_kv_heads <= 65535, kOutOfRange,
             "{}: {} query heads exceed one launch", op, num_heads);
  ATOM_CHECK(cache.k != nullptr && cache.v != nullptr && cache.num_blocks > 0 &&
                 cache.block_size > 0 && cache.block_size <= INT_MAX,
             kInvalidArgument, "{}: bad KV cache [{}, {}, {}, {}]", op, cache.num_blocks,
             cache.block_size, cache.num_kv_heads, cache.head_dim);
  ATOM_CHECK(cache.dtype == DType::kBF16 || cache.dtype == DType::kF8E4M3, kUnsupported,
             "{}: a {} KV cache is not supported on CUDA (bf16, f8e4m3)", op,
             dtype_name(cache.dtype));
  if (cache.dtype == DType::kF8E4M3) {
    // Zero, negative, inf or NaN scales would turn every score or output into garbage.
    ATOM_CHECK(std::isfinite(cache.k_scale) && cache.k_scale > 0.0f &&
                   std::isfinite(cache.v_scale) && cache.v_scale > 0.0f,
               kInvalidArgument, "{}: fp8 KV cache scales must be positive and finite (k {}, v {})",
               op, cache.k_scale, cache.v_scale);
  }
  ATOM_CHECK(q != nullptr && out != nullptr && batch.cu_seqlens_q != nullptr &&
                 batch.seq_lens != nullptr && batch.block_tables != nullptr,
             kInvalidArgument, "{}: missing q, out or batch metadata", op);
  ATOM_CHECK(aligned16(q) && aligned16(out) && aligned16(cache.k) && aligned16(cache.v),
             kInvalidArgument, "{}: q, out and the KV cache must be 16-byte aligned", op);
  ATOM_CHECK(batch.num_tokens > 0 && batch.num_seqs <= INT_MAX / 2 &&
                 batch.num_tokens * num_heads <= INT_MAX / 2 && batch.max_q_len >= 0 &&
                 batch.max_q_len <= batch.num_tokens,
             kInvalidArgument, "{}: {} tokens with up to {} a sequence", op, batch.num_tokens,
             batch.max_q_len);
  ATOM_CHECK(batch.max_seq_len >= batch.max_q_len && batch.max_seq_len <= INT_MAX / 2,
             kInvalidArgument, "{}: longest context {} with {} query rows", op, batch.max_seq_len,
             batch.max_q_len);
  ATOM_CHECK(batch.max_blocks_per_seq > 0 &&
                 batch.max_blocks_per_seq * cache.block_size >= batch.max_seq_len,
             kOutOfRange, "{}: a block table of {} blocks of {} cannot hold {} tokens", op,
             batch.max_blocks_per_seq, cache.block_size, batch.max_seq_len);
}

Params make_params(const __nv_bfloat16* q, int64_t num_heads, const PagedKvCache& cache,
                   const PagedAttentionBatch& batch, float scale, __nv_bfloat16* out) {
  Params p{};
  p.q = q;
  p.out = out;
  p.k_cache = static_cast<const unsigned char*>(cache.k);
  p.v_cache = static_cast<const unsigned char*>(cache.v);
  p.cu_seqlens_q = batch.cu_seqlens_q;
  p.seq_lens = batch.seq_lens;
  p.block_tables = batch.block_tables;
  p.block_table_stride = batch.block_table_stride;
  p.num_blocks = cache.num_blocks;
  p.max_blocks_per_seq = batch.max_blocks_per_seq;
  p.num_seqs = int(batch.num_seqs);
  p.block_size = int(cache.block_size);
  p.num_heads = int(num_heads);
  p.num_kv_heads = int(cache.num_kv_heads);
  p.group = int(num_heads / cache.num_kv_heads);
  p.num_splits = 1;
  if (cache.dtype == DType::kF8E4M3) {
    // Scores q . (e4m3 * k_scale) * scale = q . e4m3 * (scale * k_scale); outputs
    // sum p (e4m3 * v_scale) / l = v_scale * sum p e4m3 / l.
    p.scale_log2 = scale * cache.k_scale * kLog2e;
    p.v_scale = cache.v_scale;
  } else {
    p.scale_log2 = scale * kLog2e;
    p.v_scale = 1.0f;
  }
  return p;
}

template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const Params& p) {
  if (smem > 48 * 1024) {
    ATOM_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  launch_pdl(kernel, grid, kThreads, smem, stream, p);
}

template <int kHeadDim, bool kFp8>
void launch_decode(const Params& p, int64_t num_seqs, cudaStream_t stream) {
  constexpr size_t kSmem = decode_smem_bytes<kHeadDim, kFp8>();
  // The warps' f32 states fit in the K/V stages after the loop.
  static_assert(kSmem >= size_t(kDecodeRows) * smem_row<kHeadDim>() * 2 +
                             size_t(kWarps) * kDecodeRows * (kHeadDim + 2) * sizeof(float));
  const dim3 grid(unsigned(num_seqs), unsigned(p.num_kv_heads * head_passes(p.group)),
                  unsigned(p.num_splits));
  launch(paged_decode_kernel<kHeadDim, decode_stages<kHeadDim, kFp8>(), kFp8>, grid, kSmem, stream,
         p);
  if (p.num_splits > 1) {
    launch_pdl(merge_splits_kernel<kHeadDim>, dim3(unsigned(num_seqs), unsigned(p.num_heads)),
               kHeadDim, 0, stream, p);
  }
}

template <int kHeadDim, bool kFp8>
void launch_prefill(const Params& p, int64_t row_blocks, cudaStream_t stream) {
  // Q, then K and V of 2 stages each.
  constexpr size_t kSmem = size_t(kRowTile) * smem_row<kHeadDim>() * sizeof(__nv_bfloat16) +
                           size_t(4 * kKeyTile) * kv_row_bytes<kHeadDim, kFp8>();
  const dim3 grid(unsigned(row_blocks), unsigned(p.num_kv_heads));
  launch(paged_prefill_kernel<kHeadDim, kFp8>, grid, kSmem, stream, p);
}

int device_multiprocessors() {
  int device = 0;
  int count = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&device));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace

// --- workspace ---

int paged_decode_num_splits(int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                            int64_t max_seq_len) {
  check_heads(num_heads, num_kv_heads);
  const int64_t blocks = num_seqs * num_kv_heads * head_passes(num_heads / num_kv_heads);
  if (blocks <= 0) return 1;
  // Each sequence spreads its own context over the splits (decode_split_keys), so the count
  // depends on the batch shape only. A split holds at least one tile: no context up to
  // max_seq_len keeps more than ceil(max_seq_len / kKeyTile) busy.
  const int64_t most =
      std::min<int64_t>(kMaxSplits, ceil_div(std::max<int64_t>(max_seq_len, 1), kKeyTile));
  // The GPU runs the grid in waves of `slots` resident blocks (kDecodeBlocksPerSm a
  // multiprocessor), and a block's time scales with its keys, context / splits: a grid of
  // blocks * s blocks takes ceil(blocks * s / slots) waves of 1 / s of a context each, so the
  // share of the waves' slots it fills, blocks * s / (slots * waves), is the share of the time
  // the streaming runs at full width. Take the fewest splits that fill 90% (more splits only add
  // partial states and merge work), starting from the most that fit one wave. E.g. on 132
  // multiprocessors (264 slots) with 8 kv heads: batch 1 -> 33 splits (264 blocks, 100%);
  // batch 8 -> 4 (256, 97%; 5 would spill 56 blocks into a second wave, 61%); batch 48 -> 2
  // (768 blocks in 3 waves, 97%; 1 split is 384 blocks in 2 waves, 73%); batch 64 -> 1 (512
  // blocks in 2 waves, 97%).
  const int64_t slots = int64_t(kDecodeBlocksPerSm) * device_multiprocessors();
  const auto filled = [&](int64_t s) {
    return double(blocks * s) / double(slots * ceil_div(blocks * s, slots));
  };
  const int64_t first = std::clamp<int64_t>(slots / blocks, 1, most);
  int64_t best = first;
  for (int64_t s = first; s <= most; ++s) {
    if (filled(s) >= 0.9) return int(s);
    if (filled(s) > filled(best)) best = s;
  }
  return int(best);
}

size_t paged_decode_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim,
                                    int num_splits) {
  if (num_splits <= 1 || num_seqs <= 0) return 0;
  return size_t(num_seqs) * size_t(num_heads) * size_t(num_splits) * size_t(head_dim + 2) *
         sizeof(float);
}

size_t paged_attention_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                                       int64_t head_dim, int64_t max_q_len, int64_t max_seq_len) {
  if (max_q_len > 1 || num_seqs <= 0) return 0;
  const int splits = paged_decode_num_splits(num_seqs, num_heads, num_kv_heads, max_seq_len);
  return paged_decode_workspace_bytes(num_seqs, num_heads, head_dim, splits);
}

size_t paged_attention_max_workspace_bytes(int64_t max_num_seqs, int64_t num_heads,
                                           int64_t num_kv_heads, int64_t head_dim,
                                           int64_t max_seq_len) {
  // The split count grows with the context and shrinks as the batch grows, so the largest
  // workspace can come at any batch size: take the maximum over all of them.
  size_t most = 0;
  for (int64_t n = 1; n <= max_num_seqs; ++n) {
    most = std::max(most, paged_attention_workspace_bytes(n, num_heads, num_kv_heads, head_dim, 1,
                                                          max_seq_len));
  }
  return most;
}

// --- launchers ---

void launch_paged_attention_decode(const __nv_bfloat16* q, int64_t num_heads,
                                   const PagedKvCache& cache, const PagedAttentionBatch& batch,
                                   float scale, int num_splits, __nv_bfloat16* out, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream) {
  ATOM_CHECK(batch.num_seqs >= 0, kInvalidArgument, "paged_attention decode: {} sequences",
             batch.num_seqs);
  if (batch.num_seqs == 0 || batch.num_tokens == 0) return;
  check_launch("paged_attention decode", q, num_heads, cache, batch, out);
  ATOM_CHECK(batch.max_q_len <= 1, kInvalidArgument,
             "paged_attention decode: sequences of up to {} query rows need the prefill kernel",
             batch.max_q_len);
  ATOM_CHECK(num_splits >= 1 && num_splits <= 65535, kInvalidArgument,
             "paged_attention decode: {} key splits", num_splits);
  ATOM_CHECK(batch.num_seqs <= INT_MAX, kOutOfRange, "paged_attention decode: {} sequences",
             batch.num_seqs);
  ATOM_CHECK(cache.num_kv_heads * head_passes(num_heads / cache.num_kv_heads) <= 65535, kOutOfRange,
             "paged_attention decode: {} kv heads exceed one launch", cache.num_kv_heads);
  Params p = make_params(q, num_heads, cache, batch, scale, out);
  // The grid has num_splits splits as asked; each sequence uses as many as its context fills.
  p.num_splits = num_splits;
  if (num_splits > 1) {
    const size_t need =
        paged_decode_workspace_bytes(batch.num_seqs, num_heads, cache.head_dim, num_splits);
    ATOM_CHECK(workspace != nullptr && workspace_bytes >= need && aligned16(workspace),
               kInvalidArgument,
               "paged_attention decode: {} splits need a 16-byte aligned workspace of {} bytes, "
               "got {}",
               num_splits, need, workspace == nullptr ? 0 : workspace_bytes);
    const int64_t parts = batch.num_seqs * num_heads * num_splits;
    p.part_out = static_cast<float*>(workspace);
    p.part_max = p.part_out + parts * cache.head_dim;
    p.part_sum = p.part_max + parts;
  }
  const bool fp8 = cache.dtype == DType::kF8E4M3;
  if (cache.head_dim == 64 && fp8) {
    launch_decode<64, true>(p, batch.num_seqs, stream);
  } else if (cache.head_dim == 64) {
    launch_decode<64, false>(p, batch.num_seqs, stream);
  } else if (fp8) {
    launch_decode<128, true>(p, batch.num_seqs, stream);
  } else {
    launch_decode<128, false>(p, batch.num_seqs, stream);
  }
}

void launch_paged_attention_prefill(const __nv_bfloat16* q, int64_t num_heads,
                                    const PagedKvCache& cache, const PagedAttentionBatch& batch,
                                    float scale, __nv_bfloat16* out, cudaStream_t stream) {
  ATOM_CHECK(batch.num_seqs >= 0, kInvalidArgument, "paged_attention prefill: {} sequences",
             batch.num_seqs);
  if (batch.num_seqs == 0 || batch.num_tokens == 0) return;
  check_launch("paged_attention prefill", q, num_heads, cache, batch, out);
  // prefill_first_block(num_seqs): enough row-tile blocks for any split of the tokens.
  const int64_t row_blocks =
      batch.num_tokens * (num_heads / cache.num_kv_heads) / kRowTile + batch.num_seqs;
  ATOM_CHECK(row_blocks <= INT_MAX, kOutOfRange,
             "paged_attention prefill: {} tokens in {} sequences exceed one launch",
             batch.num_tokens, batch.num_seqs);
  const Params p = make_params(q, num_heads, cache, batch, scale, out);
  const bool fp8 = cache.dtype == DType::kF8E4M3;
  if (cache.head_dim == 64 && fp8) {
    launch_prefill<64, true>(p, row_blocks, stream);
  } else if (cache.head_dim == 64) {
    launch_prefill<64, false>(p, row_blocks, stream);
  } else if (fp8) {
    launch_prefill<128, true>(p, row_blocks, stream);
  } else {
    launch_prefill<128, false>(p, row_blocks, stream);
  }
}

// --- entry points ---

void paged_attention(const __nv_bfloat16* q, int64_t num_heads, const PagedKvCache& cache,
                     const PagedAttentionBatch& batch, float scale, __nv_bfloat16* out,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (batch.max_q_len <= 1) {
    const int splits = batch.num_seqs > 0
                           ? paged_decode_num_splits(batch.num_seqs, num_heads, cache.num_kv_heads,
                                                     batch.max_seq_len)
                           : 1;
    launch_paged_attention_decode(q, num_heads, cache, batch, scale, splits, out, workspace,
                                  workspace_bytes, stream);
  } else {
    launch_paged_attention_prefill(q, num_heads, cache, batch, scale, out, stream);
  }
}

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                     const Tensor& cu_seqlens_q, const Tensor& seq_lens, const Tensor& block_tables,
                     int64_t max_q_len, int64_t max_seq_len, float scale, const Tensor& out,
                     const Tensor& workspace, cudaStream_t stream, float k_scale, float v_scale) {
  constexpr const char* kOp = "paged_attention";
  ATOM_CHECK(q.ndim() == 3 && k_cache.ndim() == 4 && v_cache.ndim() == 4, kInvalidArgument,
             "{}: q {} must be [tokens, heads, head_dim] and the caches {} {} "
             "[blocks, block_size, kv_heads, head_dim]",
             kOp, q.shape_str(), k_cache.shape_str(), v_cache.shape_str());
  ATOM_CHECK(out.ndim() == 3 && out.size(0) == q.size(0) && out.size(1) == q.size(1) &&
                 out.size(2) == q.size(2),
             kInvalidArgument, "{}: out {} does not match q {}", kOp, out.shape_str(),
             q.shape_str());
  for (int d = 0; d < 4; ++d) {
    ATOM_CHECK(k_cache.size(d) == v_cache.size(d), kInvalidArgument,
               "{}: k cache {} and v cache {} differ", kOp, k_cache.shape_str(),
               v_cache.shape_str());
  }
  ATOM_CHECK(k_cache.size(3) == q.size(2), kInvalidArgument,
             "{}: q head_dim {} but the cache has {}", kOp, q.size(2), k_cache.size(3));
  for (const Tensor* t : {&q, &out}) {
    ATOM_CHECK(t->dtype() == DType::kBF16, kUnsupported, "{}: dtype {} is not supported (bf16)",
               kOp, dtype_name(t->dtype()));
  }
  ATOM_CHECK(k_cache.dtype() == v_cache.dtype() &&
                 (k_cache.dtype() == DType::kBF16 || k_cache.dtype() == DType::kF8E4M3),
             kUnsupported, "{}: KV cache dtypes {} and {} are not supported (both bf16 or f8e4m3)",
             kOp, dtype_name(k_cache.dtype()), dtype_name(v_cache.dtype()));
  const int64_t num_seqs = seq_lens.ndim() == 1 ? seq_lens.size(0) : -1;
  ATOM_CHECK(num_seqs >= 0 && cu_seqlens_q.ndim() == 1 && cu_seqlens_q.size(0) == num_seqs + 1 &&
                 block_tables.ndim() == 2 && block_tables.size(0) == num_seqs,
             kInvalidArgument,
             "{}: cu_seqlens_q {}, seq_lens {} and block_tables {} do not describe one batch", kOp,
             cu_seqlens_q.shape_str(), seq_lens.shape_str(), block_tables.shape_str());
  for (const Tensor* t : {&cu_seqlens_q, &seq_lens, &block_tables}) {
    ATOM_CHECK(t->dtype() == DType::kI32, kInvalidArgument, "{}: metadata must be i32, got {}", kOp,
               dtype_name(t->dtype()));
  }
  for (const Tensor* t : {&q, &k_cache, &v_cache, &out, &cu_seqlens_q, &seq_lens, &block_tables}) {
    ATOM_CHECK(t->device() == Device::kCuda, kInvalidArgument, "{}: tensors must be on the GPU",
               kOp);
    ATOM_CHECK(t->is_contiguous(), kInvalidArgument, "{}: tensors must be contiguous", kOp);
  }
  ATOM_CHECK(!workspace.defined() || workspace.device() == Device::kCuda, kInvalidArgument,
             "{}: the workspace must be on the GPU", kOp);

  const PagedKvCache cache{k_cache.data(),  v_cache.data(),  k_cache.size(0),
                           k_cache.size(1), k_cache.size(2), k_cache.size(3),
                           k_cache.dtype(), k_scale,         v_scale};
  PagedAttentionBatch batch;
  batch.cu_seqlens_q = cu_seqlens_q.data_as<const int32_t>();
  batch.seq_lens = seq_lens.data_as<const int32_t>();
  batch.block_tables = block_tables.data_as<const int32_t>();
  batch.num_seqs = num_seqs;
  batch.num_tokens = q.size(0);
  batch.max_blocks_per_seq = block_tables.size(1);
  batch.max_q_len = max_q_len;
  batch.max_seq_len = max_seq_len;
  paged_attention(q.data_as<const __nv_bfloat16>(), q.size(1), cache, batch, scale,
                  out.data_as<__nv_bfloat16>(), workspace.defined() ? workspace.data() : nullptr,
                  workspace.defined() ? workspace.nbytes() : 0, stream);
}

}  // namespace atom::cuda

// Device building blocks of the paged attention kernels (attention.cu): asynchronous copies into
// shared memory, ldmatrix fragment loads and the bf16 / f16 m16n8k16 tensor-core products, the
// fp8 e4m3 conversions, plus the paged K/V tile loader both kernels share. Private to
// attention.cu.
//
// Fragment layouts of mma.m16n8k16 (lane = 4 * group + quad, group = lane / 4, quad = lane % 4):
//   A (16 x 16, row-major): a0 = (group, 2 quad .. +1), a1 = (group + 8, same cols),
//                           a2 = (group, 8 + 2 quad .. +1), a3 = (group + 8, 8 + 2 quad .. +1)
//   B (16 x 8, k x n):      b0 = (k 2 quad .. +1, n group), b1 = (k 8 + 2 quad .. +1, n group)
//   C (16 x 8, f32):        c0, c1 = (group, 2 quad .. +1), c2, c3 = (group + 8, 2 quad .. +1)
// so the C fragments of two adjacent 8-column tiles are, packed to bf16, the A fragment of a
// 16-column tile: S = Q K^T feeds O += P V without leaving registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace atom::cuda::attention_detail {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKeyTile = 64;  // keys per shared-memory tile
// Shared-memory rows are padded by 16 bytes: the 8 rows one ldmatrix phase reads then start in
// 8 different 16-byte bank groups instead of all in the same one.
constexpr int kRowPad = 8;

template <int kHeadDim>
constexpr int smem_row() {
  return kHeadDim + kRowPad;  // bf16 elements per shared-memory row
}

// Bytes of one K or V row in shared memory: the bf16 row above, or for an fp8 cache head_dim
// bytes plus the same 16-byte pad (rows of 144 bytes at head_dim 128, 80 at 64: the 8 rows of an
// ldmatrix phase start in 8 different 16-byte bank groups either way).
template <int kHeadDim, bool kFp8>
constexpr int kv_row_bytes() {
  return kFp8 ? kHeadDim + 16 : smem_row<kHeadDim>() * int(sizeof(__nv_bfloat16));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-filled (and `src` not read) when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i holds it.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr))
               : "memory");
}

// As ldmatrix_x4, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr))
               : "memory");
}

// c += a * b for one 16x8x16 tile: bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// As mma_16816 with f16 inputs (the fp8 cache's kernels).
__device__ __forceinline__ void mma_16816_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, `lo` in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Two floats as an f16 pair, `lo` in the low half.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A bf16 pair (low half first) as an f16 pair, rounded to nearest. bf16 values within
// [2^-17, 65504] in magnitude are exact in f16; larger ones saturate to +-65504 (never inf), and
// smaller ones round to f16's subnormal grid (absolute error <= 2^-25).
__device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t bits) {
  constexpr float kF16Max = 65504.0f;
  const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  return pack_f16x2(fminf(fmaxf(f.x, -kF16Max), kF16Max), fminf(fmaxf(f.y, -kF16Max), kF16Max));
}

// Two e4m3 bytes (the low byte to the low half) as an f16 pair: exact, as f16 holds every e4m3
// value (normal or subnormal) as a normal number. One cvt.rn.f16x2.e4m3x2.
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two_bytes) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(two_bytes & 0xffffu), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

// Paged K/V of one kv head, as the kernels index it, in bytes (the element is 2 bytes for a bf16
// cache, 1 for fp8).
struct KvSource {
  const unsigned char* k;      // [num_blocks, block_size, num_kv_heads, head_dim]
  const unsigned char* v;      // [num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* block_table;  // [max_blocks_per_seq] of this sequence
  int64_t num_blocks;
  int block_size;
  int64_t token_stride;  // num_kv_heads * head_dim * element bytes: from one slot to the next
  int64_t head_offset;   // kv_head * head_dim * element bytes
};

// Starts copying keys [tile_start, tile_start + kKeyTile) into the K and V tiles
// [kKeyTile][kv_row_bytes] in shared memory (bf16 or fp8 rows as the cache holds them). Keys at
// or past `key_end` are zero-filled without reading their block-table entry; a block id outside
// [0, num_blocks) also gives zeros, so a corrupt table cannot make the kernel read outside the
// cache. All kThreads threads take part.
template <int kHeadDim, bool kFp8>
__device__ __forceinline__ void load_kv_tile(const KvSource& src, int tile_start, int key_end,
                                             unsigned char* sk, unsigned char* sv) {
  constexpr int kRowBytes = kHeadDim * (kFp8 ? 1 : 2);
  constexpr int kChunks = kRowBytes / 16;           // 16-byte chunks per key row
  constexpr int kRowsPerPass = kThreads / kChunks;  // key rows one pass of the block covers
  constexpr int kSmemRow = kv_row_bytes<kHeadDim, kFp8>();
  static_assert(kThreads % kChunks == 0 && kKeyTile % kRowsPerPass == 0);
  const int chunk = threadIdx.x % kChunks;
#pragma unroll
  for (int i = 0; i < kKeyTile / kRowsPerPass; ++i) {
    const int r = int(threadIdx.x) / kChunks + i * kRowsPerPass;
    const int pos = tile_start + r;
    bool valid = pos < key_end;
    int64_t offset = 0;
    if (valid) {
      const int64_t block = src.block_table[pos / src.block_size];
      valid = block >= 0 && block < src.num_blocks;
      offset = (block * src.block_size + pos % src.block_size) * src.token_stride +
               src.head_offset + chunk * 16;
    }
    if (!valid) offset = 0;
    const int dst = r * kSmemRow + chunk * 16;
    cp_async16(sk + dst, src.k + offset, valid);
    cp_async16(sv + dst, src.v + offset, valid);
  }
}

}  // namespace atom::cuda::attention_detail

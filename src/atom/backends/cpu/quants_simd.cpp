// SIMD dequantization and quantized matmul (AVX-512 or AVX2/FMA/F16C, chosen at compile time).
//
// Every supported type has a decoder that turns a 32-element chunk of a weight row into f32
// vectors in registers, computing exactly what the scalar reference does: the scale products
// (d * q, d * sc * q with small integers q, sc) are exact in f32, so fused multiply-adds round the
// same way as ggml's separate multiply and add and the decoded values are bit-exact.
//
// matmul has two shapes of kernel, both f32 multiply-adds on the decoded weights (activations
// are never quantized):
//  - m <= kGemvMaxRows (decode): a GEMV that decodes each weight chunk in registers and
//    multiply-adds it into all m x rows, reading each weight byte exactly once, in memory order.
//  - larger m (prefill): per thread, a tile of kNr weight rows is decoded to an f32 scratch
//    [kNr, K] once, then an outer-product micro-kernel runs over it against x transposed into
//    panels [K, kW or 2 kW rows], so each decoded weight is reused by up to kMc x rows.
// Both split the output features (N) over OpenMP threads with dynamic scheduling.
#include "atom/backends/cpu/quants_simd.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <vector>

#include "atom/core/error.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define ATOM_QUANTS_SIMD 1
// GCC 12 warns, falsely and at every inlined use, that the _mm512_undefined_* placeholders inside
// the AVX-512 intrinsics are used uninitialized; nothing in this file reads uninitialized data.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace atom::cpu::internal {

#if !defined(ATOM_QUANTS_SIMD)

const char* simd_level() { return "scalar"; }

void dequantize_row_simd(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  dequantize_row_scalar(type, src, dst, n);
}

void matmul_simd(const float* x, int64_t m, const QMatrix& w, float* y) {
  matmul_scalar(x, m, w, y);
}

#else

namespace {

// --- a thin vector layer: kW floats per register ---------------------------------------------
#if defined(__AVX512F__)
constexpr int kW = 16;
using VF = __m512;
using VI = __m512i;
inline VF vzero() { return _mm512_setzero_ps(); }
inline VF vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, VF v) { _mm512_storeu_ps(p, v); }
inline VF vset1(float f) { return _mm512_set1_ps(f); }
inline VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF vfms(VF a, VF b, VF c) { return _mm512_fmsub_ps(a, b, c); }
inline VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
inline float vsum(VF v) { return _mm512_reduce_add_ps(v); }
// 16 bytes at p, zero- or sign-extended to 16 int32 lanes.
inline VI vu8(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VI vi8(const uint8_t* p) {
  return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VI vand(VI a, int v) { return _mm512_and_si512(a, _mm512_set1_epi32(v)); }
inline VI vsrl(VI a, int s) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(s)); }
inline VI vsll(VI a, int s) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(s)); }
inline VI vor(VI a, VI b) { return _mm512_or_si512(a, b); }
inline VI vsub(VI a, int v) { return _mm512_sub_epi32(a, _mm512_set1_epi32(v)); }
inline VF vcvt(VI a) { return _mm512_cvtepi32_ps(a); }
inline VF vf16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline VF vbf16(const uint8_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#else
constexpr int kW = 8;
using VF = __m256;
using VI = __m256i;
inline VF vzero() { return _mm256_setzero_ps(); }
inline VF vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VF v) { _mm256_storeu_ps(p, v); }
inline VF vset1(float f) { return _mm256_set1_ps(f); }
inline VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF vfms(VF a, VF b, VF c) { return _mm256_fmsub_ps(a, b, c); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline float vsum(VF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// 8 bytes at p, zero- or sign-extended to 8 int32 lanes.
inline VI vu8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline VI vi8(const uint8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline VI vand(VI a, int v) { return _mm256_and_si256(a, _mm256_set1_epi32(v)); }
inline VI vsrl(VI a, int s) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(s)); }
inline VI vsll(VI a, int s) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(s)); }
inline VI vor(VI a, VI b) { return _mm256_or_si256(a, b); }
inline VI vsub(VI a, int v) { return _mm256_sub_epi32(a, _mm256_set1_epi32(v)); }
inline VF vcvt(VI a) { return _mm256_cvtepi32_ps(a); }
inline VF vf16(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VF vbf16(const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

constexpr int kNv = 32 / kW;  // vectors per 32-element chunk

inline float h2f(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

// --- chunk decoders: out[0..kNv) = elements [32 c, 32 c + 32) of a row -----------------------
// kPlain types have no blocks, so a row may end in a partial chunk (handled by the callers).

struct DecodeF32 {
  static constexpr bool kPlain = true;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const float* p = reinterpret_cast<const float*>(row) + c * 32;
    for (int v = 0; v < kNv; ++v) out[v] = vload(p + v * kW);
  }
};

struct DecodeF16 {
  static constexpr bool kPlain = true;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    for (int v = 0; v < kNv; ++v) out[v] = vf16(row + (c * 32 + v * kW) * 2);
  }
};

struct DecodeBF16 {
  static constexpr bool kPlain = true;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    for (int v = 0; v < kNv; ++v) out[v] = vbf16(row + (c * 32 + v * kW) * 2);
  }
};

// Nibble layout of Q4_0/Q4_1: byte j holds element j (low) and j + 16 (high).
// With AVX-512 a block's 16 possible values fit one register: build that table (one multiply or
// FMA, the same rounding as the reference) and look every nibble up with vpermps, which reads only
// the low 4 bits of each index, so the low nibbles need no masking and no int->float conversion.
#if defined(__AVX512F__)
inline VF nibble_iota() {
  return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
#endif

struct DecodeQ4_0 {
  static constexpr bool kPlain = false;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const uint8_t* b = row + c * kQ4_0Bytes;
    const VF d = vset1(h2f(b));
#if defined(__AVX512F__)
    const VF table = vmul(_mm512_sub_ps(nibble_iota(), vset1(8.0f)), d);  // (k - 8) * d
    const VI q = vu8(b + 2);
    out[0] = _mm512_permutexvar_ps(q, table);
    out[1] = _mm512_permutexvar_ps(vsrl(q, 4), table);
#else
    for (int v = 0; v < kNv / 2; ++v) {
      const VI q = vu8(b + 2 + v * kW);
      out[v] = vmul(vcvt(vsub(vand(q, 0xF), 8)), d);
      out[v + kNv / 2] = vmul(vcvt(vsub(vsrl(q, 4), 8)), d);
    }
#endif
  }
};

struct DecodeQ4_1 {
  static constexpr bool kPlain = false;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const uint8_t* b = row + c * kQ4_1Bytes;
    const VF d = vset1(h2f(b)), mn = vset1(h2f(b + 2));
#if defined(__AVX512F__)
    const VF table = vfma(nibble_iota(), d, mn);  // k * d + m
    const VI q = vu8(b + 4);
    out[0] = _mm512_permutexvar_ps(q, table);
    out[1] = _mm512_permutexvar_ps(vsrl(q, 4), table);
#else
    for (int v = 0; v < kNv / 2; ++v) {
      const VI q = vu8(b + 4 + v * kW);
      out[v] = vfma(vcvt(vand(q, 0xF)), d, mn);
      out[v + kNv / 2] = vfma(vcvt(vsrl(q, 4)), d, mn);
    }
#endif
  }
};

struct DecodeQ8_0 {
  static constexpr bool kPlain = false;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const uint8_t* b = row + c * kQ8_0Bytes;
    const VF d = vset1(h2f(b));
    for (int v = 0; v < kNv; ++v) out[v] = vmul(vcvt(vi8(b + 2 + v * kW)), d);
  }
};

// Chunk c is sub-block c % 8 of super-block c / 8 (see dequantize_q4_k in quants.cpp).
struct DecodeQ4_K {
  static constexpr bool kPlain = false;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const uint8_t* b = row + (c >> 3) * kQ4_KBytes;
    const int j = int(c & 7);
    int sc, mn;
    q4_k_scale_min(b + 4, j, &sc, &mn);
    const VF d1 = vset1(h2f(b) * float(sc)), m1 = vset1(h2f(b + 2) * float(mn));
    const uint8_t* qs = b + 16 + (j >> 1) * 32;
    const int shift = (j & 1) * 4;
    for (int v = 0; v < kNv; ++v)
      out[v] = vfms(vcvt(vand(vsrl(vu8(qs + v * kW), shift), 0xF)), d1, m1);
  }
};

// Chunk c is group g = c % 4 of half (c % 8) / 4 of super-block c / 8 (see dequantize_q6_k).
struct DecodeQ6_K {
  static constexpr bool kPlain = false;
  static void decode(const uint8_t* row, int64_t c, VF* out) {
    const uint8_t* b = row + (c >> 3) * kQ6_KBytes;
    const int half = int(c >> 2) & 1, g = int(c & 3);
    const uint8_t* ql = b + 64 * half + (g & 1) * 32;
    const uint8_t* qh = b + 128 + 32 * half;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * g;
    const float d = h2f(b + 208);
    const int shl = (g >> 1) * 4, shh = 2 * g;
    for (int v = 0; v < kNv; ++v) {
      const VI lo = vand(vsrl(vu8(ql + v * kW), shl), 0xF);
      const VI hi = vsll(vand(vsrl(vu8(qh + v * kW), shh), 3), 4);
      const float scale = d * float(sc[v * kW / 16]);
      out[v] = vmul(vcvt(vsub(vor(lo, hi), 32)), vset1(scale));
    }
  }
};

// --- dequantize_row ----------------------------------------------------------------------------

template <class D>
void dequantize_row_t(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const int64_t chunks = n / 32;
  VF v[kNv];
  for (int64_t c = 0; c < chunks; ++c) {
    D::decode(src, c, v);
    for (int j = 0; j < kNv; ++j) vstore(dst + c * 32 + j * kW, v[j]);
  }
  if constexpr (D::kPlain) {
    dequantize_plain_range(type, src, chunks * 32, n - chunks * 32, dst + chunks * 32);
  }
}

// Work items per dynamically scheduled chunk. Dynamic, not static, scheduling: on a loaded
// machine a descheduled thread must not hold up the whole matmul. Chunks of ~64 KB of weights
// keep the streams long (few prefetches wasted past a chunk's end), and at least 4 chunks per
// thread leave room to rebalance.
int64_t dynamic_chunk(int64_t items, size_t item_bytes) {
  const int64_t threads = omp_get_max_threads();
  const int64_t by_bytes = int64_t(65536 / std::max<size_t>(item_bytes, 1));
  const int64_t by_balance = items / (4 * threads);
  return std::max<int64_t>(1, std::min(by_bytes, by_balance));
}

// --- GEMV: m <= kGemvMaxRows -------------------------------------------------------------------

constexpr int64_t kGemvMaxRows = 8;

// How far ahead of the weight bytes being decoded the GEMV prefetches.
constexpr int64_t kPrefetchBytes = 4096;

// Weight rows decoded per step. For m == 1 one row at a time, so the weights stream through
// memory strictly in order (interleaving rows slows the hardware prefetchers down on large
// matrices). For m > 1 several rows share each x load, bounded by the register file (16 ymm
// on AVX2, 32 zmm on AVX-512).
constexpr int gemv_rows(int m) {
  if (m == 1) return 1;
  if (kW == 16) return m <= 4 ? 4 : 2;
  return m <= 3 ? 2 : 1;
}

// y[i, n0 + r] for i < M, r < R. With M == 1 each vector of a chunk has its own accumulator, so
// the FMA latency is hidden.
template <class D, int M, int R>
void gemv_tile(const float* x, const QMatrix& w, int64_t n0, float* y) {
  constexpr int kA = M == 1 ? kNv : 1;
  const int64_t k = w.cols, chunks = k / 32;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w.row(n0 + r);
  VF acc[R][M][kA];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i)
      for (int a = 0; a < kA; ++a) acc[r][i][a] = vzero();
  const int64_t chunk_bytes = int64_t(w.row_bytes) / std::max<int64_t>(chunks, 1);
  for (int64_t c = 0; c < chunks; ++c) {
    // The hardware prefetchers alone leave DRAM bandwidth unused on large matrices.
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + kPrefetchBytes + c * chunk_bytes),
                   _MM_HINT_T0);
    }
    if constexpr (M == 1) {
      // Decode a row and use it at once: fewest live registers.
      for (int r = 0; r < R; ++r) {
        VF wv[kNv];
        D::decode(rows[r], c, wv);
        for (int v = 0; v < kNv; ++v) {
          acc[r][0][v % kA] = vfma(wv[v], vload(x + c * 32 + v * kW), acc[r][0][v % kA]);
        }
      }
    } else {
      // Decode all R rows, then load each x vector once for all of them.
      VF wv[R][kNv];
      for (int r = 0; r < R; ++r) D::decode(rows[r], c, wv[r]);
      for (int i = 0; i < M; ++i) {
        for (int v = 0; v < kNv; ++v) {
          const VF xv = vload(x + i * k + c * 32 + v * kW);
          for (int r = 0; r < R; ++r) acc[r][i][0] = vfma(wv[r][v], xv, acc[r][i][0]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < M; ++i) {
      VF s = acc[r][i][0];
      for (int a = 1; a < kA; ++a) s = vadd(s, acc[r][i][a]);
      float total = vsum(s);
      if constexpr (D::kPlain) {
        // The plain types' partial last chunk.
        const int64_t k0 = chunks * 32;
        float tail[32];
        dequantize_plain_range(w.type, rows[r], k0, k - k0, tail);
        for (int64_t j = 0; j < k - k0; ++j) total += tail[j] * x[i * k + k0 + j];
      }
      y[i * w.rows + n0 + r] = total;
    }
  }
}

template <class D, int M>
void gemv(const float* x, const QMatrix& w, float* y) {
  constexpr int R = gemv_rows(M);
  const int64_t n_rows = w.rows;
  const int64_t groups = (n_rows + R - 1) / R;
  const int64_t chunk = dynamic_chunk(groups, R * w.row_bytes);
#pragma omp parallel for schedule(dynamic, chunk) if (worth_threading(M * n_rows * w.cols))
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t n0 = g * R;
    if (n0 + R <= n_rows) {
      gemv_tile<D, M, R>(x, w, n0, y);
    } else {
      for (int64_t n = n0; n < n_rows; ++n) gemv_tile<D, M, 1>(x, w, n, y);
    }
  }
}

// --- GEMM: m > kGemvMaxRows --------------------------------------------------------------------

constexpr int kNr = kW == 16 ? 12 : 6;  // weight rows per micro-tile
constexpr int kMaxMv = 2;               // x rows per micro-tile: 1 or 2 vectors (kW or 2 kW)
constexpr int64_t kMc = 128;            // x rows per outer block: their panels stay in L2
constexpr int64_t kUnitTiles = 8;       // tiles per unit of work handed to a thread
constexpr int64_t kUnitCols = kUnitTiles * kNr;

// Per-thread scratch, grown on demand and kept between calls (threads of the OpenMP pool live
// as long as the process).
class Scratch {
 public:
  float* get(size_t n) {
    if (n > size_) {
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      data_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      ATOM_ASSERT(data_ != nullptr);
      size_ = n;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  size_t size_ = 0;
};

// The GEMM's buffers, one set per thread, shared by all weight types.
struct GemmScratch {
  Scratch wt, x_panels, out;
};
GemmScratch& gemm_scratch() {
  static thread_local GemmScratch scratch;
  return scratch;
}

// c[r, j] = sum_k wt[r, k] * panel[k, j] for r < kNr, j < MV * kW.
//   panel: [K, MV * kW] (x transposed, zero-padded); wt: [kNr, ldw]; c: [kNr, MV * kW]
template <int MV>
void gemm_micro(const float* panel, const float* wt, int64_t ldw, int64_t k, float* c) {
  VF acc[kNr][MV];
  for (int r = 0; r < kNr; ++r)
    for (int v = 0; v < MV; ++v) acc[r][v] = vzero();
  for (int64_t kk = 0; kk < k; ++kk) {
    VF xv[MV];
    for (int v = 0; v < MV; ++v) xv[v] = vload(panel + kk * MV * kW + v * kW);
    for (int r = 0; r < kNr; ++r) {
      const VF wb = vset1(wt[r * ldw + kk]);
      for (int v = 0; v < MV; ++v) acc[r][v] = vfma(wb, xv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kNr; ++r)
    for (int v = 0; v < MV; ++v) vstore(c + (r * MV + v) * kW, acc[r][v]);
}

template <class D>
void gemm(const float* x, int64_t m, const QMatrix& w, float* y) {
  const int64_t n_rows = w.rows, k = w.cols;
  // Padded so the kNr scratch rows do not all map to the same L1 sets when K is a power of 2.
  const int64_t ldw = (k + 15) / 16 * 16 + 16;
  const int64_t tiles = (n_rows + kNr - 1) / kNr;
  const int64_t units = (tiles + kUnitTiles - 1) / kUnitTiles;
  // Units are handed out through one counter per block of kMc x rows, so that each thread knows
  // its next unit while working on the current one and can prefetch its weights.
  std::vector<std::atomic<int64_t> > next_unit(size_t((m + kMc - 1) / kMc));
#pragma omp parallel if (worth_threading(m * n_rows * k))
  {
    GemmScratch& scratch = gemm_scratch();
    // [kNr, ldw]: the current tile's weight rows, dequantized.
    float* wt = scratch.wt.get(size_t(kNr * ldw));
    // The panels of x^T for up to kMc x rows, each [K, kW or 2 kW].
    const int64_t mc_max = std::min(m, kMc);
    const int64_t mc_pad = (mc_max + kMaxMv * kW - 1) / (kMaxMv * kW) * (kMaxMv * kW);
    float* panels = scratch.x_panels.get(size_t(mc_pad * k));
    // [mc, kUnitCols]: a unit's outputs, written to y row by row once the unit is done.
    float* out = scratch.out.get(size_t(mc_max * kUnitCols));
    alignas(64) float c[kNr * kMaxMv * kW];
    for (int64_t i0 = 0; i0 < m; i0 += kMc) {
      const int64_t mc = std::min(kMc, m - i0);
      // Panels of 2 kW x rows, the last one of kW when that covers the rest.
      // panel p: [K, width] holding x rows i0 + p0 .. i0 + p0 + width, zero past m.
      struct Panel {
        int64_t row0, width;
        float* data;
      };
      Panel ps[kMc / kW + 1];
      int n_panels = 0;
      float* pdata = panels;
      for (int64_t p0 = 0; p0 < mc;) {
        const int64_t width = (mc - p0 <= kW) ? kW : kMaxMv * kW;
        ps[n_panels++] = {p0, width, pdata};
        for (int64_t kk = 0; kk < k; ++kk) {
          float* dst = pdata + kk * width;
          for (int64_t j = 0; j < width; ++j) {
            dst[j] = (p0 + j < mc) ? x[(i0 + p0 + j) * k + kk] : 0.0f;
          }
        }
        pdata += width * k;
        p0 += width;
      }
      std::atomic<int64_t>& counter = next_unit[size_t(i0 / kMc)];
      for (int64_t u = counter.fetch_add(1); u < units;) {
        const int64_t u_next = counter.fetch_add(1);
        const int64_t t_end = std::min(tiles, (u + 1) * kUnitTiles);
        for (int64_t t = u * kUnitTiles; t < t_end; ++t) {
          const int64_t n0 = t * kNr;
          const int64_t nr = std::min<int64_t>(kNr, n_rows - n0);
          for (int64_t r = 0; r < kNr; ++r) {
            if (r < nr) {
              dequantize_row_t<D>(w.type, w.row(n0 + r), wt + r * ldw, k);
            } else {
              std::fill(wt + r * ldw, wt + r * ldw + k, 0.0f);
            }
          }
          // The next tile's weights arrive in L2 while the micro-kernels below run.
          const int64_t t_next = t + 1 < t_end ? t + 1 : u_next * kUnitTiles;
          if (t_next < tiles) {
            const char* p = reinterpret_cast<const char*>(w.row(t_next * kNr));
            const size_t bytes =
                size_t(std::min<int64_t>(kNr, n_rows - t_next * kNr)) * w.row_bytes;
            for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
          }
          const int64_t col0 = (t - u * kUnitTiles) * kNr;
          for (int p = 0; p < n_panels; ++p) {
            const Panel& pn = ps[p];
            if (pn.width == kW) {
              gemm_micro<1>(pn.data, wt, ldw, k, c);
            } else {
              gemm_micro<kMaxMv>(pn.data, wt, ldw, k, c);
            }
            const int64_t valid = std::min(pn.width, mc - pn.row0);
            for (int64_t r = 0; r < nr; ++r) {
              for (int64_t j = 0; j < valid; ++j) {
                out[(pn.row0 + j) * kUnitCols + col0 + r] = c[r * pn.width + j];
              }
            }
          }
        }
        // Whole rows of the unit at once: writing y a tile (kNr floats) at a time touches mc
        // lines kNr * 4 bytes apart in every y row, which thrash one cache set when N is a
        // multiple of 1024 (a 49152-token vocabulary).
        const int64_t n0 = u * kUnitCols;
        const int64_t cols = std::min(kUnitCols, n_rows - n0);
        for (int64_t j = 0; j < mc; ++j) {
          std::memcpy(y + (i0 + j) * n_rows + n0, out + j * kUnitCols, size_t(cols) * 4);
        }
        u = u_next;
      }
    }
  }
}

template <class D>
void matmul_t(const float* x, int64_t m, const QMatrix& w, float* y) {
  switch (m) {
    case 1:
      gemv<D, 1>(x, w, y);
      return;
    case 2:
      gemv<D, 2>(x, w, y);
      return;
    case 3:
      gemv<D, 3>(x, w, y);
      return;
    case 4:
      gemv<D, 4>(x, w, y);
      return;
    case 5:
      gemv<D, 5>(x, w, y);
      return;
    case 6:
      gemv<D, 6>(x, w, y);
      return;
    case 7:
      gemv<D, 7>(x, w, y);
      return;
    case 8:
      gemv<D, 8>(x, w, y);
      return;
    default:
      gemm<D>(x, m, w, y);
      return;
  }
}

}  // namespace

const char* simd_level() { return kW == 16 ? "avx512" : "avx2"; }

void dequantize_row_simd(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::kF32:
      return dequantize_row_t<DecodeF32>(type, src, dst, n);
    case GgmlType::kF16:
      return dequantize_row_t<DecodeF16>(type, src, dst, n);
    case GgmlType::kBF16:
      return dequantize_row_t<DecodeBF16>(type, src, dst, n);
    case GgmlType::kQ4_0:
      return dequantize_row_t<DecodeQ4_0>(type, src, dst, n);
    case GgmlType::kQ4_1:
      return dequantize_row_t<DecodeQ4_1>(type, src, dst, n);
    case GgmlType::kQ8_0:
      return dequantize_row_t<DecodeQ8_0>(type, src, dst, n);
    case GgmlType::kQ4_K:
      return dequantize_row_t<DecodeQ4_K>(type, src, dst, n);
    case GgmlType::kQ6_K:
      return dequantize_row_t<DecodeQ6_K>(type, src, dst, n);
    default:
      ATOM_ASSERT(false);
  }
}

void matmul_simd(const float* x, int64_t m, const QMatrix& w, float* y) {
  switch (w.type) {
    case GgmlType::kF32:
      return matmul_t<DecodeF32>(x, m, w, y);
    case GgmlType::kF16:
      return matmul_t<DecodeF16>(x, m, w, y);
    case GgmlType::kBF16:
      return matmul_t<DecodeBF16>(x, m, w, y);
    case GgmlType::kQ4_0:
      return matmul_t<DecodeQ4_0>(x, m, w, y);
    case GgmlType::kQ4_1:
      return matmul_t<DecodeQ4_1>(x, m, w, y);
    case GgmlType::kQ8_0:
      return matmul_t<DecodeQ8_0>(x, m, w, y);
    case GgmlType::kQ4_K:
      return matmul_t<DecodeQ4_K>(x, m, w, y);
    case GgmlType::kQ6_K:
      return matmul_t<DecodeQ6_K>(x, m, w, y);
    default:
      ATOM_ASSERT(false);
  }
}

#endif  // ATOM_QUANTS_SIMD

}  // namespace atom::cpu::internal

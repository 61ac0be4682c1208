// Paged KV cache: writing new K/V rows into their blocks, and varlen causal GQA attention over
// the blocks (prefill, decode and mixed batches alike).
//
// Attention is split into work items: for a prefill, (sequence, a few query rows, kv head); for a
// decode, (sequence, all kv heads). An item scores every query head of its GQA groups against
// each K/V row it reads, so a row is read from memory once per item, and keeps a flash-style
// online softmax (running max m, sum l, unnormalized output acc) over tiles of kKeyTile keys.
// When a batch has too few items for the threads (a decode of one sequence with a long
// context), items are also split along the keys (flash-decoding) and the partial softmax states
// are merged afterwards.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/row_kernels.h"
#include "atom/core/error.h"

namespace atom::cpu {

namespace {

constexpr int64_t kKeyTile = 32;         // keys per online-softmax update
constexpr int64_t kRowVectors = 32;      // query vectors (rows x group heads) per prefill item
constexpr int64_t kDecodeRows = 4;       // sequences with at most this many new rows run as decode
constexpr int64_t kMinSplitWork = 4096;  // vectors x keys below which a key split does not pay
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp for the softmax weights, written so the compiler vectorizes it (std::exp is a libm call it
// cannot): x = n ln2 + r with |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r, 2^n from the
// exponent bits. Relative error about 2e-7 for the x <= 0 the softmax passes. Below -87 it gives
// ~1e-38 instead of 0, immaterial next to the running sum (>= 1).
inline float softmax_exp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  x = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 in two parts, for an exact reduction
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  return y * std::bit_cast<float>((int32_t(n) + 127) << 23);
}

// --- work items ---

// A work item: query rows [row_begin, row_end) of sequence `seq` (0 = its first new token) and
// the query heads of kv heads [kv_head_begin, kv_head_end), against cache positions
// [key_begin, key_end). Its query vectors are numbered
//   v = ((row - row_begin) * num_item_kv_heads + (kv_head - kv_head_begin)) * group + g
// for query head kv_head * group + g.
struct WorkItem {
  int32_t seq = 0;
  int32_t kv_head_begin = 0;
  int32_t kv_head_end = 0;
  int32_t row_begin = 0;
  int32_t row_end = 0;
  int64_t key_begin = 0;
  int64_t key_end = 0;
  int64_t partial = -1;  // offset of its softmax state in the split scratch; -1 = write `out`
  int64_t cost = 0;      // vectors x keys, for largest-first scheduling

  int64_t num_kv_heads() const { return kv_head_end - kv_head_begin; }
  int64_t num_rows() const { return row_end - row_begin; }
  int64_t num_vectors(int64_t group) const { return num_rows() * num_kv_heads() * group; }
};

// An item split along the keys: its num_splits partial states lie back to back from `partial`.
struct SplitGroup {
  WorkItem item;
  int64_t num_splits = 0;
};

struct Problem {
  const float* q;
  float* out;
  int64_t num_heads;
  int64_t group;  // query heads per kv head
  int64_t head_dim;
  float scale;
  const KvCacheView* cache;
  const AttentionBatch* batch;
};

// Row of q (and of out) holding vector v of item w.   [head_dim]
inline int64_t vector_offset(const Problem& pb, const WorkItem& w, int64_t v) {
  const int64_t per_row = w.num_kv_heads() * pb.group;
  const int64_t token = pb.batch->cu_seqlens_q[w.seq] + w.row_begin + v / per_row;
  const int64_t head = int64_t(w.kv_head_begin) * pb.group + v % per_row;
  return (token * pb.num_heads + head) * pb.head_dim;
}

// Partial softmax state of `nv` vectors: m [nv], l [nv], acc [nv, head_dim].
inline int64_t partial_size(int64_t nv, int64_t head_dim) { return nv * (head_dim + 2); }

// Per-thread buffers, grown on demand and kept across calls: the hot path allocates nothing once
// warm.
struct ThreadScratch {
  std::vector<float> qs;          // [nv, head_dim] scaled queries
  std::vector<float> acc;         // [nv, head_dim] unnormalized outputs
  std::vector<float> m;           // [nv] running max
  std::vector<float> l;           // [nv] running sum
  std::vector<float> p;           // [nv, kKeyTile] scores, then softmax weights of a tile
  std::vector<int64_t> limit;     // [rows] last cache position each row may see
  std::vector<int64_t> visible;   // [rows] keys of the current tile each row sees
  std::vector<int64_t> key_rows;  // [kKeyTile] offset of each tile key's cache row

  void reserve(int64_t nv, int64_t rows, int64_t head_dim) {
    const auto grow = [](auto& v, int64_t n) {
      if (int64_t(v.size()) < n) v.resize(size_t(n));
    };
    grow(qs, nv * head_dim);
    grow(acc, nv * head_dim);
    grow(m, nv);
    grow(l, nv);
    grow(p, nv * kKeyTile);
    grow(limit, rows);
    grow(visible, rows);
    grow(key_rows, kKeyTile);
  }
};

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch s;
  return s;
}

// --- SIMD helpers ---
// GCC/Clang vector extensions as wide as the target's registers: 16 floats with AVX-512, else 8
// (AVX2 runs those natively, older targets in halves). Written with `#pragma omp simd` instead,
// the compiler reduces each dot product lane by lane and turns value accumulation into gathers.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

inline VecF load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }

inline float hsum8(Vec8 v) {
  Vec4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  a += __builtin_shufflevector(a, a, 2, 3, 0, 1);
  a += __builtin_shufflevector(a, a, 1, 0, 3, 2);
  return a[0];
}

inline float hsum(VecF v) {
#if defined(__AVX512F__)
  return hsum8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
#else
  return hsum8(v);
#endif
}

// Head-dimension strategies: kScalarDim handles any head_dim with plain loops; otherwise
// head_dim = chunks * kLanes, with `chunks` a compile-time constant (head_dim 64 and 128, so the
// loops unroll) or, for kRuntimeChunks, read at run time.
constexpr int64_t kScalarDim = -1;
constexpr int64_t kRuntimeChunks = 0;

// Keys are handled four at a time: each query chunk is loaded once per four dot products.
constexpr int64_t kKeyGroup = 4;

// s[j] = q . k[j] for j < n <= kKeyGroup.
template <int64_t kChunks>
inline void score_group(const float* q, const float* const* k, int64_t n, int64_t head_dim,
                        float* s) {
  if constexpr (kChunks == kScalarDim) {
    for (int64_t j = 0; j < n; ++j) {
      const float* kj = k[j];
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < head_dim; ++d) acc += q[d] * kj[d];
      s[j] = acc;
    }
  } else {
    const int64_t chunks = kChunks > 0 ? kChunks : head_dim / kLanes;
    if (n == kKeyGroup) {
      VecF a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const VecF qc = load(q + c * kLanes);
        a0 += qc * load(k[0] + c * kLanes);
        a1 += qc * load(k[1] + c * kLanes);
        a2 += qc * load(k[2] + c * kLanes);
        a3 += qc * load(k[3] + c * kLanes);
      }
      s[0] = hsum(a0);
      s[1] = hsum(a1);
      s[2] = hsum(a2);
      s[3] = hsum(a3);
      return;
    }
    for (int64_t j = 0; j < n; ++j) {
      VecF a = {};
      for (int64_t c = 0; c < chunks; ++c) a += load(q + c * kLanes) * load(k[j] + c * kLanes);
      s[j] = hsum(a);
    }
  }
}

// acc += sum_j w[j] * v[j] over j < n <= kKeyGroup.   acc: [head_dim]
template <int64_t kChunks>
inline void accumulate_group(float* acc, const float* w, const float* const* v, int64_t n,
                             int64_t head_dim) {
  if constexpr (kChunks == kScalarDim) {
    for (int64_t j = 0; j < n; ++j) {
      const float wj = w[j];
      const float* vj = v[j];
#pragma omp simd
      for (int64_t d = 0; d < head_dim; ++d) acc[d] += wj * vj[d];
    }
  } else {
    const int64_t chunks = kChunks > 0 ? kChunks : head_dim / kLanes;
    // Weights into registers first: acc and w are both float*, so the compiler would reload w
    // after every store to acc.
    float wr[kKeyGroup];
    for (int64_t j = 0; j < kKeyGroup; ++j) wr[j] = j < n ? w[j] : 0.0f;
    if (n == kKeyGroup) {
      for (int64_t c = 0; c < chunks; ++c) {
        VecF a = load(acc + c * kLanes);
        a += wr[0] * load(v[0] + c * kLanes);
        a += wr[1] * load(v[1] + c * kLanes);
        a += wr[2] * load(v[2] + c * kLanes);
        a += wr[3] * load(v[3] + c * kLanes);
        store(acc + c * kLanes, a);
      }
      return;
    }
    for (int64_t c = 0; c < chunks; ++c) {
      VecF a = load(acc + c * kLanes);
      for (int64_t j = 0; j < n; ++j) a += wr[j] * load(v[j] + c * kLanes);
      store(acc + c * kLanes, a);
    }
  }
}

// --- kernel ---

// Online softmax of an item's query vectors (scaled queries, m, l, acc and row limits already in
// `ts`) over its keys, one tile of kKeyTile keys at a time. Within a tile the keys are visited in
// groups of kKeyGroup, each group for all of the item's kv heads before the next: a cache
// position's rows for consecutive kv heads are adjacent, so the tile streams through memory in
// address order, which the hardware prefetchers follow (one kv head at a time strides over
// pages and runs at about half the bandwidth).
template <int64_t kChunks>
void attend(const Problem& pb, const WorkItem& w, ThreadScratch& ts) {
  const KvCacheView& cache = *pb.cache;
  const int64_t head_dim = pb.head_dim;
  const int64_t group = pb.group;
  const int64_t block_size = cache.block_size;
  const int64_t token_stride = cache.num_kv_heads * head_dim;
  const int64_t n_heads = w.num_kv_heads();
  const int64_t n_rows = w.num_rows();
  const int32_t* block_table = pb.batch->block_tables + w.seq * pb.batch->max_blocks_per_seq;
  const float* qs = ts.qs.data();
  float* acc = ts.acc.data();
  float* m = ts.m.data();
  float* l = ts.l.data();
  float* p = ts.p.data();
  const int64_t* limit = ts.limit.data();
  int64_t* visible = ts.visible.data();
  int64_t* key_rows = ts.key_rows.data();

  for (int64_t p0 = w.key_begin; p0 < w.key_end; p0 += kKeyTile) {
    const int64_t nt = std::min(kKeyTile, w.key_end - p0);
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t pos = p0 + t;
      key_rows[t] =
          (int64_t(block_table[pos / block_size]) * block_size + pos % block_size) * token_stride +
          int64_t(w.kv_head_begin) * head_dim;
    }
    // Causal: row r sees the tile's first visible[r] keys; later rows see more.
    for (int64_t r = 0; r < n_rows; ++r) visible[r] = std::clamp<int64_t>(limit[r] + 1 - p0, 0, nt);
    const int64_t used = visible[n_rows - 1];

    // Scores. p: [nv, kKeyTile]
    for (int64_t t = 0; t < used; t += kKeyGroup) {
      const int64_t n = std::min(kKeyGroup, used - t);
      for (int64_t h = 0; h < n_heads; ++h) {
        const float* k[kKeyGroup];
        for (int64_t j = 0; j < n; ++j) k[j] = cache.k + key_rows[t + j] + h * head_dim;
        for (int64_t r = 0; r < n_rows; ++r) {
          if (visible[r] <= t) continue;
          for (int64_t g = 0; g < group; ++g) {
            const int64_t v = (r * n_heads + h) * group + g;
            score_group<kChunks>(qs + v * head_dim, k, n, head_dim, p + v * kKeyTile + t);
          }
        }
      }
    }

    // Online softmax update; the earlier tiles' output is rescaled to the new max.
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t nvis = visible[r];
      if (nvis == 0) continue;
      for (int64_t v = r * n_heads * group; v < (r + 1) * n_heads * group; ++v) {
        float* pv = p + v * kKeyTile;
        // Whole tiles with the invisible keys masked, so both loops vectorize without remainders.
        float tile_max = kNegInf;
#pragma omp simd reduction(max : tile_max)
        for (int64_t t = 0; t < kKeyTile; ++t)
          tile_max = std::max(tile_max, t < nvis ? pv[t] : kNegInf);
        const float m_old = m[v];
        const float m_new = std::max(m_old, tile_max);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < kKeyTile; ++t) {
          const float e = t < nvis ? softmax_exp(pv[t] - m_new) : 0.0f;
          pv[t] = e;
          sum += e;
        }
        m[v] = m_new;
        if (m_old == kNegInf) {  // first keys of this vector: acc is still zero
          l[v] = sum;
          continue;
        }
        const float alpha = std::exp(m_old - m_new);
        l[v] = l[v] * alpha + sum;
        if (alpha != 1.0f) {
          float* a = acc + v * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) a[d] *= alpha;
        }
      }
    }

    // Weighted values, in the same order as the scores.
    for (int64_t t = 0; t < used; t += kKeyGroup) {
      const int64_t n = std::min(kKeyGroup, used - t);
      for (int64_t h = 0; h < n_heads; ++h) {
        const float* vr[kKeyGroup];
        for (int64_t j = 0; j < n; ++j) vr[j] = cache.v + key_rows[t + j] + h * head_dim;
        for (int64_t r = 0; r < n_rows; ++r) {
          if (visible[r] <= t) continue;
          const int64_t nr = std::min(n, visible[r] - t);
          for (int64_t g = 0; g < group; ++g) {
            const int64_t v = (r * n_heads + h) * group + g;
            accumulate_group<kChunks>(acc + v * head_dim, p + v * kKeyTile + t, vr, nr, head_dim);
          }
        }
      }
    }
  }
}

template <int64_t kChunks>
void run_item(const Problem& pb, const WorkItem& w, float* split_scratch) {
  const AttentionBatch& batch = *pb.batch;
  const int64_t head_dim = pb.head_dim;
  const int64_t nv = w.num_vectors(pb.group);
  const int64_t q_len = batch.cu_seqlens_q[w.seq + 1] - batch.cu_seqlens_q[w.seq];
  const int64_t ctx_start = batch.seq_lens[w.seq] - q_len;  // position of the first new token
  ThreadScratch& ts = thread_scratch();
  ts.reserve(nv, w.num_rows(), head_dim);

  for (int64_t v = 0; v < nv; ++v) {
    const float* src = pb.q + vector_offset(pb, w, v);
    float* dst = ts.qs.data() + v * head_dim;
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) dst[d] = src[d] * pb.scale;
  }
  for (int64_t r = 0; r < w.num_rows(); ++r) ts.limit[size_t(r)] = ctx_start + w.row_begin + r;
  std::fill_n(ts.m.data(), nv, kNegInf);
  std::fill_n(ts.l.data(), nv, 0.0f);
  std::fill_n(ts.acc.data(), nv * head_dim, 0.0f);

  attend<kChunks>(pb, w, ts);

  if (w.partial >= 0) {
    float* dst = split_scratch + w.partial;
    std::memcpy(dst, ts.m.data(), size_t(nv) * sizeof(float));
    std::memcpy(dst + nv, ts.l.data(), size_t(nv) * sizeof(float));
    std::memcpy(dst + 2 * nv, ts.acc.data(), size_t(nv * head_dim) * sizeof(float));
    return;
  }
  for (int64_t v = 0; v < nv; ++v) {
    // Every row sees at least cache position 0, so l >= 1.
    const float inv_l = 1.0f / ts.l[size_t(v)];
    const float* a = ts.acc.data() + v * head_dim;
    float* dst = pb.out + vector_offset(pb, w, v);
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) dst[d] = a[d] * inv_l;
  }
}

// Merges the partial softmax states of a split item and writes its output rows.
void combine(const Problem& pb, const SplitGroup& sg, const float* split_scratch) {
  const WorkItem& w = sg.item;
  const int64_t head_dim = pb.head_dim;
  const int64_t nv = w.num_vectors(pb.group);
  const int64_t stride = partial_size(nv, head_dim);
  for (int64_t v = 0; v < nv; ++v) {
    float* dst = pb.out + vector_offset(pb, w, v);
    float m_max = kNegInf;
    for (int64_t s = 0; s < sg.num_splits; ++s) {
      m_max = std::max(m_max, split_scratch[w.partial + s * stride + v]);
    }
    float denom = 0.0f;
    std::fill_n(dst, head_dim, 0.0f);
    for (int64_t s = 0; s < sg.num_splits; ++s) {
      const float* part = split_scratch + w.partial + s * stride;
      if (part[v] == kNegInf) continue;  // this split held no key the row may see
      const float weight = std::exp(part[v] - m_max);
      denom += weight * part[nv + v];
      const float* a = part + 2 * nv + v * head_dim;
#pragma omp simd
      for (int64_t d = 0; d < head_dim; ++d) dst[d] += weight * a[d];
    }
    const float inv = 1.0f / denom;
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) dst[d] *= inv;
  }
}

// --- planning ---

void check_batch(int64_t num_heads, const KvCacheView& cache, const AttentionBatch& batch) {
  ATOM_CHECK(cache.k != nullptr && cache.v != nullptr, kInvalidArgument,
             "paged_attention: KV cache is not allocated");
  ATOM_CHECK(cache.block_size > 0 && cache.num_kv_heads > 0 && cache.head_dim > 0, kInvalidArgument,
             "paged_attention: bad cache shape [{}, {}, {}, {}]", cache.num_blocks,
             cache.block_size, cache.num_kv_heads, cache.head_dim);
  ATOM_CHECK(num_heads > 0 && num_heads % cache.num_kv_heads == 0, kInvalidArgument,
             "paged_attention: {} query heads is not a multiple of {} kv heads", num_heads,
             cache.num_kv_heads);
  ATOM_CHECK(batch.num_seqs >= 0, kInvalidArgument, "paged_attention: {} sequences",
             batch.num_seqs);
  if (batch.num_seqs == 0) return;
  ATOM_CHECK(
      batch.cu_seqlens_q != nullptr && batch.seq_lens != nullptr && batch.block_tables != nullptr,
      kInvalidArgument, "paged_attention: missing batch metadata");
  ATOM_CHECK(batch.cu_seqlens_q[0] >= 0, kInvalidArgument,
             "paged_attention: cu_seqlens_q starts at {}", batch.cu_seqlens_q[0]);
  for (int64_t s = 0; s < batch.num_seqs; ++s) {
    const int64_t q_len = int64_t(batch.cu_seqlens_q[s + 1]) - batch.cu_seqlens_q[s];
    const int64_t seq_len = batch.seq_lens[s];
    ATOM_CHECK(q_len >= 0 && q_len <= seq_len, kInvalidArgument,
               "paged_attention: sequence {} has {} new tokens but a context of {}", s, q_len,
               seq_len);
    const int64_t blocks = (seq_len + cache.block_size - 1) / cache.block_size;
    ATOM_CHECK(blocks <= batch.max_blocks_per_seq, kOutOfRange,
               "paged_attention: sequence {} needs {} blocks, the block table holds {}", s, blocks,
               batch.max_blocks_per_seq);
    const int32_t* table = batch.block_tables + s * batch.max_blocks_per_seq;
    for (int64_t b = 0; b < blocks; ++b) {
      ATOM_CHECK(table[b] >= 0 && table[b] < cache.num_blocks, kOutOfRange,
                 "paged_attention: sequence {} block {} is {}, the cache has {} blocks", s, b,
                 table[b], cache.num_blocks);
    }
  }
}

// Work list and split-state scratch of the calling thread, reused across calls.
struct Plan {
  std::vector<WorkItem> items;
  std::vector<SplitGroup> groups;
  std::vector<float> split_scratch;
};

void make_plan(const Problem& pb, int num_threads, Plan& plan) {
  const AttentionBatch& batch = *pb.batch;
  const int64_t num_kv_heads = pb.cache->num_kv_heads;
  plan.items.clear();
  plan.groups.clear();
  const int64_t rows_per_item = std::max<int64_t>(1, kRowVectors / pb.group);
  for (int64_t s = 0; s < batch.num_seqs; ++s) {
    const int64_t q_len = int64_t(batch.cu_seqlens_q[s + 1]) - batch.cu_seqlens_q[s];
    const int64_t ctx_start = batch.seq_lens[s] - q_len;
    if (q_len == 0) continue;
    WorkItem w;
    w.seq = int32_t(s);
    if (q_len <= kDecodeRows) {
      // Decode: every head in one item, so the context streams through memory once, in order.
      w.kv_head_end = int32_t(num_kv_heads);
      w.row_end = int32_t(q_len);
      w.key_end = ctx_start + q_len;
      w.cost = w.num_vectors(pb.group) * w.key_end;
      plan.items.push_back(w);
      continue;
    }
    // Prefill: a few rows of one kv head per item; its rows reuse each key from cache.
    for (int64_t r0 = 0; r0 < q_len; r0 += rows_per_item) {
      const int64_t r1 = std::min(q_len, r0 + rows_per_item);
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        w.kv_head_begin = int32_t(h);
        w.kv_head_end = int32_t(h + 1);
        w.row_begin = int32_t(r0);
        w.row_end = int32_t(r1);
        w.key_end = ctx_start + r1;  // the last row sees positions [0, key_end)
        w.cost = w.num_vectors(pb.group) * (ctx_start + (r0 + r1 + 1) / 2);
        plan.items.push_back(w);
      }
    }
  }

  // Too few items for the threads: split the long ones along the keys.
  const int64_t target = 2 * int64_t(num_threads);
  const int64_t n_items = int64_t(plan.items.size());
  if (num_threads > 1 && n_items > 0 && n_items < target) {
    const int64_t want = (target + n_items - 1) / n_items;
    int64_t scratch = 0;
    for (int64_t i = 0; i < n_items; ++i) {
      const WorkItem w = plan.items[size_t(i)];
      const int64_t nv = w.num_vectors(pb.group);
      const int64_t keys = w.key_end - w.key_begin;
      const int64_t min_chunk =
          (std::max(kKeyTile, (kMinSplitWork + nv - 1) / nv) + kKeyTile - 1) / kKeyTile * kKeyTile;
      int64_t splits = std::min(want, keys / min_chunk);
      if (splits <= 1) continue;
      int64_t chunk = (keys + splits - 1) / splits;
      chunk = (chunk + kKeyTile - 1) / kKeyTile * kKeyTile;
      splits = (keys + chunk - 1) / chunk;
      SplitGroup sg;
      sg.item = w;
      sg.item.partial = scratch;
      sg.num_splits = splits;
      plan.groups.push_back(sg);
      for (int64_t k = 0; k < splits; ++k) {
        WorkItem part = w;
        part.key_begin = w.key_begin + k * chunk;
        part.key_end = std::min(w.key_end, part.key_begin + chunk);
        part.partial = scratch + k * partial_size(nv, pb.head_dim);
        part.cost = nv * (part.key_end - part.key_begin);
        if (k == 0) {
          plan.items[size_t(i)] = part;
        } else {
          plan.items.push_back(part);
        }
      }
      scratch += splits * partial_size(nv, pb.head_dim);
    }
    if (int64_t(plan.split_scratch.size()) < scratch) plan.split_scratch.resize(size_t(scratch));
  }
  // Largest first, so the long causal rows of a prefill do not finish last on one thread.
  std::stable_sort(plan.items.begin(), plan.items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
}

template <int64_t kChunks>
void run_plan(const Problem& pb, Plan& plan) {
  const int64_t n_items = int64_t(plan.items.size());
  const WorkItem* items = plan.items.data();
  float* scratch = plan.split_scratch.data();
#pragma omp parallel for schedule(dynamic, 1) if (n_items > 1)
  for (int64_t i = 0; i < n_items; ++i) run_item<kChunks>(pb, items[i], scratch);

  const int64_t n_groups = int64_t(plan.groups.size());
  const SplitGroup* groups = plan.groups.data();
#pragma omp parallel for schedule(dynamic, 1) if (n_groups > 1)
  for (int64_t i = 0; i < n_groups; ++i) combine(pb, groups[i], scratch);
}

}  // namespace

// --- ops ---

void reshape_and_cache(const float* k, const float* v, const int32_t* slot_mapping,
                       int64_t n_tokens, const KvCacheView& cache) {
  ATOM_CHECK(cache.k != nullptr && cache.v != nullptr, kInvalidArgument,
             "reshape_and_cache: KV cache is not allocated");
  const int64_t row = cache.num_kv_heads * cache.head_dim;  // one token's K (or V), all heads
  detail::check_slots("reshape_and_cache", slot_mapping, n_tokens, cache);
#pragma omp parallel for schedule(static) if (n_tokens * row >= (int64_t(1) << 16))
  for (int64_t t = 0; t < n_tokens; ++t)
    detail::store_kv(cache, slot_mapping[t], k + t * row, v + t * row);
}

namespace detail {

void check_slots(const char* op, const int32_t* slot_mapping, int64_t n_tokens,
                 const KvCacheView& cache) {
  const int64_t num_slots = cache.num_blocks * cache.block_size;
  for (int64_t t = 0; t < n_tokens; ++t) {
    ATOM_CHECK(slot_mapping[t] >= -1 && slot_mapping[t] < num_slots, kOutOfRange,
               "{}: token {} has slot {}, the cache has {} slots", op, t, slot_mapping[t],
               num_slots);
  }
}

}  // namespace detail

void paged_attention(const float* q, int64_t num_heads, const KvCacheView& cache,
                     const AttentionBatch& batch, float scale, float* out) {
  check_batch(num_heads, cache, batch);
  if (batch.num_seqs == 0) return;
  const Problem pb{q,     out,    num_heads, num_heads / cache.num_kv_heads, cache.head_dim,
                   scale, &cache, &batch};
  thread_local Plan plan;
  make_plan(pb, omp_get_max_threads(), plan);
  if (cache.head_dim == 64) {
    run_plan<64 / kLanes>(pb, plan);
  } else if (cache.head_dim == 128) {
    run_plan<128 / kLanes>(pb, plan);
  } else if (cache.head_dim % kLanes == 0) {
    run_plan<kRuntimeChunks>(pb, plan);
  } else {
    run_plan<kScalarDim>(pb, plan);
  }
}

}  // namespace atom::cpu

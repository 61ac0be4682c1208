// Sampling kernels: one thread block per logits row, several passes over the row (it stays in
// L2 while its block runs), shared memory only, no allocation, deterministic.
//
// Per row (see runner/sampling_math.h for the definition both backends implement):
//   1. argmax (lowest id among ties): greedy rows stop here; m = the max logit.
//   2. top-k: radix select of the k-th largest logit on its order-preserving 32-bit key, four
//      passes of 8-bit count histograms (warp-aggregated shared atomics); t_k = p(that logit).
//      Logits order like p, so no exp is needed here. The k-th largest of the threads' maxima
//      (a radix select over 1024 values) bounds it from below, so few logits take part.
//   3. top-p: the same radix walk on the bits of p (non-negative floats order like uint32) with
//      mass histograms restricted to p >= t_k: the highest bin whose mass from the top reaches
//      the target, four times; t_p = the p found. A pass computes exp only for logits whose
//      (logit - max) / T maps near the range of p it still looks at.
//   4. t = max(t_k, t_p, min_p); the draw r in [0, kept mass) picks the first id whose inclusive
//      prefix of kept mass exceeds r: the row is cut into 32 contiguous parts (one per warp), the
//      part holding r is cut again until it is short, then one warp scans it.
// Masses are fixed-point integers (sampling_mass) summed exactly: the result does not depend on
// the order of the additions, so it is deterministic and equal to the CPU Sampler's.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/device_math.cuh"
#include "atom/backends/cuda/pdl.cuh"
#include "atom/backends/cuda/sampling.h"
#include "atom/core/error.h"
#include "atom/runner/sampling_math.h"

namespace atom::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kNoBin = 0xffffffffu;
constexpr unsigned kFull = 0xffffffffu;
// A part of the row at most this long is scanned by one warp instead of being cut again.
constexpr int kScanLength = 256;

__device__ __forceinline__ uint64_t warp_sum(uint64_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ uint64_t warp_inclusive_scan(uint64_t v, int lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t t = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// Inverse of float_order_key.
__device__ __forceinline__ float key_to_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// A 64-bit shared-memory counter as two 32-bit words (native 32-bit shared atomics; the carry
// of the low word goes to the high one): lo[b] + 2^32 hi[b] once every add is done.
__device__ __forceinline__ void add_mass(unsigned* lo, unsigned* hi, uint64_t m) {
  const unsigned m_lo = unsigned(m);
  const unsigned m_hi = unsigned(m >> 32);
  const unsigned old = atomicAdd(lo, m_lo);
  const unsigned carry = old + m_lo < old ? 1u : 0u;
  if (m_hi + carry != 0) atomicAdd(hi, m_hi + carry);
}

// Warp 0: the highest of 256 bins b whose cumulative value from the top,
// above + sum_{b' >= b} value(b'), reaches `need` (the cumulative grows as b falls). Writes b and
// above + sum_{b' > b} value(b') to *bin_out, *above_out.
template <typename Value>
__device__ void select_bin(Value value, uint64_t above, uint64_t need, int lane, uint32_t* bin_out,
                           unsigned long long* above_out) {
  uint64_t h[8];
  uint64_t local = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    h[j] = value(255 - 8 * lane - j);
    local += h[j];
  }
  const uint64_t incl = warp_inclusive_scan(local, lane);
  const unsigned hits = __ballot_sync(kFull, above + incl >= need);
  const int owner = hits ? __ffs(hits) - 1 : 31;  // no hit cannot happen: the last bin then
  if (lane == owner) {
    uint64_t c = above + incl - local;
    int b = 255 - 8 * lane - 7;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j == 7 || c + h[j] >= need) {
        b = 255 - 8 * lane - j;
        break;
      }
      c += h[j];
    }
    *bin_out = uint32_t(b);
    *above_out = c;
  }
}

// Every token with x = (logit - max) / T below the result has p < p_min (p = sampling_exp(x)),
// so a pass may skip its exp: sampling_exp is within 1e-6 of exp on x rounded by at most 2^-21,
// and logf within 1e-5, far inside the 1e-3 margin. -inf (no skipping) for p_min <= 0.
__device__ __forceinline__ float x_floor(float p_min) {
  return p_min > 0.0f ? logf(p_min) - 1e-3f : -__int_as_float(0x7f800000);
}
// Every token with x above the result has p > p_max.
__device__ __forceinline__ float x_ceil(float p_max) { return logf(p_max) + 1e-3f; }

// The key of the k-th largest (1-based, ties counted) of the valid keys key_of(i, &key), i in
// [0, n), by radix select from the top byte down: four passes of 8-bit count histograms over
// the candidates matching the prefix found so far. Called by the whole block.
template <typename KeyOf>
__device__ uint32_t radix_select(KeyOf key_of, int n, uint32_t k, unsigned* hist, uint32_t* s_bin,
                                 unsigned long long* s_above) {
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    // Whole warps iterate together (the warp votes need every lane): a uniform trip count.
#pragma unroll 4
    for (int base = 0; base < n; base += kThreads) {
      const int i = base + tid;
      uint32_t bin = kNoBin;
      uint32_t key;
      if (i < n && key_of(i, &key) && (key & mask) == prefix) bin = (key >> shift) & 0xffu;
      // One atomic per distinct bin of the warp: keys crowd into few top bytes.
      if (__any_sync(kFull, bin != kNoBin)) {
        const unsigned group = __match_any_sync(kFull, bin);
        if (bin != kNoBin && lane == __ffs(group) - 1)
          atomicAdd(&hist[bin], unsigned(__popc(group)));
      }
    }
    __syncthreads();
    if (tid < 32)
      select_bin([hist](int b) { return uint64_t(hist[b]); }, above, uint64_t(k), lane, s_bin,
                 s_above);
    __syncthreads();
    prefix |= *s_bin << shift;
    mask |= 0xffu << shift;
    above = *s_above;
  }
  return prefix;
}

// logits: [rows, vocab]; params, out: [rows]. grid = rows, block = kThreads.
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* __restrict__ logits, int vocab,
                  const SampleRowParams* __restrict__ params, int32_t* __restrict__ out) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  __shared__ float s_best_v[kWarps];
  __shared__ int s_best_i[kWarps];
  __shared__ float s_thread_max[kThreads];
  __shared__ unsigned s_hist_lo[256];  // counts (top-k), or the low words of masses (top-p)
  __shared__ unsigned s_hist_hi[256];  // the high words of masses (top-p)
  __shared__ unsigned long long s_part[kWarps];
  __shared__ uint32_t s_bin;
  __shared__ unsigned long long s_above;
  __shared__ int s_best;
  __shared__ int s_lo, s_hi;
  __shared__ unsigned long long s_base, s_r;
  __shared__ int s_empty;

  const int row_index = blockIdx.x;
  const float* row = logits + int64_t(row_index) * vocab;
  const SampleRowParams prm = params[row_index];
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const float kNegInf = -__int_as_float(0x7f800000);

  // 1. argmax, the first maximum as atom::argmax: NaNs never win, except a NaN first logit,
  // which the sequential loop never leaves. Each thread's own maximum is kept for top-k.
  float best_v = kNegInf;
  int best_i = INT_MAX;
#pragma unroll 4
  for (int i = tid; i < vocab; i += kThreads) {
    const float v = row[i];
    if (device::beats(v, i, best_v, best_i)) {
      best_v = v;
      best_i = i;
    }
  }
  s_thread_max[tid] = best_v;
  const int best = device::block_first_max(best_v, best_i, row, s_best_v, s_best_i, &s_best);
  if (prm.temperature < 1e-5f || prm.top_k == 1) {
    if (tid == 0) out[row_index] = best;
    return;
  }
  const float max_logit = row[best];
  const float inv_t = 1.0f / prm.temperature;
  // x of a logit, as sampling_prob computes it (NaN compares false: never skipped).
  const auto x_of = [max_logit, inv_t](float l) { return (l - max_logit) * inv_t; };
  constexpr float kMinMassP = 0x1.0p-42f;  // the smallest p of nonzero mass

  // 2. t_k: the k-th largest logit by radix select on its key. Candidates first: the k-th
  // largest of the threads' maxima is a logit with at least k logits at or above it (k
  // distinct threads' maxima), so the k-th largest logit is at or above it too and only logits
  // from there up take part.
  float t_k = 0.0f;
  if (prm.top_k > 0 && prm.top_k < vocab) {
    const uint32_t k = uint32_t(prm.top_k);
    uint32_t floor_key = 0;
    if (k <= uint32_t(kThreads)) {
      floor_key = radix_select(
          [](int i, uint32_t* key) {
            *key = float_order_key(s_thread_max[i]);
            return true;
          },
          kThreads, k, s_hist_lo, &s_bin, &s_above);
    }
    const uint32_t key_k = radix_select(
        [row, floor_key](int i, uint32_t* key) {
          *key = float_order_key(row[i]);
          return *key >= floor_key;
        },
        vocab, k, s_hist_lo, &s_bin, &s_above);
    t_k = sampling_prob(key_to_float(key_k), max_logit, inv_t);
  }

  // 3. t_p: the radix walk on the bits of p over masses of the tokens with p >= t_k. Tokens of
  // zero mass add nothing and are skipped; the walk never stops on a bin they alone fill. Each
  // pass computes p only where x may give a p inside the prefix's range.
  float t_p = 0.0f;
  if (prm.top_p < 1.0f) {
    uint32_t prefix = 0, mask = 0;
    uint64_t above = 0;
    uint64_t target = 0;  // warp 0 only
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) {
        s_hist_lo[b] = 0;
        s_hist_hi[b] = 0;
      }
      const float p_lo = fmaxf(fmaxf(__uint_as_float(prefix), t_k), kMinMassP);
      const float x_lo = x_floor(p_lo);
      const float x_hi =
          shift == 24 ? __int_as_float(0x7f800000) : x_ceil(__uint_as_float(prefix | ~mask));
      __syncthreads();
#pragma unroll 4
      for (int i = tid; i < vocab; i += kThreads) {
        const float l = row[i];
        const float x = x_of(l);
        if (x < x_lo || x > x_hi) continue;
        const float p = sampling_prob(l, max_logit, inv_t);
        if (!(p >= t_k)) continue;
        const uint64_t m = sampling_mass(p);
        const uint32_t bits = __float_as_uint(p);
        if (m == 0 || (bits & mask) != prefix) continue;
        const uint32_t bin = (bits >> shift) & 0xffu;
        add_mass(&s_hist_lo[bin], &s_hist_hi[bin], m);
      }
      __syncthreads();
      if (warp == 0) {
        const auto mass_of = [](int b) {
          return (uint64_t(s_hist_hi[b]) << 32) | uint64_t(s_hist_lo[b]);
        };
        if (shift == 24) {
          uint64_t local = 0;
          for (int j = 0; j < 8; ++j) local += mass_of(8 * lane + j);
          target = top_p_target(warp_sum(local), prm.top_p);
        }
        select_bin(mass_of, above, target, lane, &s_bin, &s_above);
      }
      __syncthreads();
      prefix |= s_bin << shift;
      mask |= 0xffu << shift;
      above = s_above;
    }
    t_p = __uint_as_float(prefix);
  }

  // 4. The draw over S = {p >= t}, ties at t kept. Tokens of p < max(t, 2^-42) weigh nothing.
  float t = t_k > t_p ? t_k : t_p;
  t = t > prm.min_p ? t : prm.min_p;
  const float x_kept = x_floor(fmaxf(t, kMinMassP));
  const auto kept_mass = [&](float l) -> uint64_t {
    if (x_of(l) < x_kept) return 0;
    const float p = sampling_prob(l, max_logit, inv_t);
    return p >= t ? sampling_mass(p) : 0;
  };
  const uint64_t bits53 = sampling_bits53((uint64_t(prm.seed_hi) << 32) | prm.seed_lo,
                                          (uint64_t(prm.counter_hi) << 32) | prm.counter_lo);
  int lo = 0, hi = vocab;
  uint64_t base = 0, r = 0;
  for (int level = 0;; ++level) {
    if (level > 0 && hi - lo <= kScanLength) break;
    const int part = (hi - lo + kWarps - 1) / kWarps;
    const int p0 = lo + warp * part;
    const int p1 = min(hi, p0 + part);
    uint64_t s = 0;
#pragma unroll 4
    for (int i = p0 + lane; i < p1; i += 32) s += kept_mass(row[i]);
    s = warp_sum(s);
    if (lane == 0) s_part[warp] = s;
    __syncthreads();
    if (warp == 0) {
      const uint64_t v = s_part[lane];
      const uint64_t incl = warp_inclusive_scan(v, lane);
      if (level == 0) {
        const uint64_t total = __shfl_sync(kFull, incl, 31);
        r = scale_uniform(bits53, total);  // < total
        if (lane == 0) {
          s_r = r;
          s_empty = total == 0;  // no maximum (NaN logits): the first maximum, as greedy
        }
      }
      // The first part whose inclusive prefix exceeds r: r lies inside it.
      const unsigned hits = __ballot_sync(kFull, base + incl > r);
      const int owner = hits ? __ffs(hits) - 1 : 31;
      if (lane == owner) {
        s_lo = lo + owner * part;
        s_hi = min(hi, lo + (owner + 1) * part);
        s_base = base + incl - v;
      }
    }
    __syncthreads();
    if (s_empty) {
      if (tid == 0) out[row_index] = best;
      return;
    }
    lo = s_lo;
    hi = s_hi;
    base = s_base;
    r = s_r;
  }
  if (warp != 0) return;
  for (int g = lo; g < hi; g += 32) {
    const int i = g + lane;
    const uint64_t m = i < hi ? kept_mass(row[i]) : 0;
    const uint64_t incl = warp_inclusive_scan(m, lane);
    const unsigned hits = __ballot_sync(kFull, base + incl > r);
    if (hits) {
      if (lane == 0) out[row_index] = g + __ffs(hits) - 1;
      return;
    }
    base += __shfl_sync(kFull, incl, 31);
  }
  if (lane == 0) out[row_index] = hi - 1;  // unreachable: r < the part's mass
}

// logits: [*, vocab]; rows: [grid]; see launch_apply_penalties. grid = penalty rows.
__global__ void apply_penalties_kernel(float* logits, int vocab,
                                       const PenaltyRowParams* __restrict__ rows,
                                       const PenaltyEntry* __restrict__ entries,
                                       const int32_t* __restrict__ inflight_ids,
                                       const int32_t* __restrict__ stop_ids) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  __shared__ int s_inflight_listed;
  const PenaltyRowParams pr = rows[blockIdx.x];
  float* row = logits + int64_t(pr.logits_row) * vocab;
  const int32_t inflight = pr.inflight_index >= 0 ? inflight_ids[pr.inflight_index] : -1;
  const bool rep_on = pr.repetition != 1.0f;
  const bool counts_on = pr.frequency != 0.0f || pr.presence != 0.0f;
  if (threadIdx.x == 0) s_inflight_listed = 0;
  __syncthreads();
  for (int e = pr.entries_begin + int(threadIdx.x); e < pr.entries_end; e += blockDim.x) {
    const PenaltyEntry en = entries[e];
    if (en.token < 0 || en.token >= vocab) continue;
    int32_t count = en.output_count;
    if (en.token == inflight) {
      ++count;
      s_inflight_listed = 1;
    }
    row[en.token] = penalize_logit(row[en.token], en.in_prompt != 0 || count > 0, count,
                                   pr.repetition, pr.frequency, pr.presence, rep_on, counts_on);
  }
  __syncthreads();
  // An in-flight token no entry lists is a new output token: seen, once.
  if (threadIdx.x == 0 && inflight >= 0 && inflight < vocab && !s_inflight_listed)
    row[inflight] = penalize_logit(row[inflight], true, 1, pr.repetition, pr.frequency, pr.presence,
                                   rep_on, counts_on);
  __syncthreads();
  // min_tokens: after the penalties, as on the CPU.
  for (int s = pr.stop_begin + int(threadIdx.x); s < pr.stop_end; s += blockDim.x) {
    const int32_t id = stop_ids[s];
    if (id >= 0 && id < vocab) row[id] = -__int_as_float(0x7f800000);
  }
}

void check_rows(int64_t rows, int64_t vocab, const char* op) {
  ATOM_CHECK(rows >= 0 && vocab > 0, kInvalidArgument, "{}: bad shape [{}, {}]", op, rows, vocab);
  ATOM_CHECK(vocab <= kMaxSamplingVocab, kOutOfRange, "{}: vocabulary of {} exceeds {}", op, vocab,
             kMaxSamplingVocab);
  ATOM_CHECK(rows <= INT_MAX, kOutOfRange, "{}: {} rows exceed one launch", op, rows);
}

}  // namespace

void launch_sample(const float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
                   int32_t* out, cudaStream_t stream) {
  check_rows(rows, vocab, "launch_sample");
  if (rows == 0) return;
  launch_pdl(sample_kernel, unsigned(rows), kThreads, 0, stream, logits, int(vocab), params, out);
}

void launch_apply_penalties(float* logits, int64_t vocab, const PenaltyRowParams* rows,
                            int64_t num_rows, const PenaltyEntry* entries,
                            const int32_t* inflight_ids, const int32_t* stop_ids,
                            cudaStream_t stream) {
  check_rows(num_rows, vocab, "launch_apply_penalties");
  if (num_rows == 0) return;
  launch_pdl(apply_penalties_kernel, unsigned(num_rows), 256, 0, stream, logits, int(vocab), rows,
             entries, inflight_ids, stop_ids);
}

}  // namespace atom::cuda

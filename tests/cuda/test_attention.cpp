// CUDA paged attention (bf16, and fp8 e4m3 caches with per-tensor scales) against the CPU op and a
// contiguous reference, over awkward sizes:
// context lengths 1, 17, 54, 97, 1000+ and 4096; batches of 1 to 300 sequences; block sizes 1, 16
// and 32; head dims 64 and 128; GQA ratios 1, 4, 7, 8 and 20; decode, prefill with and without a
// cached prefix, and mixed batches; the decode kernel with one key split, with many, and with more
// splits than a context has tiles, also with a max_seq_len far above the longest context (what a
// CUDA graph captured for max_model_len passes), where each sequence splits its own context.
//
// Each case keeps every sequence's K and V contiguous on the host and scatters them into a paged
// cache through shuffled physical blocks. Everything the kernels must not read is poisoned: the
// slots past each context in its last block and spare blocks hold V = 64 and K = +-8, and unused
// block-table entries point at those spare blocks or outside the cache. Output rows start as NaN.
//
// An fp8 case stores every cache value (poison included) as the e4m3 code of value / scale, and
// the references run on what the kernels must read back, code * scale, so the kernels differ
// from them only in rounding, as for bf16.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <iostream>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/check.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/tensor.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::as_bf16;
using test::DeviceBuffer;
using test::gpu_visible;
using test::round_bf16;
using test::to_bf16;

struct SeqSpec {
  int q_len;    // new query rows
  int seq_len;  // context: cached prefix + the new rows
};

struct AttnCase {
  std::string name;
  int head_dim;
  int num_kv_heads;
  int group;  // query heads per kv head
  int block_size;
  std::vector<SeqSpec> seqs;
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
  uint32_t seed = 1;
  // The max_seq_len the kernels are told, when larger than the longest context (0: the longest);
  // the block tables are widened to hold it, with junk past each context.
  int max_seq_len = 0;
  DType kv_dtype = DType::kBF16;  // kBF16 or kF8E4M3
  float k_scale = 1.0f;           // fp8 only
  float v_scale = 1.0f;
};

void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

constexpr float kPoisonV = 64.0f;
constexpr float kPoisonK = 8.0f;
constexpr int kSpareBlocks = 3;

// A batch on the host: q and the paged cache as bf16 bits, the same values as f32 for the CPU op,
// and each sequence's K/V contiguous for the reference.
struct Problem {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  int64_t num_blocks = 0;
  int64_t max_blocks = 0;
  int64_t num_tokens = 0;
  int64_t max_q_len = 0;
  int64_t max_seq_len = 0;
  float scale = 0.0f;
  DType kv_dtype = DType::kBF16;
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  std::vector<SeqSpec> seqs;
  std::vector<int32_t> cu_seqlens;    // [num_seqs + 1]
  std::vector<int32_t> seq_lens;      // [num_seqs]
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks]
  std::vector<float> q;               // [num_tokens, num_heads, head_dim], bf16 values
  std::vector<float> k_cache;         // [num_blocks, block_size, num_kv_heads, head_dim]
  std::vector<float> v_cache;         // [num_blocks, block_size, num_kv_heads, head_dim]
  // fp8: the e4m3 codes of the caches; k_cache and v_cache hold code * scale.
  std::vector<uint8_t> k_fp8;             // [num_blocks, block_size, num_kv_heads, head_dim]
  std::vector<uint8_t> v_fp8;             // [num_blocks, block_size, num_kv_heads, head_dim]
  std::vector<std::vector<float>> k_seq;  // per sequence [seq_len, num_kv_heads, head_dim]
  std::vector<std::vector<float>> v_seq;  // per sequence [seq_len, num_kv_heads, head_dim]

  int64_t num_seqs() const { return int64_t(seqs.size()); }
};

Problem make_problem(const AttnCase& c) {
  Problem pb;
  std::mt19937 rng(c.seed);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  pb.num_kv_heads = c.num_kv_heads;
  pb.num_heads = int64_t(c.num_kv_heads) * c.group;
  pb.head_dim = c.head_dim;
  pb.block_size = c.block_size;
  pb.scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(float(c.head_dim));
  pb.kv_dtype = c.kv_dtype;
  pb.k_scale = c.k_scale;
  pb.v_scale = c.v_scale;
  pb.seqs = c.seqs;
  const int64_t row = pb.num_kv_heads * pb.head_dim;  // one slot's K (or V)

  pb.cu_seqlens.push_back(0);
  int64_t used_blocks = 0;
  for (const SeqSpec& s : c.seqs) {
    pb.cu_seqlens.push_back(pb.cu_seqlens.back() + s.q_len);
    pb.seq_lens.push_back(s.seq_len);
    pb.max_q_len = std::max<int64_t>(pb.max_q_len, s.q_len);
    pb.max_seq_len = std::max<int64_t>(pb.max_seq_len, s.seq_len);
    const int64_t blocks = (s.seq_len + c.block_size - 1) / c.block_size;
    used_blocks += blocks;
    pb.max_blocks = std::max(pb.max_blocks, blocks);
  }
  pb.num_tokens = pb.cu_seqlens.back();
  pb.max_seq_len = std::max<int64_t>(pb.max_seq_len, c.max_seq_len);
  pb.max_blocks =
      std::max<int64_t>(pb.max_blocks, (pb.max_seq_len + c.block_size - 1) / c.block_size);
  pb.max_blocks += 2;  // spare table entries per sequence, filled with junk
  pb.num_blocks = used_blocks + kSpareBlocks;

  // Physical blocks in shuffled order; the last kSpareBlocks of the permutation stay unused.
  std::vector<int32_t> physical(static_cast<size_t>(pb.num_blocks));
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  const std::vector<int32_t> spare(physical.end() - kSpareBlocks, physical.end());

  // Poison everywhere first: spare blocks and the tails of last blocks keep it.
  const size_t cache_elems = size_t(pb.num_blocks * pb.block_size * row);
  pb.k_cache.resize(cache_elems);
  pb.v_cache.assign(cache_elems, kPoisonV);
  for (float& k : pb.k_cache) k = (rng() & 1) ? kPoisonK : -kPoisonK;

  pb.block_tables.resize(size_t(pb.num_seqs() * pb.max_blocks));
  size_t next = 0;
  for (int64_t s = 0; s < pb.num_seqs(); ++s) {
    const int64_t seq_len = c.seqs[size_t(s)].seq_len;
    const int64_t blocks = (seq_len + c.block_size - 1) / c.block_size;
    int32_t* table = pb.block_tables.data() + s * pb.max_blocks;
    for (int64_t b = 0; b < pb.max_blocks; ++b) {
      if (b < blocks) {
        table[b] = physical[next++];
      } else {
        // Junk the kernels must not follow: poisoned blocks, and ids outside the cache.
        const int32_t junk[] = {spare[size_t(b) % spare.size()], int32_t(pb.num_blocks + 5), -3,
                                INT32_MAX};
        table[b] = junk[size_t(b + s) % 4];
      }
    }
    std::vector<float> ks(size_t(seq_len * row)), vs(size_t(seq_len * row));
    for (float& x : ks) x = round_bf16(unit(rng));
    for (float& x : vs) x = round_bf16(unit(rng));
    for (int64_t pos = 0; pos < seq_len; ++pos) {
      const int64_t slot = int64_t(table[pos / c.block_size]) * c.block_size + pos % c.block_size;
      std::copy_n(ks.begin() + pos * row, row, pb.k_cache.begin() + slot * row);
      std::copy_n(vs.begin() + pos * row, row, pb.v_cache.begin() + slot * row);
    }
    pb.k_seq.push_back(std::move(ks));
    pb.v_seq.push_back(std::move(vs));
  }

  if (pb.kv_dtype == DType::kF8E4M3) {
    // Every cache value as its e4m3 code of value / scale; the references see code * scale.
    const auto quantize = [](std::vector<float>& values, std::vector<uint8_t>& codes, float sc) {
      codes.resize(values.size());
      for (size_t i = 0; i < values.size(); ++i) {
        codes[i] = f32_to_fp8e4m3(values[i] / sc);
        values[i] = fp8e4m3_to_f32(codes[i]) * sc;
      }
    };
    quantize(pb.k_cache, pb.k_fp8, pb.k_scale);
    quantize(pb.v_cache, pb.v_fp8, pb.v_scale);
    // The contiguous copies from the quantized cache, through the block tables.
    for (int64_t s = 0; s < pb.num_seqs(); ++s) {
      const int32_t* table = pb.block_tables.data() + s * pb.max_blocks;
      for (int64_t pos = 0; pos < c.seqs[size_t(s)].seq_len; ++pos) {
        const int64_t slot = int64_t(table[pos / c.block_size]) * c.block_size + pos % c.block_size;
        std::copy_n(pb.k_cache.begin() + slot * row, row, pb.k_seq[size_t(s)].begin() + pos * row);
        std::copy_n(pb.v_cache.begin() + slot * row, row, pb.v_seq[size_t(s)].begin() + pos * row);
      }
    }
  }

  // q in [-3, 3]: with k in [-1, 1] and scale 1/sqrt(head_dim) the scores have a standard
  // deviation of about 1, so the softmax is neither flat nor one-hot.
  pb.q.resize(size_t(pb.num_tokens * pb.num_heads * pb.head_dim));
  for (float& x : pb.q) x = round_bf16(3.0f * unit(rng));
  return pb;
}

// The CPU op on the same (bf16-valued) inputs.   [num_tokens, num_heads, head_dim]
std::vector<float> cpu_reference(const Problem& pb) {
  std::vector<float> out(pb.q.size(), 0.0f);
  cpu::KvCacheView cache;
  cache.k = const_cast<float*>(pb.k_cache.data());
  cache.v = const_cast<float*>(pb.v_cache.data());
  cache.num_blocks = pb.num_blocks;
  cache.block_size = pb.block_size;
  cache.num_kv_heads = pb.num_kv_heads;
  cache.head_dim = pb.head_dim;
  cpu::AttentionBatch batch;
  batch.cu_seqlens_q = pb.cu_seqlens.data();
  batch.seq_lens = pb.seq_lens.data();
  batch.block_tables = pb.block_tables.data();
  batch.num_seqs = pb.num_seqs();
  batch.max_blocks_per_seq = pb.max_blocks;
  cpu::paged_attention(pb.q.data(), pb.num_heads, cache, batch, pb.scale, out.data());
  return out;
}

// Plain causal attention in double over each sequence's contiguous K/V (no paging).
std::vector<float> contiguous_reference(const Problem& pb) {
  const int64_t hd = pb.head_dim;
  const int64_t group = pb.num_heads / pb.num_kv_heads;
  std::vector<float> out(pb.q.size(), 0.0f);
  std::vector<double> w;
  for (int64_t s = 0; s < pb.num_seqs(); ++s) {
    const int64_t q_len = pb.seqs[size_t(s)].q_len;
    const int64_t seq_len = pb.seqs[size_t(s)].seq_len;
    const std::vector<float>& ks = pb.k_seq[size_t(s)];
    const std::vector<float>& vs = pb.v_seq[size_t(s)];
    for (int64_t j = 0; j < q_len; ++j) {
      const int64_t token = pb.cu_seqlens[size_t(s)] + j;
      const int64_t visible = seq_len - q_len + j + 1;
      for (int64_t h = 0; h < pb.num_heads; ++h) {
        const int64_t kvh = h / group;
        const float* q = pb.q.data() + (token * pb.num_heads + h) * hd;
        w.assign(size_t(visible), 0.0);
        double mx = -INFINITY;
        for (int64_t p = 0; p < visible; ++p) {
          const float* k = ks.data() + (p * pb.num_kv_heads + kvh) * hd;
          double dot = 0.0;
          for (int64_t d = 0; d < hd; ++d) dot += double(q[d]) * k[d];
          w[size_t(p)] = dot * pb.scale;
          mx = std::max(mx, w[size_t(p)]);
        }
        double sum = 0.0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        float* o = out.data() + (token * pb.num_heads + h) * hd;
        for (int64_t d = 0; d < hd; ++d) {
          double acc = 0.0;
          for (int64_t p = 0; p < visible; ++p) {
            acc += w[size_t(p)] * vs[size_t((p * pb.num_kv_heads + kvh) * hd + d)];
          }
          o[d] = float(acc / sum);
        }
      }
    }
  }
  return out;
}

// Tolerance of the bf16 kernels against an f32/f64 reference on the same bf16 inputs. The
// kernels differ from the reference in two roundings: the softmax weights enter the P V product
// as bf16 (relative error <= 2^-9 each, so at most 2^-9 * max|v| = 2e-3 on an output, as
// |v| <= 1), and the output is rounded to bf16 (<= 2^-9 relative). Scores, exponentials and sums
// are f32 on both sides (differences ~1e-6). Hence |got - want| <= 3e-3 + 1e-2 |want|, with
// margin over the 2e-3 + 2e-3 |want| bound. A poisoned key or value (V = 64) read by mistake
// moves an output by far more. The fp8 kernels fit the same bound: the reference reads the same
// e4m3 values times the scales (|v| <= 1.02 after quantization), q (bf16 values in [-3, 3]) is
// exact in f16, the weights enter P V as f16 (2^-11), and folding the scales into the softmax
// scale and the normalization moves only f32 roundings.
constexpr double kAbsTol = 3e-3;
constexpr double kRelTol = 1e-2;

// Fails with the worst element when `got` (bf16 bits) strays from `want` beyond the tolerance.
void expect_close(const std::vector<uint16_t>& got, const std::vector<float>& want,
                  const Problem& pb, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = -INFINITY;  // largest excess over the tolerance; NaN counts as infinite
  size_t worst_i = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(bf16_to_f32(got[i])) - want[i]);
    double excess = err - (kAbsTol + kRelTol * std::fabs(want[i]));
    if (std::isnan(excess)) excess = INFINITY;
    if (excess > 0.0) ++bad;
    if (excess > worst) {
      worst = excess;
      worst_i = i;
    }
  }
  const int64_t hd = pb.head_dim;
  const int64_t token = int64_t(worst_i) / (pb.num_heads * hd);
  const int64_t head = int64_t(worst_i) / hd % pb.num_heads;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " elements out of tolerance; worst at token " << token << " head " << head
                     << " dim " << worst_i % size_t(hd) << ": got " << bf16_to_f32(got[worst_i])
                     << " want " << want[worst_i];
}

// Largest |got - want| over the batch and its largest share of the tolerance, for the log.
std::pair<double, double> max_error(const std::vector<uint16_t>& got,
                                    const std::vector<float>& want) {
  double worst = 0.0;
  double share = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(bf16_to_f32(got[i])) - want[i]);
    worst = std::max(worst, err);
    share = std::max(share, err / (kAbsTol + kRelTol * std::fabs(want[i])));
  }
  return {worst, share};
}

// `codes`, or one zero byte in place of none (a bf16 case's unused fp8 buffers): no empty copies.
std::vector<uint8_t> at_least_one(const std::vector<uint8_t>& codes) {
  return codes.empty() ? std::vector<uint8_t>(1, 0) : codes;
}

// The problem on the GPU.
struct DeviceProblem {
  explicit DeviceProblem(const Problem& pb)
      : q(to_bf16(pb.q)),
        k_cache(to_bf16(pb.k_cache)),
        v_cache(to_bf16(pb.v_cache)),
        k_fp8(at_least_one(pb.k_fp8)),
        v_fp8(at_least_one(pb.v_fp8)),
        cu_seqlens(pb.cu_seqlens),
        seq_lens(pb.seq_lens),
        block_tables(pb.block_tables),
        out(pb.q.size()) {
    const bool fp8 = pb.kv_dtype == DType::kF8E4M3;
    cache.k = fp8 ? static_cast<const void*>(k_fp8.get()) : as_bf16(k_cache);
    cache.v = fp8 ? static_cast<const void*>(v_fp8.get()) : as_bf16(v_cache);
    cache.num_blocks = pb.num_blocks;
    cache.block_size = pb.block_size;
    cache.num_kv_heads = pb.num_kv_heads;
    cache.head_dim = pb.head_dim;
    cache.dtype = pb.kv_dtype;
    cache.k_scale = pb.k_scale;
    cache.v_scale = pb.v_scale;
    batch.cu_seqlens_q = cu_seqlens.get();
    batch.seq_lens = seq_lens.get();
    batch.block_tables = block_tables.get();
    batch.num_seqs = pb.num_seqs();
    batch.num_tokens = pb.num_tokens;
    batch.max_blocks_per_seq = pb.max_blocks;
    batch.max_q_len = pb.max_q_len;
    batch.max_seq_len = pb.max_seq_len;
  }

  DeviceBuffer<uint16_t> q, k_cache, v_cache;  // the caches as bf16 (used by bf16 cases)
  DeviceBuffer<uint8_t> k_fp8, v_fp8;          // the e4m3 codes (fp8 cases; else empty)
  DeviceBuffer<int32_t> cu_seqlens, seq_lens, block_tables;
  DeviceBuffer<uint16_t> out;
  PagedKvCache cache;
  PagedAttentionBatch batch;
};

// The Tensor entry point on a device problem, its caches in their dtype (bf16, or f8e4m3 with the
// problem's scales), no workspace: the output, written over a NaN-filled buffer.
std::vector<uint16_t> run_tensor_entry(const Problem& pb, DeviceProblem& dp) {
  const bool fp8 = pb.kv_dtype == DType::kF8E4M3;
  void* k_data = fp8 ? static_cast<void*>(dp.k_fp8.get()) : dp.k_cache.get();
  void* v_data = fp8 ? static_cast<void*>(dp.v_fp8.get()) : dp.v_cache.get();
  const Tensor q(dp.q.get(), DType::kBF16, {pb.num_tokens, pb.num_heads, pb.head_dim},
                 Device::kCuda);
  const Tensor k(k_data, pb.kv_dtype, {pb.num_blocks, pb.block_size, pb.num_kv_heads, pb.head_dim},
                 Device::kCuda);
  const Tensor v(v_data, pb.kv_dtype, {pb.num_blocks, pb.block_size, pb.num_kv_heads, pb.head_dim},
                 Device::kCuda);
  const Tensor cu(dp.cu_seqlens.get(), DType::kI32, {pb.num_seqs() + 1}, Device::kCuda);
  const Tensor lens(dp.seq_lens.get(), DType::kI32, {pb.num_seqs()}, Device::kCuda);
  const Tensor tables(dp.block_tables.get(), DType::kI32, {pb.num_seqs(), pb.max_blocks},
                      Device::kCuda);
  const Tensor out(dp.out.get(), DType::kBF16, {pb.num_tokens, pb.num_heads, pb.head_dim},
                   Device::kCuda);
  dp.out.fill_bytes(0xff);
  paged_attention(q, k, v, cu, lens, tables, pb.max_q_len, pb.max_seq_len, pb.scale, out, Tensor(),
                  nullptr, pb.k_scale, pb.v_scale);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  return dp.out.download();
}

enum class Path {
  kDispatch,
  kDecodeOneSplit,
  kDecodeManySplits,
  kDecodeSplitsPastContext,
  kPrefill
};

// More grid splits than the longest context (as the kernels see it) has 64-key tiles, so every
// sequence leaves some of its blocks without keys.
int splits_past_context(const Problem& pb) { return int((pb.max_seq_len + 63) / 64) + 3; }

// Runs the decode launcher with `splits` grid splits and a NaN-filled workspace into dp.out.
void run_decode(const Problem& pb, DeviceProblem& dp, int splits) {
  const size_t bytes =
      paged_decode_workspace_bytes(pb.num_seqs(), pb.num_heads, pb.head_dim, splits);
  DeviceBuffer<uint8_t> workspace(bytes);
  workspace.fill_bytes(0xff);
  launch_paged_attention_decode(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale, splits,
                                as_bf16(dp.out), bytes ? workspace.get() : nullptr, bytes, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

const char* path_name(Path path) {
  switch (path) {
    case Path::kDispatch:
      return "paged_attention";
    case Path::kDecodeOneSplit:
      return "decode, 1 split";
    case Path::kDecodeManySplits:
      return "decode, many splits";
    case Path::kDecodeSplitsPastContext:
      return "decode, more splits than tiles";
    case Path::kPrefill:
      return "prefill kernel";
  }
  return "?";
}

// Runs one path with a NaN-filled output (and, when split, a NaN-filled workspace) and returns
// the output bits.
std::vector<uint16_t> run_path(const Problem& pb, DeviceProblem& dp, Path path) {
  dp.out.fill_bytes(0xff);
  switch (path) {
    case Path::kDispatch: {
      const size_t bytes = paged_attention_workspace_bytes(
          pb.num_seqs(), pb.num_heads, pb.num_kv_heads, pb.head_dim, pb.max_q_len, pb.max_seq_len);
      DeviceBuffer<uint8_t> workspace(bytes);
      workspace.fill_bytes(0xff);
      paged_attention(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale, as_bf16(dp.out),
                      bytes ? workspace.get() : nullptr, bytes, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      break;
    }
    case Path::kDecodeOneSplit:
      launch_paged_attention_decode(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale, 1,
                                    as_bf16(dp.out), nullptr, 0, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      break;
    case Path::kDecodeManySplits:
      // An odd split count, so the chunks do not line up with the sequence lengths.
      run_decode(pb, dp, 7);
      break;
    case Path::kDecodeSplitsPastContext:
      run_decode(pb, dp, splits_past_context(pb));
      break;
    case Path::kPrefill:
      launch_paged_attention_prefill(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale,
                                     as_bf16(dp.out), nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      break;
  }
  return dp.out.download();
}

// The decode kernel with one split matches the CPU op, and with each of `splits` matches both
// the CPU op and the one-split result, deterministically (NaN-filled output before every run).
void expect_split_counts_agree(const Problem& pb, const std::string& name,
                               std::initializer_list<int> splits) {
  const std::vector<float> want = cpu_reference(pb);
  DeviceProblem dp(pb);
  dp.out.fill_bytes(0xff);
  run_decode(pb, dp, 1);
  const std::vector<uint16_t> one = dp.out.download();
  expect_close(one, want, pb, name + " 1 split vs CPU op");
  std::vector<float> one_f(one.size());
  for (size_t i = 0; i < one.size(); ++i) one_f[i] = bf16_to_f32(one[i]);
  for (const int n : splits) {
    dp.out.fill_bytes(0xff);
    run_decode(pb, dp, n);
    const std::vector<uint16_t> got = dp.out.download();
    const std::string what = name + " " + std::to_string(n) + " splits";
    expect_close(got, want, pb, what + " vs CPU op");
    expect_close(got, one_f, pb, what + " vs 1 split");
    // Deterministic: the same launch again gives the same bits.
    dp.out.fill_bytes(0xff);
    run_decode(pb, dp, n);
    EXPECT_EQ(dp.out.download(), got) << what << " is not deterministic";
  }
}

// paged_attention captured into a CUDA graph on its own stream and replayed once (NaN-filled
// output first); the output bits.
std::vector<uint16_t> run_in_graph(const Problem& pb, DeviceProblem& dp) {
  const size_t bytes = paged_attention_workspace_bytes(pb.num_seqs(), pb.num_heads, pb.num_kv_heads,
                                                       pb.head_dim, pb.max_q_len, pb.max_seq_len);
  DeviceBuffer<uint8_t> workspace(bytes);
  dp.out.fill_bytes(0xff);
  cudaStream_t stream = nullptr;
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  paged_attention(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale, as_bf16(dp.out),
                  bytes ? workspace.get() : nullptr, bytes, stream);
  ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint16_t> out = dp.out.download();
  ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  return out;
}

class CudaPagedAttentionTest : public ::testing::TestWithParam<AttnCase> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_P(CudaPagedAttentionTest, MatchesCpuOpAndContiguousReference) {
  const AttnCase& c = GetParam();
  const Problem pb = make_problem(c);
  const std::vector<float> want_cpu = cpu_reference(pb);
  const std::vector<float> want_ref = contiguous_reference(pb);
  // The two references agree to f32 rounding: the test's paging and the CPU op are consistent.
  for (size_t i = 0; i < want_cpu.size(); ++i) {
    ASSERT_NEAR(want_cpu[i], want_ref[i], 1e-4) << "CPU op vs contiguous reference at " << i;
  }

  DeviceProblem dp(pb);
  std::vector<Path> paths = {Path::kDispatch, Path::kPrefill};
  if (pb.max_q_len <= 1) {
    paths.push_back(Path::kDecodeOneSplit);
    paths.push_back(Path::kDecodeManySplits);
    paths.push_back(Path::kDecodeSplitsPastContext);
  }
  std::vector<uint16_t> first;
  for (const Path path : paths) {
    const std::vector<uint16_t> got = run_path(pb, dp, path);
    const std::string what = c.name + " " + path_name(path);
    expect_close(got, want_cpu, pb, what + " vs CPU op");
    expect_close(got, want_ref, pb, what + " vs contiguous reference");
    const auto [worst, share] = max_error(got, want_ref);
    std::cout << "[          ] " << what << ": max |error| " << worst << ", " << int(100 * share)
              << "% of the tolerance\n";
    // The same path twice gives the same bits (no races, nothing stale read).
    if (path == Path::kDispatch) first = got;
  }
  EXPECT_EQ(run_path(pb, dp, Path::kDispatch), first) << "paged_attention is not deterministic";
}

// Context lengths cycling through the awkward ones.
std::vector<SeqSpec> decode_batch(int n, uint32_t salt) {
  const int lens[] = {1, 17, 54, 97, 1031, 4096, 2, 300};
  std::vector<SeqSpec> seqs;
  for (int i = 0; i < n; ++i) seqs.push_back({1, lens[(size_t(i) + salt) % 8]});
  return seqs;
}

std::vector<AttnCase> make_cases() {
  std::vector<AttnCase> cases;
  // --- decode: one query row per sequence ---
  cases.push_back({"decode_b1_len1", 128, 1, 1, 16, {{1, 1}}});
  cases.push_back({"decode_b1_len4096_gqa4", 128, 2, 4, 16, {{1, 4096}}});
  cases.push_back({"decode_b1_len1031_hd64_gqa8", 64, 1, 8, 32, {{1, 1031}}});
  cases.push_back({"decode_b7_hd64_gqa8_bs32", 64, 2, 8, 32, decode_batch(7, 0)});
  cases.push_back({"decode_b7_hd128_gqa1_bs16", 128, 4, 1, 16, decode_batch(7, 3)});
  cases.push_back({"decode_b64_hd128_gqa4_bs16", 128, 2, 4, 16, decode_batch(64, 1)});
  cases.push_back({"decode_b64_hd64_gqa1_bs32", 64, 2, 1, 32, decode_batch(64, 5)});
  cases.push_back({"decode_b300_hd128_gqa8_bs32", 128, 1, 8, 32, decode_batch(300, 2)});
  cases.push_back({"decode_b300_hd64_gqa4_bs16", 64, 1, 4, 16, decode_batch(300, 6)});
  // A group larger than one mma tile (two head passes) and one that is not a power of two.
  cases.push_back({"decode_gqa20_hd64", 64, 2, 20, 16, {{1, 54}, {1, 1031}, {1, 3000}}});
  cases.push_back({"decode_gqa7_hd128", 128, 1, 7, 32, {{1, 97}, {1, 4096}}});
  // scale 1: scores spread over tens of units, so one key dominates each row.
  cases.push_back({"decode_sharp_softmax", 128, 2, 8, 16, decode_batch(7, 4), 1.0f});
  // Lengths around a tile (63, 64, 65) and far apart in one batch, told a max_seq_len of 16384
  // as a graph captured for max_model_len is: each sequence splits its own context.
  for (const int group : {1, 4, 8}) {
    for (const int head_dim : {64, 128}) {
      AttnCase c{
          "decode_mixed_lengths_gqa" + std::to_string(group) + "_hd" + std::to_string(head_dim),
          head_dim,
          2,
          group,
          16,
          {{1, 1}, {1, 63}, {1, 64}, {1, 65}, {1, 1000}, {1, 4097}}};
      c.max_seq_len = 16384;
      cases.push_back(c);
    }
  }
  {
    // One sequence of one token, told a long max_seq_len: splits with no keys everywhere.
    AttnCase c{"decode_b1_len1_long_max", 128, 8, 4, 16, {{1, 1}}};
    c.max_seq_len = 8192;
    cases.push_back(c);
  }

  // --- prefill: q_len rows per sequence, with and without a cached prefix ---
  cases.push_back({"prefill_q1_noprefix", 128, 1, 1, 16, {{1, 1}}});
  cases.push_back({"prefill_17_54_97_hd64_gqa4", 64, 2, 4, 16, {{17, 17}, {54, 54}, {97, 97}}});
  cases.push_back(
      {"prefill_17_54_97_hd128_gqa1_bs32", 128, 3, 1, 32, {{17, 17}, {54, 54}, {97, 97}}});
  cases.push_back({"prefill_prefix_hd128_gqa8_bs32",
                   128,
                   2,
                   8,
                   32,
                   {{17, 50}, {54, 254}, {97, 597}, {1, 300}}});
  cases.push_back(
      {"prefill_prefix_hd64_gqa1_bs16", 64, 2, 1, 16, {{1, 17}, {17, 4096}, {54, 55}, {97, 1000}}});
  cases.push_back({"prefill_1031_hd128_gqa4_bs16", 128, 1, 4, 16, {{1031, 1031}}});
  cases.push_back({"prefill_1000_prefix777_hd64_gqa8_bs32", 64, 1, 8, 32, {{1000, 1777}}});
  cases.push_back({"prefill_gqa7_hd128", 128, 1, 7, 16, {{97, 97}, {33, 200}}});
  cases.push_back({"prefill_gqa20_hd64", 64, 1, 20, 32, {{54, 54}, {17, 1031}}});
  cases.push_back({"prefill_sharp_softmax", 128, 1, 4, 16, {{97, 97}, {54, 1031}}, 1.0f});

  // --- mixed batches: decode rows and prefill rows together ---
  cases.push_back({"mixed_hd128_gqa4_bs16",
                   128,
                   2,
                   4,
                   16,
                   {{1, 1000}, {17, 17}, {1, 54}, {97, 300}, {1, 1}, {54, 4096}}});
  cases.push_back({"mixed_hd64_gqa1_bs32",
                   64,
                   4,
                   1,
                   32,
                   {{54, 54}, {1, 97}, {0, 20}, {1, 1031}, {17, 100}, {1, 17}}});
  // One token per block: every key's block comes from the table.
  cases.push_back({"mixed_bs1_hd64_gqa4", 64, 1, 4, 1, {{1, 97}, {17, 60}, {54, 54}}});
  cases.push_back({"decode_bs1_hd128_gqa8", 128, 1, 8, 1, {{1, 17}, {1, 1031}}});
  {
    // 300 sequences: 290 decodes and 10 prefills.
    std::vector<SeqSpec> seqs = decode_batch(290, 7);
    for (int i = 0; i < 10; ++i) seqs.insert(seqs.begin() + 29 * i, {17 + 8 * i, 17 + 40 * i});
    cases.push_back({"mixed_b300_hd128_gqa8_bs16", 128, 1, 8, 16, seqs});
  }

  // --- fp8 e4m3 caches: the same kernels reading code * scale ---
  // Scales 1 (codes are the values), 0.5 / 2 (powers of two: exact dequantization), 2 / 0.5, and
  // 0.37 / 3.1 (inexact; V then in [-0.32, 0.32], about 5% of its codes subnormal).
  const auto fp8 = [](AttnCase c, float k_scale, float v_scale) {
    c.name = "fp8_" + c.name;
    c.kv_dtype = DType::kF8E4M3;
    c.k_scale = k_scale;
    c.v_scale = v_scale;
    return c;
  };
  cases.push_back(fp8({"decode_b1_len1", 128, 1, 1, 16, {{1, 1}}}, 1.0f, 1.0f));
  cases.push_back(fp8({"decode_b1_len4096_gqa4", 128, 2, 4, 16, {{1, 4096}}}, 1.0f, 1.0f));
  cases.push_back(fp8({"decode_b1_len1031_hd64_gqa8", 64, 1, 8, 32, {{1, 1031}}}, 0.5f, 2.0f));
  cases.push_back(fp8({"decode_b7_hd64_gqa8_bs32", 64, 2, 8, 32, decode_batch(7, 0)}, 2.0f, 0.5f));
  cases.push_back(
      fp8({"decode_b7_hd128_gqa1_bs16", 128, 4, 1, 16, decode_batch(7, 3)}, 0.37f, 3.1f));
  cases.push_back(
      fp8({"decode_b64_hd128_gqa4_bs16", 128, 2, 4, 16, decode_batch(64, 1)}, 0.5f, 2.0f));
  cases.push_back(
      fp8({"decode_b64_hd64_gqa1_bs32", 64, 2, 1, 32, decode_batch(64, 5)}, 1.0f, 1.0f));
  cases.push_back(
      fp8({"decode_b300_hd128_gqa8_bs32", 128, 1, 8, 32, decode_batch(300, 2)}, 2.0f, 0.5f));
  cases.push_back(
      fp8({"decode_gqa20_hd64", 64, 2, 20, 16, {{1, 54}, {1, 1031}, {1, 3000}}}, 0.37f, 3.1f));
  cases.push_back(fp8({"decode_gqa7_hd128", 128, 1, 7, 32, {{1, 97}, {1, 4096}}}, 0.5f, 2.0f));
  cases.push_back(
      fp8({"decode_sharp_softmax", 128, 2, 8, 16, decode_batch(7, 4), 1.0f}, 0.5f, 2.0f));
  for (const int group : {1, 4, 8}) {
    for (const int head_dim : {64, 128}) {
      AttnCase c{
          "decode_mixed_lengths_gqa" + std::to_string(group) + "_hd" + std::to_string(head_dim),
          head_dim,
          2,
          group,
          16,
          {{1, 1}, {1, 63}, {1, 64}, {1, 65}, {1, 1000}, {1, 4097}}};
      c.max_seq_len = 16384;
      cases.push_back(fp8(c, group == 4 ? 1.0f : 0.5f, group == 4 ? 1.0f : 2.0f));
    }
  }
  cases.push_back(fp8({"prefill_q1_noprefix", 128, 1, 1, 16, {{1, 1}}}, 2.0f, 0.5f));
  cases.push_back(fp8({"prefill_17_54_97_hd64_gqa4", 64, 2, 4, 16, {{17, 17}, {54, 54}, {97, 97}}},
                      1.0f, 1.0f));
  cases.push_back(
      fp8({"prefill_17_54_97_hd128_gqa1_bs32", 128, 3, 1, 32, {{17, 17}, {54, 54}, {97, 97}}}, 0.5f,
          2.0f));
  cases.push_back(fp8(
      {"prefill_prefix_hd128_gqa8_bs32", 128, 2, 8, 32, {{17, 50}, {54, 254}, {97, 597}, {1, 300}}},
      0.5f, 2.0f));
  cases.push_back(fp8(
      {"prefill_prefix_hd64_gqa1_bs16", 64, 2, 1, 16, {{1, 17}, {17, 4096}, {54, 55}, {97, 1000}}},
      2.0f, 0.5f));
  cases.push_back(
      fp8({"prefill_1031_hd128_gqa4_bs16", 128, 1, 4, 16, {{1031, 1031}}}, 0.37f, 3.1f));
  cases.push_back(
      fp8({"prefill_1000_prefix777_hd64_gqa8_bs32", 64, 1, 8, 32, {{1000, 1777}}}, 1.0f, 1.0f));
  cases.push_back(fp8({"prefill_gqa7_hd128", 128, 1, 7, 16, {{97, 97}, {33, 200}}}, 0.5f, 2.0f));
  cases.push_back(fp8({"prefill_gqa20_hd64", 64, 1, 20, 32, {{54, 54}, {17, 1031}}}, 2.0f, 0.5f));
  cases.push_back(
      fp8({"prefill_sharp_softmax", 128, 1, 4, 16, {{97, 97}, {54, 1031}}, 1.0f}, 0.5f, 2.0f));
  cases.push_back(fp8({"mixed_hd128_gqa4_bs16",
                       128,
                       2,
                       4,
                       16,
                       {{1, 1000}, {17, 17}, {1, 54}, {97, 300}, {1, 1}, {54, 4096}}},
                      0.5f, 2.0f));
  cases.push_back(fp8({"mixed_hd64_gqa1_bs32",
                       64,
                       4,
                       1,
                       32,
                       {{54, 54}, {1, 97}, {0, 20}, {1, 1031}, {17, 100}, {1, 17}}},
                      0.37f, 3.1f));
  cases.push_back(
      fp8({"mixed_bs1_hd64_gqa4", 64, 1, 4, 1, {{1, 97}, {17, 60}, {54, 54}}}, 1.0f, 1.0f));
  {
    std::vector<SeqSpec> seqs = decode_batch(290, 7);
    for (int i = 0; i < 10; ++i) seqs.insert(seqs.begin() + 29 * i, {17 + 8 * i, 17 + 40 * i});
    cases.push_back(fp8({"mixed_b300_hd128_gqa8_bs16", 128, 1, 8, 16, seqs}, 2.0f, 0.5f));
  }
  uint32_t seed = 1;
  for (AttnCase& c : cases) c.seed = seed++;
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaPagedAttentionTest, ::testing::ValuesIn(make_cases()),
                         [](const auto& info) { return info.param.name; });

// --- single-purpose tests ---

class CudaPagedAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

// The Tensor entry point checks its arguments and gives the raw dispatcher's bits.
TEST_F(CudaPagedAttention, TensorEntryPointMatchesDispatcher) {
  const AttnCase c{"tensor", 128, 2, 4, 16, {{1, 1000}, {17, 60}, {1, 5}}, 0.0f, 99};
  const Problem pb = make_problem(c);
  DeviceProblem dp(pb);
  const std::vector<uint16_t> want = run_path(pb, dp, Path::kDispatch);

  EXPECT_EQ(run_tensor_entry(pb, dp), want);

  // Decode rows alone, through the Tensor entry point with a workspace when it splits.
  const AttnCase d{"tensor_decode", 128, 1, 8, 32, {{1, 4096}}, 0.0f, 98};
  const Problem pd = make_problem(d);
  DeviceProblem dd(pd);
  const std::vector<uint16_t> want_d = run_path(pd, dd, Path::kDispatch);
  const size_t ws_bytes = paged_attention_workspace_bytes(
      pd.num_seqs(), pd.num_heads, pd.num_kv_heads, pd.head_dim, 1, pd.max_seq_len);
  EXPECT_GT(ws_bytes, 0u) << "one long decode should be split";
  DeviceBuffer<uint8_t> ws(ws_bytes);
  dd.out.fill_bytes(0xff);
  const Tensor shape_q(dd.q.get(), DType::kBF16, {pd.num_tokens, pd.num_heads, pd.head_dim},
                       Device::kCuda);
  const Tensor shape_cache_k(dd.k_cache.get(), DType::kBF16,
                             {pd.num_blocks, pd.block_size, pd.num_kv_heads, pd.head_dim},
                             Device::kCuda);
  const Tensor shape_cache_v(dd.v_cache.get(), DType::kBF16,
                             {pd.num_blocks, pd.block_size, pd.num_kv_heads, pd.head_dim},
                             Device::kCuda);
  paged_attention(
      shape_q, shape_cache_k, shape_cache_v,
      Tensor(dd.cu_seqlens.get(), DType::kI32, {2}, Device::kCuda),
      Tensor(dd.seq_lens.get(), DType::kI32, {1}, Device::kCuda),
      Tensor(dd.block_tables.get(), DType::kI32, {1, pd.max_blocks}, Device::kCuda), 1,
      pd.max_seq_len, pd.scale,
      Tensor(dd.out.get(), DType::kBF16, {pd.num_tokens, pd.num_heads, pd.head_dim}, Device::kCuda),
      Tensor(ws.get(), DType::kU8, {int64_t(ws_bytes)}, Device::kCuda), nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dd.out.download(), want_d);
}

// A decode step captured in a CUDA graph replays to the eager result: the launchers neither
// allocate nor synchronize.
TEST_F(CudaPagedAttention, DecodeAndPrefillCaptureInCudaGraph) {
  for (const AttnCase& c :
       {AttnCase{"graph_decode", 128, 2, 4, 16, decode_batch(7, 2), 0.0f, 7},
        AttnCase{"graph_mixed", 64, 1, 8, 32, {{1, 97}, {54, 1031}}, 0.0f, 8}}) {
    const Problem pb = make_problem(c);
    DeviceProblem dp(pb);
    const std::vector<uint16_t> eager = run_path(pb, dp, Path::kDispatch);
    EXPECT_EQ(run_in_graph(pb, dp), eager) << c.name;
  }
}

// Splits: one sequence is split to fill the GPU, a batch that fills it is not, the count depends
// on the batch shape and not on max_seq_len (past one tile per split), and the start-up workspace
// covers every batch size.
TEST_F(CudaPagedAttention, SplitChoiceAndWorkspaceBounds) {
  EXPECT_GT(paged_decode_num_splits(1, 32, 8, 8192), 1);
  EXPECT_EQ(paged_decode_num_splits(1, 32, 8, 8192), paged_decode_num_splits(1, 32, 8, 1 << 20));
  EXPECT_EQ(paged_decode_num_splits(1, 32, 8, 64), 1);   // one tile: nothing to split
  EXPECT_LE(paged_decode_num_splits(1, 32, 8, 100), 2);  // at least one tile a split
  EXPECT_LE(paged_decode_num_splits(1, 8, 1, 1 << 20), 128);
  EXPECT_EQ(paged_decode_num_splits(256, 32, 8, 8192), 1);
  EXPECT_GE(paged_decode_num_splits(2, 32, 8, 8192), paged_decode_num_splits(4, 32, 8, 8192));
  EXPECT_EQ(paged_attention_workspace_bytes(4, 32, 8, 128, 17, 8192), 0u);  // prefill
  EXPECT_EQ(paged_decode_workspace_bytes(4, 32, 128, 1), 0u);
  EXPECT_EQ(paged_decode_workspace_bytes(4, 32, 128, 3), size_t(4 * 32 * 3 * 130 * 4));
  const size_t most = paged_attention_max_workspace_bytes(64, 32, 8, 128, 32768);
  for (int64_t n = 1; n <= 64; ++n) {
    EXPECT_LE(paged_attention_workspace_bytes(n, 32, 8, 128, 1, 32768), most) << n;
    EXPECT_LE(paged_attention_workspace_bytes(n, 32, 8, 128, 1, 1000), most) << n;
  }
}

// Every grid split count gives the same attention up to rounding: 1 split (no merge), a few,
// more than the short contexts have tiles, and more than the longest has, over mixed lengths
// with a large max_seq_len. Each is checked against the CPU op and against the 1-split result.
TEST_F(CudaPagedAttention, DecodeSplitCountsAgree) {
  for (const int group : {1, 4, 8}) {
    AttnCase c{"splits_gqa" + std::to_string(group),
               128,
               2,
               group,
               16,
               {{1, 1}, {1, 63}, {1, 64}, {1, 65}, {1, 1000}, {1, 4097}, {1, 130}},
               0.0f,
               uint32_t(40 + group)};
    c.max_seq_len = 32768;
    const Problem pb = make_problem(c);
    expect_split_counts_agree(pb, c.name, {2, 3, 7, 16, 33, 65, 66, 200, 600});
  }
}

// A decode graph captured once with a long max_seq_len replays right after the contexts change
// on the device (seq_lens is read at replay): first the full contexts, then shorter ones.
TEST_F(CudaPagedAttention, DecodeGraphReplaysWithNewContextLengths) {
  AttnCase c{"graph_new_lengths", 128, 2, 4, 16, {{1, 1}, {1, 65}, {1, 1000}, {1, 4097}}, 0.0f, 77};
  c.max_seq_len = 16384;
  const Problem pb = make_problem(c);
  Problem shorter = pb;
  const int new_lens[] = {1, 64, 3, 2049};
  for (size_t s = 0; s < shorter.seqs.size(); ++s) {
    shorter.seqs[s].seq_len = new_lens[s];
    shorter.seq_lens[s] = new_lens[s];
  }
  DeviceProblem dp(pb);
  const size_t bytes = paged_attention_workspace_bytes(pb.num_seqs(), pb.num_heads, pb.num_kv_heads,
                                                       pb.head_dim, 1, 16384);
  DeviceBuffer<uint8_t> workspace(bytes);
  workspace.fill_bytes(0xff);
  dp.out.fill_bytes(0xff);

  cudaStream_t stream = nullptr;
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  paged_attention(as_bf16(dp.q), pb.num_heads, dp.cache, dp.batch, pb.scale, as_bf16(dp.out),
                  bytes ? workspace.get() : nullptr, bytes, stream);
  ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close(dp.out.download(), cpu_reference(pb), pb, "first replay");

  dp.seq_lens.upload(shorter.seq_lens);
  dp.out.fill_bytes(0xff);
  ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<uint16_t> got = dp.out.download();
  expect_close(got, cpu_reference(shorter), shorter, "replay with shorter contexts vs CPU op");
  expect_close(got, contiguous_reference(shorter), shorter,
               "replay with shorter contexts vs contiguous reference");
  ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_F(CudaPagedAttention, RejectsBadArguments) {
  const AttnCase c{"bad", 128, 2, 4, 16, {{1, 100}, {1, 30}}, 0.0f, 5};
  const Problem pb = make_problem(c);
  DeviceProblem dp(pb);
  const auto* q = as_bf16(dp.q);
  auto* out = as_bf16(dp.out);
  const auto expect_code = [](ErrorCode code, const auto& fn, const char* what) {
    try {
      fn();
      ADD_FAILURE() << what << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << what << ": " << e.what();
    }
  };

  PagedKvCache hd96 = dp.cache;
  hd96.head_dim = 96;
  expect_code(
      ErrorCode::kUnsupported,
      [&] { launch_paged_attention_prefill(q, 8, hd96, dp.batch, 1.0f, out, nullptr); },
      "head_dim 96");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] { launch_paged_attention_prefill(q, 7, dp.cache, dp.batch, 1.0f, out, nullptr); },
      "7 heads over 2 kv heads");
  PagedAttentionBatch two_rows = dp.batch;
  two_rows.max_q_len = 2;
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        launch_paged_attention_decode(q, 8, dp.cache, two_rows, 1.0f, 1, out, nullptr, 0, nullptr);
      },
      "decode with two query rows");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        launch_paged_attention_decode(q, 8, dp.cache, dp.batch, 1.0f, 4, out, nullptr, 0, nullptr);
      },
      "split decode without a workspace");
  PagedAttentionBatch too_long = dp.batch;
  too_long.max_seq_len = pb.max_blocks * pb.block_size + 1;
  expect_code(
      ErrorCode::kOutOfRange,
      [&] { launch_paged_attention_prefill(q, 8, dp.cache, too_long, 1.0f, out, nullptr); },
      "context longer than the block table");
  const Tensor tq(dp.q.get(), DType::kBF16, {pb.num_tokens, 8, 128}, Device::kCuda);
  const Tensor tq_f32(dp.q.get(), DType::kF32, {pb.num_tokens, 8, 128}, Device::kCuda);
  const Tensor tk(dp.k_cache.get(), DType::kBF16, {pb.num_blocks, 16, 2, 128}, Device::kCuda);
  const Tensor tv(dp.v_cache.get(), DType::kBF16, {pb.num_blocks, 16, 2, 128}, Device::kCuda);
  const Tensor tk64(dp.k_cache.get(), DType::kBF16, {pb.num_blocks, 16, 2, 64}, Device::kCuda);
  const Tensor cu(dp.cu_seqlens.get(), DType::kI32, {3}, Device::kCuda);
  const Tensor lens(dp.seq_lens.get(), DType::kI32, {2}, Device::kCuda);
  const Tensor lens_host(dp.seq_lens.get(), DType::kI32, {2}, Device::kCpu);
  const Tensor tables(dp.block_tables.get(), DType::kI32, {2, pb.max_blocks}, Device::kCuda);
  const Tensor tout(dp.out.get(), DType::kBF16, {pb.num_tokens, 8, 128}, Device::kCuda);
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        paged_attention(tq, tk64, tv, cu, lens, tables, 1, 100, 1.0f, tout, Tensor(), nullptr);
      },
      "k and v caches of different shapes");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        paged_attention(tq, tk, tv, cu, lens_host, tables, 1, 100, 1.0f, tout, Tensor(), nullptr);
      },
      "metadata on the host");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] { paged_attention(tq, tk, tv, cu, cu, tables, 1, 100, 1.0f, tout, Tensor(), nullptr); },
      "seq_lens of the wrong length");
  expect_code(
      ErrorCode::kUnsupported,
      [&] {
        paged_attention(tq_f32, tk, tv, cu, lens, tables, 1, 100, 1.0f, tout, Tensor(), nullptr);
      },
      "f32 q");
}

// --- fp8 e4m3 caches: single-purpose tests ---

// Every grid split count gives the same attention over an fp8 cache (v_scale is applied to the
// partial outputs before the merge, and directly when a context fits one split).
TEST_F(CudaPagedAttention, Fp8DecodeSplitCountsAgree) {
  for (const int group : {1, 4, 8}) {
    AttnCase c{"fp8_splits_gqa" + std::to_string(group),
               group == 4 ? 64 : 128,
               2,
               group,
               16,
               {{1, 1}, {1, 63}, {1, 64}, {1, 65}, {1, 1000}, {1, 4097}, {1, 130}},
               0.0f,
               uint32_t(60 + group)};
    c.max_seq_len = 32768;
    c.kv_dtype = DType::kF8E4M3;
    c.k_scale = 0.5f;
    c.v_scale = 3.1f;
    const Problem pb = make_problem(c);
    expect_split_counts_agree(pb, c.name, {2, 3, 7, 16, 33, 65, 200});
  }
}

// The scales matter: the same codes read with other scales give the reference of those scales,
// and differ from the first result (a kernel ignoring a scale fails one of the two).
TEST_F(CudaPagedAttention, Fp8ScalesAreApplied) {
  for (const bool decode : {true, false}) {
    AttnCase c{decode ? "fp8_scales_decode" : "fp8_scales_prefill",
               128,
               2,
               4,
               16,
               decode ? std::vector<SeqSpec>{{1, 300}, {1, 1000}, {1, 5}}
                      : std::vector<SeqSpec>{{40, 300}, {17, 17}},
               0.0f,
               91};
    c.kv_dtype = DType::kF8E4M3;
    const Problem pb = make_problem(c);  // scales 1: the codes are the values
    DeviceProblem dp(pb);
    const std::vector<uint16_t> base = run_path(pb, dp, Path::kDispatch);
    expect_close(base, cpu_reference(pb), pb, c.name + " scales 1");
    for (const auto& [ks, vs] : {std::pair{2.0f, 1.0f}, std::pair{1.0f, 0.25f}}) {
      Problem scaled = pb;
      scaled.k_scale = ks;
      scaled.v_scale = vs;
      for (float& x : scaled.k_cache) x *= ks;
      for (float& x : scaled.v_cache) x *= vs;
      dp.cache.k_scale = ks;
      dp.cache.v_scale = vs;
      const std::vector<uint16_t> got = run_path(scaled, dp, Path::kDispatch);
      const std::string what =
          c.name + " k_scale " + std::to_string(ks) + " v_scale " + std::to_string(vs);
      expect_close(got, cpu_reference(scaled), scaled, what);
      EXPECT_NE(got, base) << what << " gave the scale-1 result";
    }
  }
}

// fp8 decode and mixed batches captured in a CUDA graph replay to the eager result.
TEST_F(CudaPagedAttention, Fp8CaptureInCudaGraph) {
  for (AttnCase c : {AttnCase{"fp8_graph_decode", 128, 2, 4, 16, decode_batch(7, 2), 0.0f, 17},
                     AttnCase{"fp8_graph_mixed", 64, 1, 8, 32, {{1, 97}, {54, 1031}}, 0.0f, 18}}) {
    c.kv_dtype = DType::kF8E4M3;
    c.k_scale = 0.5f;
    c.v_scale = 2.0f;
    const Problem pb = make_problem(c);
    DeviceProblem dp(pb);
    const std::vector<uint16_t> eager = run_path(pb, dp, Path::kDispatch);
    expect_close(eager, cpu_reference(pb), pb, c.name + " eager");
    EXPECT_EQ(run_in_graph(pb, dp), eager) << c.name;
  }
}

// The Tensor entry point takes f8e4m3 caches with their scales and gives the dispatcher's bits.
TEST_F(CudaPagedAttention, Fp8TensorEntryPointMatchesDispatcher) {
  AttnCase c{"fp8_tensor", 128, 2, 4, 16, {{1, 1000}, {17, 60}, {1, 5}}, 0.0f, 97};
  c.kv_dtype = DType::kF8E4M3;
  c.k_scale = 0.5f;
  c.v_scale = 2.0f;
  const Problem pb = make_problem(c);
  DeviceProblem dp(pb);
  const std::vector<uint16_t> want = run_path(pb, dp, Path::kDispatch);
  expect_close(want, cpu_reference(pb), pb, "fp8 dispatcher vs CPU op");

  EXPECT_EQ(run_tensor_entry(pb, dp), want);
}

TEST_F(CudaPagedAttention, Fp8RejectsBadArguments) {
  AttnCase c{"fp8_bad", 128, 2, 4, 16, {{1, 100}, {1, 30}}, 0.0f, 5};
  c.kv_dtype = DType::kF8E4M3;
  const Problem pb = make_problem(c);
  DeviceProblem dp(pb);
  const auto* q = as_bf16(dp.q);
  auto* out = as_bf16(dp.out);
  const auto expect_code = [](ErrorCode code, const auto& fn, const std::string& what) {
    try {
      fn();
      ADD_FAILURE() << what << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << what << ": " << e.what();
    }
  };
  for (const float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    for (const bool on_k : {true, false}) {
      PagedKvCache cache = dp.cache;
      (on_k ? cache.k_scale : cache.v_scale) = bad;
      const std::string what = std::string(on_k ? "k_scale " : "v_scale ") + std::to_string(bad);
      expect_code(
          ErrorCode::kInvalidArgument,
          [&] { launch_paged_attention_prefill(q, 8, cache, dp.batch, 1.0f, out, nullptr); },
          what + " (prefill)");
      expect_code(
          ErrorCode::kInvalidArgument,
          [&] {
            launch_paged_attention_decode(q, 8, cache, dp.batch, 1.0f, 1, out, nullptr, 0, nullptr);
          },
          what + " (decode)");
    }
  }
  PagedKvCache f32_cache = dp.cache;
  f32_cache.dtype = DType::kF32;
  expect_code(
      ErrorCode::kUnsupported,
      [&] { launch_paged_attention_prefill(q, 8, f32_cache, dp.batch, 1.0f, out, nullptr); },
      "f32 cache");
  PagedKvCache hd96 = dp.cache;
  hd96.head_dim = 96;
  expect_code(
      ErrorCode::kUnsupported,
      [&] {
        launch_paged_attention_decode(q, 8, hd96, dp.batch, 1.0f, 1, out, nullptr, 0, nullptr);
      },
      "fp8 head_dim 96");
  PagedKvCache unaligned = dp.cache;
  unaligned.k = static_cast<const uint8_t*>(dp.cache.k) + 8;
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] { launch_paged_attention_prefill(q, 8, unaligned, dp.batch, 1.0f, out, nullptr); },
      "fp8 cache off 16 bytes");

  const Tensor tq(dp.q.get(), DType::kBF16, {pb.num_tokens, 8, 128}, Device::kCuda);
  const Tensor tk(dp.k_fp8.get(), DType::kF8E4M3, {pb.num_blocks, 16, 2, 128}, Device::kCuda);
  const Tensor tv(dp.v_fp8.get(), DType::kF8E4M3, {pb.num_blocks, 16, 2, 128}, Device::kCuda);
  const Tensor tv_bf16(dp.v_cache.get(), DType::kBF16, {pb.num_blocks, 16, 2, 128}, Device::kCuda);
  const Tensor cu(dp.cu_seqlens.get(), DType::kI32, {3}, Device::kCuda);
  const Tensor lens(dp.seq_lens.get(), DType::kI32, {2}, Device::kCuda);
  const Tensor tables(dp.block_tables.get(), DType::kI32, {2, pb.max_blocks}, Device::kCuda);
  const Tensor tout(dp.out.get(), DType::kBF16, {pb.num_tokens, 8, 128}, Device::kCuda);
  expect_code(
      ErrorCode::kUnsupported,
      [&] {
        paged_attention(tq, tk, tv_bf16, cu, lens, tables, 1, 100, 1.0f, tout, Tensor(), nullptr);
      },
      "fp8 k with bf16 v");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        paged_attention(tq, tk, tv, cu, lens, tables, 1, 100, 1.0f, tout, Tensor(), nullptr, 0.0f,
                        1.0f);
      },
      "Tensor entry point, k_scale 0");
}

}  // namespace
}  // namespace atom::cuda

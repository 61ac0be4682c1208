// CUDA element-wise decoder ops against their CPU twins (cpu::embedding, cpu::silu_and_mul,
// cpu::rope_neox, cpu::reshape_and_cache, cpu::rms_norm, atom::argmax's loop) and against HF's
// bf16 rounding, over awkward token counts and widths, aligned (16-byte packets) and misaligned
// (scalar) rows. Every bf16 comparison runs the CPU op on the same bf16-rounded inputs in f32.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/quants.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/ops.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/ggml_types.h"
#include "atom/core/tensor.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::as_bf16;
using test::DeviceBuffer;
using test::expect_within;
using test::from_bf16;
using test::gpu_visible;
using test::random_bf16;
using test::random_floats;
using test::round_bf16;
using test::sync;
using test::to_bf16;

// --- helpers ---

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

template <typename P>
class CudaOpsParamTest : public ::testing::TestWithParam<P> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

// Distance in bf16 ulps between two finite bf16 values (through zero across signs).
int bf16_ulps(uint16_t a, uint16_t b) {
  auto key = [](uint16_t v) { return (v & 0x8000) ? -int(v & 0x7fff) : int(v); };
  return std::abs(key(a) - key(b));
}

// GPU bf16 equals an HF-rounding emulation on the host bit for bit, but for rare elements where
// the f32 transcendental (CUDA's expf/sincosf vs the host's, each within 2 ulp) lands on the
// other side of a bf16 rounding boundary. The hard bound on every element is the separate
// comparison with the CPU op.
void expect_mostly_exact(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                         const std::string& what, double min_exact = 0.999) {
  ASSERT_EQ(got.size(), want.size());
  size_t exact = 0;
  int worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int d = bf16_ulps(got[i], want[i]);
    exact += d == 0;
    if (d > worst) worst = d, worst_i = i;
  }
  EXPECT_GE(double(exact), min_exact * double(got.size()))
      << what << ": " << got.size() - exact << " of " << got.size()
      << " differ from HF's rounding; worst " << worst << " ulp at [" << worst_i << "]: got "
      << bf16_to_f32(got[worst_i]) << " want " << bf16_to_f32(want[worst_i]);
}

// Token counts of the brief: decode, odd prefill chunks, a long prefill.
const std::vector<int64_t> kTokenCounts = {1, 17, 54, 97, 1031};

// --- embedding ---

struct RowCase {
  int64_t n;
  int64_t width;
  size_t misalign;  // elements by which the pointers are shifted off 16-byte alignment
};

void PrintTo(const RowCase& c, std::ostream* os) {
  *os << "[" << c.n << ", " << c.width << "]" << (c.misalign ? " misaligned" : "");
}

std::string row_case_name(const ::testing::TestParamInfo<RowCase>& info) {
  return "n" + std::to_string(info.param.n) + "_w" + std::to_string(info.param.width) +
         (info.param.misalign ? "_misaligned" : "");
}

std::vector<RowCase> row_cases(const std::vector<int64_t>& widths, int64_t wide) {
  std::vector<RowCase> cases;
  for (const int64_t n : kTokenCounts) {
    for (const int64_t w : widths) cases.push_back({n, w, 0});
  }
  // Widths that take 16-byte packets, shifted off alignment: the scalar kernels.
  cases.push_back({17, 576, 1});
  cases.push_back({97, 4096, 3});
  // Several packets per thread of a full block, and more than one block per row.
  cases.push_back({3, wide, 0});
  return cases;
}

using EmbeddingTest = CudaOpsParamTest<RowCase>;

TEST_P(EmbeddingTest, MatchesCpuEmbeddingExactly) {
  const auto [n, hidden, mis] = GetParam();
  constexpr int64_t kVocab = 1000;
  const auto table = random_bf16(size_t(kVocab * hidden), 11, -1.0f, 1.0f);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::mt19937 rng(12);
  for (int32_t& id : ids) id = int32_t(rng() % kVocab);
  ids[0] = kVocab - 1;  // the last row too

  std::vector<float> want(size_t(n * hidden));
  cpu::embedding(cpu::make_qmatrix(GgmlType::kBF16, table.data(), kVocab, hidden), ids.data(), n,
                 want.data());

  DeviceBuffer<uint16_t> dtable(table, mis), dout(size_t(n * hidden), mis);
  DeviceBuffer<int32_t> dids(ids);
  launch_embedding(as_bf16(dtable), kVocab, hidden, dids.get(), as_bf16(dout), n, nullptr);
  sync();
  EXPECT_EQ(from_bf16(dout.download()), want);  // a copy: exact

  // The Tensor entry point gives the same rows.
  DeviceBuffer<uint16_t> dout2(size_t(n * hidden));
  embedding(Tensor(dtable.get(), DType::kBF16, {kVocab, hidden}, Device::kCuda),
            Tensor(dids.get(), DType::kI32, {n}, Device::kCuda),
            Tensor(dout2.get(), DType::kBF16, {n, hidden}, Device::kCuda), nullptr);
  sync();
  EXPECT_EQ(dout2.download(), dout.download());
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingTest,
                         ::testing::ValuesIn(row_cases({1, 17, 576, 4096}, 16384)), row_case_name);

TEST_F(CudaOpsTest, EmbeddingOutOfRangeIdsWriteZerosAndReadNothing) {
  constexpr int64_t kVocab = 50, kHidden = 24;
  const auto table = random_bf16(size_t(kVocab * kHidden), 13, 0.5f, 1.5f);  // no zeros
  const std::vector<int32_t> ids = {-1, 5, int32_t(kVocab), INT_MAX, INT_MIN, int32_t(kVocab - 1)};
  const int64_t n = int64_t(ids.size());
  // One guard row after the output must stay untouched.
  const std::vector<uint16_t> junk(size_t((n + 1) * kHidden), 0x7f7f);
  for (const size_t mis : {size_t(0), size_t(1)}) {
    DeviceBuffer<uint16_t> dtable(table, mis), dout(junk, mis);
    DeviceBuffer<int32_t> dids(ids);
    launch_embedding(as_bf16(dtable), kVocab, kHidden, dids.get(), as_bf16(dout), n, nullptr);
    sync();
    const auto out = dout.download();
    for (int64_t t = 0; t < n; ++t) {
      const bool valid = ids[size_t(t)] >= 0 && ids[size_t(t)] < kVocab;
      for (int64_t i = 0; i < kHidden; ++i) {
        const uint16_t want = valid ? table[size_t(ids[size_t(t)] * kHidden + i)] : 0;
        ASSERT_EQ(out[size_t(t * kHidden + i)], want) << "token " << t << " [" << i << "]";
      }
    }
    for (int64_t i = 0; i < kHidden; ++i) ASSERT_EQ(out[size_t(n * kHidden + i)], 0x7f7f);
  }
}

// --- QKV split ---

TEST_F(CudaOpsTest, SplitQkvCopiesEachPart) {
  struct Case {
    int64_t n, q_size, kv_size;
    size_t misalign;
  };
  for (const Case c : {Case{1, 256, 64, 0}, Case{17, 4096, 1024, 0}, Case{97, 51, 17, 0},
                       Case{54, 2048, 256, 1}, Case{1031, 512, 128, 0}}) {
    const int64_t width = c.q_size + 2 * c.kv_size;
    const auto qkv = random_bf16(size_t(c.n * width), 14, -1.0f, 1.0f);
    DeviceBuffer<uint16_t> dqkv(qkv, c.misalign), dq(size_t(c.n * c.q_size)),
        dk(size_t(c.n * c.kv_size)), dv(size_t(c.n * c.kv_size), c.misalign);
    launch_split_qkv(as_bf16(dqkv), as_bf16(dq), as_bf16(dk), as_bf16(dv), c.n, c.q_size, c.kv_size,
                     nullptr);
    sync();
    const auto q = dq.download(), k = dk.download(), v = dv.download();
    for (int64_t t = 0; t < c.n; ++t) {
      const uint16_t* row = qkv.data() + t * width;
      ASSERT_TRUE(std::equal(row, row + c.q_size, q.data() + t * c.q_size)) << "q row " << t;
      ASSERT_TRUE(std::equal(row + c.q_size, row + c.q_size + c.kv_size, k.data() + t * c.kv_size))
          << "k row " << t;
      ASSERT_TRUE(std::equal(row + c.q_size + c.kv_size, row + width, v.data() + t * c.kv_size))
          << "v row " << t;
    }
  }
}

// --- SiLU and multiply ---

// HF's LlamaMLP on bf16 tensors: act_fn(gate) rounds silu to bf16, `* up` rounds the product.
std::vector<uint16_t> hf_silu_and_mul(const std::vector<float>& x, int64_t n, int64_t d) {
  std::vector<uint16_t> out(size_t(n * d));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < d; ++i) {
      const float g = x[size_t(t * 2 * d + i)], u = x[size_t(t * 2 * d + d + i)];
      const float s = round_bf16(g / (1.0f + std::exp(-g)));
      out[size_t(t * d + i)] = f32_to_bf16(s * u);
    }
  }
  return out;
}

using SiluAndMulTest = CudaOpsParamTest<RowCase>;

TEST_P(SiluAndMulTest, MatchesHfRoundingAndCpuOp) {
  const auto [n, d, mis] = GetParam();
  // Gates over [-12, 12] reach both tails of the sigmoid.
  const auto xb = random_bf16(size_t(n * 2 * d), 15, -12.0f, 12.0f);
  const auto x = from_bf16(xb);

  DeviceBuffer<uint16_t> dx(xb, mis), dout(size_t(n * d), mis);
  launch_silu_and_mul(as_bf16(dx), as_bf16(dout), n, d, nullptr);
  sync();
  const auto got = dout.download();
  expect_mostly_exact(got, hf_silu_and_mul(x, n, d), "silu_and_mul vs HF");

  // The f32 CPU op on the same inputs: two bf16 roundings (unit roundoff 2^-8 each) bound the
  // relative error by 2 * 2^-8 + 2^-16 < 2^-7 (the transcendental's few f32 ulps are far below).
  std::vector<float> want(size_t(n * d));
  cpu::silu_and_mul(x.data(), n, d, want.data());
  std::vector<float> tol(want.size());
  for (size_t i = 0; i < want.size(); ++i) tol[i] = 0x1p-7f * std::fabs(want[i]) + 1e-37f;
  expect_within(from_bf16(got), want, tol, "silu_and_mul vs cpu");

  // The Tensor entry point, with a leading batch dimension.
  DeviceBuffer<uint16_t> dout2(size_t(n * d));
  silu_and_mul(Tensor(dx.get(), DType::kBF16, {1, n, 2 * d}, Device::kCuda),
               Tensor(dout2.get(), DType::kBF16, {1, n, d}, Device::kCuda), nullptr);
  sync();
  EXPECT_EQ(dout2.download(), got);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SiluAndMulTest,
                         ::testing::ValuesIn(row_cases({1, 17, 576, 1000}, 14336)), row_case_name);

// --- RoPE and the paged KV cache ---

struct RopeCase {
  int64_t n;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t rotary_dim;
  int64_t block_size;
  const char* scaling;   // rope_type
  int32_t max_position;  // positions are drawn from [0, max_position)
};

void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "n" << c.n << " heads " << c.num_heads << "/" << c.num_kv_heads << " dim " << c.head_dim
      << " rot " << c.rotary_dim << " block " << c.block_size << " " << c.scaling;
}

cpu::RopeTable rope_table(const RopeCase& c) {
  return test::test_rope_table(c.scaling, c.rotary_dim, 10000.0);
}

// HF's bf16 rotation: cos and sin computed in f32, times the attention factor, rounded to bf16;
// x * cos + rotate_half(x) * sin with every product and the sum rounded to bf16.
// x: [n, heads, head_dim] as f32 values of bf16.
std::vector<uint16_t> hf_rope(const std::vector<float>& x, const std::vector<int32_t>& pos,
                              int64_t n, int64_t heads, int64_t head_dim, int64_t rotary_dim,
                              const cpu::RopeTable& table) {
  std::vector<uint16_t> out = to_bf16(x);
  const int64_t half = rotary_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float f = float(pos[size_t(t)]) * table.inv_freq[size_t(i)];
      const float c = round_bf16(std::cos(f) * table.attention_factor);
      const float s = round_bf16(std::sin(f) * table.attention_factor);
      for (int64_t h = 0; h < heads; ++h) {
        const size_t base = size_t((t * heads + h) * head_dim);
        const float a = x[base + size_t(i)], b = x[base + size_t(i + half)];
        out[base + size_t(i)] = f32_to_bf16(round_bf16(a * c) - round_bf16(b * s));
        out[base + size_t(i + half)] = f32_to_bf16(round_bf16(b * c) + round_bf16(a * s));
      }
    }
  }
  return out;
}

// Bound on |GPU bf16 - cpu::rope_neox f32| for the element pairs of x: cos and sin rounded to
// bf16, two products and a sum each rounded (unit roundoff 2^-8) give at most
// 3 * 2^-8 * (|a| + |b|) * attention_factor; 2^-6 leaves room for the f32 cos/sin differences.
std::vector<float> rope_tolerance(const std::vector<float>& x, int64_t n, int64_t heads,
                                  int64_t head_dim, int64_t rotary_dim, float af) {
  std::vector<float> tol(x.size(), 0.0f);  // dims past rotary_dim: untouched, exact
  const int64_t half = rotary_dim / 2;
  for (int64_t r = 0; r < n * heads; ++r) {
    for (int64_t i = 0; i < half; ++i) {
      const size_t a = size_t(r * head_dim + i), b = a + size_t(half);
      const float t = 0x1p-6f * (std::fabs(x[a]) + std::fabs(x[b])) * af + 1e-30f;
      tol[a] = tol[b] = t;
    }
  }
  return tol;
}

using RopeCacheTest = CudaOpsParamTest<RopeCase>;

TEST_P(RopeCacheTest, MatchesCpuRopeAndReshapeAndCache) {
  const RopeCase c = GetParam();
  const int64_t n = c.n, nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const cpu::RopeTable table = rope_table(c);
  const float af = table.attention_factor;

  std::mt19937 rng(16);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int32_t& p : pos) p = int32_t(rng() % uint32_t(c.max_position));
  pos[0] = c.max_position - 1;

  // A cache with spare blocks; tokens land on shuffled slots, every 7th token is padding (-1).
  const int64_t num_blocks = (n + c.block_size - 1) / c.block_size + 3;
  const int64_t num_slots = num_blocks * c.block_size;
  std::vector<int32_t> slots(static_cast<size_t>(num_slots));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(n));
  for (int64_t t = 3; t < n; t += 7) slots[size_t(t)] = -1;

  const auto qb = random_bf16(size_t(n * nh * hd), 17, -2.0f, 2.0f);
  const auto kb = random_bf16(size_t(n * nkv * hd), 18, -2.0f, 2.0f);
  const auto vb = random_bf16(size_t(n * nkv * hd), 19, -2.0f, 2.0f);
  const auto cache_junk = random_bf16(size_t(num_slots * nkv * hd), 20, 100.0f, 200.0f);
  const auto q = from_bf16(qb), k = from_bf16(kb), v = from_bf16(vb);

  DeviceBuffer<uint16_t> dq(qb), dk(kb), dv(vb), dkc(cache_junk), dvc(cache_junk);
  DeviceBuffer<int32_t> dpos(pos), dslots(slots);
  DeviceBuffer<float> dinv(table.inv_freq);
  const RopeArgs rope{dpos.get(), dinv.get(), af, c.rotary_dim};
  const KvCacheWrite cache{dslots.get(), as_bf16(dkc), as_bf16(dvc), num_slots};
  launch_rope_and_cache(as_bf16(dq), as_bf16(dk), as_bf16(dv), rope, cache, n, nh, nkv, hd,
                        nullptr);
  sync();
  const auto got_q = dq.download(), got_k = dk.download();
  const auto got_kc = dkc.download(), got_vc = dvc.download();

  // q and k: HF's bf16 rounding, and the f32 CPU op within the bf16 bound.
  expect_mostly_exact(got_q, hf_rope(q, pos, n, nh, hd, c.rotary_dim, table), "q vs HF");
  expect_mostly_exact(got_k, hf_rope(k, pos, n, nkv, hd, c.rotary_dim, table), "k vs HF");
  std::vector<float> want_q = q, want_k = k;
  cpu::rope_neox(want_q.data(), pos.data(), n, nh, hd, c.rotary_dim, table);
  cpu::rope_neox(want_k.data(), pos.data(), n, nkv, hd, c.rotary_dim, table);
  expect_within(from_bf16(got_q), want_q, rope_tolerance(q, n, nh, hd, c.rotary_dim, af),
                "q vs cpu::rope_neox");
  expect_within(from_bf16(got_k), want_k, rope_tolerance(k, n, nkv, hd, c.rotary_dim, af),
                "k vs cpu::rope_neox");

  // The cache: cpu::reshape_and_cache of the GPU's rotated k and of v, into the same junk.
  std::vector<float> want_kc = from_bf16(cache_junk), want_vc = want_kc;
  std::vector<float> rotated_k = from_bf16(got_k);
  cpu::reshape_and_cache(
      rotated_k.data(), v.data(), slots.data(), n,
      cpu::KvCacheView{want_kc.data(), want_vc.data(), num_blocks, c.block_size, nkv, hd});
  EXPECT_EQ(from_bf16(got_kc), want_kc);
  EXPECT_EQ(from_bf16(got_vc), want_vc);

  // The rope-only and cache-only launchers give the same bits as the fused one.
  DeviceBuffer<uint16_t> dq2(qb), dk2(kb), dkc2(cache_junk), dvc2(cache_junk);
  launch_rope_neox(as_bf16(dq2), rope, n, nh, hd, nullptr);
  launch_rope_neox(as_bf16(dk2), rope, n, nkv, hd, nullptr);
  const KvCacheWrite cache2{dslots.get(), as_bf16(dkc2), as_bf16(dvc2), num_slots};
  launch_reshape_and_cache(as_bf16(dk2), as_bf16(dv), cache2, n, nkv, hd, nullptr);
  sync();
  EXPECT_EQ(dq2.download(), got_q);
  EXPECT_EQ(dk2.download(), got_k);
  EXPECT_EQ(dkc2.download(), got_kc);
  EXPECT_EQ(dvc2.download(), got_vc);

  // And the Tensor entry point.
  DeviceBuffer<uint16_t> dq3(qb), dk3(kb), dkc3(cache_junk), dvc3(cache_junk);
  rope_and_cache(
      Tensor(dq3.get(), DType::kBF16, {n, nh, hd}, Device::kCuda),
      Tensor(dk3.get(), DType::kBF16, {n, nkv, hd}, Device::kCuda),
      Tensor(dv.get(), DType::kBF16, {n, nkv, hd}, Device::kCuda),
      Tensor(dpos.get(), DType::kI32, {n}, Device::kCuda),
      Tensor(dinv.get(), DType::kF32, {c.rotary_dim / 2}, Device::kCuda), af, c.rotary_dim,
      Tensor(dslots.get(), DType::kI32, {n}, Device::kCuda),
      Tensor(dkc3.get(), DType::kBF16, {num_blocks, c.block_size, nkv, hd}, Device::kCuda),
      Tensor(dvc3.get(), DType::kBF16, {num_blocks, c.block_size, nkv, hd}, Device::kCuda),
      nullptr);
  sync();
  EXPECT_EQ(dq3.download(), got_q);
  EXPECT_EQ(dk3.download(), got_k);
  EXPECT_EQ(dkc3.download(), got_kc);
  EXPECT_EQ(dvc3.download(), got_vc);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeCacheTest,
    ::testing::Values(RopeCase{1, 4, 1, 64, 64, 16, "default", 16},
                      RopeCase{17, 8, 2, 128, 128, 16, "llama3", 131072},
                      RopeCase{54, 6, 6, 80, 40, 32, "default", 4096},  // partial rotary
                      RopeCase{97, 32, 8, 128, 128, 32, "yarn", 131072},
                      RopeCase{1031, 16, 4, 64, 64, 16, "linear", 8192},
                      RopeCase{17, 3, 1, 18, 18, 1, "default", 100},  // block size 1
                      RopeCase{97, 16, 8, 128, 64, 16, "default", 40960}),
    [](const auto& info) {
      const RopeCase& c = info.param;
      return "n" + std::to_string(c.n) + "_h" + std::to_string(c.num_heads) + "x" +
             std::to_string(c.num_kv_heads) + "_d" + std::to_string(c.head_dim) + "_rot" +
             std::to_string(c.rotary_dim) + "_b" + std::to_string(c.block_size) + "_" + c.scaling;
    });

TEST_F(CudaOpsTest, CacheWriteSkipsPaddingAndOutOfRangeSlots) {
  constexpr int64_t kHeads = 2, kDim = 8, kBlocks = 2, kBlockSize = 4;
  constexpr int64_t kSlots = kBlocks * kBlockSize, kRow = kHeads * kDim;
  const std::vector<int32_t> slots = {-1, 3, int32_t(kSlots), INT_MAX, -7, 0};
  const int64_t n = int64_t(slots.size());
  const auto kb = random_bf16(size_t(n * kRow), 21, -1.0f, 1.0f);
  const auto vb = random_bf16(size_t(n * kRow), 22, -1.0f, 1.0f);
  // One guard slot after each cache must stay untouched.
  const std::vector<uint16_t> junk(size_t((kSlots + 1) * kRow), 0x4242);
  DeviceBuffer<uint16_t> dk(kb), dv(vb), dkc(junk), dvc(junk);
  DeviceBuffer<int32_t> dslots(slots);
  launch_reshape_and_cache(as_bf16(dk), as_bf16(dv),
                           KvCacheWrite{dslots.get(), as_bf16(dkc), as_bf16(dvc), kSlots}, n,
                           kHeads, kDim, nullptr);
  sync();
  auto want_k = junk, want_v = junk;
  for (const int64_t t : {int64_t(1), int64_t(5)}) {  // the tokens with valid slots
    std::copy_n(kb.begin() + t * kRow, kRow, want_k.begin() + slots[size_t(t)] * kRow);
    std::copy_n(vb.begin() + t * kRow, kRow, want_v.begin() + slots[size_t(t)] * kRow);
  }
  EXPECT_EQ(dkc.download(), want_k);
  EXPECT_EQ(dvc.download(), want_v);
  EXPECT_EQ(dk.download(), kb);  // without rotation k is only read
}

// --- Qwen3's per-head q/k norm through launch_rms_norm ---

// norm.h's RMSNorm normalizes rows of `dim` contiguous values; Qwen3's q_norm and k_norm
// normalize each (token, head) of [n, heads, head_dim] with a [head_dim] weight, which is the
// same op over n * heads rows. Checked here against a per-(token, head) reference with HF's
// rounding, bf16(w * bf16(x * r)), and against cpu::rms_norm.
TEST_F(CudaOpsTest, QkNormViaRmsNorm) {
  constexpr float kEps = 1e-6f;  // Qwen3's rms_norm_eps
  for (const int64_t n : {int64_t(1), int64_t(17), int64_t(97)}) {
    for (const int64_t heads : {int64_t(8), int64_t(2)}) {
      for (const int64_t hd : {int64_t(64), int64_t(128)}) {
        const int64_t rows = n * heads;
        const auto xb = random_bf16(size_t(rows * hd), 23, -3.0f, 3.0f);
        const auto wb = random_bf16(size_t(hd), 24, 0.5f, 1.5f);
        const auto x = from_bf16(xb), w = from_bf16(wb);
        DeviceBuffer<uint16_t> dx(xb), dw(wb);
        // In place, as the decoder normalizes q and k.
        launch_rms_norm(as_bf16(dx), as_bf16(dw), as_bf16(dx), rows, hd, kEps, nullptr);
        sync();
        const auto got = dx.download();

        std::vector<uint16_t> want(got.size());
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t h = 0; h < heads; ++h) {
            const float* xr = x.data() + (t * heads + h) * hd;
            double ss = 0.0;
            for (int64_t i = 0; i < hd; ++i) ss += double(xr[i]) * xr[i];
            const float r = float(1.0 / std::sqrt(ss / double(hd) + kEps));
            for (int64_t i = 0; i < hd; ++i) {
              want[size_t((t * heads + h) * hd + i)] =
                  f32_to_bf16(w[size_t(i)] * round_bf16(xr[i] * r));
            }
          }
        }
        // One ulp where the f32 inverse RMS (GPU sum order vs double) tips a rounding.
        size_t exact = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_LE(bf16_ulps(got[i], want[i]), 1)
              << "n " << n << " heads " << heads << " [" << i << "]";
          exact += got[i] == want[i];
        }
        EXPECT_GE(double(exact), 0.98 * double(got.size()));

        std::vector<float> cpu_out(x.size());
        cpu::rms_norm(x.data(), w.data(), rows, hd, kEps, cpu_out.data());
        std::vector<float> tol(x.size());
        // Two bf16 roundings: relative 2 * 2^-8 < 8e-3.
        for (size_t i = 0; i < x.size(); ++i) tol[i] = 8e-3f * std::fabs(cpu_out[i]) + 1e-6f;
        expect_within(from_bf16(got), cpu_out, tol, "qk norm vs cpu::rms_norm");
      }
    }
  }
}

// --- argmax ---

// atom::argmax (runner/sampler.cpp), the greedy sampler's core: the first index of the largest
// logit, moving only on a strictly larger value.
int32_t host_argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

struct ArgmaxCase {
  int64_t n;
  int64_t vocab;
  size_t misalign;
};

void PrintTo(const ArgmaxCase& c, std::ostream* os) {
  *os << "[" << c.n << ", " << c.vocab << "]" << (c.misalign ? " misaligned" : "");
}

using ArgmaxTest = CudaOpsParamTest<ArgmaxCase>;

TEST_P(ArgmaxTest, MatchesHostArgmax) {
  const auto [n, vocab, mis] = GetParam();
  auto logits = random_floats(size_t(n * vocab), 25, -10.0f, 10.0f);
  std::mt19937 rng(26);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Rows with planted special cases, cycling over the rows.
  for (int64_t t = 0; t < n; ++t) {
    float* row = logits.data() + t * vocab;
    const int64_t a = int64_t(rng() % uint64_t(vocab)), b = int64_t(rng() % uint64_t(vocab));
    switch (t % 8) {
      case 1:  // a tie for the maximum: the lower index wins
        row[a] = row[b] = 20.0f;
        break;
      case 2:  // every logit equal: 0
        std::fill(row, row + vocab, 1.5f);
        break;
      case 3:  // a NaN first: 0, as atom::argmax never moves off it
        row[0] = nan;
        row[b] = 30.0f;
        break;
      case 4:  // NaNs later are skipped
        row[a] = nan;
        if (b != a) row[b] = 25.0f;
        break;
      case 5:  // all -inf: 0
        std::fill(row, row + vocab, -inf);
        break;
      case 6:  // two +inf: the first
        row[a] = row[b] = inf;
        break;
      case 7:  // the maximum in the last slot
        row[vocab - 1] = 50.0f;
        break;
      default:
        break;
    }
  }
  std::vector<int32_t> want(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) want[size_t(t)] = host_argmax(logits.data() + t * vocab, vocab);

  DeviceBuffer<float> dlogits(logits, mis);
  DeviceBuffer<int32_t> dout(static_cast<size_t>(n));
  launch_argmax(dlogits.get(), dout.get(), n, vocab, nullptr);
  sync();
  EXPECT_EQ(dout.download(), want);

  DeviceBuffer<int32_t> dout2(static_cast<size_t>(n));
  argmax(Tensor(dlogits.get(), DType::kF32, {n, vocab}, Device::kCuda),
         Tensor(dout2.get(), DType::kI32, {n}, Device::kCuda), nullptr);
  sync();
  EXPECT_EQ(dout2.download(), want);
}

std::vector<ArgmaxCase> argmax_cases() {
  std::vector<ArgmaxCase> cases;
  for (const int64_t n : {1, 17, 97}) {
    for (const int64_t vocab : {1, 17, 1000, 32000, 151936, 262144}) cases.push_back({n, vocab, 0});
  }
  cases.push_back({17, 32000, 1});  // off 16-byte alignment: scalar loads
  cases.push_back({9, 262147, 0});  // not a multiple of 4
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ArgmaxTest, ::testing::ValuesIn(argmax_cases()),
                         [](const auto& info) {
                           const ArgmaxCase& c = info.param;
                           return "n" + std::to_string(c.n) + "_vocab" + std::to_string(c.vocab) +
                                  (c.misalign ? "_misaligned" : "");
                         });

// --- argument checks ---

template <typename F>
void expect_error(ErrorCode code, F&& f, const char* what) {
  try {
    f();
    ADD_FAILURE() << what << ": accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << what << ": " << e.what();
  }
}

TEST_F(CudaOpsTest, EntryPointsRejectBadArguments) {
  DeviceBuffer<uint16_t> d(4096);
  DeviceBuffer<int32_t> di(64);
  DeviceBuffer<float> df(4096);
  const auto bf = [&](std::initializer_list<int64_t> s) {
    return Tensor(d.get(), DType::kBF16, s, Device::kCuda);
  };
  const auto i32 = [&](std::initializer_list<int64_t> s) {
    return Tensor(di.get(), DType::kI32, s, Device::kCuda);
  };
  const auto f32 = [&](std::initializer_list<int64_t> s) {
    return Tensor(df.get(), DType::kF32, s, Device::kCuda);
  };
  const auto inv = ErrorCode::kInvalidArgument;
  expect_error(
      inv,
      [&] {
        embedding(bf({10, 8}), i32({4}), bf({4, 7}), nullptr);
      },
      "out width");
  expect_error(
      inv,
      [&] {
        embedding(bf({10, 8}), f32({4}), bf({4, 8}), nullptr);
      },
      "f32 ids");
  expect_error(
      inv,
      [&] {
        embedding(bf({10, 8}), Tensor(di.get(), DType::kI32, {4}, Device::kCpu), bf({4, 8}),
                  nullptr);
      },
      "host ids");
  expect_error(
      inv,
      [&] {
        silu_and_mul(bf({4, 7}), bf({4, 3}), nullptr);
      },
      "odd width");
  expect_error(
      inv,
      [&] {
        silu_and_mul(bf({4, 8}), bf({3, 4}), nullptr);
      },
      "row mismatch");
  expect_error(
      inv,
      [&] {
        argmax(f32({4, 8}), i32({3}), nullptr);
      },
      "argmax out");
  expect_error(
      inv,
      [&] {
        argmax(bf({4, 8}), i32({4}), nullptr);
      },
      "bf16 logits");
  // RoPE: q [2, 4, 16], k and v [2, 2, 16], cache [3, 4, 2, 16].
  const auto rope = [&](int64_t rotary_dim, const Tensor& v, const Tensor& k_cache) {
    rope_and_cache(bf({2, 4, 16}), bf({2, 2, 16}), v, i32({2}), f32({rotary_dim / 2}), 1.0f,
                   rotary_dim, i32({2}), k_cache, bf({3, 4, 2, 16}), nullptr);
  };
  expect_error(
      inv,
      [&] {
        rope(15, bf({2, 2, 16}), bf({3, 4, 2, 16}));
      },
      "odd rotary_dim");
  expect_error(
      inv,
      [&] {
        rope(18, bf({2, 2, 16}), bf({3, 4, 2, 16}));
      },
      "rotary_dim > dim");
  expect_error(
      inv,
      [&] {
        rope(16, bf({2, 3, 16}), bf({3, 4, 2, 16}));
      },
      "v heads");
  expect_error(
      inv,
      [&] {
        rope(16, bf({2, 2, 16}), bf({3, 4, 1, 16}));
      },
      "cache heads");
  // Launchers check their sizes too.
  expect_error(
      inv, [&] { launch_silu_and_mul(as_bf16(d), as_bf16(d), -1, 8, nullptr); }, "negative n");
  expect_error(
      inv, [&] { launch_argmax(df.get(), di.get(), 1, 0, nullptr); }, "empty vocabulary");
  // Zero tokens: nothing to launch.
  embedding(bf({10, 8}), i32({0}), bf({0, 8}), nullptr);
  silu_and_mul(bf({0, 8}), bf({0, 4}), nullptr);
  rope_and_cache(bf({0, 4, 16}), bf({0, 2, 16}), bf({0, 2, 16}), i32({0}), f32({8}), 1.0f, 16,
                 i32({0}), bf({3, 4, 2, 16}), bf({3, 4, 2, 16}), nullptr);
  argmax(f32({0, 8}), i32({0}), nullptr);
  sync();
}

}  // namespace
}  // namespace atom::cuda

// The fp8 e4m3 KV cache (`--kv_cache_dtype fp8`): the fused attention prologue writing it and the
// paged attention kernels reading it.
//   1. launch_qkv_rope_and_cache into an fp8 cache: every written byte is the host's conversion
//      (atom::f32_to_fp8e4m3: round to nearest even, saturating to +-448) of the bf16 value the
//      same launch writes into a bf16 cache, divided by the cache's scale; slots of -1, below -1
//      or past the cache keep their bytes, and q_out has the bf16 launch's bits. Over the shapes
//      of test_qkv_rope_cache (q/k norm or not, partial rotary, head_dim 64 to 256, odd head
//      counts) and scales 1, powers of two, inexact ones, one so small that K saturates and one
//      so large that V is mostly subnormal codes; plus hand-computed codes for ties, saturation
//      and subnormals.
//   2. End to end: a prefill batch written by (1), then paged attention over that cache (the
//      prefill kernel for the batch, the decode kernel for each sequence's last row) against
//      cpu::paged_attention on the dequantized cache (code * scale).
//   3. What the launchers reject.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/ops.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::as_bf16;
using test::DeviceBuffer;
using test::from_bf16;
using test::gpu_visible;
using test::random_bf16;
using test::random_floats;
using test::sync;
using test::to_bf16;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (uint8_t& x : b) x = uint8_t(rng() & 0xffu);
  return b;
}

// The code the kernel must store for the bf16 value `bits` of a bf16 cache under `scale`.
uint8_t want_code(uint16_t bits, float scale) { return f32_to_fp8e4m3(bf16_to_f32(bits) / scale); }

// Equal codes; +0 and -0 (0x00, 0x80) count as equal, the sign of a zero being no part of the
// value attention reads.
bool same_code(uint8_t got, uint8_t want) {
  return got == want || ((got & 0x7fu) == 0 && (want & 0x7fu) == 0);
}

// Whether |y| lies exactly halfway between two adjacent finite e4m3 values (below 448).
bool is_tie(float y) {
  const float a = std::fabs(y);
  if (!(a < 448.0f)) return false;
  const uint8_t c = f32_to_fp8e4m3(a);
  const float v = fp8e4m3_to_f32(c);
  if (a == v) return false;
  const uint8_t other = a > v ? uint8_t(c + 1) : uint8_t(c - 1);
  return std::fabs(fp8e4m3_to_f32(other) - a) == std::fabs(v - a);
}

// Llama-3.1's table (llama3 scaling, theta 500000).
cpu::RopeTable llama_rope(int64_t rotary_dim) {
  return test::test_rope_table("llama3", rotary_dim, 500000.0);
}

// --- 1. the fp8 cache write ---

struct WriteCase {
  const char* name;
  int64_t n;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t rotary_dim;
  bool qk_norm;
  int64_t block_size;
  float k_scale;
  float v_scale;
};

void PrintTo(const WriteCase& c, std::ostream* os) {
  *os << c.name << " n" << c.n << " heads " << c.num_heads << "/" << c.num_kv_heads << " dim "
      << c.head_dim << " scales " << c.k_scale << "/" << c.v_scale;
}

// Compares one cache (bytes) with the codes of the bf16 launch's cache: rows of written slots must
// hold want_code of each value, every other row its junk. Counts what the values exercised.
struct CodeStats {
  size_t saturated = 0;  // |value / scale| > 448
  size_t subnormal = 0;  // nonzero codes with a zero exponent
  size_t ties = 0;       // value / scale halfway between two codes
};

CodeStats expect_codes(const std::vector<uint8_t>& got, const std::vector<uint16_t>& bf16_cache,
                       const std::vector<uint8_t>& junk, const std::vector<bool>& written,
                       int64_t row, float scale, const std::string& what) {
  CodeStats stats;
  size_t bad = 0, first = 0;
  uint8_t first_want = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    uint8_t want = junk[i];
    bool ok = got[i] == want;
    if (written[i / size_t(row)]) {
      want = want_code(bf16_cache[i], scale);
      ok = same_code(got[i], want);
      const float y = bf16_to_f32(bf16_cache[i]) / scale;
      stats.saturated += std::fabs(y) > 448.0f;
      stats.subnormal += (want & 0x78u) == 0 && (want & 0x07u) != 0;
      stats.ties += is_tie(y);
    }
    if (!ok && bad++ == 0) {
      first = i;
      first_want = want;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " bytes differ; first ["
                     << first << "] (slot " << first / size_t(row) << "): got 0x" << std::hex
                     << int(got[first]) << " want 0x" << int(first_want) << std::dec
                     << (written[first / size_t(row)]
                             ? " for " + std::to_string(bf16_to_f32(bf16_cache[first])) + " / " +
                                   std::to_string(scale)
                             : std::string(" (an unwritten slot's junk)"));
  return stats;
}

class Fp8CacheWriteTest : public ::testing::TestWithParam<WriteCase> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_P(Fp8CacheWriteTest, BytesAreTheHostConversionOfTheBf16Cache) {
  const WriteCase c = GetParam();
  const int64_t n = c.n, nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const int64_t q_size = nh * hd, kv_size = nkv * hd, width = q_size + 2 * kv_size;
  const cpu::RopeTable table = llama_rope(c.rotary_dim);

  std::mt19937 rng(uint32_t(n * 1000 + hd + nh));
  std::vector<int32_t> pos(static_cast<size_t>(n), 0);
  for (int32_t& p : pos) p = int32_t(rng() % 131072u);
  // Shuffled slots with spare blocks; skipped: every 7th token (-1, the runner's padding), every
  // 11th from 5 (past the cache), every 13th from 8 (below -1), token 2 (INT_MAX).
  const int64_t num_blocks = (n + c.block_size - 1) / c.block_size + 3;
  const int64_t num_slots = num_blocks * c.block_size;
  std::vector<int32_t> slots(static_cast<size_t>(num_slots));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(size_t(n));
  for (int64_t t = 3; t < n; t += 7) slots[size_t(t)] = -1;
  for (int64_t t = 5; t < n; t += 11) slots[size_t(t)] = int32_t(num_slots + t);
  for (int64_t t = 8; t < n; t += 13) slots[size_t(t)] = -7;
  if (n > 2) slots[2] = INT_MAX;
  std::vector<bool> written(static_cast<size_t>(num_slots), false);
  for (const int32_t s : slots) {
    if (s >= 0 && s < num_slots) written[size_t(s)] = true;
  }

  // Values in [-4, 4]: with k_scale 1/256 most of K saturates, with v_scale 64 most of V is
  // subnormal codes.
  const auto qkvb = random_bf16(size_t(n * width), 51, -4.0f, 4.0f);
  const auto qwb = random_bf16(size_t(hd), 52, 0.25f, 2.0f);
  const auto kwb = random_bf16(size_t(hd), 53, 0.25f, 2.0f);
  const auto junk16 = random_bf16(size_t(num_slots * kv_size), 54, 100.0f, 200.0f);
  const auto junk_k = random_bytes(size_t(num_slots * kv_size), 55);
  const auto junk_v = random_bytes(size_t(num_slots * kv_size), 56);

  DeviceBuffer<uint16_t> dqkv(qkvb), dqw(qwb), dkw(kwb);
  DeviceBuffer<int32_t> dpos(pos), dslots(slots);
  DeviceBuffer<float> dinv(table.inv_freq);
  const RopeArgs rope{dpos.get(), dinv.get(), table.attention_factor, c.rotary_dim};
  const __nv_bfloat16* qn = c.qk_norm ? as_bf16(dqw) : nullptr;
  const __nv_bfloat16* kn = c.qk_norm ? as_bf16(dkw) : nullptr;

  // The bf16 cache: the values the fp8 one must hold the codes of (this launch is checked
  // against the CPU ops by test_qkv_rope_cache).
  DeviceBuffer<uint16_t> dq16(size_t(n * q_size)), dkc16(junk16), dvc16(junk16);
  const KvCacheWrite cache16{dslots.get(), as_bf16(dkc16), as_bf16(dvc16), num_slots};
  launch_qkv_rope_and_cache(as_bf16(dqkv), qn, kn, 1e-6f, rope, cache16, as_bf16(dq16), n, nh, nkv,
                            hd, nullptr);

  DeviceBuffer<uint16_t> dq8(size_t(n * q_size));
  dq8.fill_bytes(0xff);
  DeviceBuffer<uint8_t> dkc8(junk_k), dvc8(junk_v);
  KvCacheWrite cache8{dslots.get(), dkc8.get(), dvc8.get(), num_slots};
  cache8.dtype = DType::kF8E4M3;
  cache8.k_scale = c.k_scale;
  cache8.v_scale = c.v_scale;
  launch_qkv_rope_and_cache(as_bf16(dqkv), qn, kn, 1e-6f, rope, cache8, as_bf16(dq8), n, nh, nkv,
                            hd, nullptr);
  sync();

  EXPECT_EQ(dq8.download(), dq16.download()) << "q_out differs from the bf16 cache's launch";
  const auto kc16 = dkc16.download(), vc16 = dvc16.download();
  const CodeStats ks =
      expect_codes(dkc8.download(), kc16, junk_k, written, kv_size, c.k_scale, "k cache");
  const CodeStats vs =
      expect_codes(dvc8.download(), vc16, junk_v, written, kv_size, c.v_scale, "v cache");
  // The data exercised what the scales were picked for.
  if (c.k_scale < 0.01f && n >= 17) {
    EXPECT_GT(ks.saturated, 0u) << "k_scale " << c.k_scale << " saturated nothing";
  }
  if (c.v_scale > 10.0f && n >= 17) {
    EXPECT_GT(vs.subnormal, 0u) << "v_scale " << c.v_scale << " gave no subnormal codes";
  }
  if (c.v_scale == 1.0f && n >= 17) {
    EXPECT_GT(vs.ties, 0u) << "no halfway value in V to check rounding to even";
  }
}

std::vector<WriteCase> write_cases() {
  // name, n, heads, kv heads, head_dim, rotary_dim, qk norm, block size (scales set below)
  const std::vector<WriteCase> shapes = {
      {"llama", 0, 32, 8, 128, 128, false, 16, 0, 0},
      {"qwen3", 0, 16, 8, 128, 128, true, 16, 0, 0},
      {"d64", 0, 8, 2, 64, 64, true, 32, 0, 0},
      {"partial", 0, 16, 8, 128, 64, true, 16, 0, 0},
      {"d80", 0, 5, 1, 80, 40, true, 16, 0, 0},  // 10 of 16 lanes; 8-byte stores at 16-byte + 8
      {"odd_heads", 0, 3, 1, 64, 64, true, 1, 0, 0},
      {"d256", 0, 4, 2, 256, 256, true, 16, 0, 0},
  };
  // Scales: 1, powers of two, inexact, and one pair that saturates K and makes V subnormal.
  const std::pair<float, float> scales[] = {
      {1.0f, 1.0f}, {0.5f, 2.0f}, {0.37f, 3.1f}, {1.0f / 256.0f, 64.0f}};
  std::vector<WriteCase> cases;
  for (const WriteCase& s : shapes) {
    for (const int64_t n : {1, 17, 300}) {
      for (const auto& [k_scale, v_scale] : scales) {
        WriteCase c = s;
        c.n = n;
        c.k_scale = k_scale;
        c.v_scale = v_scale;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

std::string scale_tag(float k, float v) {
  if (k == 1.0f && v == 1.0f) return "s1";
  if (k == 0.5f && v == 2.0f) return "s05_2";
  if (k < 0.01f) return "sat_sub";
  return "inexact";
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8CacheWriteTest, ::testing::ValuesIn(write_cases()),
                         [](const auto& info) {
                           return std::string(info.param.name) + "_n" +
                                  std::to_string(info.param.n) + "_" +
                                  scale_tag(info.param.k_scale, info.param.v_scale);
                         });

class Fp8KvCache : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

// Hand-computed codes: at position 0 the rotation is the identity (cos 1, sin 0) and there is no
// norm, so K and V reach the cache as given; each value / scale rounds to nearest, ties to the
// even code, saturates at 448 and keeps subnormals.
TEST_F(Fp8KvCache, WriteRoundsTiesToEvenSaturatesAndKeepsSubnormals) {
  struct Probe {
    float x;       // a bf16 value
    uint8_t code;  // e4m3 of x / scale
  };
  constexpr float kScale = 0.5f;  // x / 0.5 is exact: the codes below are of 2 x
  const std::vector<Probe> probes = {
      {0.5f, 0x38},          // 1.0
      {0.53125f, 0x38},      // 1.0625: halfway between 1 (mantissa 0) and 1.125 -> 1
      {0.59375f, 0x3a},      // 1.1875: halfway between 1.125 and 1.25 (mantissa 2) -> 1.25
      {-0.53125f, 0xb8},     // -1.0625 -> -1
      {0.5625f, 0x39},       // 1.125 exactly
      {240.0f, 0x7e},        // 480 > 448: saturates
      {0x1p100f, 0x7e},      // far past 448
      {-250.0f, 0xfe},       // -500 -> -448
      {224.0f, 0x7e},        // 448 exactly
      {0x1p-9f, 0x02},       // 2^-8: subnormal, mantissa 2
      {0x1p-11f, 0x00},      // 2^-10: halfway between 0 and 2^-9 -> 0
      {3 * 0x1p-11f, 0x02},  // 3 * 2^-10: halfway between 2^-9 and 2^-8 -> 2^-8 (even)
      {0x1p-10f, 0x01},      // 2^-9: the smallest subnormal
      {0.0f, 0x00},          // zero
      {7.5f, 0x57},          // 15 = 1.875 * 2^3
  };
  const int64_t hd = 64, nh = 1, nkv = 1, n = 1;
  const int64_t width = (nh + 2 * nkv) * hd;
  std::vector<float> row(size_t(width), 0.0f);
  for (int64_t i = 0; i < hd; ++i) {
    const Probe& p = probes[size_t(i) % probes.size()];
    row[size_t(nh * hd + i)] = p.x;           // k
    row[size_t((nh + nkv) * hd + i)] = -p.x;  // v, negated: the sign bit flips
    row[size_t(i)] = 1.0f;                    // q
  }
  const auto qkvb = to_bf16(row);
  for (int64_t i = 0; i < hd; ++i) {
    ASSERT_EQ(bf16_to_f32(qkvb[size_t(nh * hd + i)]), probes[size_t(i) % probes.size()].x)
        << "probe " << i << " is not a bf16 value";
  }
  const cpu::RopeTable table = llama_rope(hd);
  DeviceBuffer<uint16_t> dqkv(qkvb), dq(size_t(nh * hd));
  DeviceBuffer<int32_t> dpos(std::vector<int32_t>{0}), dslots(std::vector<int32_t>{1});
  DeviceBuffer<float> dinv(table.inv_freq);
  const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, hd};
  DeviceBuffer<uint8_t> dkc(std::vector<uint8_t>(size_t(2 * hd), 0x33)),
      dvc(std::vector<uint8_t>(size_t(2 * hd), 0x44));
  KvCacheWrite cache{dslots.get(), dkc.get(), dvc.get(), 2};
  cache.dtype = DType::kF8E4M3;
  cache.k_scale = kScale;
  cache.v_scale = kScale;
  launch_qkv_rope_and_cache(as_bf16(dqkv), nullptr, nullptr, 1e-6f, rope, cache, as_bf16(dq), n, nh,
                            nkv, hd, nullptr);
  sync();
  const auto kc = dkc.download(), vc = dvc.download();
  for (int64_t i = 0; i < hd; ++i) {
    const Probe& p = probes[size_t(i) % probes.size()];
    EXPECT_EQ(kc[size_t(i)], 0x33) << "slot 0 was written";
    EXPECT_EQ(vc[size_t(i)], 0x44) << "slot 0 was written";
    EXPECT_EQ(int(kc[size_t(hd + i)]), int(p.code)) << "k " << p.x << " / " << kScale;
    // The host reference agrees with the hand-computed code.
    EXPECT_EQ(int(f32_to_fp8e4m3(p.x / kScale)), int(p.code)) << p.x;
    if (p.code == 0x00) {
      EXPECT_TRUE(same_code(vc[size_t(hd + i)], 0x80)) << "v " << -p.x;
    } else {
      EXPECT_EQ(int(vc[size_t(hd + i)]), int(p.code ^ 0x80)) << "v " << -p.x << " / " << kScale;
    }
  }
}

// --- 2. end to end: written by the fused prologue, read by paged attention ---

TEST_F(Fp8KvCache, AttentionReadsWhatThePrologueWrote) {
  struct Shape {
    int64_t nh, nkv, hd;
    bool qk_norm;
    int64_t block_size;
    float k_scale, v_scale;
  };
  for (const Shape& sh :
       {Shape{8, 2, 128, false, 16, 0.5f, 2.0f}, Shape{8, 1, 64, true, 32, 0.37f, 1.0f}}) {
    const std::vector<int64_t> lens = {17, 54, 1, 100, 64};
    const int64_t num_seqs = int64_t(lens.size());
    const int64_t nh = sh.nh, nkv = sh.nkv, hd = sh.hd, bs = sh.block_size;
    const int64_t q_size = nh * hd, kv_size = nkv * hd, width = q_size + 2 * kv_size;
    const std::string what = "hd" + std::to_string(hd) + " gqa" + std::to_string(nh / nkv);

    // Block tables over shuffled physical blocks, junk past each context.
    int64_t max_blocks = 0, used = 0;
    for (const int64_t l : lens) {
      max_blocks = std::max(max_blocks, (l + bs - 1) / bs);
      used += (l + bs - 1) / bs;
    }
    max_blocks += 1;
    const int64_t num_blocks = used + 2;
    std::mt19937 rng{uint32_t(hd)};
    std::vector<int32_t> physical(static_cast<size_t>(num_blocks));
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), rng);
    std::vector<int32_t> tables(size_t(num_seqs * max_blocks), int32_t(num_blocks + 9));
    std::vector<int32_t> cu = {0}, seq_lens, positions, slots;
    size_t next = 0;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const int64_t l = lens[size_t(s)];
      for (int64_t b = 0; b < (l + bs - 1) / bs; ++b) {
        tables[size_t(s * max_blocks + b)] = physical[next++];
      }
      for (int64_t p = 0; p < l; ++p) {
        positions.push_back(int32_t(p));
        slots.push_back(int32_t(tables[size_t(s * max_blocks + p / bs)] * bs + p % bs));
      }
      cu.push_back(cu.back() + int32_t(l));
      seq_lens.push_back(int32_t(l));
    }
    const int64_t n = cu.back();

    // The prologue writes the whole batch; unwritten slots hold 448s, which any stray read shows.
    const cpu::RopeTable table = llama_rope(hd);
    DeviceBuffer<uint16_t> dqkv(random_bf16(size_t(n * width), 61, -2.0f, 2.0f)),
        dw(random_bf16(size_t(hd), 62, 0.5f, 1.5f)), dq(size_t(n * q_size));
    DeviceBuffer<int32_t> dpos(positions), dslots(slots);
    DeviceBuffer<float> dinv(table.inv_freq);
    const size_t cache_bytes = size_t(num_blocks * bs * kv_size);
    DeviceBuffer<uint8_t> dkc(std::vector<uint8_t>(cache_bytes, 0x7e)),
        dvc(std::vector<uint8_t>(cache_bytes, 0x7e));
    KvCacheWrite write{dslots.get(), dkc.get(), dvc.get(), num_blocks * bs};
    write.dtype = DType::kF8E4M3;
    write.k_scale = sh.k_scale;
    write.v_scale = sh.v_scale;
    const __nv_bfloat16* w = sh.qk_norm ? as_bf16(dw) : nullptr;
    launch_qkv_rope_and_cache(as_bf16(dqkv), w, w, 1e-6f,
                              RopeArgs{dpos.get(), dinv.get(), table.attention_factor, hd}, write,
                              as_bf16(dq), n, nh, nkv, hd, nullptr);
    sync();

    // The CPU op on what the cache holds: code * scale.
    const auto kc = dkc.download(), vc = dvc.download();
    std::vector<float> k_deq(kc.size()), v_deq(vc.size());
    for (size_t i = 0; i < kc.size(); ++i) {
      k_deq[i] = fp8e4m3_to_f32(kc[i]) * sh.k_scale;
      v_deq[i] = fp8e4m3_to_f32(vc[i]) * sh.v_scale;
    }
    const std::vector<float> q = from_bf16(dq.download());
    const float scale = 1.0f / std::sqrt(float(hd));
    const cpu::KvCacheView view{k_deq.data(), v_deq.data(), num_blocks, bs, nkv, hd};
    const auto cpu_attention = [&](const std::vector<float>& qs, const std::vector<int32_t>& cus) {
      std::vector<float> out(qs.size(), 0.0f);
      cpu::AttentionBatch b;
      b.cu_seqlens_q = cus.data();
      b.seq_lens = seq_lens.data();
      b.block_tables = tables.data();
      b.num_seqs = num_seqs;
      b.max_blocks_per_seq = max_blocks;
      cpu::paged_attention(qs.data(), nh, view, b, scale, out.data());
      return out;
    };
    // The tolerance of test_attention (there |v| <= 1; here |v| <= ~4, so the f16 rounding of
    // the weights, 2^-11 |v|, stays under 2e-3).
    const auto expect_close = [&](const std::vector<uint16_t>& got, const std::vector<float>& want,
                                  const std::string& label) {
      ASSERT_EQ(got.size(), want.size());
      size_t bad = 0, worst_i = 0;
      double worst = -INFINITY;
      for (size_t i = 0; i < got.size(); ++i) {
        double excess =
            std::fabs(double(bf16_to_f32(got[i])) - want[i]) - (3e-3 + 1e-2 * std::fabs(want[i]));
        if (std::isnan(excess)) excess = INFINITY;
        bad += excess > 0.0;
        if (excess > worst) worst = excess, worst_i = i;
      }
      EXPECT_EQ(bad, 0u) << what << " " << label << ": " << bad << " of " << got.size()
                         << " out of tolerance; worst [" << worst_i << "]: got "
                         << bf16_to_f32(got[worst_i]) << " want " << want[worst_i];
    };

    PagedKvCache cache{dkc.get(), dvc.get(), num_blocks, bs, nkv, hd};
    cache.dtype = DType::kF8E4M3;
    cache.k_scale = sh.k_scale;
    cache.v_scale = sh.v_scale;
    DeviceBuffer<int32_t> dcu(cu), dlens(seq_lens), dtables(tables);
    PagedAttentionBatch batch;
    batch.cu_seqlens_q = dcu.get();
    batch.seq_lens = dlens.get();
    batch.block_tables = dtables.get();
    batch.num_seqs = num_seqs;
    batch.num_tokens = n;
    batch.max_blocks_per_seq = max_blocks;
    batch.max_q_len = *std::max_element(lens.begin(), lens.end());
    batch.max_seq_len = batch.max_q_len;

    // Prefill: every row of the batch.
    DeviceBuffer<uint16_t> dout(size_t(n * q_size));
    dout.fill_bytes(0xff);
    paged_attention(as_bf16(dq), nh, cache, batch, scale, as_bf16(dout), nullptr, 0, nullptr);
    sync();
    expect_close(dout.download(), cpu_attention(q, cu), "prefill");

    // Decode: each sequence's last row against its whole context, split over the grid.
    std::vector<int32_t> cu1(size_t(num_seqs + 1));
    std::iota(cu1.begin(), cu1.end(), 0);
    std::vector<float> q1;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const int64_t last = cu[size_t(s + 1)] - 1;
      q1.insert(q1.end(), q.begin() + last * q_size, q.begin() + (last + 1) * q_size);
    }
    DeviceBuffer<uint16_t> dq1(to_bf16(q1)), dout1(q1.size());
    DeviceBuffer<int32_t> dcu1(cu1);
    batch.cu_seqlens_q = dcu1.get();
    batch.num_tokens = num_seqs;
    batch.max_q_len = 1;
    for (const int splits : {1, 3}) {
      const size_t ws_bytes = paged_decode_workspace_bytes(num_seqs, nh, hd, splits);
      DeviceBuffer<uint8_t> ws(ws_bytes);
      ws.fill_bytes(0xff);
      dout1.fill_bytes(0xff);
      launch_paged_attention_decode(as_bf16(dq1), nh, cache, batch, scale, splits, as_bf16(dout1),
                                    ws_bytes ? ws.get() : nullptr, ws_bytes, nullptr);
      sync();
      expect_close(dout1.download(), cpu_attention(q1, cu1),
                   "decode, " + std::to_string(splits) + " splits");
    }
  }
}

// --- 3. what the launchers reject ---

TEST_F(Fp8KvCache, RejectsUnsupportedCombinations) {
  DeviceBuffer<uint16_t> dqkv(4 * 4 * 64), dq(2 * 2 * 64), dk(2 * 64), dv(2 * 64);
  DeviceBuffer<uint8_t> dkc(8 * 64), dvc(8 * 64);
  DeviceBuffer<int32_t> dpos(std::vector<int32_t>{0, 1}), dslots(std::vector<int32_t>{0, 1});
  DeviceBuffer<float> dinv(32);
  const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, 64};
  KvCacheWrite fp8{dslots.get(), dkc.get(), dvc.get(), 8};
  fp8.dtype = DType::kF8E4M3;
  const auto expect_code = [](ErrorCode code, const auto& fn, const std::string& what) {
    try {
      fn();
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << what << ": " << e.what();
    }
  };
  expect_code(
      ErrorCode::kUnsupported,
      [&] {
        launch_rope_and_cache(as_bf16(dq), as_bf16(dk), as_bf16(dv), rope, fp8, 2, 1, 1, 64,
                              nullptr);
      },
      "launch_rope_and_cache into fp8");
  expect_code(
      ErrorCode::kUnsupported,
      [&] { launch_reshape_and_cache(as_bf16(dk), as_bf16(dv), fp8, 2, 1, 64, nullptr); },
      "launch_reshape_and_cache into fp8");
  KvCacheWrite f32 = fp8;
  f32.dtype = DType::kF32;
  expect_code(
      ErrorCode::kUnsupported,
      [&] {
        launch_qkv_rope_and_cache(as_bf16(dqkv), nullptr, nullptr, 1e-6f, rope, f32, as_bf16(dq), 2,
                                  2, 1, 64, nullptr);
      },
      "an f32 cache");
  for (const float bad : {0.0f, -0.5f, NAN, INFINITY}) {
    for (const bool on_k : {true, false}) {
      KvCacheWrite c = fp8;
      (on_k ? c.k_scale : c.v_scale) = bad;
      expect_code(
          ErrorCode::kInvalidArgument,
          [&] {
            launch_qkv_rope_and_cache(as_bf16(dqkv), nullptr, nullptr, 1e-6f, rope, c, as_bf16(dq),
                                      2, 2, 1, 64, nullptr);
          },
          std::string(on_k ? "k_scale " : "v_scale ") + std::to_string(bad));
    }
  }
  // A valid fp8 write of zero tokens launches nothing.
  launch_qkv_rope_and_cache(as_bf16(dqkv), nullptr, nullptr, 1e-6f, rope, fp8, as_bf16(dq), 0, 2, 1,
                            64, nullptr);
  sync();
}

}  // namespace
}  // namespace atom::cuda

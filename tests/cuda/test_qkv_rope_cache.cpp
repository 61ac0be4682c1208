// The fused attention prologue launch_qkv_rope_and_cache (split + q/k RMSNorm + RoPE + paged
// KV-cache write in one kernel) against
//   1. the unfused GPU sequence it replaces, launch_split_qkv -> launch_rms_norm (q, k) ->
//      launch_rope_and_cache: bit for bit (q, both caches, untouched slots);
//   2. the CPU ops, cpu::qk_norm_rope_and_cache (q/k norm) or cpu::rope_neox +
//      cpu::reshape_and_cache (none), in f32 on the same bf16 inputs, within the bound of the bf16
//      roundings (see qk_tolerance);
// over Llama- and Qwen3-like shapes, head_dim 64 to 256, GQA and MHA, odd head counts, partial
// rotary (packet-aligned and not), llama3 and yarn tables with attention factors != 1, and slots
// of -1, below -1 and past the cache.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/ops.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
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
using test::sync;
using test::to_bf16;

// Same bits everywhere; on failure, how many differ and the first one.
void expect_same_bits(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i] && differ++ == 0) first = i;
  }
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << got.size()
                        << " elements differ; first [" << first << "]: got "
                        << bf16_to_f32(got[first]) << " want " << bf16_to_f32(want[first]);
}

struct FusedCase {
  const char* name;
  int64_t n;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t rotary_dim;
  bool qk_norm;
  const char* scaling;     // rope_type
  float attention_factor;  // replaces the table's when > 0
  int64_t block_size;
};

void PrintTo(const FusedCase& c, std::ostream* os) {
  *os << c.name << " n" << c.n << " heads " << c.num_heads << "/" << c.num_kv_heads << " dim "
      << c.head_dim << " rot " << c.rotary_dim << (c.qk_norm ? " qk-norm " : " ") << c.scaling;
}

cpu::RopeTable rope_table(const FusedCase& c) {
  cpu::RopeTable table = test::test_rope_table(c.scaling, c.rotary_dim, 1000000.0);
  if (c.attention_factor > 0.0f) table.attention_factor = c.attention_factor;
  return table;
}

// Bound on |GPU bf16 - CPU f32| for rows x: [rows, head_dim] of the CPU's values before the
// rotation (normed when `normed`). The GPU rounds the normed value twice to bf16 (x * r, then
// times the weight: relative error <= 2 * 2^-8 between them), cos and sin to bf16, each product
// and the sum of the rotation to bf16 (2^-8 each): with |cos|, |sin| <= af, a rotated element is
// within (2 + 1 + 1 + 1) * 2^-8 * af * (|a| + |b|) of the f32 value, under 2^-5 * af * (|a| + |b|)
// with room for the f32 inverse RMS and sin/cos differing in the last bits. Without the norm the
// inputs are exact and 3 * 2^-8 < 2^-6 holds the rotation (as test_ops' RoPE bound). Dims past
// rotary_dim: the norm's two roundings (2^-6 * |x|) or nothing at all (exact copies).
std::vector<float> qk_tolerance(const std::vector<float>& x, int64_t rows, int64_t head_dim,
                                int64_t rotary_dim, float af, bool normed) {
  std::vector<float> tol(x.size(), 0.0f);
  const int64_t half = rotary_dim / 2;
  const float rot = normed ? 0x1p-5f : 0x1p-6f;
  for (int64_t r = 0; r < rows; ++r) {
    const size_t base = size_t(r * head_dim);
    for (int64_t i = 0; i < half; ++i) {
      const size_t a = base + size_t(i), b = a + size_t(half);
      tol[a] = tol[b] = rot * af * (std::fabs(x[a]) + std::fabs(x[b]));
    }
    if (normed) {
      for (int64_t i = rotary_dim; i < head_dim; ++i)
        tol[base + size_t(i)] = 0x1p-6f * std::fabs(x[base + size_t(i)]);
    }
  }
  return tol;
}

class QkvRopeCacheTest : public ::testing::TestWithParam<FusedCase> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_P(QkvRopeCacheTest, MatchesUnfusedSequenceAndCpu) {
  const FusedCase c = GetParam();
  const int64_t n = c.n, nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const int64_t q_size = nh * hd, kv_size = nkv * hd, width = q_size + 2 * kv_size;
  const cpu::RopeTable table = rope_table(c);
  const float af = table.attention_factor;
  const float eps = 1e-6f;

  std::mt19937 rng(uint32_t(n * 1000 + hd));
  std::vector<int32_t> pos(static_cast<size_t>(n), 0);
  for (int32_t& p : pos) p = int32_t(rng() % 131072u);
  pos[0] = 131071;

  // A cache with spare blocks; tokens land on shuffled slots. Skipped: every 7th token (-1, the
  // runner's padding), every 11th from 5 (past the cache), every 13th from 8 (below -1).
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
  std::vector<int32_t> cpu_slots = slots;  // the CPU op rejects what the GPU skips
  for (int32_t& s : cpu_slots) s = (s < 0 || s >= num_slots) ? -1 : s;

  const auto qkvb = random_bf16(size_t(n * width), 31, -2.0f, 2.0f);
  const auto qwb = random_bf16(size_t(hd), 32, 0.25f, 2.0f);
  const auto kwb = random_bf16(size_t(hd), 33, 0.25f, 2.0f);
  const auto junk = random_bf16(size_t(num_slots * kv_size), 34, 100.0f, 200.0f);

  DeviceBuffer<uint16_t> dqkv(qkvb), dqw(qwb), dkw(kwb);
  DeviceBuffer<int32_t> dpos(pos), dslots(slots);
  DeviceBuffer<float> dinv(table.inv_freq);
  const RopeArgs rope{dpos.get(), dinv.get(), af, c.rotary_dim};
  const __nv_bfloat16* qn = c.qk_norm ? as_bf16(dqw) : nullptr;
  const __nv_bfloat16* kn = c.qk_norm ? as_bf16(dkw) : nullptr;

  // Fused. q_out starts as NaN: every element must be written.
  DeviceBuffer<uint16_t> dq_out(size_t(n * q_size)), dkc(junk), dvc(junk);
  dq_out.fill_bytes(0xff);
  const KvCacheWrite cache{dslots.get(), as_bf16(dkc), as_bf16(dvc), num_slots};
  launch_qkv_rope_and_cache(as_bf16(dqkv), qn, kn, eps, rope, cache, as_bf16(dq_out), n, nh, nkv,
                            hd, nullptr);
  sync();
  const auto got_q = dq_out.download(), got_kc = dkc.download(), got_vc = dvc.download();

  // 1. The unfused GPU sequence: the same bits.
  DeviceBuffer<uint16_t> dq(size_t(n * q_size)), dk(size_t(n * kv_size)), dv(size_t(n * kv_size)),
      dkc_ref(junk), dvc_ref(junk);
  launch_split_qkv(as_bf16(dqkv), as_bf16(dq), as_bf16(dk), as_bf16(dv), n, q_size, kv_size,
                   nullptr);
  if (c.qk_norm) {
    launch_rms_norm(as_bf16(dq), qn, as_bf16(dq), n * nh, hd, eps, nullptr);
    launch_rms_norm(as_bf16(dk), kn, as_bf16(dk), n * nkv, hd, eps, nullptr);
  }
  const KvCacheWrite cache_ref{dslots.get(), as_bf16(dkc_ref), as_bf16(dvc_ref), num_slots};
  launch_rope_and_cache(as_bf16(dq), as_bf16(dk), as_bf16(dv), rope, cache_ref, n, nh, nkv, hd,
                        nullptr);
  sync();
  expect_same_bits(got_q, dq.download(), "q vs the unfused sequence");
  expect_same_bits(got_kc, dkc_ref.download(), "k cache vs the unfused sequence");
  expect_same_bits(got_vc, dvc_ref.download(), "v cache vs the unfused sequence");

  // 2. The CPU ops in f32 on the same bf16 inputs.
  const std::vector<float> qkv = from_bf16(qkvb);
  std::vector<float> q(size_t(n * q_size)), k(size_t(n * kv_size)), v(size_t(n * kv_size));
  for (int64_t t = 0; t < n; ++t) {
    const float* row = qkv.data() + t * width;
    std::copy(row, row + q_size, q.begin() + t * q_size);
    std::copy(row + q_size, row + q_size + kv_size, k.begin() + t * kv_size);
    std::copy(row + q_size + kv_size, row + width, v.begin() + t * kv_size);
  }
  const std::vector<float> qw = from_bf16(qwb), kw = from_bf16(kwb);
  std::vector<float> q_pre = q, k_pre = k;  // before the rotation, for the tolerance
  if (c.qk_norm) {
    cpu::rms_norm(q.data(), qw.data(), n * nh, hd, eps, q_pre.data());
    cpu::rms_norm(k.data(), kw.data(), n * nkv, hd, eps, k_pre.data());
  }
  std::vector<float> want_kc = from_bf16(junk), want_vc = want_kc;
  const cpu::KvCacheView view{want_kc.data(), want_vc.data(), num_blocks, c.block_size, nkv, hd};
  if (c.qk_norm) {
    const cpu::QkNormRopeArgs args{qw.data(), kw.data(), eps, c.rotary_dim, &table};
    cpu::qk_norm_rope_and_cache(q.data(), k.data(), v.data(), pos.data(), cpu_slots.data(), n, nh,
                                args, view);
  } else {
    cpu::rope_neox(q.data(), pos.data(), n, nh, hd, c.rotary_dim, table);
    cpu::rope_neox(k.data(), pos.data(), n, nkv, hd, c.rotary_dim, table);
    cpu::reshape_and_cache(k.data(), v.data(), cpu_slots.data(), n, view);
  }
  expect_within(from_bf16(got_q), q, qk_tolerance(q_pre, n * nh, hd, c.rotary_dim, af, c.qk_norm),
                "q vs CPU");
  // The k cache: each written row within the bound of its token's k; the rest exactly the junk.
  const std::vector<float> k_tol = qk_tolerance(k_pre, n * nkv, hd, c.rotary_dim, af, c.qk_norm);
  std::vector<float> kc_tol(want_kc.size(), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t s = cpu_slots[size_t(t)];
    if (s >= 0)
      std::copy(k_tol.begin() + t * kv_size, k_tol.begin() + (t + 1) * kv_size,
                kc_tol.begin() + int64_t(s) * kv_size);
  }
  expect_within(from_bf16(got_kc), want_kc, kc_tol, "k cache vs CPU");
  EXPECT_EQ(from_bf16(got_vc), want_vc) << "v cache vs CPU";
}

std::vector<FusedCase> fused_cases() {
  // name, n, heads, kv heads, head_dim, rotary_dim, qk norm, rope type, attention factor, block
  const std::vector<FusedCase> shapes = {
      {"llama", 0, 32, 8, 128, 128, false, "llama3", 1.25f, 16},  // llama3 table, af != 1
      {"qwen3", 0, 16, 8, 128, 128, true, "default", 0.0f, 16},
      {"d64", 0, 8, 2, 64, 64, true, "default", 0.0f, 32},
      {"mha", 0, 6, 6, 128, 128, false, "yarn", 0.0f, 16},           // nh == nkv, yarn's af
      {"partial", 0, 16, 8, 128, 64, true, "llama3", 0.8f, 16},      // half 32: whole packets
      {"partial_odd", 0, 4, 2, 64, 40, false, "default", 0.0f, 16},  // half 20: inside packets
      {"d80", 0, 5, 1, 80, 40, true, "default", 0.0f, 16},  // 10 of 16 lanes; k, v share a warp
      {"odd_heads", 0, 3, 1, 64, 64, true, "default", 0.0f, 1},  // q q q k | v; block size 1
      {"d256", 0, 4, 2, 256, 256, true, "yarn", 0.0f, 16},       // one warp a head
  };
  std::vector<FusedCase> cases;
  for (const FusedCase& s : shapes) {
    for (const int64_t n : {1, 3, 17, 300}) {
      FusedCase c = s;
      c.n = n;
      cases.push_back(c);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkvRopeCacheTest, ::testing::ValuesIn(fused_cases()),
                         [](const auto& info) {
                           return std::string(info.param.name) + "_n" +
                                  std::to_string(info.param.n);
                         });

class QkvRopeCacheChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_F(QkvRopeCacheChecks, RejectsWhatItDoesNotHandle) {
  // Buffers big enough for every call below (2 tokens, 4 + 2 * 2 heads of up to 264).
  DeviceBuffer<uint16_t> dqkv(2 * 8 * 264 + 8), dq(2 * 4 * 264 + 8), dkc(8 * 2 * 264),
      dvc(8 * 2 * 264), dw(264 + 8);
  DeviceBuffer<int32_t> dpos(std::vector<int32_t>{0, 1}), dslots(std::vector<int32_t>{0, 1});
  DeviceBuffer<float> dinv(132);
  const KvCacheWrite cache{dslots.get(), as_bf16(dkc), as_bf16(dvc), 8};
  const auto call = [&](int64_t head_dim, int64_t rotary_dim, const __nv_bfloat16* qkv,
                        const __nv_bfloat16* qn, const __nv_bfloat16* kn) {
    const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, rotary_dim};
    launch_qkv_rope_and_cache(qkv, qn, kn, 1e-6f, rope, cache, as_bf16(dq), 2, 4, 2, head_dim,
                              nullptr);
  };
  const auto expect_code = [](ErrorCode code, const auto& fn, const char* what) {
    try {
      fn();
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << what << ": " << e.what();
    }
  };
  const __nv_bfloat16* w = as_bf16(dw);
  expect_code(
      ErrorCode::kUnsupported, [&] { call(20, 20, as_bf16(dqkv), w, w); },
      "head_dim not a multiple of 8");
  expect_code(
      ErrorCode::kUnsupported, [&] { call(264, 264, as_bf16(dqkv), w, w); }, "head_dim over 256");
  expect_code(
      ErrorCode::kUnsupported, [&] { call(64, 64, as_bf16(dqkv) + 1, w, w); }, "qkv off 16 bytes");
  expect_code(
      ErrorCode::kUnsupported, [&] { call(64, 64, as_bf16(dqkv), w + 2, w); },
      "q_norm off 16 bytes");
  expect_code(
      ErrorCode::kInvalidArgument, [&] { call(64, 64, as_bf16(dqkv), w, nullptr); },
      "q_norm without k_norm");
  expect_code(
      ErrorCode::kInvalidArgument, [&] { call(64, 66, as_bf16(dqkv), w, w); },
      "rotary_dim past head_dim");
  expect_code(
      ErrorCode::kInvalidArgument, [&] { call(64, 63, as_bf16(dqkv), w, w); }, "odd rotary_dim");
  expect_code(
      ErrorCode::kInvalidArgument,
      [&] {
        const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, 64};
        launch_qkv_rope_and_cache(as_bf16(dqkv), w, w, 1e-6f, rope, cache, as_bf16(dq), -1, 4, 2,
                                  64, nullptr);
      },
      "negative n");
  // Zero tokens: nothing to launch, nothing written.
  const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, 64};
  launch_qkv_rope_and_cache(as_bf16(dqkv), w, w, 1e-6f, rope, cache, as_bf16(dq), 0, 4, 2, 64,
                            nullptr);
  sync();
}

// Timings of the fused launch and of the unfused sequence it replaces at decode and prefill batch
// sizes, on the Llama-3.1-8B and Qwen3-8B head shapes: kReps launches captured in one CUDA graph
// (as the runner replays decode steps), median of 5 timed replays, microseconds a layer. Printed
// for the record; the assertion is that replays give the first launch's bits (no state carried
// from one launch to the next).
TEST_F(QkvRopeCacheChecks, TimingsAgainstUnfused) {
  struct Shape {
    const char* name;
    int64_t nh, nkv;
    bool qk_norm;
  };
  constexpr int64_t kHd = 128, kReps = 100, kSlots = 4096;
  cudaStream_t stream;
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (const Shape& s : {Shape{"llama-8b", 32, 8, false}, Shape{"qwen3-8b", 32, 8, true}}) {
    for (const int64_t n : {1, 8, 64, 512}) {
      const int64_t q_size = s.nh * kHd, kv_size = s.nkv * kHd, width = q_size + 2 * kv_size;
      std::vector<int32_t> pos(static_cast<size_t>(n)), slots(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) {
        pos[size_t(t)] = int32_t(200 + t);
        slots[size_t(t)] = int32_t(t);
      }
      DeviceBuffer<uint16_t> dqkv(random_bf16(size_t(n * width), 41, -2.0f, 2.0f)),
          dw(random_bf16(size_t(kHd), 42, 0.5f, 1.5f));
      DeviceBuffer<uint16_t> dq(size_t(n * q_size)), dk(size_t(n * kv_size)),
          dv(size_t(n * kv_size)), dkc(size_t(kSlots * kv_size)), dvc(size_t(kSlots * kv_size));
      DeviceBuffer<int32_t> dpos(pos), dslots(slots);
      const FusedCase rc{"", n, s.nh, s.nkv, kHd, kHd, s.qk_norm, "default", 0.0f, 16};
      DeviceBuffer<float> dinv(rope_table(rc).inv_freq);
      const RopeArgs rope{dpos.get(), dinv.get(), 1.0f, kHd};
      const KvCacheWrite cache{dslots.get(), as_bf16(dkc), as_bf16(dvc), kSlots};
      const __nv_bfloat16* w = s.qk_norm ? as_bf16(dw) : nullptr;
      const auto fused = [&] {
        launch_qkv_rope_and_cache(as_bf16(dqkv), w, w, 1e-6f, rope, cache, as_bf16(dq), n, s.nh,
                                  s.nkv, kHd, stream);
      };
      const auto unfused = [&] {
        launch_split_qkv(as_bf16(dqkv), as_bf16(dq), as_bf16(dk), as_bf16(dv), n, q_size, kv_size,
                         stream);
        if (s.qk_norm) {
          launch_rms_norm(as_bf16(dq), w, as_bf16(dq), n * s.nh, kHd, 1e-6f, stream);
          launch_rms_norm(as_bf16(dk), w, as_bf16(dk), n * s.nkv, kHd, 1e-6f, stream);
        }
        launch_rope_and_cache(as_bf16(dq), as_bf16(dk), as_bf16(dv), rope, cache, n, s.nh, s.nkv,
                              kHd, stream);
      };
      fused();
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const auto first_q = dq.download(), first_kc = dkc.download();
      const auto time_us = [&](const auto& fn) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        for (int64_t i = 0; i < kReps; ++i) fn();
        ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        cudaEvent_t a, b;
        ATOM_CUDA_CHECK(cudaEventCreate(&a));
        ATOM_CUDA_CHECK(cudaEventCreate(&b));
        ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up
        std::vector<float> us;
        for (int rep = 0; rep < 5; ++rep) {
          ATOM_CUDA_CHECK(cudaEventRecord(a, stream));
          ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
          ATOM_CUDA_CHECK(cudaEventRecord(b, stream));
          ATOM_CUDA_CHECK(cudaEventSynchronize(b));
          float ms = 0.0f;
          ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
          us.push_back(ms * 1000.0f / float(kReps));
        }
        ATOM_CUDA_CHECK(cudaEventDestroy(a));
        ATOM_CUDA_CHECK(cudaEventDestroy(b));
        ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
        ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
        std::sort(us.begin(), us.end());
        return us[us.size() / 2];
      };
      const float t_unfused = time_us(unfused);
      const float t_fused = time_us(fused);
      std::printf("qkv_rope_and_cache %-8s n %4ld: fused %7.2f us, unfused %7.2f us (%.2fx)\n",
                  s.name, long(n), double(t_fused), double(t_unfused), double(t_unfused / t_fused));
      expect_same_bits(dq.download(), first_q, std::string(s.name) + " q after replays");
      expect_same_bits(dkc.download(), first_kc, std::string(s.name) + " k cache after replays");
    }
  }
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace atom::cuda

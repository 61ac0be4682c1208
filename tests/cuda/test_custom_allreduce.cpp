// Custom all-reduce (one-shot, two-shot, fused add + RMSNorm, INT8/INT4 transfer) across the
// visible GPUs, the ranks being threads of this process as the tensor-parallel runner runs them.
// bf16 sums must equal the host's f32 sum in rank order bit for bit on every rank; quantized
// sums must equal a host replay of the codec bit for bit and stay within the documented error
// bound; the fused kernel must equal all_reduce + launch_add_rms_norm bit for bit; captured
// graphs replayed 100 times must sum fresh inputs; NCCL's all-reduce must agree within bf16
// rounding. Cases needing more GPUs (or peer access) than visible skip, naming what is missing.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/custom_allreduce.h"
#include "atom/backends/cuda/norm.h"
#include "atom/core/dtype.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "cuda_test_util.h"

#if defined(ATOM_NCCL) && __has_include(<nccl.h>)
#include <nccl.h>
#define ATOM_TEST_NCCL 1
#endif

namespace atom::cuda {
namespace {

using test::DeviceBuffer;
using test::random_floats;
using test::to_bf16;

using Bits = std::vector<uint16_t>;  // bf16 values as raw bits

constexpr uint16_t kSentinel = 0xffff;  // a NaN the kernels never write
constexpr int64_t kGuard = 16;          // elements past n that must stay untouched
constexpr int64_t kTimeoutMs = 20000;   // a stuck barrier traps instead of hanging the suite
constexpr int64_t kMiB = int64_t(1) << 20;

__nv_bfloat16* bf(const DeviceBuffer<uint16_t>& d) { return test::as_bf16(d); }

// An index or count as size_t (a function, unlike size_t(x), is never read as a declarator).
constexpr size_t to_size(int64_t v) { return static_cast<size_t>(v); }

int visible_gpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::vector<int> first_devices(int world) {
  std::vector<int> d(to_size(world), 0);
  std::iota(d.begin(), d.end(), 0);
  return d;
}

// Empty when `world` GPUs with peer access to each other are visible, else why not.
std::string missing(int world) {
  const int n = visible_gpus();
  if (n < world) return fmt::format("needs {} GPUs with peer access, {} visible", world, n);
  const std::string p2p = CustomAllReduce::peer_access_problem(first_devices(world));
  if (!p2p.empty()) return "no peer access between the GPUs: " + p2p;
  return {};
}

// fn(rank) on one thread per rank with GPU `rank` current; rethrows the first rank's failure.
void run_ranks(int world, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(to_size(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        ATOM_CUDA_CHECK(cudaSetDevice(r));
        fn(r);
      } catch (...) {
        errors[to_size(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

using Group = std::vector<std::unique_ptr<CustomAllReduce>>;

Group make_group(int world, const CustomAllReduceConfig& config) {
  auto rendezvous = std::make_shared<CustomAllReduceGroup>(world);
  const std::vector<int> devices = first_devices(world);
  Group g(to_size(world));
  run_ranks(world, [&](int r) {
    g[to_size(r)] = std::make_unique<CustomAllReduce>(rendezvous, r, devices, config);
  });
  return g;
}

// Buffers for up to 2 MiB messages, either algorithm at any size up to that.
CustomAllReduceConfig test_config(AllReduceQuant quant = AllReduceQuant::kNone) {
  CustomAllReduceConfig c;
  c.max_bytes = 2 * kMiB;
  c.thresholds = AllReduceThresholds{2 * kMiB, 2 * kMiB};
  c.quant = quant;
  c.barrier_timeout_ms = kTimeoutMs;
  return c;
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void sync() const { ATOM_CUDA_CHECK(cudaStreamSynchronize(s)); }
};

// Rank r's contribution: bf16 values in [-1, 1); rank 0 has an all-zero quantization group
// (values 32..63: scale 0) and rank 1 one large value (a group with a wide range).
Bits rank_input(int64_t n, int rank, uint32_t seed) {
  std::vector<float> v =
      random_floats(to_size(n), seed * 7919u + uint32_t(rank) * 131u + 1u, -1.0f, 1.0f);
  if (rank == 0) {
    for (int64_t i = 32; i < std::min<int64_t>(64, n); ++i) v[to_size(i)] = 0.0f;
  }
  if (rank == 1 && n > 100) v[100] = 48.0f;
  return to_bf16(v);
}

std::vector<Bits> inputs(int world, int64_t n, uint32_t seed) {
  std::vector<Bits> in(to_size(world));
  for (int r = 0; r < world; ++r) in[to_size(r)] = rank_input(n, r, seed);
  return in;
}

int qmax_of(AllReduceQuant q) { return q == AllReduceQuant::kInt8 ? 127 : 7; }

// The codec's round trip on the host, with the kernels' exact f32 operations: per group of 32
// values, scale = amax / qmax, q = clamp(rint(v / scale)), value = q * scale.
std::vector<float> host_round_trip(const Bits& x, AllReduceQuant quant) {
  std::vector<float> out(x.size());
  if (quant == AllReduceQuant::kNone) {
    for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_to_f32(x[i]);
    return out;
  }
  const int qmax = qmax_of(quant);
  for (size_t g = 0; g < x.size(); g += 32) {
    const size_t end = std::min(x.size(), g + 32);
    float amax = 0.0f;
    for (size_t i = g; i < end; ++i) amax = std::max(amax, std::fabs(bf16_to_f32(x[i])));
    const float scale = amax / float(qmax);
    for (size_t i = g; i < end; ++i) {
      int q = 0;
      if (scale > 0.0f) {
        q = int(std::nearbyint(bf16_to_f32(x[i]) / scale));
        q = std::clamp(q, -qmax, qmax);
      }
      const float d = float(q) * scale;
      out[i] = d;
    }
  }
  return out;
}

// sum over ranks in rank order, in f32, rounded once to bf16: what every rank must get.
Bits host_sum(const std::vector<Bits>& in, AllReduceQuant quant = AllReduceQuant::kNone) {
  std::vector<std::vector<float>> v;
  for (const Bits& b : in) v.push_back(host_round_trip(b, quant));
  Bits out(in[0].size());
  for (size_t i = 0; i < out.size(); ++i) {
    float acc = v[0][i];
    for (size_t r = 1; r < v.size(); ++r) acc += v[r][i];
    out[i] = f32_to_bf16(acc);
  }
  return out;
}

// got[0, n) must equal want bit for bit; got[n, size) (guard elements) must still be kSentinel.
void expect_bits(const Bits& got, const Bits& want, const std::string& what) {
  ASSERT_GE(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i] && bad++ < 5) {
      ADD_FAILURE() << what << " [" << i << "]: got " << bf16_to_f32(got[i]) << " (0x" << std::hex
                    << got[i] << ") want " << bf16_to_f32(want[i]) << " (0x" << want[i] << ")"
                    << std::dec;
    }
  }
  for (size_t i = want.size(); i < got.size(); ++i) {
    if (got[i] != kSentinel && bad++ < 5) {
      ADD_FAILURE() << what << ": guard element " << i << " past n=" << want.size()
                    << " was written";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " wrong elements";
}

// RMSNorm of bf16 rows as HF computes it (inverse RMS in double): out = bf16(w * bf16(x * r)).
std::vector<float> host_norm(const Bits& x, const Bits& w, int64_t rows, int64_t dim, double eps) {
  std::vector<float> out(x.size());
  for (int64_t t = 0; t < rows; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) {
      const double f = bf16_to_f32(x[to_size(t * dim + i)]);
      ss += f * f;
    }
    const float r = float(1.0 / std::sqrt(ss / double(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) {
      const float y = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[to_size(t * dim + i)]) * r));
      out[to_size(t * dim + i)] = bf16_to_f32(f32_to_bf16(bf16_to_f32(w[to_size(i)]) * y));
    }
  }
  return out;
}

// Loose check that a normed output is the norm of `residual` (the bit-exact comparison is against
// the GPU's own unfused path): within 2^-6 relative, a few bf16 ulps, of HF's rounding.
void expect_normed(const Bits& got, const Bits& residual, const Bits& w, int64_t rows, int64_t dim,
                   float eps, const std::string& what) {
  const std::vector<float> want = host_norm(residual, w, rows, dim, eps);
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float g = bf16_to_f32(got[i]);
    if (!(std::fabs(g - want[i]) <= std::ldexp(std::fabs(want[i]), -6) + 1e-3f) && bad++ < 5) {
      ADD_FAILURE() << what << " [" << i << "]: got " << g << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

Bits residual_after(const Bits& residual, const Bits& sum) {
  Bits out(residual.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = f32_to_bf16(bf16_to_f32(residual[i]) + bf16_to_f32(sum[i]));
  }
  return out;
}

class CustomAllReduceTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    const std::string why = missing(GetParam());
    if (!why.empty()) GTEST_SKIP() << why;
  }
  int world() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Ranks, CustomAllReduceTest, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return fmt::format("tp{}", p.param);
                         });

const int64_t kSizes[] = {1, 7, 4096, 65537, int64_t(1) << 20};

enum class Layout { kSeparate, kInPlace, kInputMisaligned, kOutputMisaligned };
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kSeparate:
      return "separate";
    case Layout::kInPlace:
      return "in-place";
    case Layout::kInputMisaligned:
      return "input-misaligned";
    case Layout::kOutputMisaligned:
      return "output-misaligned";
  }
  return "?";
}

// One all-reduce of `in` on every rank; returns each rank's output (n values then kGuard guard
// elements, except in place).
std::vector<Bits> reduce_once(Group& g, const std::vector<Bits>& in, AllReduceAlgo algo,
                              std::optional<AllReduceQuant> quant, Layout layout) {
  const int world = int(g.size());
  const int64_t n = int64_t(in[0].size());
  std::vector<Bits> got(to_size(world));
  run_ranks(world, [&](int r) {
    Stream st;
    DeviceBuffer<uint16_t> din(in[to_size(r)], layout == Layout::kInputMisaligned ? 1 : 0);
    DeviceBuffer<uint16_t> dout(to_size(n + kGuard), layout == Layout::kOutputMisaligned ? 1 : 0);
    dout.fill_bytes(0xff);
    __nv_bfloat16* out = layout == Layout::kInPlace ? bf(din) : bf(dout);
    g[to_size(r)]->all_reduce(bf(din), out, n, st.s, algo, quant);
    st.sync();
    got[to_size(r)] = layout == Layout::kInPlace ? din.download() : dout.download();
  });
  return got;
}

TEST_P(CustomAllReduceTest, SumsEqualTheHostSumBitwiseOnEveryRank) {
  Group g = make_group(world(), test_config());
  uint32_t seed = 1;
  for (const int64_t n : kSizes) {
    for (const AllReduceAlgo algo : {AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot}) {
      for (const Layout layout : {Layout::kSeparate, Layout::kInPlace, Layout::kInputMisaligned,
                                  Layout::kOutputMisaligned}) {
        const std::vector<Bits> in = inputs(world(), n, seed++);
        const Bits want = host_sum(in);
        const std::vector<Bits> got = reduce_once(g, in, algo, std::nullopt, layout);
        for (int r = 0; r < world(); ++r) {
          const std::string what = fmt::format("tp{} n={} {} {} rank {}", world(), n,
                                               all_reduce_algo_name(algo), layout_name(layout), r);
          expect_bits(got[to_size(r)], want, what);
          EXPECT_TRUE(got[to_size(r)] == got[0]) << what << ": differs from rank 0";
        }
      }
    }
  }
}

TEST_P(CustomAllReduceTest, AutoPicksByThresholdsAndGivesTheSameBits) {
  CustomAllReduceConfig c = test_config();
  c.thresholds = AllReduceThresholds{16 * 1024, 2 * kMiB};  // one-shot to 16 KiB, then two-shot
  Group g = make_group(world(), c);
  EXPECT_EQ(g[0]->choose(16 * 1024), AllReduceAlgo::kOneShot);
  EXPECT_EQ(g[0]->choose(16 * 1024 + 2), AllReduceAlgo::kTwoShot);
  EXPECT_EQ(g[0]->choose(2 * kMiB + 2), AllReduceAlgo::kNccl);
  EXPECT_TRUE(g[0]->should_use(2 * kMiB));
  EXPECT_FALSE(g[0]->should_use(2 * kMiB + 2));
  for (const int64_t n : {int64_t(8192), int64_t(8193), int64_t(300001)}) {
    const std::vector<Bits> in = inputs(world(), n, 77);
    const std::vector<Bits> got =
        reduce_once(g, in, AllReduceAlgo::kAuto, std::nullopt, Layout::kSeparate);
    for (int r = 0; r < world(); ++r) {
      expect_bits(got[to_size(r)], host_sum(in), fmt::format("auto n={} rank {}", n, r));
    }
  }
}

TEST_P(CustomAllReduceTest, QuantizedSumsReplayTheCodecAndStayWithinTheBound) {
  // INT8 comes from the configuration, INT4 from the per-call override.
  Group g = make_group(world(), test_config(AllReduceQuant::kInt8));
  uint32_t seed = 100;
  for (const AllReduceQuant q : {AllReduceQuant::kInt8, AllReduceQuant::kInt4}) {
    const int qmax = qmax_of(q);
    for (const int64_t n : kSizes) {
      for (const AllReduceAlgo algo : {AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot}) {
        const std::vector<Bits> in = inputs(world(), n, seed++);
        const std::optional<AllReduceQuant> over =
            q == AllReduceQuant::kInt8 ? std::nullopt : std::optional<AllReduceQuant>(q);
        const Layout layout = n == 65537 ? Layout::kInputMisaligned : Layout::kSeparate;
        const std::vector<Bits> got = reduce_once(g, in, algo, over, layout);
        const Bits want = host_sum(in, q);
        const std::string what = fmt::format("tp{} {} n={} {}", world(), all_reduce_quant_name(q),
                                             n, all_reduce_algo_name(algo));
        for (int r = 0; r < world(); ++r) {
          expect_bits(got[to_size(r)], want, fmt::format("{} rank {}", what, r));
        }
        // The documented bound (custom_allreduce.h), per element of group g:
        //   |out - sum_r x_r| <= sum_r amax_{r,g} * (1/(2 qmax) + 2^-21 + W 2^-24) + 2^-8 |out|
        const Bits& out = got[0];
        double worst_ratio = 0.0, worst_err = 0.0;
        int64_t worst_i = -1;
        for (int64_t g0 = 0; g0 < n; g0 += 32) {
          const int64_t end = std::min<int64_t>(n, g0 + 32);
          double budget = 0.0;
          for (int r = 0; r < world(); ++r) {
            double amax = 0.0;
            for (int64_t i = g0; i < end; ++i) {
              amax = std::max(amax, std::fabs(double(bf16_to_f32(in[to_size(r)][to_size(i)]))));
            }
            budget += amax * (0.5 / qmax + std::ldexp(1.0, -21) + world() * std::ldexp(1.0, -24));
          }
          for (int64_t i = g0; i < end; ++i) {
            double exact = 0.0;
            for (int r = 0; r < world(); ++r) exact += bf16_to_f32(in[to_size(r)][to_size(i)]);
            const double o = bf16_to_f32(out[to_size(i)]);
            const double err = std::fabs(o - exact);
            const double tol = budget + std::ldexp(std::fabs(o), -8) + 1e-30;
            worst_err = std::max(worst_err, err);
            if (err / tol > worst_ratio) {
              worst_ratio = err / tol;
              worst_i = i;
            }
          }
        }
        EXPECT_LE(worst_ratio, 1.0) << what << ": error over the bound at " << worst_i;
        // The transfer really was quantized (bf16 would be exact up to the final rounding, far
        // below a quantization step at these sizes).
        if (n >= 4096) {
          EXPECT_GT(worst_err, 0.25 / qmax) << what << ": no quantization error at all";
        }
      }
    }
  }
}

struct FusedShape {
  int64_t rows;
  int64_t dim;
  size_t residual_offset;  // elements: 1 makes residual misaligned (scalar packets)
};

// all_reduce_add_rms_norm against all_reduce into an aligned buffer + launch_add_rms_norm.
TEST_P(CustomAllReduceTest, FusedAddRmsNormEqualsAllReduceThenAddRmsNorm) {
  Group g = make_group(world(), test_config());
  const FusedShape shapes[] = {{1, 4096, 0},  {7, 4096, 0},
                               {3, 1001, 0},   // dim % 8 != 0: the two-kernel path
                               {5, 136, 0},    // dim % 32 != 0: fused in bf16 only
                               {64, 8192, 0},  // 1 MiB, more rows than blocks
                               {2, 64, 1},    {37, 512, 0}};
  const float eps = 1e-6f;
  uint32_t seed = 500;
  for (const FusedShape& s : shapes) {
    const int64_t n = s.rows * s.dim;
    for (const AllReduceQuant q :
         {AllReduceQuant::kNone, AllReduceQuant::kInt8, AllReduceQuant::kInt4}) {
      for (const AllReduceAlgo algo : {AllReduceAlgo::kAuto, AllReduceAlgo::kTwoShot}) {
        for (const bool in_place : {false, true}) {
          const std::vector<Bits> x = inputs(world(), n, seed++);
          const Bits residual = to_bf16(random_floats(to_size(n), seed++, -2.0f, 2.0f));
          const Bits weight = to_bf16(random_floats(to_size(s.dim), seed++, 0.5f, 1.5f));
          std::vector<Bits> out_fused(to_size(world())), out_plain(to_size(world()));
          std::vector<Bits> res_fused(to_size(world())), res_plain(to_size(world()));
          run_ranks(world(), [&](int r) {
            Stream st;
            DeviceBuffer<uint16_t> dx(x[to_size(r)]), dx2(x[to_size(r)]), dw(weight);
            DeviceBuffer<uint16_t> dres_f(residual, s.residual_offset);
            DeviceBuffer<uint16_t> dres_p(residual, s.residual_offset);
            DeviceBuffer<uint16_t> dt(to_size(n)), dout_p(to_size(n)), dout_f(to_size(n));
            dout_f.fill_bytes(0xff);
            CustomAllReduce& ar = *g[to_size(r)];
            ar.all_reduce(bf(dx), bf(dt), n, st.s, AllReduceAlgo::kTwoShot, q);
            launch_add_rms_norm(bf(dt), bf(dres_p), bf(dw), bf(dout_p), s.rows, s.dim, eps, st.s);
            __nv_bfloat16* out = in_place ? bf(dx2) : bf(dout_f);
            ar.all_reduce_add_rms_norm(bf(dx2), bf(dres_f), bf(dw), out, s.rows, s.dim, eps, st.s,
                                       algo, q);
            st.sync();
            out_plain[to_size(r)] = dout_p.download();
            out_fused[to_size(r)] = in_place ? dx2.download() : dout_f.download();
            res_plain[to_size(r)] = dres_p.download();
            res_fused[to_size(r)] = dres_f.download();
          });
          const Bits want_res = residual_after(residual, host_sum(x, q));
          for (int r = 0; r < world(); ++r) {
            const std::string what =
                fmt::format("tp{} [{}, {}] res+{} {} {} {} rank {}", world(), s.rows, s.dim,
                            s.residual_offset, all_reduce_quant_name(q), all_reduce_algo_name(algo),
                            in_place ? "in-place" : "separate", r);
            expect_bits(out_fused[to_size(r)], out_plain[to_size(r)], what + " out");
            expect_bits(res_fused[to_size(r)], res_plain[to_size(r)], what + " residual");
            expect_bits(res_fused[to_size(r)], want_res, what + " residual vs host");
            EXPECT_TRUE(out_fused[to_size(r)] == out_fused[0]) << what << ": differs from rank 0";
          }
          expect_normed(out_fused[0], want_res, weight, s.rows, s.dim, eps,
                        fmt::format("[{}, {}] {} norm", s.rows, s.dim, all_reduce_quant_name(q)));
        }
      }
    }
  }
}

// One graph per rank holding five custom calls (one-shot, two-shot, INT8, fused, and the
// unfused pair the fused one must equal), replayed 100 times with fresh inputs, with eager calls
// between some replays so the call count (hence the buffer parity) shifts under the graph.
TEST_P(CustomAllReduceTest, CapturedGraphReplaysSumFreshInputsEveryTime) {
  CustomAllReduceConfig c = test_config();
  c.thresholds = AllReduceThresholds{256 * 1024, 2 * kMiB};
  Group g = make_group(world(), c);
  constexpr int kIters = 100;
  const int64_t n1 = 4099, n2 = 65537, n3 = 4096, rows = 4, dim = 2048, n4 = rows * dim;
  const int64_t n_eager = 777;
  const float eps = 1e-5f;
  struct Iter {
    std::vector<Bits> a, b, c, x, e;  // per rank
    Bits residual;
  };
  std::vector<Iter> it(kIters);
  for (int i = 0; i < kIters; ++i) {
    it[to_size(i)].a = inputs(world(), n1, 1000 + i);
    it[to_size(i)].b = inputs(world(), n2, 2000 + i);
    it[to_size(i)].c = inputs(world(), n3, 3000 + i);
    it[to_size(i)].x = inputs(world(), n4, 4000 + i);
    it[to_size(i)].e = inputs(world(), n_eager, 5000 + i);
    it[to_size(i)].residual = to_bf16(random_floats(to_size(n4), 6000 + i, -2.0f, 2.0f));
  }
  const Bits weight = to_bf16(random_floats(to_size(dim), 7, 0.5f, 1.5f));
  struct Out {
    Bits a, b, c, fused, plain, res_f, res_p, e;
  };
  std::vector<std::vector<Out>> got(to_size(world()), std::vector<Out>(kIters));
  run_ranks(world(), [&](int r) {
    CustomAllReduce& ar = *g[to_size(r)];
    Stream st;
    DeviceBuffer<uint16_t> ia(to_size(n1)), oa(to_size(n1)), ib(to_size(n2)), ob(to_size(n2));
    DeviceBuffer<uint16_t> ic(to_size(n3)), oc(to_size(n3)), x(to_size(n4)), t(to_size(n4));
    DeviceBuffer<uint16_t> res_f(to_size(n4)), res_p(to_size(n4)), of(to_size(n4)), op(to_size(n4));
    DeviceBuffer<uint16_t> ie(to_size(n_eager)), oe(to_size(n_eager)), w(weight);
    cudaGraph_t graph = nullptr;
    ATOM_CUDA_CHECK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
    ar.all_reduce(bf(ia), bf(oa), n1, st.s);  // one-shot by size
    ar.all_reduce(bf(ib), bf(ob), n2, st.s);  // two-shot by size
    ar.all_reduce(bf(ic), bf(oc), n3, st.s, AllReduceAlgo::kOneShot, AllReduceQuant::kInt8);
    ar.all_reduce_add_rms_norm(bf(x), bf(res_f), bf(w), bf(of), rows, dim, eps, st.s);
    ar.all_reduce(bf(x), bf(t), n4, st.s, AllReduceAlgo::kTwoShot);
    launch_add_rms_norm(bf(t), bf(res_p), bf(w), bf(op), rows, dim, eps, st.s);
    ATOM_CUDA_CHECK(cudaStreamEndCapture(st.s, &graph));
    cudaGraphExec_t exec = nullptr;
    ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    auto up = [&](DeviceBuffer<uint16_t>& d, const Bits& h) {
      ATOM_CUDA_CHECK(
          cudaMemcpyAsync(d.get(), h.data(), h.size() * 2, cudaMemcpyHostToDevice, st.s));
    };
    auto down = [&](Bits& h, const DeviceBuffer<uint16_t>& d) {
      h.resize(d.size());
      ATOM_CUDA_CHECK(cudaMemcpyAsync(h.data(), d.get(), d.bytes(), cudaMemcpyDeviceToHost, st.s));
    };
    for (int i = 0; i < kIters; ++i) {
      const Iter& in = it[to_size(i)];
      Out& o = got[to_size(r)][to_size(i)];
      up(ia, in.a[to_size(r)]);
      up(ib, in.b[to_size(r)]);
      up(ic, in.c[to_size(r)]);
      up(x, in.x[to_size(r)]);
      up(res_f, in.residual);
      up(res_p, in.residual);
      ATOM_CUDA_CHECK(cudaGraphLaunch(exec, st.s));
      if (i % 10 == 3) {  // one eager call: the graph's next replay runs on the other parity
        up(ie, in.e[to_size(r)]);
        ar.all_reduce(bf(ie), bf(oe), n_eager, st.s);
        down(o.e, oe);
      }
      down(o.a, oa);
      down(o.b, ob);
      down(o.c, oc);
      down(o.fused, of);
      down(o.plain, op);
      down(o.res_f, res_f);
      down(o.res_p, res_p);
      st.sync();
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  });
  for (int i = 0; i < kIters; ++i) {
    const Iter& in = it[to_size(i)];
    const Bits want_a = host_sum(in.a), want_b = host_sum(in.b);
    const Bits want_c = host_sum(in.c, AllReduceQuant::kInt8);
    const Bits want_res = residual_after(in.residual, host_sum(in.x));
    for (int r = 0; r < world(); ++r) {
      const Out& o = got[to_size(r)][to_size(i)];
      const std::string what = fmt::format("tp{} replay {} rank {}", world(), i, r);
      expect_bits(o.a, want_a, what + " one-shot");
      expect_bits(o.b, want_b, what + " two-shot");
      expect_bits(o.c, want_c, what + " int8");
      expect_bits(o.res_f, want_res, what + " fused residual");
      expect_bits(o.res_p, want_res, what + " plain residual");
      expect_bits(o.fused, o.plain, what + " fused out");
      if (i % 10 == 3) expect_bits(o.e, host_sum(in.e), what + " eager");
    }
    if (::testing::Test::HasFailure()) break;  // one replay's report is enough
  }
}

// Many calls in flight with no host synchronization: both buffer halves are reused while peers
// may still be one call behind.
TEST_P(CustomAllReduceTest, BackToBackCallsWithoutSynchronizationStayCorrect) {
  Group g = make_group(world(), test_config());
  struct Call {
    int64_t n;
    AllReduceAlgo algo;
    AllReduceQuant quant;
  };
  const Call pattern[] = {
      {1000, AllReduceAlgo::kOneShot, AllReduceQuant::kNone},
      {50000, AllReduceAlgo::kTwoShot, AllReduceQuant::kNone},
      {7, AllReduceAlgo::kOneShot, AllReduceQuant::kInt4},
      {300001, AllReduceAlgo::kTwoShot, AllReduceQuant::kInt8},
      {4096, AllReduceAlgo::kTwoShot, AllReduceQuant::kNone},
      {100000, AllReduceAlgo::kOneShot, AllReduceQuant::kNone},
      {33, AllReduceAlgo::kTwoShot, AllReduceQuant::kInt4},
  };
  constexpr int kCalls = 49;
  std::vector<std::vector<Bits>> in(kCalls);
  for (int i = 0; i < kCalls; ++i) in[to_size(i)] = inputs(world(), pattern[i % 7].n, 9000 + i);
  std::vector<std::vector<Bits>> got(to_size(world()), std::vector<Bits>(kCalls));
  run_ranks(world(), [&](int r) {
    Stream st;
    std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> din, dout;
    for (int i = 0; i < kCalls; ++i) {
      din.push_back(std::make_unique<DeviceBuffer<uint16_t>>(in[to_size(i)][to_size(r)]));
      dout.push_back(std::make_unique<DeviceBuffer<uint16_t>>(in[to_size(i)][to_size(r)].size()));
    }
    for (int i = 0; i < kCalls; ++i) {
      const Call& c = pattern[i % 7];
      g[to_size(r)]->all_reduce(bf(*din[to_size(i)]), bf(*dout[to_size(i)]), c.n, st.s, c.algo,
                                c.quant);
    }
    st.sync();
    for (int i = 0; i < kCalls; ++i) got[to_size(r)][to_size(i)] = dout[to_size(i)]->download();
  });
  for (int i = 0; i < kCalls; ++i) {
    const Bits want = host_sum(in[to_size(i)], pattern[i % 7].quant);
    for (int r = 0; r < world(); ++r) {
      expect_bits(got[to_size(r)][to_size(i)], want, fmt::format("call {} rank {}", i, r));
    }
  }
}

TEST_P(CustomAllReduceTest, RefusesSizesAndDevicesItCannotServe) {
  CustomAllReduceConfig c = test_config();
  c.thresholds = AllReduceThresholds{64 * 1024, 1 * kMiB};
  Group g = make_group(world(), c);
  EXPECT_TRUE(g[0]->should_use(1 * kMiB));
  EXPECT_FALSE(g[0]->should_use(1 * kMiB + 2));
  EXPECT_TRUE(g[0]->fits(AllReduceAlgo::kTwoShot, kMiB));
  EXPECT_FALSE(g[0]->fits(AllReduceAlgo::kTwoShot, kMiB + 1));  // 2 MiB + 2 bytes
  // Every rank throws before launching anything, so no rank waits at a barrier.
  run_ranks(world(), [&](int r) {
    Stream st;
    DeviceBuffer<uint16_t> d(to_size(kMiB));
    try {
      g[to_size(r)]->all_reduce(bf(d), bf(d), kMiB / 2 + 1, st.s);  // above two_shot_max_bytes
      ADD_FAILURE() << "rank " << r << ": auto above the thresholds did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kOutOfRange) << e.what();
    }
    try {
      g[to_size(r)]->all_reduce(bf(d), bf(d), kMiB + 1, st.s, AllReduceAlgo::kOneShot);
      ADD_FAILURE() << "rank " << r << ": a message above max_bytes did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kOutOfRange) << e.what();
    }
    const int other = (r + 1) % world();
    ATOM_CUDA_CHECK(cudaSetDevice(other));
    try {
      g[to_size(r)]->all_reduce(bf(d), bf(d), 16, st.s);
      ADD_FAILURE() << "rank " << r << ": a call from another device did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
    ATOM_CUDA_CHECK(cudaSetDevice(r));
  });
  EXPECT_THROW(g[0]->set_thresholds(AllReduceThresholds{4 * kMiB, 4 * kMiB}), Error);
  // The slots were sized for one-shot up to 64 KiB or a 2 MiB / W shard: 2 MiB one-shot needs
  // larger buffers, 128 KiB fits.
  try {
    g[0]->set_thresholds(AllReduceThresholds{2 * kMiB, 2 * kMiB});
    ADD_FAILURE() << "one-shot beyond the slots was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfRange) << e.what();
  }
  g[0]->set_thresholds(AllReduceThresholds{128 * 1024, 2 * kMiB});
  EXPECT_EQ(g[0]->choose(128 * 1024), AllReduceAlgo::kOneShot);
  EXPECT_EQ(g[0]->choose(2 * kMiB), AllReduceAlgo::kTwoShot);
}

#if defined(ATOM_TEST_NCCL)

#define NCCL_OK(expr)                                                                           \
  do {                                                                                          \
    const ncclResult_t nccl_res_ = (expr);                                                      \
    if (nccl_res_ != ncclSuccess) {                                                             \
      throw_error(ErrorCode::kInternal, "{} failed: {}", #expr, ncclGetErrorString(nccl_res_)); \
    }                                                                                           \
  } while (0)

struct NcclComms {
  std::vector<ncclComm_t> comms;
  explicit NcclComms(int world) : comms(to_size(world)) {
    const std::vector<int> devices = first_devices(world);
    NCCL_OK(ncclCommInitAll(comms.data(), world, devices.data()));
  }
  ~NcclComms() {
    for (ncclComm_t c : comms) ncclCommDestroy(c);
  }
};

// NCCL's bf16 sum rounds each partial sum to bf16, ours only the total: they agree within
// W roundings of the partial sums, |nccl - ours| <= W * 2^-8 * sum_r |x_r|.
TEST_P(CustomAllReduceTest, AgreesWithNcclAllReduce) {
  Group g = make_group(world(), test_config());
  NcclComms nccl(world());
  for (const int64_t n : {int64_t(4096), int64_t(65537), int64_t(1) << 20}) {
    const std::vector<Bits> in = inputs(world(), n, 4242);
    std::vector<Bits> ours(to_size(world())), theirs(to_size(world()));
    run_ranks(world(), [&](int r) {
      Stream st;
      DeviceBuffer<uint16_t> din(in[to_size(r)]), d1(to_size(n)), d2(to_size(n));
      g[to_size(r)]->all_reduce(bf(din), bf(d1), n, st.s);
      NCCL_OK(ncclAllReduce(din.get(), d2.get(), to_size(n), ncclBfloat16, ncclSum,
                            nccl.comms[to_size(r)], st.s));
      st.sync();
      ours[to_size(r)] = d1.download();
      theirs[to_size(r)] = d2.download();
    });
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      double abs_sum = 0.0;
      for (int r = 0; r < world(); ++r)
        abs_sum += std::fabs(bf16_to_f32(in[to_size(r)][to_size(i)]));
      const double tol = world() * std::ldexp(abs_sum, -8) + 1e-30;
      const double a = bf16_to_f32(ours[0][to_size(i)]), b = bf16_to_f32(theirs[0][to_size(i)]);
      if (!(std::fabs(a - b) <= tol) && bad++ < 5) {
        ADD_FAILURE() << "n=" << n << " [" << i << "]: ours " << a << " nccl " << b;
      }
    }
    EXPECT_EQ(bad, 0) << "n=" << n;
  }
}

#endif  // ATOM_TEST_NCCL

// Microseconds per call, ours against NCCL, 8 KiB .. 8 MiB (printed, not asserted: speed is
// judged by the numbers, which the tensor-parallel thresholds are tuned from).
TEST_P(CustomAllReduceTest, TimingAgainstNccl) {
  CustomAllReduceConfig c;  // the shipped defaults: 8 MiB buffers, default thresholds
  c.barrier_timeout_ms = kTimeoutMs;
  Group g = make_group(world(), c);
#if defined(ATOM_TEST_NCCL)
  NcclComms nccl(world());
#endif
  constexpr int kWarmup = 5, kIters = 50;
  struct Row {
    int64_t bytes;
    std::string what;
    double us;
  };
  std::vector<Row> rows;
  run_ranks(world(), [&](int r) {
    Stream st;
    DeviceBuffer<uint16_t> din(to_bf16(random_floats(to_size(4 * kMiB), 11 + r, -1.0f, 1.0f)));
    DeviceBuffer<uint16_t> dout(to_size(4 * kMiB));
    cudaEvent_t start, stop;
    ATOM_CUDA_CHECK(cudaEventCreate(&start));
    ATOM_CUDA_CHECK(cudaEventCreate(&stop));
    auto time = [&](int64_t bytes, const std::string& what, const std::function<void()>& call) {
      for (int i = 0; i < kWarmup; ++i) call();
      ATOM_CUDA_CHECK(cudaEventRecord(start, st.s));
      for (int i = 0; i < kIters; ++i) call();
      ATOM_CUDA_CHECK(cudaEventRecord(stop, st.s));
      ATOM_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r == 0) rows.push_back(Row{bytes, what, 1000.0 * ms / kIters});
    };
    CustomAllReduce& ar = *g[to_size(r)];
    for (int64_t bytes = 8 * 1024; bytes <= 8 * kMiB; bytes *= 4) {
      const int64_t n = bytes / 2;
      for (const AllReduceAlgo algo : {AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot}) {
        if (!ar.fits(algo, n)) continue;
        for (const AllReduceQuant q :
             {AllReduceQuant::kNone, AllReduceQuant::kInt8, AllReduceQuant::kInt4}) {
          const std::string what =
              fmt::format("{} {}{}", all_reduce_algo_name(algo), all_reduce_quant_name(q),
                          ar.choose(bytes) == algo ? " (auto)" : "");
          time(bytes, what, [&] { ar.all_reduce(bf(din), bf(dout), n, st.s, algo, q); });
        }
      }
#if defined(ATOM_TEST_NCCL)
      time(bytes, "nccl", [&] {
        NCCL_OK(ncclAllReduce(din.get(), dout.get(), to_size(n), ncclBfloat16, ncclSum,
                              nccl.comms[to_size(r)], st.s));
      });
#endif
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  });
  cudaDeviceProp prop{};
  ATOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("custom all-reduce, tp%d on %s (us per call, rank 0's stream)\n", world(), prop.name);
#if !defined(ATOM_TEST_NCCL)
  std::printf("  (built without NCCL: no baseline)\n");
#endif
  for (const Row& row : rows) {
    std::printf("  %8lld KiB  %-26s %9.2f\n", static_cast<long long>(row.bytes / 1024),
                row.what.c_str(), row.us);
  }
  EXPECT_FALSE(rows.empty());
}

// --- host-only checks: no GPU needed ---

TEST(CustomAllReduceSettings, ParsesQuickReduceQuantization) {
  EXPECT_EQ(parse_quick_reduce_quantization(std::nullopt), AllReduceQuant::kNone);
  EXPECT_EQ(parse_quick_reduce_quantization(""), AllReduceQuant::kNone);
  EXPECT_EQ(parse_quick_reduce_quantization("NONE"), AllReduceQuant::kNone);
  EXPECT_EQ(parse_quick_reduce_quantization("FP"), AllReduceQuant::kNone);
  EXPECT_EQ(parse_quick_reduce_quantization("INT8"), AllReduceQuant::kInt8);
  EXPECT_EQ(parse_quick_reduce_quantization("int8"), AllReduceQuant::kInt8);
  EXPECT_EQ(parse_quick_reduce_quantization("INT6"), AllReduceQuant::kInt8);
  EXPECT_EQ(parse_quick_reduce_quantization("INT4"), AllReduceQuant::kInt4);
  EXPECT_EQ(parse_quick_reduce_quantization(" Int4 "), AllReduceQuant::kInt4);
  try {
    parse_quick_reduce_quantization("INT3");
    ADD_FAILURE() << "INT3 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("AITER_QUICK_REDUCE_QUANTIZATION"), std::string::npos)
        << e.what();
  }
}

TEST(CustomAllReduceSettings, ReadsQuantizationFromTheEnvironment) {
  const std::optional<std::string> saved = envs::raw("AITER_QUICK_REDUCE_QUANTIZATION");
  envs::set("AITER_QUICK_REDUCE_QUANTIZATION", "INT4");
  EXPECT_EQ(quick_reduce_quantization_from_env(), AllReduceQuant::kInt4);
  envs::set("AITER_QUICK_REDUCE_QUANTIZATION", "INT8");
  EXPECT_EQ(quick_reduce_quantization_from_env(), AllReduceQuant::kInt8);
  envs::unset("AITER_QUICK_REDUCE_QUANTIZATION");
  EXPECT_EQ(quick_reduce_quantization_from_env(), AllReduceQuant::kNone);
  if (saved) envs::set("AITER_QUICK_REDUCE_QUANTIZATION", *saved);
}

TEST(CustomAllReduceSettings, ThresholdsPickOneShotThenTwoShotThenNccl) {
  for (const int w : {2, 4, 8}) {
    const AllReduceThresholds t = default_all_reduce_thresholds(w, 8 * kMiB);
    EXPECT_GT(t.one_shot_max_bytes, 0);
    EXPECT_LE(t.one_shot_max_bytes, t.two_shot_max_bytes);
    EXPECT_EQ(t.two_shot_max_bytes, 8 * kMiB);
    EXPECT_EQ(choose_all_reduce_algo(t, 2), AllReduceAlgo::kOneShot);
    EXPECT_EQ(choose_all_reduce_algo(t, t.one_shot_max_bytes), AllReduceAlgo::kOneShot);
    EXPECT_EQ(choose_all_reduce_algo(t, t.one_shot_max_bytes + 2), AllReduceAlgo::kTwoShot);
    EXPECT_EQ(choose_all_reduce_algo(t, 8 * kMiB), AllReduceAlgo::kTwoShot);
    EXPECT_EQ(choose_all_reduce_algo(t, 8 * kMiB + 2), AllReduceAlgo::kNccl);
  }
  // More ranks make one-shot's (W-1)-fold traffic costlier: its range shrinks.
  EXPECT_GE(default_all_reduce_thresholds(2, 8 * kMiB).one_shot_max_bytes,
            default_all_reduce_thresholds(4, 8 * kMiB).one_shot_max_bytes);
  EXPECT_GE(default_all_reduce_thresholds(4, 8 * kMiB).one_shot_max_bytes,
            default_all_reduce_thresholds(8, 8 * kMiB).one_shot_max_bytes);
  // Never above the buffers.
  EXPECT_EQ(default_all_reduce_thresholds(2, 64 * 1024).one_shot_max_bytes, 64 * 1024);
}

TEST(CustomAllReduceSettings, GroupSizeIsChecked) {
  EXPECT_THROW(CustomAllReduceGroup(1), Error);
  EXPECT_THROW(CustomAllReduceGroup(kCustomAllReduceMaxRanks + 1), Error);
  EXPECT_NO_THROW(CustomAllReduceGroup(2));
}

// A rank that cannot join makes every rank throw (none waits for it), naming the cause.
TEST(CustomAllReduceSettings, EveryRankThrowsWhenOneRankFails) {
  auto group = std::make_shared<CustomAllReduceGroup>(2);
  const std::vector<int> devices = {0, 1};
  std::vector<std::string> messages(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CustomAllReduceConfig c;
      if (r == 0) c.max_blocks = 0;  // invalid on rank 0 only
      try {
        CustomAllReduce ar(group, r, devices, c);
      } catch (const Error& e) {
        messages[to_size(r)] = e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(messages[to_size(r)].find("max_blocks"), std::string::npos)
        << "rank " << r << ": " << messages[to_size(r)];
  }
  // Two ranks on one GPU are refused before any CUDA call.
  EXPECT_NE(CustomAllReduce::peer_access_problem(std::vector<int>{0, 0}).find("share GPU"),
            std::string::npos);
}

}  // namespace
}  // namespace atom::cuda

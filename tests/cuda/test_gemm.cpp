// The GEMM y = x · W^T (+ bias) against cpu::matmul on the same bf16 weights and bf16-rounded
// activations, on both of its paths (cuBLASLt, and the GEMV kernel for small m): decode and
// prefill row counts, the model's projection shapes, an LM head with an odd vocabulary (f32
// logits), k and n that are not multiples of 8, misaligned pointers, the plan cache, replay
// inside a CUDA graph; the GEMV over awkward n and k at every m it serves, against the CPU and
// against cuBLASLt, and the calls it must leave to cuBLASLt.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/ggml_types.h"
#include "atom/core/tensor.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::as_bf16;
using test::DeviceBuffer;
using test::from_bf16;
using test::gpu_visible;
using test::random_bf16;

struct GemmCase {
  int64_t m, n, k;
  bool bias;
  bool f32_out;
  size_t misalign;  // elements by which x and y are shifted off 16-byte alignment
};

void PrintTo(const GemmCase& c, std::ostream* os) {
  *os << "m" << c.m << " n" << c.n << " k" << c.k << (c.bias ? " +bias" : "")
      << (c.f32_out ? " f32" : " bf16") << (c.misalign ? " misaligned" : "");
}

class CudaGemmTest : public ::testing::TestWithParam<GemmCase> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

// Reference and error bound of one case, from cpu::matmul on the same bf16 values:
//   want = x · W^T (+ bias) in f32; abs = |x| · |W|^T, which bounds each sum's rounding error:
//   an f32 sum of k products is within k * 2^-24 * abs of the exact one, on the GPU and the CPU
//   alike (whatever their summation order, split-K included), so the two differ by at most
//   2 * k * 2^-24 * abs. A bf16 output adds its own rounding, 2^-8 relative.
struct Reference {
  std::vector<float> want, tol;
};

// x · W^T and |x| · |W|^T, [m, n] f32: what every reference of these operands is made from.
struct Products {
  std::vector<float> dot, abs_dot;
};

Products products(int64_t m, int64_t n, int64_t k, const std::vector<uint16_t>& x,
                  const std::vector<uint16_t>& w) {
  Products p;
  p.dot.resize(size_t(m * n));
  p.abs_dot.resize(p.dot.size());
  const std::vector<float> xf = from_bf16(x);
  cpu::matmul(xf.data(), m, cpu::make_qmatrix(GgmlType::kBF16, w.data(), n, k), p.dot.data());
  // |bf16| is the value with its sign bit cleared.
  std::vector<float> xa(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) xa[i] = std::fabs(xf[i]);
  std::vector<uint16_t> wa(w.size());
  for (size_t i = 0; i < w.size(); ++i) wa[i] = w[i] & 0x7fff;
  cpu::matmul(xa.data(), m, cpu::make_qmatrix(GgmlType::kBF16, wa.data(), n, k), p.abs_dot.data());
  return p;
}

// The first c.m rows of p (computed for at least c.m rows of x, n = c.n, k = c.k), plus bias.
Reference reference(const GemmCase& c, const Products& p, const std::vector<float>& bias) {
  Reference r;
  r.want.resize(size_t(c.m * c.n));
  r.tol.resize(r.want.size());
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      const size_t o = size_t(i * c.n + j);
      r.want[o] = p.dot[o] + (c.bias ? bias[size_t(j)] : 0.0f);
      const float acc =
          2.0f * float(c.k) * 0x1p-24f * p.abs_dot[o] + 0x1p-22f * std::fabs(r.want[o]);
      r.tol[o] = c.f32_out ? acc + 1e-30f : 0x1p-8f * (std::fabs(r.want[o]) + acc) + acc + 1e-30f;
    }
  }
  return r;
}

Reference reference(const GemmCase& c, const std::vector<uint16_t>& x,
                    const std::vector<uint16_t>& w, const std::vector<float>& bias) {
  return reference(c, products(c.m, c.n, c.k, x, w), bias);
}

// Whether Gemm::launch takes the GEMV for this call (gemm.h): m within the limit, k % 8 == 0,
// x and W 16-byte aligned (cudaMalloc's pointers are; `misalign` shifts x off).
bool takes_gemv(const Gemm& gemm, int64_t m, int64_t k, size_t x_misalign) {
  return m <= gemm.gemv_max_rows() && k % 8 == 0 && x_misalign == 0;
}

void expect_within(const std::vector<float>& got, const Reference& r, const std::string& what) {
  test::expect_within(got, r.want, r.tol, what);
}

TEST_P(CudaGemmTest, MatchesCpuMatmul) {
  const GemmCase c = GetParam();
  const auto x = random_bf16(size_t(c.m * c.k), 31, -1.0f, 1.0f);
  const auto w = random_bf16(size_t(c.n * c.k), 32, -1.0f, 1.0f);
  const auto bias_b = random_bf16(size_t(c.n), 33, -4.0f, 4.0f);
  // A bias has the output's dtype; the f32 bias gets values off the bf16 grid.
  std::vector<float> bias = from_bf16(bias_b);
  if (c.f32_out) {
    for (size_t j = 0; j < bias.size(); ++j) bias[j] += 1e-3f * float(j % 7);
  }
  const Reference r = reference(c, x, w, bias);

  // Both paths: cuBLASLt alone, then the default dispatch (the GEMV where it applies).
  for (const int gemv_rows : {0, Gemm::kDefaultGemvMaxRows}) {
    SCOPED_TRACE("gemv_max_rows " + std::to_string(gemv_rows));
    Gemm gemm;
    gemm.set_gemv_max_rows(gemv_rows);
    DeviceBuffer<uint16_t> dx(x, c.misalign), dw(w), dbias_b(bias_b);
    DeviceBuffer<float> dbias_f(bias);
    std::vector<float> got;
    if (c.f32_out) {
      DeviceBuffer<float> dy(size_t(c.m * c.n), c.misalign);
      gemm.launch(as_bf16(dx), as_bf16(dw), c.bias ? dbias_f.get() : nullptr, dy.get(), c.m, c.n,
                  c.k, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      got = dy.download();
      // Again: the cached plan, the same bits.
      gemm.launch(as_bf16(dx), as_bf16(dw), c.bias ? dbias_f.get() : nullptr, dy.get(), c.m, c.n,
                  c.k, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(dy.download(), got);
    } else {
      DeviceBuffer<uint16_t> dy(size_t(c.m * c.n), c.misalign);
      gemm.launch(as_bf16(dx), as_bf16(dw), c.bias ? as_bf16(dbias_b) : nullptr, as_bf16(dy), c.m,
                  c.n, c.k, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      const auto bits = dy.download();
      got = from_bf16(bits);
      gemm.launch(as_bf16(dx), as_bf16(dw), c.bias ? as_bf16(dbias_b) : nullptr, as_bf16(dy), c.m,
                  c.n, c.k, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(dy.download(), bits);
    }
    // The GEMV makes no cuBLASLt plan: none is the proof the call took it.
    EXPECT_EQ(gemm.num_plans(), takes_gemv(gemm, c.m, c.k, c.misalign) ? 0u : 1u);
    expect_within(got, r, gemv_rows == 0 ? "cuBLASLt" : "default dispatch");
  }
}

std::vector<GemmCase> make_cases() {
  std::vector<GemmCase> cases;
  for (const int64_t m : {1, 7, 64, 300}) {
    // The 0.6B-class model's projections: square, up (gate/up-like) and down.
    cases.push_back({m, 64, 64, false, false, 0});
    cases.push_back({m, 1536, 576, m % 2 == 1, false, 0});
    cases.push_back({m, 576, 1536, m % 2 == 0, false, 0});
    // The LM head: an odd vocabulary, f32 logits.
    cases.push_back({m, 4099, 576, m == 7, true, 0});
  }
  // k and n not multiples of 8: leading dimensions off 16-byte multiples.
  for (const int64_t m : {1, 7, 64}) cases.push_back({m, 64, 17, false, false, 0});
  cases.push_back({7, 576, 577, true, false, 0});
  cases.push_back({300, 1536, 1001, false, false, 0});
  cases.push_back({17, 4099, 576, true, false, 0});  // odd n, bf16 output
  cases.push_back({5, 4099, 575, false, true, 0});
  // Long k over few outputs: the shapes where cuBLASLt splits k.
  cases.push_back({1, 64, 4096, true, false, 0});
  cases.push_back({3, 576, 8192, false, false, 0});
  cases.push_back({2, 4099, 4096, false, true, 0});
  // x and y off 16-byte alignment.
  cases.push_back({7, 576, 576, true, false, 1});
  cases.push_back({64, 4099, 576, false, true, 1});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaGemmTest, ::testing::ValuesIn(make_cases()),
                         [](const auto& info) {
                           const GemmCase& c = info.param;
                           return "m" + std::to_string(c.m) + "_n" + std::to_string(c.n) + "_k" +
                                  std::to_string(c.k) + (c.bias ? "_bias" : "") +
                                  (c.f32_out ? "_f32" : "_bf16") +
                                  (c.misalign ? "_misaligned" : "");
                         });

class CudaGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_F(CudaGemm, LinearEntryPointAndPlanCache) {
  constexpr int64_t kM = 9, kN = 72, kK = 40;
  const auto x = random_bf16(size_t(kM * kK), 34, -1.0f, 1.0f);
  const auto w = random_bf16(size_t(kN * kK), 35, -1.0f, 1.0f);
  const auto b = random_bf16(size_t(kN), 36, -1.0f, 1.0f);
  DeviceBuffer<uint16_t> dx(x), dw(w), db(b), dy(size_t(kM * kN)), dy2(size_t(kM * kN));
  Gemm gemm(size_t(4) << 20);
  EXPECT_EQ(gemm.workspace_bytes(), size_t(4) << 20);
  EXPECT_EQ(gemm.gemv_max_rows(), Gemm::kDefaultGemvMaxRows);
  gemm.set_gemv_max_rows(0);  // the plan cache is cuBLASLt's: every call goes there
  EXPECT_EQ(gemm.gemv_max_rows(), 0);
  const Tensor tx(dx.get(), DType::kBF16, {kM, kK}, Device::kCuda);
  const Tensor tw(dw.get(), DType::kBF16, {kN, kK}, Device::kCuda);
  const Tensor tb(db.get(), DType::kBF16, {kN}, Device::kCuda);
  gemm.linear(tx, tw, tb, Tensor(dy.get(), DType::kBF16, {kM, kN}, Device::kCuda), nullptr);
  gemm.launch(as_bf16(dx), as_bf16(dw), as_bf16(db), as_bf16(dy2), kM, kN, kK, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dy.download(), dy2.download());
  EXPECT_EQ(gemm.num_plans(), 1u);  // the same shape, bias and alignment: one plan
  // Without bias and with another m: new plans.
  gemm.linear(tx, tw, Tensor(), Tensor(dy.get(), DType::kBF16, {kM, kN}, Device::kCuda), nullptr);
  gemm.linear(Tensor(dx.get(), DType::kBF16, {kM - 1, kK}, Device::kCuda), tw, tb,
              Tensor(dy.get(), DType::kBF16, {kM - 1, kN}, Device::kCuda), nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(gemm.num_plans(), 3u);

  // Zero rows: nothing to do.
  gemm.linear(Tensor(dx.get(), DType::kBF16, {0, kK}, Device::kCuda), tw, tb,
              Tensor(dy.get(), DType::kBF16, {0, kN}, Device::kCuda), nullptr);
  EXPECT_EQ(gemm.num_plans(), 3u);

  // The GEMV through the entry point: no plan, and the result of the cuBLASLt path within one
  // bf16 rounding of each (|y| < 2^5 here: x, W in [-1, 1), k = 40).
  gemm.set_gemv_max_rows(Gemm::kGemvRowsLimit);
  gemm.linear(Tensor(dx.get(), DType::kBF16, {kM - 1, kK}, Device::kCuda), tw, tb,
              Tensor(dy2.get(), DType::kBF16, {kM - 1, kN}, Device::kCuda), nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(gemm.num_plans(), 3u);
  const std::vector<float> lt = from_bf16(dy.download()), gv = from_bf16(dy2.download());
  for (int64_t i = 0; i < (kM - 1) * kN; ++i) {
    ASSERT_NEAR(gv[size_t(i)], lt[size_t(i)], 0x1p-8f * std::fabs(lt[size_t(i)]) + 1e-5f) << i;
  }
  EXPECT_THROW(gemm.set_gemv_max_rows(-1), Error);
  EXPECT_THROW(gemm.set_gemv_max_rows(Gemm::kGemvRowsLimit + 1), Error);
  EXPECT_EQ(gemm.gemv_max_rows(), Gemm::kGemvRowsLimit);
}

TEST_F(CudaGemm, LinearRejectsBadArguments) {
  DeviceBuffer<uint16_t> d(4096);
  DeviceBuffer<float> df(4096);
  Gemm gemm(0);
  const auto t = [&](DType dt, std::initializer_list<int64_t> s, Device dev = Device::kCuda) {
    return Tensor(dt == DType::kF32 ? static_cast<void*>(df.get()) : d.get(), dt, s, dev);
  };
  const auto code_of = [&](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y) {
    try {
      gemm.linear(x, w, b, y, nullptr);
    } catch (const Error& e) {
      return int(e.code());
    }
    return -1;
  };
  const Tensor x = t(DType::kBF16, {4, 16}), w = t(DType::kBF16, {8, 16});
  const Tensor y = t(DType::kBF16, {4, 8});
  const int inv = int(ErrorCode::kInvalidArgument), unsup = int(ErrorCode::kUnsupported);
  EXPECT_EQ(code_of(x, t(DType::kBF16, {8, 15}), Tensor(), y), inv);               // k mismatch
  EXPECT_EQ(code_of(x, w, Tensor(), t(DType::kBF16, {4, 9})), inv);                // n mismatch
  EXPECT_EQ(code_of(x, w, t(DType::kF32, {8}), y), inv);                           // bias dtype
  EXPECT_EQ(code_of(x, w, t(DType::kBF16, {9}), y), inv);                          // bias length
  EXPECT_EQ(code_of(x, w, Tensor(), t(DType::kBF16, {4, 8}, Device::kCpu)), inv);  // host y
  EXPECT_EQ(code_of(t(DType::kF16, {4, 16}), t(DType::kF16, {8, 16}), Tensor(), y), unsup);
  EXPECT_EQ(code_of(x, w, Tensor(), t(DType::kF16, {4, 8})), unsup);
  // The launcher checks its sizes.
  EXPECT_THROW(gemm.launch(as_bf16(d), as_bf16(d), static_cast<const __nv_bfloat16*>(nullptr),
                           as_bf16(d), 4, 8, 0, nullptr),
               Error);
}

// Each shape's first call chooses its algorithm; later calls only enqueue work, so they can be
// captured in a CUDA graph and replayed with the same result.
// Both paths: cuBLASLt (GEMV off) and the GEMV (m = 3 <= the default limit).
TEST_F(CudaGemm, ReplaysInsideCudaGraph) {
  for (const int gemv_rows : {0, Gemm::kDefaultGemvMaxRows}) {
    SCOPED_TRACE("gemv_max_rows " + std::to_string(gemv_rows));
    constexpr int64_t kM = 3, kN = 4099, kK = 576;
    const auto x = random_bf16(size_t(kM * kK), 37, -1.0f, 1.0f);
    const auto w = random_bf16(size_t(kN * kK), 38, -1.0f, 1.0f);
    DeviceBuffer<uint16_t> dx(x), dw(w);
    DeviceBuffer<float> eager(size_t(kM * kN)), graphed(size_t(kM * kN));
    Gemm gemm;
    gemm.set_gemv_max_rows(gemv_rows);
    cudaStream_t stream;
    ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    gemm.launch(as_bf16(dx), as_bf16(dw), static_cast<const float*>(nullptr), eager.get(), kM, kN,
                kK, stream);
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));

    cudaGraph_t graph;
    cudaGraphExec_t exec;
    ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    gemm.launch(as_bf16(dx), as_bf16(dw), static_cast<const float*>(nullptr), graphed.get(), kM, kN,
                kK, stream);
    ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_EQ(graphed.download(), eager.download());
    EXPECT_EQ(gemm.num_plans(), gemv_rows == 0 ? 1u : 0u);
    ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
    ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  }
}

// --- the GEMV path (m <= Gemm::kGemvRowsLimit) ---

struct GemvShape {
  int64_t n, k;
};

void PrintTo(const GemvShape& s, std::ostream* os) { *os << "n" << s.n << " k" << s.k; }

class CudaGemvTest : public ::testing::TestWithParam<GemvShape> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

// Guard elements after y: the GEMV must write none of them.
constexpr size_t kGuard = 64;

// Every m from 1 to kGemvRowsLimit, with and without bias, bf16 and f32 outputs, against the CPU
// reference (tolerance: reference() above, the f32 accumulation bound plus, for bf16 y, y's one
// rounding: half an ulp, at most 2^-8 |y|) and against cuBLASLt on the same
// operands: both lie within tol of the exact result, so within 2 tol of each other. The n's cut
// row groups short (1, 7, 129: not multiples of 4, fewer rows than SMs) and the k's end mid-warp
// (8: one chunk for 32 lanes; 72: 9 chunks) or run long (4096, 14336: the 8B model's).
TEST_P(CudaGemvTest, MatchesCpuAndCublasLt) {
  const GemvShape s = GetParam();
  constexpr int64_t kRows = Gemm::kGemvRowsLimit;
  const auto x = random_bf16(size_t(kRows * s.k), 41, -1.0f, 1.0f);
  const auto w = random_bf16(size_t(s.n * s.k), 42, -1.0f, 1.0f);
  const auto bias_b = random_bf16(size_t(s.n), 43, -4.0f, 4.0f);
  std::vector<float> bias_f = from_bf16(bias_b);  // the f32 bias off the bf16 grid
  for (size_t j = 0; j < bias_f.size(); ++j) bias_f[j] += 1e-3f * float(j % 7);
  const Products p = products(kRows, s.n, s.k, x, w);

  DeviceBuffer<uint16_t> dx(x), dw(w), dbias_b(bias_b);
  DeviceBuffer<float> dbias_f(bias_f);
  Gemm gemv, cublaslt;
  gemv.set_gemv_max_rows(Gemm::kGemvRowsLimit);
  cublaslt.set_gemv_max_rows(0);
  // cuBLASLt has no algorithm for some of these (n = 1, k = 14336, bf16 + bias: biased bf16
  // GEMMs may not split k, see gemm.cu); those variants compare with the CPU only.
  size_t lt_ran = 0;
  const auto try_cublaslt = [&](const auto& launch) {
    try {
      launch();
      ++lt_ran;
      return true;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kUnsupported) throw;
      return false;
    }
  };
  for (int64_t m = 1; m <= kRows; ++m) {
    for (const bool f32_out : {false, true}) {
      for (const bool bias : {false, true}) {
        const GemmCase c{m, s.n, s.k, bias, f32_out, 0};
        const std::string what =
            "m" + std::to_string(m) + (bias ? " +bias" : "") + (f32_out ? " f32" : " bf16");
        SCOPED_TRACE(what);
        const Reference r = reference(c, p, f32_out ? bias_f : from_bf16(bias_b));
        const size_t outs = size_t(m * s.n);
        std::vector<float> got, lt;
        bool have_lt = false;
        if (f32_out) {
          DeviceBuffer<float> dy(outs + kGuard), dlt(outs);
          dy.fill_bytes(0xff);  // NaN: an output the kernel skips fails the comparison
          const float* b = bias ? dbias_f.get() : nullptr;
          gemv.launch(as_bf16(dx), as_bf16(dw), b, dy.get(), m, s.n, s.k, nullptr);
          have_lt = try_cublaslt([&] {
            cublaslt.launch(as_bf16(dx), as_bf16(dw), b, dlt.get(), m, s.n, s.k, nullptr);
          });
          ATOM_CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> all = dy.download();
          for (size_t i = outs; i < all.size(); ++i) ASSERT_TRUE(std::isnan(all[i])) << i;
          got.assign(all.begin(), all.begin() + std::ptrdiff_t(outs));
          lt = dlt.download();
          // The same call again: the same bits (a fixed summation order).
          gemv.launch(as_bf16(dx), as_bf16(dw), b, dy.get(), m, s.n, s.k, nullptr);
          ATOM_CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> again = dy.download();  // bits: the NaN guard != itself
          EXPECT_EQ(std::memcmp(again.data(), all.data(), all.size() * sizeof(float)), 0);
        } else {
          DeviceBuffer<uint16_t> dy(outs + kGuard), dlt(outs);
          dy.fill_bytes(0xff);
          const __nv_bfloat16* b = bias ? as_bf16(dbias_b) : nullptr;
          gemv.launch(as_bf16(dx), as_bf16(dw), b, as_bf16(dy), m, s.n, s.k, nullptr);
          have_lt = try_cublaslt([&] {
            cublaslt.launch(as_bf16(dx), as_bf16(dw), b, as_bf16(dlt), m, s.n, s.k, nullptr);
          });
          ATOM_CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<uint16_t> all = dy.download();
          for (size_t i = outs; i < all.size(); ++i) ASSERT_EQ(all[i], 0xffff) << i;
          got = from_bf16(std::vector<uint16_t>(all.begin(), all.begin() + std::ptrdiff_t(outs)));
          lt = from_bf16(dlt.download());
          gemv.launch(as_bf16(dx), as_bf16(dw), b, as_bf16(dy), m, s.n, s.k, nullptr);
          ATOM_CUDA_CHECK(cudaDeviceSynchronize());
          EXPECT_EQ(dy.download(), all);
        }
        expect_within(got, r, "GEMV vs CPU " + what);
        if (have_lt) {
          Reference vs_lt{lt, r.tol};
          for (float& t : vs_lt.tol) t *= 2.0f;
          expect_within(got, vs_lt, "GEMV vs cuBLASLt " + what);
        }
        if (HasFailure()) return;  // one failing variant's messages are enough
      }
    }
  }
  EXPECT_EQ(gemv.num_plans(), 0u);  // every call took the GEMV
  EXPECT_EQ(cublaslt.num_plans(), lt_ran);
  EXPECT_GE(lt_ran, size_t(kRows * 3));  // cuBLASLt refuses at most the biased bf16 variants
}

std::vector<GemvShape> gemv_shapes() {
  std::vector<GemvShape> v;
  for (const int64_t n : {1, 7, 129, 6144}) {
    for (const int64_t k : {8, 72, 4096, 14336}) v.push_back({n, k});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaGemvTest, ::testing::ValuesIn(gemv_shapes()),
                         [](const auto& info) {
                           return "n" + std::to_string(info.param.n) + "_k" +
                                  std::to_string(info.param.k);
                         });

// Calls the GEMV cannot serve go to cuBLASLt at any m, with the right result: k not a multiple of
// 8 (rows off 16-byte alignment), x or W off 16-byte alignment.
TEST_F(CudaGemm, GemvFallsBackToCublasLt) {
  struct Fallback {
    int64_t m, n, k;
    size_t x_off, w_off;  // elements by which x and W are shifted
  };
  for (const Fallback f : {Fallback{1, 129, 4100, 0, 0}, Fallback{8, 7, 17, 0, 0},
                           Fallback{4, 129, 4096, 1, 0}, Fallback{2, 129, 4096, 0, 1}}) {
    SCOPED_TRACE("m" + std::to_string(f.m) + " n" + std::to_string(f.n) + " k" +
                 std::to_string(f.k) + " x+" + std::to_string(f.x_off) + " W+" +
                 std::to_string(f.w_off));
    const GemmCase c{f.m, f.n, f.k, true, false, 0};
    const auto x = random_bf16(size_t(f.m * f.k), 44, -1.0f, 1.0f);
    const auto w = random_bf16(size_t(f.n * f.k), 45, -1.0f, 1.0f);
    const auto b = random_bf16(size_t(f.n), 46, -1.0f, 1.0f);
    const Reference r = reference(c, x, w, from_bf16(b));
    DeviceBuffer<uint16_t> dx(x, f.x_off), dw(w, f.w_off), db(b), dy(size_t(f.m * f.n));
    Gemm gemm;
    gemm.set_gemv_max_rows(Gemm::kGemvRowsLimit);  // m alone would allow the GEMV
    gemm.launch(as_bf16(dx), as_bf16(dw), as_bf16(db), as_bf16(dy), f.m, f.n, f.k, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(gemm.num_plans(), 1u);  // cuBLASLt planned it
    expect_within(from_bf16(dy.download()), r, "fallback");
  }
}

}  // namespace
}  // namespace atom::cuda

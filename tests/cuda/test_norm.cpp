// CUDA RMSNorm kernels against the CPU ops (f32) and against HF's bf16 rounding (bf16), over
// awkward row counts and widths, aligned (16-byte packets) and misaligned (scalar) rows.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/norm.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/tensor.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::gpu_visible;
using test::DeviceBuffer;
using test::as_bf16;
using test::random_floats;
using test::to_bf16;
using test::from_bf16;

// HF's bf16 RMSNorm of one row, with the inverse RMS in double:
//   bf16(w * bf16(x * r))
std::vector<uint16_t> hf_bf16_norm(const std::vector<float>& x, const std::vector<float>& w,
                                   int64_t n, int64_t dim, double eps) {
  std::vector<uint16_t> out(x.size());
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
    const float r = float(1.0 / std::sqrt(ss / double(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) {
      const float y = bf16_to_f32(f32_to_bf16(x[t * dim + i] * r));
      out[t * dim + i] = f32_to_bf16(w[i] * y);
    }
  }
  return out;
}

// Distance in bf16 ulps between two finite bf16 values of the same sign (or zero).
int bf16_ulps(uint16_t a, uint16_t b) {
  auto key = [](uint16_t v) { return (v & 0x8000) ? -int(v & 0x7fff) : int(v); };
  return std::abs(key(a) - key(b));
}

void expect_close_f32(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float tol = 1e-6f + 4e-6f * std::fabs(want[i]);
    if (!(std::fabs(got[i] - want[i]) <= tol) && bad++ < 5) {
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// GPU bf16 rows equal HF's rounding up to one ulp where the f32 inverse RMS (GPU sum order vs
// double) tips a rounding, which must stay rare.
void expect_bf16_matches(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  size_t exact = 0;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int d = bf16_ulps(got[i], want[i]);
    exact += d == 0;
    if (d > 1 && bad++ < 5) {
      ADD_FAILURE() << what << " [" << i << "]: got " << bf16_to_f32(got[i]) << " want "
                    << bf16_to_f32(want[i]);
    }
  }
  EXPECT_EQ(bad, 0) << what;
  EXPECT_GE(double(exact), 0.98 * double(got.size())) << what << ": too many 1-ulp differences";
}

struct NormCase {
  int64_t rows;
  int64_t dim;
  size_t misalign;  // elements by which x is shifted off 16-byte alignment
};

void PrintTo(const NormCase& c, std::ostream* os) {
  *os << "[" << c.rows << ", " << c.dim << "]" << (c.misalign ? " misaligned" : "");
}

class CudaNormTest : public ::testing::TestWithParam<NormCase> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

constexpr float kEps = 1e-5f;

TEST_P(CudaNormTest, RmsNormF32MatchesCpu) {
  const auto [rows, dim, mis] = GetParam();
  const size_t n = size_t(rows * dim);
  const auto x = random_floats(n, 1, -3.0f, 3.0f);
  const auto w = random_floats(size_t(dim), 2, 0.5f, 1.5f);
  std::vector<float> want(n);
  cpu::rms_norm(x.data(), w.data(), rows, dim, kEps, want.data());

  DeviceBuffer<float> dx(n, mis), dw(static_cast<size_t>(dim)), dout(n);
  dx.upload(x);
  dw.upload(w);
  launch_rms_norm(dx.get(), dw.get(), dout.get(), rows, dim, kEps, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  expect_close_f32(dout.download(), want, "rms_norm f32");

  // In place through the Tensor entry point.
  rms_norm(Tensor(dx.get(), DType::kF32, {rows, dim}, Device::kCuda),
           Tensor(dw.get(), DType::kF32, {dim}, Device::kCuda), kEps,
           Tensor(dx.get(), DType::kF32, {rows, dim}, Device::kCuda), nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dx.download(), dout.download());
}

TEST_P(CudaNormTest, AddRmsNormF32MatchesCpu) {
  const auto [rows, dim, mis] = GetParam();
  const size_t n = size_t(rows * dim);
  const auto x = random_floats(n, 3, -2.0f, 2.0f);
  const auto res = random_floats(n, 4, -2.0f, 2.0f);
  const auto w = random_floats(size_t(dim), 5, 0.5f, 1.5f);
  std::vector<float> want(n), want_res = res;
  cpu::add_rms_norm(x.data(), want_res.data(), w.data(), rows, dim, kEps, want.data());

  DeviceBuffer<float> dx(n, mis), dres(n), dw(static_cast<size_t>(dim)), dout(n);
  dx.upload(x);
  dres.upload(res);
  dw.upload(w);
  launch_add_rms_norm(dx.get(), dres.get(), dw.get(), dout.get(), rows, dim, kEps, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dres.download(), want_res);  // one f32 add per element: exact
  expect_close_f32(dout.download(), want, "add_rms_norm f32");
}

TEST_P(CudaNormTest, RmsNormBf16MatchesHfRounding) {
  const auto [rows, dim, mis] = GetParam();
  const size_t n = size_t(rows * dim);
  const auto xb = to_bf16(random_floats(n, 6, -3.0f, 3.0f));
  const auto wb = to_bf16(random_floats(size_t(dim), 7, 0.5f, 1.5f));
  const auto x = from_bf16(xb), w = from_bf16(wb);

  DeviceBuffer<uint16_t> dx(n, mis), dw(static_cast<size_t>(dim)), dout(n);
  dx.upload(xb);
  dw.upload(wb);
  rms_norm(Tensor(dx.get(), DType::kBF16, {rows, dim}, Device::kCuda),
           Tensor(dw.get(), DType::kBF16, {dim}, Device::kCuda), kEps,
           Tensor(dout.get(), DType::kBF16, {rows, dim}, Device::kCuda), nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = dout.download();
  expect_bf16_matches(got, hf_bf16_norm(x, w, rows, dim, kEps), "rms_norm bf16");

  // The launcher gives the same bits, in place too.
  launch_rms_norm(as_bf16(dx), as_bf16(dw), as_bf16(dx), rows, dim, kEps, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dx.download(), got);

  // And within bf16 precision of the f32 CPU op on the same inputs.
  std::vector<float> cpu_out(n);
  cpu::rms_norm(x.data(), w.data(), rows, dim, kEps, cpu_out.data());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(bf16_to_f32(got[i]), cpu_out[i], 1e-5 + 8e-3 * std::fabs(cpu_out[i])) << i;
  }
}

TEST_P(CudaNormTest, AddRmsNormBf16MatchesHfRounding) {
  const auto [rows, dim, mis] = GetParam();
  const size_t n = size_t(rows * dim);
  const auto xb = to_bf16(random_floats(n, 8, -2.0f, 2.0f));
  const auto rb = to_bf16(random_floats(n, 9, -2.0f, 2.0f));
  const auto wb = to_bf16(random_floats(size_t(dim), 10, 0.5f, 1.5f));
  // HF: residual = residual + x in bf16, then the norm of that rounded sum.
  std::vector<uint16_t> sum_b(n);
  for (size_t i = 0; i < n; ++i) sum_b[i] = f32_to_bf16(bf16_to_f32(rb[i]) + bf16_to_f32(xb[i]));

  DeviceBuffer<uint16_t> dx(n, mis), dres(n), dw(static_cast<size_t>(dim));
  dx.upload(xb);
  dres.upload(rb);
  dw.upload(wb);
  // out aliases x, as the model's layers call it.
  const Tensor tx(dx.get(), DType::kBF16, {rows, dim}, Device::kCuda);
  add_rms_norm(tx, Tensor(dres.get(), DType::kBF16, {rows, dim}, Device::kCuda),
               Tensor(dw.get(), DType::kBF16, {dim}, Device::kCuda), kEps, tx, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dres.download(), sum_b);
  expect_bf16_matches(dx.download(), hf_bf16_norm(from_bf16(sum_b), from_bf16(wb), rows, dim, kEps),
                      "add_rms_norm bf16");
}

std::vector<NormCase> make_cases() {
  std::vector<NormCase> cases;
  for (const int64_t rows : {1, 17, 97}) {
    for (const int64_t dim : {1, 17, 576, 4096}) cases.push_back({rows, dim, 0});
  }
  // Rows that would take 16-byte packets, shifted off alignment: the scalar kernels.
  cases.push_back({17, 576, 1});
  cases.push_back({3, 4096, 3});
  // Wider than one packet per thread of a full block.
  cases.push_back({5, 16384, 0});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaNormTest, ::testing::ValuesIn(make_cases()),
                         [](const auto& info) {
                           const NormCase& c = info.param;
                           std::string name = "rows";
                           name += std::to_string(c.rows);
                           name += "_dim";
                           name += std::to_string(c.dim);
                           if (c.misalign) name += "_misaligned";
                           return name;
                         });

TEST(CudaNorm, EntryPointsRejectBadArguments) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  DeviceBuffer<float> d(64);
  const Tensor x(d.get(), DType::kF32, {4, 16}, Device::kCuda);
  const Tensor w(d.get(), DType::kF32, {16}, Device::kCuda);
  const Tensor w_short(d.get(), DType::kF32, {8}, Device::kCuda);
  const Tensor w_host(d.get(), DType::kF32, {16}, Device::kCpu);
  const Tensor x_f16(d.get(), DType::kF16, {4, 16}, Device::kCuda);
  const Tensor w_f16(d.get(), DType::kF16, {16}, Device::kCuda);
  EXPECT_THROW(rms_norm(x, w_short, kEps, x, nullptr), Error);
  EXPECT_THROW(rms_norm(x, w_host, kEps, x, nullptr), Error);
  EXPECT_THROW(rms_norm(x, w_f16, kEps, x, nullptr), Error);
  try {
    rms_norm(x_f16, w_f16, kEps, x_f16, nullptr);
    FAIL() << "f16 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
  // Zero rows: nothing to launch.
  const Tensor empty(d.get(), DType::kF32, {0, 16}, Device::kCuda);
  rms_norm(empty, w, kEps, empty, nullptr);
  add_rms_norm(empty, empty, w, kEps, empty, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace atom::cuda

// rms_norm and add_rms_norm against a double-precision transcription of HF's LlamaRMSNorm.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/error.h"
#include "cpu/test_util.h"

namespace atom::cpu {
namespace {

using test::all_near;
using test::random_vector;

// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight, in double.
std::vector<double> rms_norm_ref(const std::vector<float>& x, const std::vector<float>& w,
                                 int64_t n, int64_t dim, double eps) {
  std::vector<double> out(size_t(n * dim));
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
    const double r = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) out[t * dim + i] = x[t * dim + i] * r * w[i];
  }
  return out;
}

struct NormShape {
  int64_t n;
  int64_t dim;
};

void PrintTo(const NormShape& s, std::ostream* os) { *os << "[" << s.n << ", " << s.dim << "]"; }

class RmsNormTest : public ::testing::TestWithParam<NormShape> {};

TEST_P(RmsNormTest, MatchesReference) {
  const auto [n, dim] = GetParam();
  const float eps = 1e-6f;
  const auto x = random_vector(n * dim, 1, -3.0f, 3.0f);
  const auto w = random_vector(dim, 2, 0.5f, 1.5f);
  const auto ref = rms_norm_ref(x, w, n, dim, eps);
  std::vector<float> out(size_t(n * dim), -1.0f);
  rms_norm(x.data(), w.data(), n, dim, eps, out.data());
  EXPECT_TRUE(all_near(out, ref, 1e-6, 4e-6));

  // In place: out aliases x.
  std::vector<float> inplace = x;
  rms_norm(inplace.data(), w.data(), n, dim, eps, inplace.data());
  EXPECT_EQ(inplace, out);
}

TEST_P(RmsNormTest, FusedAddMatchesReference) {
  const auto [n, dim] = GetParam();
  const float eps = 1e-5f;
  const auto x = random_vector(n * dim, 3, -2.0f, 2.0f);
  const auto res0 = random_vector(n * dim, 4, -2.0f, 2.0f);
  const auto w = random_vector(dim, 5, 0.5f, 1.5f);
  std::vector<float> sum(size_t(n * dim));
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = res0[i] + x[i];
  const auto ref = rms_norm_ref(sum, w, n, dim, eps);

  std::vector<float> residual = res0;
  std::vector<float> out(size_t(n * dim), -1.0f);
  add_rms_norm(x.data(), residual.data(), w.data(), n, dim, eps, out.data());
  EXPECT_EQ(residual, sum);  // the residual stream is updated exactly, in f32
  EXPECT_TRUE(all_near(out, ref, 1e-6, 4e-6));

  // out aliases x, as a layer does when it normalizes its input in place.
  std::vector<float> residual2 = res0;
  std::vector<float> inplace = x;
  add_rms_norm(inplace.data(), residual2.data(), w.data(), n, dim, eps, inplace.data());
  EXPECT_EQ(residual2, sum);
  EXPECT_EQ(inplace, out);
}

// Odd widths, a single decode row, and enough rows to take the threaded path.
INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormTest,
                         ::testing::Values(NormShape{1, 1}, NormShape{1, 17}, NormShape{1, 576},
                                           NormShape{5, 1}, NormShape{17, 17}, NormShape{97, 576},
                                           NormShape{64, 4096}),
                         [](const auto& info) {
                           return fmt::format("n{}_dim{}", info.param.n, info.param.dim);
                         });

TEST(RmsNorm, EpsKeepsZeroRowsFinite) {
  const std::vector<float> x(17, 0.0f);
  const std::vector<float> w(17, 1.0f);
  std::vector<float> out(17, 1.0f);
  rms_norm(x.data(), w.data(), 1, 17, 1e-6f, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(RmsNorm, SingleElementRowNormalizesToWeight) {
  const float x = -3.0f;
  const float w = 2.0f;
  float out = 0.0f;
  rms_norm(&x, &w, 1, 1, 0.0f, &out);
  EXPECT_FLOAT_EQ(out, -2.0f);
}

TEST(RmsNorm, RejectsEmptyRows) {
  float x = 0.0f;
  try {
    rms_norm(&x, &x, 1, 0, 1e-6f, &x);
    FAIL() << "dim 0 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace atom::cpu

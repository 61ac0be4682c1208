// silu_and_mul and add_inplace against double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "cpu/test_util.h"

namespace atom::cpu {
namespace {

using test::all_near;
using test::random_vector;

class SiluAndMulTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(SiluAndMulTest, MatchesReference) {
  const auto [n, d] = GetParam();
  const auto x = random_vector(n * 2 * d, 7, -8.0f, 8.0f);
  std::vector<double> ref(size_t(n * d));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < d; ++i) {
      const double g = x[t * 2 * d + i];
      const double u = x[t * 2 * d + d + i];
      ref[t * d + i] = g / (1.0 + std::exp(-g)) * u;
    }
  }
  std::vector<float> out(size_t(n * d), 123.0f);
  silu_and_mul(x.data(), n, d, out.data());
  EXPECT_TRUE(all_near(out, ref, 1e-6, 1e-6));
}

// 5000 spans several work chunks per row; 33 x 5000 takes the threaded path.
INSTANTIATE_TEST_SUITE_P(Shapes, SiluAndMulTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{1, 1},
                                           std::pair<int64_t, int64_t>{1, 17},
                                           std::pair<int64_t, int64_t>{17, 576},
                                           std::pair<int64_t, int64_t>{1, 5000},
                                           std::pair<int64_t, int64_t>{33, 5000}));

TEST(SiluAndMul, KnownValues) {
  // silu(0) = 0, silu(large) ~ x, silu(-large) ~ 0
  const std::vector<float> x = {0.0f, 30.0f, -30.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<float> out(4);
  silu_and_mul(x.data(), 1, 4, out.data());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 30.0f * 3.0f);
  EXPECT_NEAR(out[2], 0.0f, 1e-10f);
  EXPECT_FLOAT_EQ(out[3], float(1.0 / (1.0 + std::exp(-1.0)) * 5.0));
}

TEST(AddInplace, AddsEveryElement) {
  for (int64_t n : {int64_t(1), int64_t(17), int64_t(100003)}) {
    auto y = random_vector(n, 11);
    const auto x = random_vector(n, 12);
    std::vector<float> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[i] = y[i] + x[i];
    add_inplace(y.data(), x.data(), n);
    EXPECT_EQ(y, want) << "n = " << n;
  }
}

}  // namespace
}  // namespace atom::cpu

// measure_ceilings (backends/cuda/ceilings.h) runs and returns figures a roofline can divide by:
// finite, positive, with the shapes it was asked for. Its values are benchmark figures
// (scripts/gpu-bench.sh), never asserted against a speed here.
#include <gtest/gtest.h>

#include <cmath>

#include "atom/backends/cuda/ceilings.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

TEST(CudaCeilings, MeasuresCopyAndGemm) {
  if (!test::gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  const Ceilings c = measure_ceilings(size_t(64) << 20, 1024, 768, 520, 1, 3);
  EXPECT_FALSE(c.device_name.empty());
  EXPECT_EQ(c.copy_bytes, size_t(64) << 20);
  EXPECT_EQ(c.gemm_m, 1024);
  EXPECT_EQ(c.gemm_n, 768);
  EXPECT_EQ(c.gemm_k, 520);
  EXPECT_TRUE(std::isfinite(c.copy_bytes_per_s) && c.copy_bytes_per_s > 0);
  EXPECT_TRUE(std::isfinite(c.gemm_flops_per_s) && c.gemm_flops_per_s > 0);
  EXPECT_THROW(measure_ceilings(0), Error);
}

}  // namespace
}  // namespace atom::cuda

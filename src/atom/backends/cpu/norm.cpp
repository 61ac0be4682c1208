// RMSNorm as HF's LlamaRMSNorm computes it in f32:
//   variance = mean(x^2); out = (x * rsqrt(variance + eps)) * weight
#include <cmath>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/row_kernels.h"
#include "atom/core/error.h"

namespace atom::cpu {

namespace {

// Rows smaller than this in total stay on one thread (a decode step's single row, say).
constexpr int64_t kParallelElems = int64_t(1) << 15;

inline float inv_rms(float sum_sq, int64_t dim, float eps) {
  return 1.0f / std::sqrt(sum_sq / float(dim) + eps);
}

}  // namespace

namespace detail {

void rms_norm_row(const float* x, const float* weight, int64_t dim, float eps, float* out) {
  float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t i = 0; i < dim; ++i) sum_sq += x[i] * x[i];
  const float r = inv_rms(sum_sq, dim, eps);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) out[i] = (x[i] * r) * weight[i];
}

}  // namespace detail

void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  ATOM_CHECK(n >= 0 && dim > 0, kInvalidArgument, "rms_norm of [{}, {}]", n, dim);
#pragma omp parallel for schedule(static) if (n > 1 && n * dim >= kParallelElems)
  for (int64_t t = 0; t < n; ++t)
    detail::rms_norm_row(x + t * dim, weight, dim, eps, out + t * dim);
}

void add_rms_norm(const float* x, float* residual, const float* weight, int64_t n, int64_t dim,
                  float eps, float* out) {
  ATOM_CHECK(n >= 0 && dim > 0, kInvalidArgument, "add_rms_norm of [{}, {}]", n, dim);
#pragma omp parallel for schedule(static) if (n > 1 && n * dim >= kParallelElems)
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* res = residual + t * dim;
    float* o = out + t * dim;
    // x is fully read before out is written, so out may alias x.
    float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t i = 0; i < dim; ++i) {
      const float v = res[i] + xr[i];
      res[i] = v;
      sum_sq += v * v;
    }
    const float r = inv_rms(sum_sq, dim, eps);
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) o[i] = (res[i] * r) * weight[i];
  }
}

}  // namespace atom::cpu

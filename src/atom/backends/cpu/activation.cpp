// Element-wise ops: SiLU-and-multiply (the gated MLP) and in-place add (the residual stream).
#include <algorithm>
#include <cmath>

#include "atom/backends/cpu/ops.h"
#include "atom/core/error.h"

namespace atom::cpu {

namespace {

// Work split into chunks of this many elements, so a single decode row still uses the threads.
constexpr int64_t kChunk = 2048;
constexpr int64_t kParallelElems = int64_t(1) << 15;

}  // namespace

void silu_and_mul(const float* x, int64_t n, int64_t d, float* out) {
  ATOM_CHECK(n >= 0 && d > 0, kInvalidArgument, "silu_and_mul of [{}, 2 * {}]", n, d);
  const int64_t chunks_per_row = (d + kChunk - 1) / kChunk;
  const int64_t work = n * chunks_per_row;
#pragma omp parallel for schedule(static) if (n * d >= kParallelElems)
  for (int64_t w = 0; w < work; ++w) {
    const int64_t t = w / chunks_per_row;
    const int64_t begin = (w % chunks_per_row) * kChunk;
    const int64_t end = std::min(d, begin + kChunk);
    const float* gate = x + t * 2 * d;
    const float* up = gate + d;
    float* o = out + t * d;
    for (int64_t i = begin; i < end; ++i) {
      const float g = gate[i];
      o[i] = g / (1.0f + std::exp(-g)) * up[i];  // silu(g) = g * sigmoid(g), as torch computes it
    }
  }
}

void add_inplace(float* y, const float* x, int64_t n) {
  ATOM_CHECK(n >= 0, kInvalidArgument, "add_inplace of {} elements", n);
#pragma omp parallel for simd schedule(static) if (n >= kParallelElems)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace atom::cpu

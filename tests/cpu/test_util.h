// Helpers shared by the CPU op tests: seeded random data and element-wise comparison against a
// double-precision reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace atom::cpu::test {

inline std::vector<float> random_vector(int64_t n, uint32_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Every element within abs_tol + rel_tol * |ref|; reports the first few offenders.
inline ::testing::AssertionResult all_near(const float* got, const double* ref, int64_t n,
                                           double abs_tol, double rel_tol) {
  int64_t bad = 0;
  std::string msg;
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    worst = std::max(worst, err);
    if (!(err <= abs_tol + rel_tol * std::fabs(ref[i]))) {  // also catches NaN
      if (bad < 5) {
        msg += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " +
               std::to_string(ref[i]);
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << n << " elements off (worst abs error " << worst << ")" << msg;
}

inline ::testing::AssertionResult all_near(const std::vector<float>& got,
                                           const std::vector<double>& ref, double abs_tol,
                                           double rel_tol) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  }
  return all_near(got.data(), ref.data(), int64_t(got.size()), abs_tol, rel_tol);
}

}  // namespace atom::cpu::test

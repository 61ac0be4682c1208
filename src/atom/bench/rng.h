// The benchmark's random source: one seeded Mersenne Twister for every draw (dataset sampling,
// shuffles, arrival gaps), as the reference seeds `random` and `numpy` with --seed. The streams
// are not numpy's, so the same seed gives different (but reproducible) draws than Python.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace atom::bench {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}

  // Uniform integer in [lo, hi), like numpy.random.randint(lo, hi). Requires lo < hi.
  int64_t randint(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi - 1)(gen_);
  }
  // Uniform in [0, 1), like random.random().
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(gen_); }
  // numpy.random.gamma(shape, scale): mean shape*scale, variance shape*scale^2.
  double gamma(double shape, double scale) {
    return std::gamma_distribution<double>(shape, scale)(gen_);
  }
  // random.shuffle: Fisher-Yates from the back.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = size_t(randint(0, int64_t(i)));
      std::swap(v[i - 1], v[j]);
    }
  }

 private:
  std::mt19937_64 gen_;
};

}  // namespace atom::bench

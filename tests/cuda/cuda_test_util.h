// Helpers shared by the GPU test suites: whether a GPU is visible, and a device buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cuda/check.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"

namespace atom::cuda::test {

// True when a CUDA device is visible; clears the error a machine without one leaves behind.
inline bool gpu_visible() {
  int devices = 0;
  const bool ok = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  if (!ok) cudaGetLastError();
  return ok;
}

// A device buffer of n T, freed on scope exit. `offset` elements of slack in front let a test
// hand out a pointer that is not 16-byte aligned.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n, size_t offset = 0) : n_(n), offset_(offset) {
    ATOM_CUDA_CHECK(
        cudaMalloc(reinterpret_cast<void**>(&base_), std::max<size_t>(n + offset, 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& h, size_t offset = 0)
      : DeviceBuffer(h.size(), offset) {
    upload(h);
  }
  ~DeviceBuffer() { cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return base_ + offset_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void upload(const std::vector<T>& h) {
    ATOM_ASSERT(h.size() == n_);
    ATOM_CUDA_CHECK(cudaMemcpy(get(), h.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    ATOM_CUDA_CHECK(cudaMemcpy(h.data(), get(), bytes(), cudaMemcpyDeviceToHost));
    return h;
  }
  // Every byte set to `byte` (0xff makes f32 and bf16 NaN): stale contents a kernel must not read.
  void fill_bytes(int byte) { ATOM_CUDA_CHECK(cudaMemset(get(), byte, bytes())); }

 private:
  T* base_ = nullptr;
  size_t n_;
  size_t offset_;
};

// bf16 device data is kept as raw bits; kernels see it as __nv_bfloat16.
inline __nv_bfloat16* as_bf16(const DeviceBuffer<uint16_t>& d) {
  return reinterpret_cast<__nv_bfloat16*>(d.get());
}

// n values uniform in [lo, hi), reproducible from the seed.
inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// bf16 values as their bits (the host side never does bf16 arithmetic).
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
  return b;
}

// n uniform values in [lo, hi), rounded to bf16 (their bits).
inline std::vector<uint16_t> random_bf16(size_t n, uint32_t seed, float lo, float hi) {
  return to_bf16(random_floats(n, seed, lo, hi));
}

// Waits for the device; a kernel's asynchronous error surfaces here as an atom::Error.
// The RoPE table of a test case, positions up to 131072: rope_type `scaling` with the factors the
// tests use (llama3: 8 over 8192 positions; yarn: 4 over 32768, so attention_factor = 0.1 ln 4 +
// 1 != 1; linear: 2), theta `default_theta` for "default" and 500000 for the scaled types.
inline cpu::RopeTable test_rope_table(const std::string& scaling, int64_t rotary_dim,
                                      double default_theta) {
  cpu::RopeScaling s;
  s.type = scaling;
  if (s.type == "llama3") {
    s.factor = 8.0;
    s.original_max_position_embeddings = 8192;
  } else if (s.type == "yarn") {
    s.factor = 4.0;
    s.original_max_position_embeddings = 32768;
  } else if (s.type == "linear") {
    s.factor = 2.0;
  }
  const double theta = s.type == "default" ? default_theta : 500000.0;
  return cpu::make_rope_inv_freq(rotary_dim, theta, s, 131072);
}

inline void sync() { ATOM_CUDA_CHECK(cudaDeviceSynchronize()); }

inline std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
  return v;
}

// What a bf16 tensor op hands to the next op: v rounded to bf16, as f32.
inline float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// |got - want| <= tol[i] for every element; prints the worst offender relative to its tolerance.
inline void expect_within(const std::vector<float>& got, const std::vector<float>& want,
                          const std::vector<float>& tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(got.size(), tol.size()) << what;
  size_t bad = 0, worst_i = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i]));
    const double ratio = err / std::max(double(tol[i]), 1e-300);
    if (!(err <= tol[i])) ++bad;
    if (!(ratio <= worst)) worst = ratio, worst_i = i;  // NaN counts as worst
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " elements out of tolerance; worst [" << worst_i << "]: got "
                     << got[worst_i] << " want " << want[worst_i] << " tol " << tol[worst_i]
                     << " (error / tolerance " << worst << ")";
}

}  // namespace atom::cuda::test

// Helpers shared by the GPU test suites: whether a GPU is visible, and a device buffer.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "atom/backends/cuda/check.h"
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

}  // namespace atom::cuda::test

// Tensor: a view (pointer, dtype, shape, strides in elements, device) with optional shared
// ownership of its storage. No autograd, no broadcasting: ops take views and check shapes once.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "atom/core/dtype.h"
#include "atom/core/error.h"

namespace atom {

enum class Device : uint8_t { kCpu, kCuda };

class Tensor {
 public:
  static constexpr int kMaxDims = 5;

  Tensor() = default;
  // A view of memory owned elsewhere; contiguous (row-major) strides.
  Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::kCpu);
  Tensor(void* data, DType dtype, const int64_t* shape, int ndim, Device device = Device::kCpu);

  // Host allocation, 64-byte aligned, zero-filled.
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype);
  static Tensor empty(const int64_t* shape, int ndim, DType dtype);

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return ndim_; }
  int64_t size(int dim) const { return shape_[dim < 0 ? dim + ndim_ : dim]; }
  int64_t stride(int dim) const { return stride_[dim < 0 ? dim + ndim_ : dim]; }
  const int64_t* shape() const { return shape_.data(); }
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr; }
  bool is_contiguous() const;

  // Views sharing storage.
  Tensor view(std::initializer_list<int64_t> shape) const;  // contiguous reshape; -1 infers
  Tensor slice_rows(int64_t begin, int64_t end) const;       // along dim 0
  Tensor row(int64_t i) const;                                // drops dim 0

  std::string shape_str() const;  // "[2, 576]"

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
  int ndim_ = 0;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<int64_t, kMaxDims> stride_{};
  std::shared_ptr<void> storage_;  // keeps host allocations alive; null for borrowed views
};

}  // namespace atom

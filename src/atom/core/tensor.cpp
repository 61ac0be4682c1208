#include "atom/core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace atom {

namespace {
void set_contiguous(std::array<int64_t, Tensor::kMaxDims>& stride,
                    const std::array<int64_t, Tensor::kMaxDims>& shape, int ndim) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    stride[i] = s;
    s *= shape[i];
  }
}
}  // namespace

Tensor::Tensor(void* data, DType dtype, const int64_t* shape, int ndim, Device device)
    : data_(data), dtype_(dtype), device_(device), ndim_(ndim) {
  ATOM_CHECK(ndim >= 0 && ndim <= kMaxDims, kInvalidArgument, "tensor rank {} not supported", ndim);
  for (int i = 0; i < ndim; ++i) {
    ATOM_CHECK(shape[i] >= 0, kInvalidArgument, "negative tensor dimension {}", shape[i]);
    shape_[i] = shape[i];
  }
  set_contiguous(stride_, shape_, ndim_);
}

Tensor::Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device)
    : Tensor(data, dtype, shape.begin(), int(shape.size()), device) {}

Tensor Tensor::empty(const int64_t* shape, int ndim, DType dtype) {
  Tensor t(nullptr, dtype, shape, ndim);
  size_t bytes = t.nbytes();
  size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  ATOM_CHECK(p != nullptr, kIo, "out of host memory allocating {} bytes", alloc);
  std::memset(p, 0, alloc);
  t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  return t;
}

Tensor Tensor::empty(std::initializer_list<int64_t> shape, DType dtype) {
  return empty(shape.begin(), int(shape.size()), dtype);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= shape_[i];
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    if (shape_[i] != 1 && stride_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

Tensor Tensor::view(std::initializer_list<int64_t> shape) const {
  ATOM_CHECK(is_contiguous(), kInvalidArgument, "view of a non-contiguous tensor");
  std::array<int64_t, kMaxDims> s{};
  int n = 0, infer = -1;
  int64_t known = 1;
  for (int64_t d : shape) {
    ATOM_CHECK(n < kMaxDims, kInvalidArgument, "tensor rank too large");
    if (d == -1) {
      infer = n;
    } else {
      known *= d;
    }
    s[n++] = d;
  }
  if (infer >= 0) s[infer] = known == 0 ? 0 : numel() / known;
  Tensor t = *this;
  t.ndim_ = n;
  t.shape_ = s;
  ATOM_CHECK(t.numel() == numel(), kInvalidArgument, "cannot view {} as a tensor of {} elements",
             shape_str(), t.numel());
  set_contiguous(t.stride_, t.shape_, n);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  ATOM_CHECK(ndim_ >= 1 && begin >= 0 && begin <= end && end <= shape_[0], kOutOfRange,
             "row slice [{}, {}) out of range for {}", begin, end, shape_str());
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + begin * stride_[0] * int64_t(dtype_size(dtype_));
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::row(int64_t i) const {
  Tensor t = slice_rows(i, i + 1);
  for (int d = 1; d < ndim_; ++d) {
    t.shape_[d - 1] = shape_[d];
    t.stride_[d - 1] = stride_[d];
  }
  t.ndim_ = ndim_ - 1;
  return t;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape_[i]);
  }
  return s + "]";
}

}  // namespace atom

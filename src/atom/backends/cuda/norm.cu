// RMSNorm kernels: one thread block per row, f32 accumulation, 16-byte loads and stores when the
// rows and pointers allow them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/device_math.cuh"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/pdl.cuh"
#include "atom/core/error.h"

namespace atom::cuda {

namespace {

// The normalized value's rounding (apply_norm, inv_rms), the block sum, the packet and the add +
// norm row live in device_math.cuh, shared with the fused q/k-norm + RoPE kernel of ops.cu and
// the fused all-reduce + norm of custom_allreduce.cu, which must round exactly as these do.
using device::add_rms_norm_row;
using device::block_sum;
using device::inv_rms;
using device::norm_threads;
using device::Packet;
using device::to_f32;
using device::write_normed_row;

// --- kernels: grid = rows, block = a multiple of 32 threads striding over the row's packets ---

// x, out: [rows, dim]; weight: [dim]. out may alias x: every thread rewrites only the packets it
// read, after the block-wide sum.
template <typename T, int kVec>
__global__ void rms_norm_kernel(const T* x, const T* __restrict__ weight, T* out, int64_t dim,
                                float eps) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  using P = Packet<T, kVec>;
  const int64_t row = blockIdx.x;
  const P* xr = reinterpret_cast<const P*>(x + row * dim);
  const int64_t packets = dim / kVec;

  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < packets; i += blockDim.x) {
    const P p = xr[i];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float f = to_f32(p.v[j]);
      sum_sq += f * f;
    }
  }
  write_normed_row<T, kVec>(x + row * dim, weight, out + row * dim, dim,
                            inv_rms(block_sum(sum_sq), dim, eps));
}

// residual[t] = to_dtype(residual[t] + x[t]); out[t] = rms_norm(residual[t]). All [rows, dim].
template <typename T, int kVec>
__global__ void add_rms_norm_kernel(const T* x, T* residual, const T* __restrict__ weight, T* out,
                                    int64_t dim, float eps) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const auto* xr = reinterpret_cast<const Packet<T, kVec>*>(x + row * dim);
  const auto addend = [xr](int64_t i, float(&a)[kVec]) {
    const Packet<T, kVec> p = xr[i];
#pragma unroll
    for (int j = 0; j < kVec; ++j) a[j] = to_f32(p.v[j]);
  };
  add_rms_norm_row<T, kVec>(addend, residual + row * dim, weight, out + row * dim, dim, eps);
}

// --- launch helpers ---

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_launch(int64_t n, int64_t dim, const char* op) {
  ATOM_CHECK(n >= 0 && dim > 0, kInvalidArgument, "{}: bad shape [{}, {}]", op, n, dim);
  ATOM_CHECK(n <= INT_MAX, kOutOfRange, "{}: {} rows exceed one launch", op, n);
}

template <typename T>
void rms_norm_impl(const T* x, const T* weight, T* out, int64_t n, int64_t dim, float eps,
                   cudaStream_t stream) {
  check_launch(n, dim, "rms_norm");
  if (n == 0) return;
  constexpr int kVec = 16 / sizeof(T);
  if (dim % kVec == 0 && aligned16(x) && aligned16(weight) && aligned16(out)) {
    launch_pdl(rms_norm_kernel<T, kVec>, unsigned(n), norm_threads(dim / kVec), 0, stream, x,
               weight, out, dim, eps);
  } else {
    launch_pdl(rms_norm_kernel<T, 1>, unsigned(n), norm_threads(dim), 0, stream, x, weight, out,
               dim, eps);
  }
}

template <typename T>
void add_rms_norm_impl(const T* x, T* residual, const T* weight, T* out, int64_t n, int64_t dim,
                       float eps, cudaStream_t stream) {
  check_launch(n, dim, "add_rms_norm");
  if (n == 0) return;
  constexpr int kVec = 16 / sizeof(T);
  if (dim % kVec == 0 && aligned16(x) && aligned16(residual) && aligned16(weight) &&
      aligned16(out)) {
    launch_pdl(add_rms_norm_kernel<T, kVec>, unsigned(n), norm_threads(dim / kVec), 0, stream, x,
               residual, weight, out, dim, eps);
  } else {
    launch_pdl(add_rms_norm_kernel<T, 1>, unsigned(n), norm_threads(dim), 0, stream, x, residual,
               weight, out, dim, eps);
  }
}

// Shared checks of the entry points: returns the row length.
int64_t check_rows(const char* op, const Tensor& x, const Tensor& weight, const Tensor& out) {
  ATOM_CHECK(x.ndim() >= 1 && x.size(-1) > 0, kInvalidArgument, "{}: x has shape {}", op,
             x.shape_str());
  const int64_t dim = x.size(-1);
  ATOM_CHECK(weight.ndim() == 1 && weight.size(0) == dim, kInvalidArgument,
             "{}: weight {} does not match rows of {}", op, weight.shape_str(), dim);
  ATOM_CHECK(out.numel() == x.numel() && out.ndim() >= 1 && out.size(-1) == dim, kInvalidArgument,
             "{}: out {} does not match x {}", op, out.shape_str(), x.shape_str());
  for (const Tensor* t : {&x, &weight, &out}) {
    ATOM_CHECK(t->device() == Device::kCuda, kInvalidArgument, "{}: tensors must be on the GPU",
               op);
    ATOM_CHECK(t->dtype() == x.dtype(), kInvalidArgument, "{}: mixed dtypes {} and {}", op,
               dtype_name(x.dtype()), dtype_name(t->dtype()));
    ATOM_CHECK(t->is_contiguous(), kInvalidArgument, "{}: tensors must be contiguous", op);
  }
  return dim;
}

}  // namespace

void launch_rms_norm(const float* x, const float* weight, float* out, int64_t n, int64_t dim,
                     float eps, cudaStream_t stream) {
  rms_norm_impl(x, weight, out, n, dim, eps, stream);
}

void launch_rms_norm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out,
                     int64_t n, int64_t dim, float eps, cudaStream_t stream) {
  rms_norm_impl(x, weight, out, n, dim, eps, stream);
}

void launch_add_rms_norm(const float* x, float* residual, const float* weight, float* out,
                         int64_t n, int64_t dim, float eps, cudaStream_t stream) {
  add_rms_norm_impl(x, residual, weight, out, n, dim, eps, stream);
}

void launch_add_rms_norm(const __nv_bfloat16* x, __nv_bfloat16* residual,
                         const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t n, int64_t dim,
                         float eps, cudaStream_t stream) {
  add_rms_norm_impl(x, residual, weight, out, n, dim, eps, stream);
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out,
              cudaStream_t stream) {
  const int64_t dim = check_rows("rms_norm", x, weight, out);
  const int64_t n = x.numel() / dim;
  switch (x.dtype()) {
    case DType::kF32:
      launch_rms_norm(x.data_as<float>(), weight.data_as<float>(), out.data_as<float>(), n, dim,
                      eps, stream);
      return;
    case DType::kBF16:
      launch_rms_norm(x.data_as<__nv_bfloat16>(), weight.data_as<__nv_bfloat16>(),
                      out.data_as<__nv_bfloat16>(), n, dim, eps, stream);
      return;
    default:
      throw_error(ErrorCode::kUnsupported,
                  "rms_norm: dtype {} is not supported on CUDA (f32, bf16)", dtype_name(x.dtype()));
  }
}

void add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                  const Tensor& out, cudaStream_t stream) {
  const int64_t dim = check_rows("add_rms_norm", x, weight, out);
  ATOM_CHECK(residual.numel() == x.numel() && residual.ndim() >= 1 && residual.size(-1) == dim &&
                 residual.dtype() == x.dtype() && residual.device() == Device::kCuda &&
                 residual.is_contiguous(),
             kInvalidArgument, "add_rms_norm: residual {} {} does not match x {} {}",
             residual.shape_str(), dtype_name(residual.dtype()), x.shape_str(),
             dtype_name(x.dtype()));
  const int64_t n = x.numel() / dim;
  switch (x.dtype()) {
    case DType::kF32:
      launch_add_rms_norm(x.data_as<float>(), residual.data_as<float>(), weight.data_as<float>(),
                          out.data_as<float>(), n, dim, eps, stream);
      return;
    case DType::kBF16:
      launch_add_rms_norm(x.data_as<__nv_bfloat16>(), residual.data_as<__nv_bfloat16>(),
                          weight.data_as<__nv_bfloat16>(), out.data_as<__nv_bfloat16>(), n, dim,
                          eps, stream);
      return;
    default:
      throw_error(ErrorCode::kUnsupported,
                  "add_rms_norm: dtype {} is not supported on CUDA (f32, bf16)",
                  dtype_name(x.dtype()));
  }
}

}  // namespace atom::cuda

#include "atom/backends/cuda/ceilings.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"

namespace atom::cuda {

namespace {

// Fills a bf16 buffer with small values, so the GEMM runs on ordinary numbers (no zeros a
// kernel could shortcut, no infinities).
__global__ void fill_kernel(__nv_bfloat16* x, int64_t n, uint32_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    x[i] = __float2bfloat16(float(h % 2001) / 1000.0f - 1.0f);  // [-1, 1]
  }
}

// Median seconds of `repeats` timed runs of `op` on `stream` after `warmup` untimed ones.
template <typename Op>
double median_seconds(cudaStream_t stream, int warmup, int repeats, Op op) {
  for (int i = 0; i < warmup; ++i) op();
  cudaEvent_t start = nullptr, stop = nullptr;
  ATOM_CUDA_CHECK(cudaEventCreate(&start));
  ATOM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> s;
  for (int i = 0; i < repeats; ++i) {
    ATOM_CUDA_CHECK(cudaEventRecord(start, stream));
    op();
    ATOM_CUDA_CHECK(cudaEventRecord(stop, stream));
    ATOM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    s.push_back(double(ms) / 1000.0);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// Device buffers freed on every path out.
struct Buffers {
  std::vector<void*> p;
  void* take(size_t bytes) {
    void* x = nullptr;
    ATOM_CUDA_CHECK(cudaMalloc(&x, bytes));
    p.push_back(x);
    return x;
  }
  ~Buffers() {
    for (void* x : p) (void)cudaFree(x);
  }
};

}  // namespace

Ceilings measure_ceilings(size_t copy_bytes, int64_t m, int64_t n, int64_t k, int warmup,
                          int repeats) {
  ATOM_CHECK(copy_bytes > 0 && m > 0 && n > 0 && k > 0 && warmup >= 0 && repeats > 0,
             kInvalidArgument, "measure_ceilings: sizes and repeats must be positive");
  Ceilings c;
  int device = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  ATOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  c.device_name = prop.name;
  c.copy_bytes = copy_bytes;
  c.gemm_m = m;
  c.gemm_n = n;
  c.gemm_k = k;
  cudaStream_t stream = nullptr;
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  try {
    Buffers b;
    void* src = b.take(copy_bytes);
    void* dst = b.take(copy_bytes);
    ATOM_CUDA_CHECK(cudaMemsetAsync(src, 1, copy_bytes, stream));
    const double copy_s = median_seconds(stream, warmup, repeats, [&] {
      ATOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
    });
    c.copy_bytes_per_s = 2.0 * double(copy_bytes) / copy_s;

    auto* x = static_cast<__nv_bfloat16*>(b.take(size_t(m * k) * sizeof(__nv_bfloat16)));
    auto* w = static_cast<__nv_bfloat16*>(b.take(size_t(n * k) * sizeof(__nv_bfloat16)));
    auto* y = static_cast<__nv_bfloat16*>(b.take(size_t(m * n) * sizeof(__nv_bfloat16)));
    fill_kernel<<<1024, 256, 0, stream>>>(x, m * k, 1u);
    fill_kernel<<<1024, 256, 0, stream>>>(w, n * k, 2u);
    ATOM_CUDA_CHECK(cudaGetLastError());
    Gemm gemm;
    const __nv_bfloat16* no_bias = nullptr;
    const double gemm_s = median_seconds(stream, warmup, repeats, [&] {
      gemm.launch(x, w, no_bias, y, m, n, k, stream);
    });
    c.gemm_flops_per_s = 2.0 * double(m) * double(n) * double(k) / gemm_s;
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  return c;
}

}  // namespace atom::cuda

#include "atom/backends/cuda/ceilings.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
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

// Holds the stream busy for `cycles` SM clocks (~25 us at 40000), so that the host enqueues the
// start event, the timed work and the stop event before the GPU reaches them: the interval then
// times the work alone, not the host's launch latency.
__global__ void spin_kernel(int64_t cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

// Median seconds of `repeats` timed runs op(i) (i counts every run, warm-up included) on
// `stream` after `warmup` untimed ones, each run timed alone behind a spin_kernel.
template <typename Op>
double median_seconds_alone(cudaStream_t stream, int warmup, int repeats, Op op) {
  cudaEvent_t start = nullptr, stop = nullptr;
  ATOM_CUDA_CHECK(cudaEventCreate(&start));
  ATOM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> s;
  try {
    for (int i = 0; i < warmup + repeats; ++i) {
      spin_kernel<<<1, 1, 0, stream>>>(40000);
      ATOM_CUDA_CHECK(cudaGetLastError());
      ATOM_CUDA_CHECK(cudaEventRecord(start, stream));
      op(i);
      ATOM_CUDA_CHECK(cudaEventRecord(stop, stream));
      ATOM_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i >= warmup) s.push_back(double(ms) / 1000.0);
    }
  } catch (...) {
    (void)cudaEventDestroy(start);
    (void)cudaEventDestroy(stop);
    throw;
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
    const double gemm_s = median_seconds(stream, warmup, repeats,
                                         [&] { gemm.launch(x, w, no_bias, y, m, n, k, stream); });
    c.gemm_flops_per_s = 2.0 * double(m) * double(n) * double(k) / gemm_s;
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  return c;
}

std::vector<SmallMGemmShape> llama8b_decode_shapes() {
  return {{6144, 4096, false},
          {4096, 4096, false},
          {28672, 4096, false},
          {4096, 14336, false},
          {128256, 4096, true}};
}

std::vector<SmallMGemmTiming> measure_small_m_gemm(const std::vector<SmallMGemmShape>& shapes,
                                                   const std::vector<int64_t>& ms, int warmup,
                                                   int repeats) {
  ATOM_CHECK(warmup >= 0 && repeats > 0, kInvalidArgument,
             "measure_small_m_gemm: warmup {} and repeats {} must be >= 0 and > 0", warmup,
             repeats);
  int64_t max_m = 0, max_k = 0, max_n = 0;
  for (const int64_t m : ms) {
    ATOM_CHECK(m >= 1 && m <= Gemm::kGemvRowsLimit, kInvalidArgument,
               "measure_small_m_gemm: m {} is outside [1, {}]", m, Gemm::kGemvRowsLimit);
    max_m = std::max(max_m, m);
  }
  for (const SmallMGemmShape& sh : shapes) {
    ATOM_CHECK(sh.n > 0 && sh.k > 0, kInvalidArgument, "measure_small_m_gemm: bad shape {} x {}",
               sh.n, sh.k);
    max_n = std::max(max_n, sh.n);
    max_k = std::max(max_k, sh.k);
  }
  std::vector<SmallMGemmTiming> out;
  if (ms.empty() || shapes.empty()) return out;
  int device = 0, l2_bytes = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&device));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  cudaStream_t stream = nullptr;
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  try {
    Buffers b;
    // x: [max_m, max_k] bf16; y: [max_m, max_n] f32, also serving as bf16.
    auto* x = static_cast<__nv_bfloat16*>(b.take(size_t(max_m * max_k) * sizeof(__nv_bfloat16)));
    void* y = b.take(size_t(max_m * max_n) * sizeof(float));
    fill_kernel<<<1024, 256, 0, stream>>>(x, max_m * max_k, 3u);
    ATOM_CUDA_CHECK(cudaGetLastError());
    Gemm cublaslt, gemv;
    cublaslt.set_gemv_max_rows(0);
    gemv.set_gemv_max_rows(Gemm::kGemvRowsLimit);
    for (const SmallMGemmShape& sh : shapes) {
      // Copies of W [n, k] enough to cover L2 four times over: the run before a copy's next use
      // has streamed it out of L2.
      const size_t w_bytes = size_t(sh.n * sh.k) * sizeof(__nv_bfloat16);
      const size_t copies = std::max<size_t>(2, (4 * size_t(l2_bytes)) / w_bytes + 1);
      Buffers wb;
      std::vector<const __nv_bfloat16*> w(copies);
      for (size_t c = 0; c < copies; ++c) {
        auto* p = static_cast<__nv_bfloat16*>(wb.take(w_bytes));
        fill_kernel<<<1024, 256, 0, stream>>>(p, sh.n * sh.k, 4u + uint32_t(c));
        ATOM_CUDA_CHECK(cudaGetLastError());
        w[c] = p;
      }
      for (const int64_t m : ms) {
        const auto time = [&](Gemm& g) {
          return median_seconds_alone(stream, warmup, repeats, [&](int i) {
            const __nv_bfloat16* wi = w[size_t(i) % copies];
            if (sh.f32_out) {
              g.launch(x, wi, static_cast<const float*>(nullptr), static_cast<float*>(y), m, sh.n,
                       sh.k, stream);
            } else {
              g.launch(x, wi, static_cast<const __nv_bfloat16*>(nullptr),
                       static_cast<__nv_bfloat16*>(y), m, sh.n, sh.k, stream);
            }
          });
        };
        SmallMGemmTiming t;
        t.m = m;
        t.n = sh.n;
        t.k = sh.k;
        t.f32_out = sh.f32_out;
        t.weight_bytes = double(w_bytes);
        t.cublaslt_s = time(cublaslt);
        t.gemv_s = time(gemv);
        out.push_back(t);
      }
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  return out;
}

}  // namespace atom::cuda

// The card's own ceilings, measured in the same run as the benchmarks they bound ([F2]):
// device-to-device copy bandwidth (bytes read plus bytes written per second) and the rate of a
// large bf16 GEMM through the same cuBLASLt path the model uses. Rooflines divide by these, not
// by the data sheet.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace atom::cuda {

struct Ceilings {
  std::string device_name;
  double copy_bytes_per_s = 0;  // (read + written) / time, median of the repeats
  double gemm_flops_per_s = 0;  // 2 m n k / time, median of the repeats
  size_t copy_bytes = 0;        // one buffer
  int64_t gemm_m = 0, gemm_n = 0, gemm_k = 0;
};

// Times `repeats` device-to-device copies of `copy_bytes` and `repeats` GEMMs [m, k] x [n, k]^T
// (bf16 in, f32 accumulate, bf16 out) with CUDA events after `warmup` untimed runs of each, on
// the current device. Allocates its buffers and frees them before returning.
Ceilings measure_ceilings(size_t copy_bytes = size_t(1) << 30, int64_t m = 8192, int64_t n = 8192,
                          int64_t k = 8192, int warmup = 3, int repeats = 20);

}  // namespace atom::cuda

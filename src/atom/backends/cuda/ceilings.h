// The card's own ceilings, measured in the same run as the benchmarks they bound ([F2]):
// device-to-device copy bandwidth (bytes read plus bytes written per second) and the rate of a
// large bf16 GEMM through the same cuBLASLt path the model uses. Rooflines divide by these, not
// by the data sheet. Also the small-m (decode) GEMM table: cuBLASLt against the GEMV kernel
// (gemm.h) at the shapes a decode step runs, as weight bytes per second.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

// One weight matrix of a decode step: W [n, k] bf16, y bf16 or f32 (the LM head's logits).
struct SmallMGemmShape {
  int64_t n = 0, k = 0;
  bool f32_out = false;
};

// Llama-3.1-8B's: QKV (6144, 4096), o_proj (4096, 4096), gate_up (28672, 4096), down
// (4096, 14336), LM head (128256, 4096, f32 logits).
std::vector<SmallMGemmShape> llama8b_decode_shapes();

// One shape at one m, through Gemm::launch on each path (no bias).
struct SmallMGemmTiming {
  int64_t m = 0, n = 0, k = 0;
  bool f32_out = false;
  double weight_bytes = 0;  // n * k * 2, what a decode step must read
  double cublaslt_s = 0;    // median seconds, GEMV off (Gemm::set_gemv_max_rows(0))
  double gemv_s = 0;        // median seconds, GEMV on for every m <= Gemm::kGemvRowsLimit
};

// Times every shape at every m (each in [1, Gemm::kGemvRowsLimit]) on both paths, `repeats`
// runs after `warmup` untimed ones, each run alone between two CUDA events on an idle-free
// stream. The runs rotate over enough copies of W to overflow L2 several times, so each reads
// its weights from memory as a decode step does (a step's layers never share weights). Allocates
// its buffers and frees them before returning.
std::vector<SmallMGemmTiming> measure_small_m_gemm(const std::vector<SmallMGemmShape>& shapes,
                                                   const std::vector<int64_t>& ms, int warmup = 5,
                                                   int repeats = 50);

}  // namespace atom::cuda

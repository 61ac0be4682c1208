// `atom bench ceilings`: the GPU's measured device-to-device copy bandwidth and bf16 GEMM rate
// (backends/cuda/ceilings.h), the ceilings the [F2] rooflines divide by, as text and JSON; then
// the small-m GEMM table: cuBLASLt against the GEMV kernel at the 8B model's decode shapes
// (JSON key "small_m_gemm").
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "atom/apps/commands.h"
#include "atom/core/error.h"
#ifdef ATOM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "atom/backends/cuda/ceilings.h"
#include "atom/backends/cuda/check.h"
#include "atom/runner/cuda/cuda_model_runner.h"
#endif

namespace atom::apps {

Command add_bench_ceilings(CLI::App& app) {
  struct Opts {
    int device = 0;
    int64_t gemm_size = 8192;
    double copy_gib = 1.0;
    std::string output_json;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--device-index", o->device, "CUDA device ordinal")->capture_default_str();
  app.add_option("--gemm-size", o->gemm_size, "m = n = k of the GEMM")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--copy-gib", o->copy_gib, "Size of the copied buffer, GiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--output-json", o->output_json, "Write the figures to this JSON file");
  return [o]() -> int {
#ifdef ATOM_HAVE_CUDA
    ATOM_CHECK(cuda_device_count() > o->device, kUnsupported, "no CUDA device {} is visible",
               o->device);
    ATOM_CUDA_CHECK(cudaSetDevice(o->device));
    const cuda::Ceilings c = cuda::measure_ceilings(size_t(o->copy_gib * double(size_t(1) << 30)),
                                                    o->gemm_size, o->gemm_size, o->gemm_size);
    std::printf("device: %s\n", c.device_name.c_str());
    std::printf("copy: %.1f GB/s (read + written, %zu-byte buffer)\n", c.copy_bytes_per_s / 1e9,
                c.copy_bytes);
    std::printf("gemm: %.1f TFLOP/s (bf16, %lld x %lld x %lld)\n", c.gemm_flops_per_s / 1e12,
                (long long)c.gemm_m, (long long)c.gemm_n, (long long)c.gemm_k);

    constexpr int kWarmup = 5, kRepeats = 50;
    const std::vector<cuda::SmallMGemmTiming> small =
        cuda::measure_small_m_gemm(cuda::llama8b_decode_shapes(), {1, 2, 4, 8}, kWarmup, kRepeats);
    std::printf(
        "small-m gemm: y [m, n] = x [m, k] W [n, k]^T, bf16 W, median of %d runs; GB/s of weight "
        "bytes\n",
        kRepeats);
    std::printf("%3s %7s %6s %4s %13s %7s %9s %7s %8s\n", "m", "n", "k", "out", "cuBLASLt us",
                "GB/s", "GEMV us", "GB/s", "speedup");
    nlohmann::json small_json = nlohmann::json::array();
    for (const cuda::SmallMGemmTiming& t : small) {
      const char* out = t.f32_out ? "f32" : "bf16";
      std::printf("%3lld %7lld %6lld %4s %13.1f %7.1f %9.1f %7.1f %7.2fx\n", (long long)t.m,
                  (long long)t.n, (long long)t.k, out, t.cublaslt_s * 1e6,
                  t.weight_bytes / t.cublaslt_s / 1e9, t.gemv_s * 1e6,
                  t.weight_bytes / t.gemv_s / 1e9, t.cublaslt_s / t.gemv_s);
      small_json.push_back({{"m", t.m},
                            {"n", t.n},
                            {"k", t.k},
                            {"out", out},
                            {"weight_bytes", t.weight_bytes},
                            {"cublaslt_us", t.cublaslt_s * 1e6},
                            {"cublaslt_weight_bytes_per_s", t.weight_bytes / t.cublaslt_s},
                            {"gemv_us", t.gemv_s * 1e6},
                            {"gemv_weight_bytes_per_s", t.weight_bytes / t.gemv_s}});
    }
    if (!o->output_json.empty()) {
      std::ofstream f(o->output_json);
      ATOM_CHECK(f.good(), kInvalidArgument, "cannot write {}", o->output_json);
      f << nlohmann::json{{"device", c.device_name},
                          {"copy_bytes_per_s", c.copy_bytes_per_s},
                          {"gemm_flops_per_s", c.gemm_flops_per_s},
                          {"copy_bytes", c.copy_bytes},
                          {"gemm_mnk", {c.gemm_m, c.gemm_n, c.gemm_k}},
                          {"small_m_gemm", small_json}}
               .dump(2)
        << "\n";
    }
    return 0;
#else
    throw_error(ErrorCode::kUnsupported,
                "atom bench ceilings measures a GPU: this build of atom has no CUDA backend");
#endif
  };
}

}  // namespace atom::apps

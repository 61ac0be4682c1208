// CPU quantized matmul benchmark on the shapes of SmolLM2-135M (Q4_1 file): per shape, the time
// of atom::cpu::matmul for m = 1 (decode GEMV) and m = 32 (prefill), on 1 and 2 threads.
//
// m = 1 is memory-bound, so it is reported as GB/s of weight bytes read, next to this machine's
// read bandwidth measured the same way (a plain f32 sum over a buffer far larger than the caches).
// "cold" rotates through copies of the weights totalling more than the last-level cache, as a real
// decode step does (the model's weights are ~100 MB); "hot" reuses one copy (cache-resident).
//
// Usage: cpu_matmul_bench [--threads 1,2] [--scalar] [--quick]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "atom/core/dtype.h"

namespace {

using atom::GgmlType;
using atom::cpu::QMatrix;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

constexpr size_t kColdBytes = size_t(256) << 20;  // well past the L3 of any CPU we target

struct Shape {
  const char* name;
  GgmlType type;
  int64_t rows, cols;
  int per_layer;  // how many such matmuls a decoder layer runs (0: once per token)
};

// SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 KV heads of 64, MLP 1536, vocab 49152 with
// the Q8_0 embedding tied as the LM head.
constexpr int kLayers = 30;
const Shape kShapes[] = {
    {"q/o   Q4_1 [576x576]", GgmlType::kQ4_1, 576, 576, 2},
    {"k/v   Q4_1 [192x576]", GgmlType::kQ4_1, 192, 576, 2},
    {"gate/up Q4_1 [1536x576]", GgmlType::kQ4_1, 1536, 576, 2},
    {"down  Q4_1 [576x1536]", GgmlType::kQ4_1, 576, 1536, 1},
    {"lm_head Q8_0 [49152x576]", GgmlType::kQ8_0, 49152, 576, 0},
};

// Random payload with sane f16 scales at the start of each block.
std::vector<uint8_t> random_matrix(const Shape& s, std::mt19937& rng) {
  const auto& info = atom::ggml_type_info(s.type);
  const size_t bytes = atom::ggml_row_bytes(s.type, s.cols) * size_t(s.rows);
  std::vector<uint8_t> raw(bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : raw) b = uint8_t(byte(rng));
  const uint16_t d = atom::f32_to_f16(0.01f), m = atom::f32_to_f16(-0.08f);
  for (size_t at = 0; at < bytes; at += info.type_size) {
    std::memcpy(raw.data() + at, &d, 2);
    if (s.type == GgmlType::kQ4_1) std::memcpy(raw.data() + at + 2, &m, 2);
  }
  return raw;
}

// Read bandwidth of a streaming f32 sum, the ceiling for the m = 1 GEMV.
double read_bandwidth_gbs(int threads) {
  const size_t n = kColdBytes / sizeof(float);
  static std::vector<float> buf(n, 1.0f);
  omp_set_num_threads(threads);
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    float total = 0.0f;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t chunk = 0; chunk < int64_t(n / 4096); ++chunk) {
      float s[16] = {};
      const float* p = buf.data() + chunk * 4096;
      for (int i = 0; i < 4096; i += 16)
        for (int j = 0; j < 16; ++j) s[j] += p[i + j];
      for (float v : s) total += v;
    }
    const double t = seconds_since(t0);
    if (total != float(n)) std::printf("(checksum %g)\n", double(total));
    best = std::max(best, double(kColdBytes) / t / 1e9);
  }
  return best;
}

struct Result {
  double seconds;  // per matmul
};

// Fastest time of one matmul, rotating through `copies` weight copies (cold) or reusing one. The
// fastest, not the median: on a shared machine the median measures the other tenants.
Result time_matmul(const std::vector<uint8_t>& weights, size_t copies, const Shape& s, int64_t m,
                   bool scalar, double min_seconds) {
  const size_t bytes = weights.size() / copies;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> x(size_t(m * s.cols)), y(size_t(m * s.rows));
  for (auto& v : x) v = unit(rng);
  const auto kernels = scalar ? atom::cpu::QuantKernels::kScalar : atom::cpu::QuantKernels::kBest;
  std::vector<double> times;
  const auto start = Clock::now();
  size_t c = 0;
  while (times.size() < 5 || (seconds_since(start) < min_seconds && times.size() < 100000)) {
    const QMatrix w = atom::cpu::make_qmatrix(s.type, weights.data() + c * bytes, s.rows, s.cols);
    const auto t0 = Clock::now();
    atom::cpu::matmul(x.data(), m, w, y.data(), kernels);
    times.push_back(seconds_since(t0));
    c = (c + 1) % copies;
  }
  return {*std::min_element(times.begin(), times.end())};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_counts = {1, 2};
  bool scalar = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--scalar") {
      scalar = true;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--threads" && i + 1 < argc) {
      thread_counts.clear();
      for (const char* p = argv[++i]; *p;) {
        thread_counts.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--threads 1,2] [--scalar] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const double min_seconds = quick ? 0.2 : 1.0;
  std::printf("kernels: %s\n", scalar ? "scalar" : atom::cpu::quant_simd_level());

  std::mt19937 rng(42);
  for (int threads : thread_counts) {
    std::printf("\n== %d thread%s; streaming read bandwidth %.1f GB/s\n", threads,
                threads > 1 ? "s" : "", read_bandwidth_gbs(threads));
    std::printf("%-26s %12s %9s %12s %9s %12s %9s\n", "shape", "m=1 cold us", "GB/s", "m=1 hot us",
                "GB/s", "m=32 us", "GFLOP/s");
    omp_set_num_threads(threads);
    double token_cold = 0.0, token_hot = 0.0, prefill32 = 0.0;
    for (const Shape& s : kShapes) {
      const auto one = random_matrix(s, rng);
      const size_t copies = std::max<size_t>(2, (kColdBytes + one.size() - 1) / one.size());
      std::vector<uint8_t> all(one.size() * copies);
      for (size_t c = 0; c < copies; ++c)
        std::memcpy(all.data() + c * one.size(), one.data(), one.size());
      const Result cold = time_matmul(all, copies, s, 1, scalar, min_seconds);
      const Result hot = time_matmul(one, 1, s, 1, scalar, min_seconds);
      const Result pre = time_matmul(one, 1, s, 32, scalar, min_seconds);
      const double gb = double(one.size()) / 1e9;
      const double flop = 2.0 * 32 * double(s.rows) * double(s.cols);
      std::printf("%-26s %12.1f %9.1f %12.1f %9.1f %12.1f %9.1f\n", s.name, cold.seconds * 1e6,
                  gb / cold.seconds, hot.seconds * 1e6, gb / hot.seconds, pre.seconds * 1e6,
                  flop / pre.seconds / 1e9);
      const int count = s.per_layer ? s.per_layer * kLayers : 1;
      token_cold += count * cold.seconds;
      token_hot += count * hot.seconds;
      prefill32 += count * pre.seconds;
    }
    std::printf(
        "all matmuls of one token (30 layers + LM head): %.2f ms cold (%.1f tok/s), "
        "%.2f ms hot; 32-token prefill %.1f ms (%.0f tok/s)\n",
        token_cold * 1e3, 1.0 / token_cold, token_hot * 1e3, prefill32 * 1e3, 32.0 / prefill32);
  }
  return 0;
}

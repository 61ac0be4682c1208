// The trace profiler on the GPU: the CUDA runner's steps under a detailed session give a trace
// with our kernels (CUPTI) on rows "GPU 0" / "stream N", on the same timeline as the host
// scopes (every kernel inside the span of the host events), plus the per-layer launch scopes
// and the device memory counters.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "atom/core/profiler.h"
#include "atom/runner/cuda/cuda_model_runner.h"
#include "atom/runner/cuda/cupti_trace.h"
#include "atom/runner/model_runner.h"
#include "common/gunzip.h"
#include "cuda_test_util.h"
#include "tiny_decoder.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::gunzip;

TEST(CudaProfiler, KernelsOnTheHostTimeline) {
  if (!cuda::test::gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  if (!cuda::register_cupti_tracer())
    GTEST_SKIP() << "this build or host has no usable CUPTI (see the log)";
  const fs::path dir =
      fs::temp_directory_path() / ("atom_cuda_profile_" + std::to_string(getpid()));
  fs::remove_all(dir);

  const std::unique_ptr<Model> model = cuda::test::make_tiny(/*qwen3=*/false);
  CudaRunnerConfig rc;
  rc.num_blocks = 32;
  rc.block_size = 16;
  rc.max_num_batched_tokens = 256;
  rc.max_num_seqs = 8;
  rc.max_model_len = 256;
  rc.enforce_eager = true;  // every kernel launched by the step itself
  CudaModelRunner runner(*model, rc);

  SamplingParams greedy;
  greedy.temperature = 0.0f;
  std::vector<int32_t> a = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37}, b = {2, 4, 6};
  const int64_t prompt_a = int64_t(a.size()), prompt_b = int64_t(b.size());
  const std::vector<int32_t> table_a = {0, 1}, table_b = {2, 3};
  profiler::start({dir.string(), true, "atom test"});
  // A prefill of two sequences, then two decode steps.
  std::vector<StepSeq> seqs = {
      StepSeq{0, a, int64_t(a.size()), 0, int64_t(a.size()), table_a, true, &greedy},
      StepSeq{1, b, int64_t(b.size()), 0, int64_t(b.size()), table_b, true, &greedy}};
  std::vector<int32_t> ids = runner.execute(seqs);
  for (int step = 0; step < 2; ++step) {  // decode: the last token only
    ASSERT_EQ(ids.size(), 2u);
    a.push_back(ids[0]);
    b.push_back(ids[1]);
    seqs = {StepSeq{0, a, prompt_a, int64_t(a.size()) - 1, 1, table_a, true, &greedy},
            StepSeq{1, b, prompt_b, int64_t(b.size()) - 1, 1, table_b, true, &greedy}};
    ids = runner.execute(seqs);
  }
  const std::string path = profiler::stop();
  const json trace = json::parse(gunzip(path));
  fs::remove_all(dir);

  const int64_t gpu_pid = profiler::device_pid(0);
  double host_begin = 1e300, host_end = -1e300;
  int forwards = 0, layers = 0;
  bool kv_counter = false, gpu_named = false, stream_named = false;
  std::vector<json> kernels;
  for (const json& e : trace["traceEvents"]) {
    const std::string ph = e["ph"], name = e["name"];
    if (ph == "M" && e["pid"] == gpu_pid) {
      if (name == "process_name") gpu_named = e["args"]["name"] == "GPU 0";
      if (name == "thread_name")
        stream_named = e["args"]["name"].get<std::string>().rfind("stream ", 0) == 0;
    }
    if (ph == "C" && e["args"].contains("cuda kv cache"))
      kv_counter = kv_counter || e["args"]["cuda kv cache"].get<int64_t>() > 0;
    if (ph != "X") continue;
    if (e["pid"] == gpu_pid) {
      if (e["cat"] == "kernel") kernels.push_back(e);
      continue;
    }
    host_begin = std::min(host_begin, e["ts"].get<double>());
    host_end = std::max(host_end, e["ts"].get<double>() + e["dur"].get<double>());
    forwards += name == "forward";
    if (name.rfind("layer ", 0) == 0) {
      ++layers;
      EXPECT_EQ(e["args"]["hidden"], 256);
    }
  }
  EXPECT_EQ(forwards, 3);
  EXPECT_EQ(layers, 3 * 2);
  EXPECT_TRUE(kv_counter);
  EXPECT_TRUE(gpu_named);
  EXPECT_TRUE(stream_named);
  ASSERT_FALSE(kernels.empty()) << "no kernel events in the trace";

  // Our kernels by name, each step's: embedding, norms, RoPE + KV write, SiLU-and-mul, argmax.
  for (const char* k : {"embedding_kernel", "rms_norm_kernel", "rope_cache_kernel",
                        "silu_and_mul_kernel", "argmax_kernel"}) {
    const auto n = std::count_if(kernels.begin(), kernels.end(), [&](const json& e) {
      return e["name"].get<std::string>().find(k) != std::string::npos;
    });
    EXPECT_GE(n, 3) << k;
  }
  // One timeline: the GPU ran each kernel while the host scopes were open (execute() waits for
  // its step), within the clock conversion's error.
  constexpr double kSlackUs = 200.0;
  for (const json& k : kernels) {
    const double ts = k["ts"], dur = k["dur"];
    EXPECT_GE(ts, host_begin - kSlackUs) << k.dump();
    EXPECT_LE(ts + dur, host_end + kSlackUs) << k.dump();
    EXPECT_GT(dur, 0.0) << k.dump();
  }
  std::printf("[cuda profiler] %zu kernel events in [%.1f, %.1f] us of host scopes\n",
              kernels.size(), host_begin, host_end);
}

}  // namespace
}  // namespace atom

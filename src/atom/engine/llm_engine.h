// LLMEngine: the offline engine (nano-vllm's LLMEngine, ATOM's atom.LLMEngine): requests in,
// one step() at a time: schedule -> Runner::execute -> postprocess -> outputs.
// EngineCore (engine_core.h) drives one from its own thread for the server.
//
// With deferred output (EngineConfig::async_output, ATOM's default) the backend runs one step
// ahead of the host: step() schedules and submits step N, then postprocesses step N-1 (tokens,
// stop checks, detokenization, stop strings, outputs) while N runs, and the next step() plans
// N+1 while N still runs. Outputs and text are the same as in the synchronous path; a token a
// finishing request samples in the step after its last one is discarded.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "atom/engine/block_manager.h"
#include "atom/engine/output_processor.h"
#include "atom/engine/parallel_config.h"
#include "atom/engine/scheduler.h"
#include "atom/engine/sequence.h"
#include "atom/engine/stats.h"
#include "atom/runner/model_runner.h"
#include "atom/runner/runner.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {

struct EngineConfig {
  SchedulerConfig scheduler;
  int64_t block_size = 16;
  int64_t num_kv_blocks = 0;               // 0: as many as kv_cache_bytes holds
  size_t kv_cache_bytes = size_t(1) << 30; // CPU KV cache budget
  bool enable_prefix_caching = false;
  // Deferred output (SPEC 3.4): the runner computes step N while the host postprocesses N-1
  // and schedules N+1. Off by default on the CPU backend, by measurement: `atom bench
  // throughput --num-seqs 64 --input-len-range 100,512 --output-len-range 64,256` on 2 cores
  // gives the same throughput within run-to-run noise either way, because the host's share of
  // a step (schedule, postprocess, detokenize) is far below 1% of the forward there, so there
  // is nothing to hide, while deferred output costs a worker thread and one discarded decode
  // per request that ends by a stop token. A GPU runner, whose decode steps are short, is the
  // case it is for.
  bool async_output = false;
  // The backend: "cpu" (ModelRunner) or "cuda" (CudaModelRunner, in builds with CUDA only).
  std::string device = "cpu";
  // "cuda" with num_kv_blocks == 0: the KV pool is this fraction of the GPU's memory minus the
  // weights, the activation workspace, the CUDA graphs and what the device already uses
  // (kv_cache_bytes is the CPU's budget only).
  double gpu_memory_utilization = 0.9;
  // --kv_cache_dtype: "bf16", or "fp8" (float8 e4m3, scales 1.0; device "cuda" only).
  std::string kv_cache_dtype = "bf16";
  // Profiling (SPEC 8.1, core/profiler.h): where start_profile() writes the traces, in a
  // per-rank folder; empty: profiling is not configured and start_profile() is an error.
  std::string torch_profiler_dir;
  // CUDA graphs for decode steps (device "cuda"): the batch sizes captured (ATOM's default
  // list; sizes above max_num_seqs are dropped), none with enforce_eager or
  // ATOM_ENFORCE_EAGER=1.
  bool enforce_eager = false;
  std::vector<int64_t> cudagraph_capture_sizes = {1, 2, 4, 8, 16, 32, 48, 64, 128, 256};
  // Tensor/data parallelism, resolved from flags, ATOM_DP_* and defaults (parallel_config.h);
  // names the profiler's per-rank folder. The engine is one rank until multi-GPU lands.
  ParallelConfig parallel;
};

// What a request produced in one step (and, when finished, in total).
struct RequestOutput {
  int64_t request_id = 0;
  std::vector<int32_t> new_token_ids;  // sampled this step
  std::string delta_text;              // new text safe to stream (stop strings held back)
  bool finished = false;
  std::string finish_reason;           // "stop" | "length" | "abort"
  std::string raw_finish_reason;       // "eos" | "stop_<id>" | "stop_sequence" | ...
  std::string stop_string;             // with "stop_sequence": the stop string that matched
  // Filled when finished:
  std::vector<int32_t> output_ids;
  std::string text;
  int64_t num_prompt_tokens = 0;
  int64_t num_cached_tokens = 0;       // prefix-cache hit at admission
  double ttft_seconds = 0.0;
  double latency_seconds = 0.0;
};

class LLMEngine {
 public:
  LLMEngine(Model& model, const Tokenizer& tokenizer, EngineConfig config);

  // Throws atom::Error(kInvalidArgument / kOutOfRange) for an empty prompt, bad parameters, or
  // prompt + max_tokens beyond max_model_len. Returns the request id (id < 0: the next one).
  // `arrival_time` (default: now) is where TTFT, queue time and latency are measured from: the
  // server passes the moment the request reached EngineCore, before it waited for a step.
  int64_t add_request(std::vector<int32_t> prompt, SamplingParams params, int64_t id = -1,
                      Sequence::Clock::time_point arrival_time = {});
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const;
  // One engine step; outputs for every request that progressed or finished (aborts included).
  // With async_output they are those of the step submitted by the previous call (the first
  // call returns none). A runner failure is rethrown after the steps in flight were drained,
  // leaving the engine as if they had never been scheduled.
  std::vector<RequestOutput> step();
  bool abort(int64_t request_id);
  bool has_unfinished() const;  // requests, abort reports, or steps in flight to drain
  int64_t num_steps_in_flight() const { return int64_t(inflight_.size()); }

  // Runs the prompts to completion as one batch; final outputs in prompt order. `progress`
  // draws a progress bar on stderr.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<SamplingParams>& params,
                                      bool progress = false);

  const EngineConfig& config() const { return config_; }
  const BlockManager& block_manager() const { return blocks_; }
  const Scheduler& scheduler() const { return scheduler_; }

  // Profiling (engine_profile.cpp): records a Chrome trace of this process into
  // config().torch_profiler_dir/config().parallel.profile_folder() (rank_0, or dp<d>_tp<t>).
  // Throws atom::Error(kInvalidArgument) when no directory is configured, when a session is
  // already running (start) or none is (stop). stop_profile() returns once the file is
  // complete, with its path. Call them from the thread that steps the engine, between steps.
  void start_profile();
  std::string stop_profile();
  // Counters and histograms for /metrics: written by the thread that steps, readable from any.
  const EngineStats& stats() const { return stats_; }

 private:
  struct Request {
    SequencePtr seq;
    std::unique_ptr<RequestText> text;
    Sequence::Clock::time_point last_token_time{};  // of the last token emitted (statistics)
  };
  // config_.num_kv_blocks from the runner (which may have sized it), checked to hold one
  // max_model_len sequence (kInvalidArgument otherwise); for blocks_.
  int64_t adopt_runner_blocks();
  RequestOutput finish_output(Request& r);
  std::vector<StepSeq> make_steps(const SchedulerOutput& sched) const;
  // Tokens, stop strings, detokenization and outputs of a step the scheduler postprocessed.
  void emit_outputs(const SchedulerOutput& sched, std::span<const int32_t> sampled,
                    std::vector<RequestOutput>& outputs);
  void step_sync(std::vector<RequestOutput>& outputs);
  void step_async(std::vector<RequestOutput>& outputs);
  // The runner failed: collect (and drop) every step still in flight, undo their bookkeeping.
  void drain_after_failure();

  Model& model_;
  const Tokenizer& tok_;
  EngineConfig config_;
  std::unique_ptr<Runner> runner_;  // made by make_runner from config_.device
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<int64_t, Request> requests_;
  std::vector<RequestOutput> aborted_;    // reported by the next step()
  std::deque<SchedulerOutput> inflight_;  // async_output: submitted, not postprocessed (<= 2)
  EngineStats stats_{config_.scheduler.max_model_len};
};

// The runner config.device names, over `model`, with config's (resolved) KV blocks and limits;
// kInvalidArgument for an unknown device, kUnsupported for "cuda" in a build without CUDA.
std::unique_ptr<Runner> make_runner(Model& model, const EngineConfig& config);

// Fills in config.scheduler.max_model_len (0 means the model's context), the EOS id and, on the
// CPU, the KV block count for `model`. On "cuda" a KV block count of 0 stays 0: the runner sizes
// the pool after its warm-up. LLMEngine checks that one max_model_len sequence fits.
EngineConfig resolve_engine_config(EngineConfig config, const ModelConfig& model,
                                   const Tokenizer& tokenizer);

}  // namespace atom

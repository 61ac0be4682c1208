// LLMEngine: the offline engine (nano-vllm's LLMEngine, ATOM's atom.LLMEngine): requests in,
// one step() at a time: schedule -> ModelRunner::execute -> postprocess -> outputs.
// EngineCore (engine_core.h) drives one from its own thread for the server.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "atom/engine/block_manager.h"
#include "atom/engine/output_processor.h"
#include "atom/engine/scheduler.h"
#include "atom/engine/sequence.h"
#include "atom/runner/model_runner.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {

struct EngineConfig {
  SchedulerConfig scheduler;
  int64_t block_size = 16;
  int64_t num_kv_blocks = 0;               // 0: as many as kv_cache_bytes holds
  size_t kv_cache_bytes = size_t(1) << 30; // CPU KV cache budget
  bool enable_prefix_caching = false;
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
  int64_t add_request(std::vector<int32_t> prompt, SamplingParams params, int64_t id = -1);
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const;
  // One engine step; outputs for every request that progressed or finished (aborts included).
  std::vector<RequestOutput> step();
  bool abort(int64_t request_id);
  bool has_unfinished() const;

  // Runs the prompts to completion as one batch; final outputs in prompt order. `progress`
  // draws a progress bar on stderr.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<SamplingParams>& params,
                                      bool progress = false);

  const EngineConfig& config() const { return config_; }
  const BlockManager& block_manager() const { return blocks_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  struct Request {
    SequencePtr seq;
    std::unique_ptr<RequestText> text;
  };
  RequestOutput finish_output(Request& r);

  Model& model_;
  const Tokenizer& tok_;
  EngineConfig config_;
  ModelRunner runner_;
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<int64_t, Request> requests_;
  std::vector<RequestOutput> aborted_;  // reported by the next step()
};

// Fills in config.scheduler.max_model_len (0 means the model's context), the EOS id and the KV
// block count for `model`, checking that one max_model_len sequence fits.
EngineConfig resolve_engine_config(EngineConfig config, const ModelConfig& model,
                                   const Tokenizer& tokenizer);

}  // namespace atom

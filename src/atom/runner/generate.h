// Single-sequence generation over the paged KV cache: chunked prefill, then one decode step per
// token. This is what `atom generate` runs; the continuous-batching engine builds its batches
// with the same ForwardBatch plan and the same model forward.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "atom/models/model.h"
#include "atom/runner/sampler.h"

namespace atom {

struct GenerateOptions {
  SamplingParams sampling;              // also max_tokens, ignore_eos, stop_token_ids
  int64_t max_model_len = 0;            // 0: the model's max_position_embeddings
  int64_t max_num_batched_tokens = 512; // prefill chunk size
  int64_t block_size = 16;
};

struct GenerateResult {
  std::vector<int32_t> output_ids;
  std::string finish_reason;  // "stop" (EOS / stop id / callback) or "length"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0.0;  // prompt processing up to the first sampled token
  double decode_seconds = 0.0;   // the remaining tokens
};

// on_token is called with each sampled token; returning false stops generation ("stop").
// Throws atom::Error for an empty prompt or one that does not fit max_model_len.
GenerateResult generate(Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opts,
                        const std::function<bool(int32_t)>& on_token = nullptr);

// The plan for one step of one sequence whose blocks are 0..n-1 in order: tokens
// [start, start + count) of `tokens`, with logits for the last one.
ForwardBatch plan_single_sequence(const std::vector<int32_t>& tokens, int64_t start,
                                  int64_t count, int64_t num_blocks);

}  // namespace atom

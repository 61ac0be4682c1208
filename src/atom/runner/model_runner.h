// ModelRunner: the boundary between the engine and a backend. The engine says which tokens of
// which sequences to compute this step; the runner plans the batch metadata (positions, slot
// mapping, cu_seqlens, context lengths, block tables, logits rows), runs the model over the
// paged KV cache it owns, and samples one token for each sequence that needs one. The CUDA
// runner will implement the same interface with persistent device buffers and graphs.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "atom/models/model.h"
#include "atom/runner/sampler.h"

namespace atom {

// One sequence's share of a step.
struct StepSeq {
  int64_t seq_id = 0;
  std::span<const int32_t> token_ids;  // prompt + output so far
  int64_t num_prompt_tokens = 0;
  int64_t start = 0;                   // first token to compute (tokens before it are cached)
  int64_t count = 0;                   // tokens to compute: [start, start + count)
  std::span<const int32_t> block_table;
  bool sample = false;                 // sample the token after start + count - 1
  const SamplingParams* params = nullptr;  // the sequence's sampler is made from it once
};

class ModelRunner {
 public:
  ModelRunner(Model& model, int64_t num_blocks, int64_t block_size);

  // Returns one sampled id per StepSeq with sample = true, in order.
  std::vector<int32_t> execute(std::span<const StepSeq> seqs);
  // Forgets a finished sequence's sampler (and its RNG state).
  void release(int64_t seq_id);

  // The plan of one step (exposed for tests).
  ForwardBatch plan(std::span<const StepSeq> seqs) const;

  // KV blocks that fit in `bytes` for this model (f32 K and V, every layer).
  static int64_t num_blocks_for_bytes(const ModelConfig& cfg, size_t bytes, int64_t block_size);

  Model& model() { return model_; }
  int64_t num_blocks() const { return kv_.num_blocks(); }
  int64_t block_size() const { return kv_.block_size(); }

 private:
  Model& model_;
  KvCache kv_;
  std::unordered_map<int64_t, Sampler> samplers_;
  std::vector<float> logits_;  // [num sampled seqs, vocab]
};

}  // namespace atom

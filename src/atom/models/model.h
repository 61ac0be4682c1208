// Model interface shared by every architecture, and the per-step input the runner builds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"

namespace atom {

class GgufFile;

// Hyper-parameters in HF config.json terms, whatever file they were read from.
struct ModelConfig {
  std::string architecture;  // HF name, e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;  // usually head_dim
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  cpu::RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
};

// One forward step over a batch of sequences: the "plan" the runner fills on the host.
// Token t belongs to the sequence s with cu_seqlens_q[s] <= t < cu_seqlens_q[s+1].
struct ForwardBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> slot_mapping;  // [num_tokens] KV slot each token writes
  std::vector<int32_t> cu_seqlens_q;  // [num_seqs + 1]
  std::vector<int32_t> seq_lens;      // [num_seqs] context length after this step
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  std::vector<int32_t> logits_indices;  // token rows whose logits are wanted

  int64_t num_tokens() const { return int64_t(token_ids.size()); }
  int64_t num_seqs() const { return int64_t(seq_lens.size()); }
};

// Paged KV cache of one model on the CPU: per layer K and V, each
// [num_blocks, block_size, num_kv_heads, head_dim] f32.
class KvCache {
 public:
  KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t num_kv_heads,
          int64_t head_dim);
  cpu::KvCacheView layer(int64_t i);
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  size_t nbytes() const { return storage_.size() * sizeof(float); }

 private:
  int64_t num_layers_, num_blocks_, block_size_, num_kv_heads_, head_dim_;
  std::vector<float> storage_;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // logits: [batch.logits_indices.size(), vocab_size], row-major f32.
  virtual void forward(const ForwardBatch& batch, KvCache& kv, std::vector<float>& logits) = 0;
};

// Builds the model a GGUF file describes (general.architecture); kUnsupported otherwise.
std::unique_ptr<Model> load_model_from_gguf(const GgufFile& file);

}  // namespace atom

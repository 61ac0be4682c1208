// Model interface shared by every architecture, and the per-step input the runner builds.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/profiler.h"

namespace atom {

class GgufFile;
class SafetensorsCheckpoint;

// Mixture-of-experts hyper-parameters (Qwen3-MoE, Mixtral, DeepSeek-V3), config.json names.
// num_experts == 0 means a dense model. Which layers are MoE: io/hf_config.h is_moe_layer().
struct MoeConfig {
  int64_t num_experts = 0;               // num_experts / num_local_experts / n_routed_experts
  int64_t num_experts_per_tok = 0;       // top-k
  int64_t moe_intermediate_size = 0;     // per expert (Mixtral: intermediate_size)
  bool norm_topk_prob = true;            // renormalize the top-k weights
  std::string scoring_func = "softmax";  // DeepSeek: "sigmoid"
  std::string topk_method;               // DeepSeek: "noaux_tc" (e_score_correction_bias)
  // Qwen3-MoE: layer i is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  // DeepSeek: layer i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq == 0
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t n_shared_experts = 0;  // dense shared MLP of moe_intermediate_size * n_shared_experts
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;  // grouped top-k: experts in n_group groups, the best topk_group kept
  int64_t topk_group = 1;
};

// Multi-head latent attention (DeepSeek-V2/V3). q/k heads are qk_nope_head_dim +
// qk_rope_head_dim wide (ModelConfig::head_dim), v heads v_head_dim.
struct MlaConfig {
  std::optional<int64_t> q_lora_rank;  // nullopt: a plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;  // = ModelConfig::rotary_dim
  int64_t v_head_dim = 0;
};

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
  // --- read from HF config.json (io/hf_config.h); GGUF leaves the defaults ---
  std::string hidden_act = "silu";
  bool attention_bias = false;  // bias on q/k/v projections
  bool mlp_bias = false;
  std::string dtype = "bfloat16";         // dtype / torch_dtype: "bfloat16", "float16", ...
  std::vector<int64_t> bos_token_ids;     // bos_token_id: int or list (empty when absent)
  std::vector<int64_t> eos_token_ids;     // eos_token_id: int or list
  std::optional<int64_t> sliding_window;  // Mixtral/Qwen-style window; nullopt = full attention
  MoeConfig moe;
  std::optional<MlaConfig> mla;          // DeepSeek only
  int64_t num_nextn_predict_layers = 0;  // DeepSeek MTP layers after num_hidden_layers
  std::string quantization_config;       // the "quantization_config" object as JSON; "" = none
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
  size_t nbytes() const { return size_ * sizeof(float); }

 private:
  int64_t num_layers_, num_blocks_, block_size_, num_kv_heads_, head_dim_;
  // Left uninitialised on purpose: attention reads only slots written by reshape_and_cache, and
  // untouched pages of a large pool then cost no memory.
  std::unique_ptr<float[]> storage_;
  size_t size_ = 0;
  profiler::MemoryRecord memory_;  // storage_'s bytes, for the profiler
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // logits: [batch.logits_indices.size(), vocab_size], row-major f32. Not thread-safe: the
  // model reuses its activation workspace, so one runner (one thread) drives a model at a time.
  virtual void forward(const ForwardBatch& batch, KvCache& kv, std::vector<float>& logits) = 0;
};

// --- model registry, keyed on the HF architecture name (config.json "architectures"[0]) ---

// Architectures atom can build: LlamaForCausalLM, Qwen3ForCausalLM.
const std::vector<std::string>& supported_model_architectures();
// kUnsupported, listing supported_model_architectures(), unless config.architecture is one.
void check_model_architecture(const ModelConfig& config);

// Builds the model a GGUF file describes (general.architecture "llama" is LlamaForCausalLM);
// kUnsupported otherwise. The model views the file's tensors: keep `file` alive as long.
std::unique_ptr<Model> load_model_from_gguf(const GgufFile& file);

// How HF weights are obtained: kAuto reads the folder's safetensors; kDummy reads no weight
// file and makes random weights of the right shapes and dtype (deterministic), for benchmarks
// and tests of everything but the numbers.
enum class LoadFormat { kAuto, kDummy };
// "auto" / "dummy"; anything else is kInvalidArgument naming the choices.
LoadFormat parse_load_format(std::string_view name);

// The model of an HF folder whose config.json gave `config` (io/hf_config.h load_hf_config).
// kUnsupported, listing the supported ones, for an architecture atom does not build; with
// kAuto, the checkpoint's errors (missing tensors, shapes other than the config's, corrupt
// files) name the tensor or file. The model owns what it needs.
std::unique_ptr<Model> load_model_from_hf(const std::string& dir, const ModelConfig& config,
                                          LoadFormat format);
// As above from an opened checkpoint, whose tensors the model views: keep it alive as long.
std::unique_ptr<Model> load_model_from_hf(const SafetensorsCheckpoint& checkpoint,
                                          const ModelConfig& config);

}  // namespace atom

// Hugging Face model folder metadata: config.json -> ModelConfig, generation_config.json (stop
// ids) and tokenizer_config.json (chat template, special tokens), and --max-model-len resolution.
// Every malformed or incomplete file throws atom::Error naming the file and the field; valid
// configs of architectures or options atom does not implement throw kUnsupported.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "atom/core/error.h"
#include "atom/models/model.h"

namespace atom {

// Architectures load_hf_config accepts (config.json "architectures"[0]).
const std::vector<std::string>& supported_hf_architectures();

// `dir_or_config_json`: a model folder (its config.json is read) or the config.json path.
// Fields (HF names): vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads (default: heads), head_dim (default: hidden / heads;
// DeepSeek: qk_nope_head_dim + qk_rope_head_dim), partial_rotary_factor, rms_norm_eps,
// rope_theta (or rope_parameters.rope_theta), rope_scaling (or rope_parameters) of type default,
// linear, dynamic, llama3 or yarn (deepseek_yarn reads as yarn), max_position_embeddings (0 when
// absent), tie_word_embeddings, attention_bias, mlp_bias, hidden_act (silu only), dtype /
// torch_dtype, bos/eos_token_id, sliding_window, and the MoE / MLA fields of Qwen3-MoE, Mixtral
// and DeepSeek-V3 (see MoeConfig, MlaConfig).
ModelConfig load_hf_config(const std::string& dir_or_config_json);

// Whether decoder layer `layer` uses the sparse MoE block (else a dense MLP of
// intermediate_size), by each architecture's rule: Qwen3-MoE (mlp_only_layers,
// decoder_sparse_step), Mixtral (every layer), DeepSeek-V3 (first_k_dense_replace,
// moe_layer_freq); always false for dense models.
bool is_moe_layer(const ModelConfig& config, int64_t layer);

// generation_config.json: the ids that end generation besides the tokenizer's eos.
struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;  // eos_token_id: int or list
  std::optional<int64_t> bos_token_id;
};
// Reads `dir`/generation_config.json; nullopt when the folder has none.
std::optional<GenerationConfig> load_generation_config(const std::string& dir);

// tokenizer_config.json, the parts the engine uses.
struct TokenizerConfig {
  // chat_template: a string, or the "default" entry of a list of {name, template}; else the
  // folder's chat_template.jinja (newer transformers save it there); nullopt when none.
  std::optional<std::string> chat_template;
  std::map<std::string, std::string> named_chat_templates;  // every entry of a list form
  // bos_token / eos_token: a string or an AddedToken {"content": ...}; nullopt when absent/null.
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
};
// Reads `dir`/tokenizer_config.json (kNotFound when missing).
TokenizerConfig load_tokenizer_config(const std::string& dir);

// --max-model-len: nullopt -> max_position_embeddings (8192 when the config has none); a given
// value is clamped to max_position_embeddings (with a warning). Values < 1 are kInvalidArgument.
int64_t resolve_max_model_len(std::optional<int64_t> flag, const ModelConfig& config);

}  // namespace atom

// LlamaForCausalLM (and every GGUF "llama" model: SmolLM2, Llama 2/3, Mistral): hyper-parameters
// and weights from GGUF or from an HF checkpoint, run by the shared DecoderModel (decoder.h).

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/quants.h"
#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/models/decoder.h"
#include "atom/models/hf_loader.h"
#include "atom/models/model.h"

namespace atom {

namespace {

// ---------------------------------------------------------------------------------------------
// Hyper-parameters from GGUF metadata (llama.cpp's key names), in HF config.json terms.
ModelConfig llama_config_from_gguf(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  auto key = [&](const char* k) { return arch + "." + k; };
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.hidden_size = f.get_int(key("embedding_length"));
  c.intermediate_size = f.get_int(key("feed_forward_length"));
  c.num_hidden_layers = f.get_int(key("block_count"));
  c.num_attention_heads = f.get_int(key("attention.head_count"));
  c.num_key_value_heads = f.get_int_or(key("attention.head_count_kv"), c.num_attention_heads);
  c.head_dim = f.get_int_or(key("attention.key_length"), c.hidden_size / c.num_attention_heads);
  c.rotary_dim = f.get_int_or(key("rope.dimension_count"), c.head_dim);
  c.rms_norm_eps = f.get_float(key("attention.layer_norm_rms_epsilon"));
  c.rope_theta = f.get_float_or(key("rope.freq_base"), 10000.0);
  c.max_position_embeddings = f.get_int_or(key("context_length"), 2048);
  c.vocab_size = f.has(key("vocab_size"))
                     ? f.get_int(key("vocab_size"))
                     : int64_t(f.get_string_array("tokenizer.ggml.tokens").size());
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;

  const std::string scaling = f.get_string_or(key("rope.scaling.type"), "none");
  if (scaling == "linear" || scaling == "yarn") {
    c.rope_scaling.type = scaling;
    c.rope_scaling.factor = f.get_float(key("rope.scaling.factor"));
    c.rope_scaling.original_max_position_embeddings =
        f.get_int_or(key("rope.scaling.original_context_length"), c.max_position_embeddings);
  } else {
    ATOM_CHECK(scaling == "none", kUnsupported,
               "{}: rope scaling type '{}' is not supported for llama models", f.path(), scaling);
  }

  ATOM_CHECK(c.num_hidden_layers > 0 && c.hidden_size > 0 && c.num_attention_heads > 0 &&
                 c.num_key_value_heads > 0 && c.intermediate_size > 0,
             kCorrupt, "{}: invalid llama hyper-parameters", f.path());
  ATOM_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, kCorrupt,
             "{}: {} attention heads are not a multiple of {} KV heads", f.path(),
             c.num_attention_heads, c.num_key_value_heads);
  ATOM_CHECK(c.rotary_dim <= c.head_dim && c.rotary_dim % 2 == 0, kCorrupt,
             "{}: rope dimension {} does not fit head_dim {}", f.path(), c.rotary_dim, c.head_dim);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Weights. Matrices stay in their GGUF block format (mmap'd, zero copy) except where atom needs
// a different row order or a merged matrix; those are copied once into owned buffers.

cpu::QMatrix matrix(const GgufFile& f, const std::string& name, int64_t rows, int64_t cols) {
  const GgufTensorInfo& t = f.tensor(name);
  ATOM_CHECK(t.dims.size() == 2 && t.cols() == cols && t.rows() == rows, kCorrupt,
             "{}: tensor '{}' has shape [{}, {}], expected [{}, {}]", f.path(), name, t.rows(),
             t.cols(), rows, cols);
  ATOM_CHECK(cpu::quant_type_supported(t.type), kUnsupported,
             "{}: tensor '{}' has type {}, which atom cannot compute with yet", f.path(), name,
             ggml_type_info(t.type).name);
  return cpu::QMatrix{t.type, f.tensor_data(t), rows, cols, ggml_row_bytes(t.type, cols)};
}

std::vector<float> vector_f32(const GgufFile& f, const std::string& name, int64_t n) {
  const GgufTensorInfo& t = f.tensor(name);
  ATOM_CHECK(t.numel() == n, kCorrupt, "{}: tensor '{}' has {} elements, expected {}", f.path(),
             name, t.numel(), n);
  ATOM_CHECK(cpu::quant_type_supported(t.type), kUnsupported,
             "{}: tensor '{}' has unsupported type {}", f.path(), name,
             ggml_type_info(t.type).name);
  std::vector<float> v(static_cast<size_t>(n));
  cpu::dequantize_row(t.type, f.tensor_data(t), v.data(), n);
  return v;
}

// ---------------------------------------------------------------------------------------------
// GGUF tensor names -> the shared decoder's weights. Q and K rows go through the un-permuting
// copy (also when they cannot be stacked with V), since llama.cpp's converter interleaves each
// head's rotary pairs.
DecoderWeights llama_weights_from_gguf(const GgufFile& f, const ModelConfig& cfg) {
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  DecoderWeights w;
  w.embed = matrix(f, "token_embd.weight", cfg.vocab_size, H);
  w.lm_head = cfg.tie_word_embeddings ? w.embed : matrix(f, "output.weight", cfg.vocab_size, H);
  w.final_norm = vector_f32(f, "output_norm.weight", H);
  w.layers.resize(size_t(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    DecoderLayerWeights& L = w.layers[size_t(l)];
    L.attn_norm = vector_f32(f, p + "attn_norm.weight", H);
    L.ffn_norm = vector_f32(f, p + "ffn_norm.weight", H);
    const cpu::QMatrix q = matrix(f, p + "attn_q.weight", nh * D, H);
    const cpu::QMatrix k = matrix(f, p + "attn_k.weight", nkv * D, H);
    const cpu::QMatrix v = matrix(f, p + "attn_v.weight", nkv * D, H);
    L.qkv = stack_rows({{q, nh}, {k, nkv}, {v, 0}}, w.storage);
    if (!L.qkv.data) {  // mixed types: un-permuted copies of q and k only
      L.q = stack_rows({{q, nh}}, w.storage);
      L.k = stack_rows({{k, nkv}}, w.storage);
      L.v = v;
    }
    L.o = matrix(f, p + "attn_output.weight", H, nh * D);
    const cpu::QMatrix gate = matrix(f, p + "ffn_gate.weight", I, H);
    const cpu::QMatrix up = matrix(f, p + "ffn_up.weight", I, H);
    L.gate_up = stack_rows({{gate, 0}, {up, 0}}, w.storage);
    if (!L.gate_up.data) L.gate = gate, L.up = up;
    L.down = matrix(f, p + "ffn_down.weight", H, I);
  }
  return w;
}

}  // namespace

std::unique_ptr<Model> make_llama_from_gguf(const GgufFile& file) {
  ModelConfig cfg = llama_config_from_gguf(file);
  cpu::RopeTable rope = cpu::make_rope_inv_freq(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling,
                                                cfg.max_position_embeddings);
  if (file.find_tensor("rope_freqs.weight")) {  // llama3-style per-frequency divisors
    const std::vector<float> factors = vector_f32(file, "rope_freqs.weight", cfg.rotary_dim / 2);
    for (size_t i = 0; i < factors.size(); ++i) rope.inv_freq[i] /= factors[i];
  }
  DecoderWeights weights = llama_weights_from_gguf(file, cfg);
  return make_decoder_model(std::move(cfg), DecoderVariant{}, std::move(weights), std::move(rope));
}

std::unique_ptr<Model> make_llama_from_hf(const ModelConfig& config, HfWeightSource& source) {
  return make_hf_decoder(config, DecoderVariant{}, source);
}

}  // namespace atom

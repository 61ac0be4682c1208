// LlamaForCausalLM (and every GGUF "llama" model: SmolLM2, Llama 2/3, Mistral), read top-down
// like HF's modeling_llama.py: hyper-parameters, weights by name, forward.
#include <cmath>
#include <cstring>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/quants.h"
#include "atom/core/error.h"
#include "atom/io/gguf.h"
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
  c.vocab_size = f.has(key("vocab_size")) ? f.get_int(key("vocab_size"))
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

// Rows [r0, r1) of `src` appended to `dst`; for Q and K the rows are reordered to undo the
// llama.cpp conversion's permutation: GGUF stores head h's rotary pairs interleaved (row
// h*hd + 2i + j), HF/NeoX expects halves (row h*hd + j*hd/2 + i).
void append_rows(std::vector<uint8_t>& dst, const cpu::QMatrix& src, int64_t n_heads,
                 bool unpermute) {
  const size_t rb = src.row_bytes;
  const size_t base = dst.size();
  dst.resize(base + size_t(src.rows) * rb);
  const int64_t hd = src.rows / n_heads;
  for (int64_t r = 0; r < src.rows; ++r) {
    int64_t from = r;
    if (unpermute) {
      const int64_t h = r / hd, within = r % hd, half = hd / 2;
      const int64_t j = within / half, i = within % half;
      from = h * hd + 2 * i + j;
    }
    std::memcpy(dst.data() + base + size_t(r) * rb, src.row(from), rb);
  }
}

// A matrix built from several GGUF matrices stacked along the output dimension (QKV, gate+up).
struct OwnedMatrix {
  std::vector<uint8_t> bytes;
  cpu::QMatrix m;
};

struct Part {
  cpu::QMatrix m;
  int64_t n_heads;  // for unpermute
  bool unpermute;
};

// Stacks parts of the same type into one matrix; when types differ, returns false and the
// caller keeps them separate.
bool stack(const std::vector<Part>& parts, OwnedMatrix& out) {
  for (const Part& p : parts)
    if (p.m.type != parts[0].m.type || p.m.cols != parts[0].m.cols) return false;
  int64_t rows = 0;
  for (const Part& p : parts) {
    append_rows(out.bytes, p.m, p.n_heads, p.unpermute);
    rows += p.m.rows;
  }
  out.m = cpu::QMatrix{parts[0].m.type, out.bytes.data(), rows, parts[0].m.cols,
                       parts[0].m.row_bytes};
  return true;
}

// ---------------------------------------------------------------------------------------------
class LlamaModel final : public Model {
 public:
  explicit LlamaModel(const GgufFile& f) : cfg_(llama_config_from_gguf(f)) {
    const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, D = cfg_.head_dim;
    const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
    embed_ = matrix(f, "token_embd.weight", cfg_.vocab_size, H);
    lm_head_ = cfg_.tie_word_embeddings ? embed_ : matrix(f, "output.weight", cfg_.vocab_size, H);
    final_norm_ = vector_f32(f, "output_norm.weight", H);

    rope_ = cpu::make_rope_inv_freq(cfg_.rotary_dim, cfg_.rope_theta, cfg_.rope_scaling,
                                    cfg_.max_position_embeddings);
    if (f.find_tensor("rope_freqs.weight")) {  // llama3-style per-frequency divisors
      std::vector<float> factors = vector_f32(f, "rope_freqs.weight", cfg_.rotary_dim / 2);
      for (size_t i = 0; i < factors.size(); ++i) rope_.inv_freq[i] /= factors[i];
    }

    layers_.resize(size_t(cfg_.num_hidden_layers));
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      Layer& L = layers_[size_t(l)];
      L.attn_norm = vector_f32(f, p + "attn_norm.weight", H);
      L.ffn_norm = vector_f32(f, p + "ffn_norm.weight", H);
      const cpu::QMatrix q = matrix(f, p + "attn_q.weight", nh * D, H);
      const cpu::QMatrix k = matrix(f, p + "attn_k.weight", nkv * D, H);
      const cpu::QMatrix v = matrix(f, p + "attn_v.weight", nkv * D, H);
      if (!stack({{q, nh, true}, {k, nkv, true}, {v, nkv, false}}, L.qkv)) {
        L.q.m = q, L.k.m = k, L.v.m = v;  // mixed types: unpermuted copies of q and k only
        stack({{q, nh, true}}, L.q);
        stack({{k, nkv, true}}, L.k);
      }
      L.o = matrix(f, p + "attn_output.weight", H, nh * D);
      const cpu::QMatrix gate = matrix(f, p + "ffn_gate.weight", I, H);
      const cpu::QMatrix up = matrix(f, p + "ffn_up.weight", I, H);
      if (!stack({{gate, 1, false}, {up, 1, false}}, L.gate_up)) {
        L.gate = gate, L.up = up;
      }
      L.down = matrix(f, p + "ffn_down.weight", H, I);
    }
  }

  const ModelConfig& config() const override { return cfg_; }

  void forward(const ForwardBatch& b, KvCache& kv, std::vector<float>& logits) override {
    const int64_t T = b.num_tokens();
    const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, D = cfg_.head_dim;
    const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
    const int64_t q_size = nh * D, kv_size = nkv * D;
    ATOM_CHECK(T > 0, kInvalidArgument, "forward with no tokens");
    for (int32_t id : b.token_ids)
      ATOM_CHECK(id >= 0 && id < cfg_.vocab_size, kOutOfRange,
                 "token id {} out of range for vocabulary size {}", id, cfg_.vocab_size);

    ws_.resize(T, H, I, q_size, kv_size);
    const cpu::AttentionBatch attn{b.cu_seqlens_q.data(), b.seq_lens.data(),
                                   b.block_tables.data(), b.num_seqs(), b.max_blocks_per_seq};
    const float scale = 1.0f / std::sqrt(float(D));

    cpu::embedding(embed_, b.token_ids.data(), T, ws_.residual.data());  // [T, H]
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      Layer& L = layers_[size_t(l)];
      // --- attention block ---
      if (l == 0) {
        cpu::rms_norm(ws_.residual.data(), L.attn_norm.data(), T, H, eps(), ws_.h.data());
      } else {  // residual += mlp_out; h = norm(residual)
        cpu::add_rms_norm(ws_.mlp_out.data(), ws_.residual.data(), L.attn_norm.data(), T, H,
                          eps(), ws_.h.data());
      }
      if (L.qkv.m.data) {  // one GEMM into [T, q | k | v]
        cpu::matmul(ws_.h.data(), T, L.qkv.m, ws_.qkv.data());
        split_qkv(T, q_size, kv_size);
      } else {
        cpu::matmul(ws_.h.data(), T, L.q.m, ws_.q.data());
        cpu::matmul(ws_.h.data(), T, L.k.m, ws_.k.data());
        cpu::matmul(ws_.h.data(), T, L.v.m, ws_.v.data());
      }
      cpu::rope_neox(ws_.q.data(), b.positions.data(), T, nh, D, cfg_.rotary_dim, rope_);
      cpu::rope_neox(ws_.k.data(), b.positions.data(), T, nkv, D, cfg_.rotary_dim, rope_);
      const cpu::KvCacheView cache = kv.layer(l);
      cpu::reshape_and_cache(ws_.k.data(), ws_.v.data(), b.slot_mapping.data(), T, cache);
      cpu::paged_attention(ws_.q.data(), nh, cache, attn, scale, ws_.attn.data());
      cpu::matmul(ws_.attn.data(), T, L.o, ws_.attn_out.data());  // [T, H]
      // --- MLP block ---
      cpu::add_rms_norm(ws_.attn_out.data(), ws_.residual.data(), L.ffn_norm.data(), T, H, eps(),
                        ws_.h.data());
      if (L.gate_up.m.data) {
        cpu::matmul(ws_.h.data(), T, L.gate_up.m, ws_.gate_up.data());  // [T, 2I]
      } else {
        cpu::matmul(ws_.h.data(), T, L.gate, ws_.q.data());
        cpu::matmul(ws_.h.data(), T, L.up, ws_.k.data());
        interleave_gate_up(T, I);
      }
      cpu::silu_and_mul(ws_.gate_up.data(), T, I, ws_.act.data());  // [T, I]
      cpu::matmul(ws_.act.data(), T, L.down, ws_.mlp_out.data());    // [T, H]
    }

    // Final norm and LM head only for the rows that need logits.
    const int64_t n_out = int64_t(b.logits_indices.size());
    ws_.h.resize(size_t(std::max(T, n_out) * H));
    cpu::add_rms_norm(ws_.mlp_out.data(), ws_.residual.data(), final_norm_.data(), T, H, eps(),
                      ws_.h.data());
    std::vector<float>& sel = ws_.selected;
    sel.resize(size_t(n_out * H));
    for (int64_t i = 0; i < n_out; ++i) {
      const int32_t row = b.logits_indices[size_t(i)];
      ATOM_CHECK(row >= 0 && row < T, kOutOfRange, "logits index {} out of range", row);
      std::memcpy(sel.data() + i * H, ws_.h.data() + int64_t(row) * H, size_t(H) * sizeof(float));
    }
    logits.resize(size_t(n_out * cfg_.vocab_size));
    cpu::matmul(sel.data(), n_out, lm_head_, logits.data());  // [n_out, vocab]
  }

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm;
    OwnedMatrix qkv, q, k, v, gate_up;  // merged when the parts share a type
    cpu::QMatrix o, gate, up, down;
  };

  // Activation buffers reused across steps; grown to the largest batch seen.
  struct Workspace {
    std::vector<float> residual, h, qkv, q, k, v, attn, attn_out, gate_up, act, mlp_out, selected;
    void resize(int64_t T, int64_t H, int64_t I, int64_t q_size, int64_t kv_size) {
      residual.resize(size_t(T * H));
      h.resize(size_t(T * H));
      qkv.resize(size_t(T * (q_size + 2 * kv_size)));
      q.resize(size_t(T * std::max(q_size, I)));
      k.resize(size_t(T * std::max(kv_size, I)));
      v.resize(size_t(T * kv_size));
      attn.resize(size_t(T * q_size));
      attn_out.resize(size_t(T * H));
      gate_up.resize(size_t(T * 2 * I));
      act.resize(size_t(T * I));
      mlp_out.resize(size_t(T * H));
    }
  };

  float eps() const { return float(cfg_.rms_norm_eps); }

  // [T, q | k | v] -> separate contiguous q [T, nh*D], k, v [T, nkv*D].
  void split_qkv(int64_t T, int64_t q_size, int64_t kv_size) {
    const int64_t ld = q_size + 2 * kv_size;
    for (int64_t t = 0; t < T; ++t) {
      const float* row = ws_.qkv.data() + t * ld;
      std::memcpy(ws_.q.data() + t * q_size, row, size_t(q_size) * sizeof(float));
      std::memcpy(ws_.k.data() + t * kv_size, row + q_size, size_t(kv_size) * sizeof(float));
      std::memcpy(ws_.v.data() + t * kv_size, row + q_size + kv_size,
                  size_t(kv_size) * sizeof(float));
    }
  }

  // Separate gate [T, I] (in ws_.q) and up [T, I] (in ws_.k) -> [T, gate | up].
  void interleave_gate_up(int64_t T, int64_t I) {
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(ws_.gate_up.data() + t * 2 * I, ws_.q.data() + t * I, size_t(I) * 4);
      std::memcpy(ws_.gate_up.data() + t * 2 * I + I, ws_.k.data() + t * I, size_t(I) * 4);
    }
  }

  ModelConfig cfg_;
  cpu::QMatrix embed_, lm_head_;
  std::vector<float> final_norm_;
  cpu::RopeTable rope_;
  std::vector<Layer> layers_;
  Workspace ws_;
};

}  // namespace

std::unique_ptr<Model> make_llama_from_gguf(const GgufFile& file) {
  return std::make_unique<LlamaModel>(file);
}

}  // namespace atom

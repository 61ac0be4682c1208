#include "atom/models/hf_loader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>

#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/ggml_types.h"
#include "atom/io/safetensors.h"

namespace atom {

namespace {

// ---------------------------------------------------------------------------------------------
// Safetensors checkpoint: tensors used in place (f32/f16/bf16 are QMatrix types as they are).

class CheckpointSource final : public HfWeightSource {
 public:
  CheckpointSource(const SafetensorsCheckpoint& c, std::shared_ptr<const void> keep_alive,
                   std::string arch)
      : ckpt_(c), keep_alive_(std::move(keep_alive)), arch_(std::move(arch)) {}

  cpu::QMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                      WeightStorage& /*storage*/) override {
    const SafetensorsView v = get(name);
    ATOM_CHECK(v.shape == std::vector<int64_t>({rows, cols}), kCorrupt,
               "{}: tensor '{}' has shape [{}], expected [{}, {}] from config.json", ckpt_.dir(),
               name, fmt::join(v.shape, ", "), rows, cols);
    return cpu::make_qmatrix(ggml_type_of(name, v), v.data, rows, cols);
  }

  std::vector<float> vector(const std::string& name, int64_t n) override {
    const SafetensorsView v = get(name);
    ATOM_CHECK(v.shape == std::vector<int64_t>({n}), kCorrupt,
               "{}: tensor '{}' has shape [{}], expected [{}] from config.json", ckpt_.dir(), name,
               fmt::join(v.shape, ", "), n);
    std::vector<float> out(static_cast<size_t>(n));
    cpu::dequantize_row(ggml_type_of(name, v), v.data, out.data(), n);
    return out;
  }

  std::shared_ptr<const void> keep_alive() const override { return keep_alive_; }

 private:
  SafetensorsView get(const std::string& name) const {
    std::optional<SafetensorsView> v = ckpt_.find(name);
    ATOM_CHECK(v.has_value(), kNotFound, "{}: the checkpoint has no tensor '{}', which {} needs",
               ckpt_.dir(), name, arch_);
    return *v;
  }

  GgmlType ggml_type_of(const std::string& name, const SafetensorsView& v) const {
    switch (v.dtype) {
      case SafetensorsDType::kF32:
        return GgmlType::kF32;
      case SafetensorsDType::kF16:
        return GgmlType::kF16;
      case SafetensorsDType::kBF16:
        return GgmlType::kBF16;
      default:
        throw_error(ErrorCode::kUnsupported,
                    "{}: tensor '{}' has dtype {}; atom computes with F32, F16 and BF16 weights",
                    ckpt_.dir(), name, safetensors_dtype_name(v.dtype));
    }
  }

  const SafetensorsCheckpoint& ckpt_;
  std::shared_ptr<const void> keep_alive_;
  std::string arch_;
};

// ---------------------------------------------------------------------------------------------
// Dummy weights: uniform with standard deviation kDummyStd (as vLLM's dummy loader, a uniform
// range) from a counter-based generator, so every element is computed independently (in
// parallel) and the values depend only on the tensor name and index. One hash and no
// transcendental per element: an 8B model's 8e9 values take about a second on 16 cores (the
// Box-Muller normal this replaced took most of a 20 s start-up).

constexpr float kDummyStd = 0.02f;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Element i of tensor `seed`: uniform in [-a, a) with a = sqrt(3) * kDummyStd, from 24 bits.
float dummy_value(uint64_t seed, int64_t i) {
  const uint64_t h = splitmix64(seed ^ splitmix64(uint64_t(i)));
  const float u = float(h >> 40) * 0x1.0p-24f;  // [0, 1)
  constexpr float kHalfWidth = 1.7320508f * kDummyStd;
  return (2.0f * u - 1.0f) * kHalfWidth;
}

class DummySource final : public HfWeightSource {
 public:
  explicit DummySource(const ModelConfig& c)
      : type_(c.dtype == "float32"   ? GgmlType::kF32
              : c.dtype == "float16" ? GgmlType::kF16
                                     : GgmlType::kBF16) {}

  cpu::QMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                      WeightStorage& storage) override {
    const uint64_t seed = fnv1a(name);
    const int64_t n = rows * cols;
    WeightBytes& bytes = storage.emplace_back(size_t(n) * element_size());
    void* data = bytes.data();
    const GgmlType type = type_;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float x = dummy_value(seed, i);
      if (type == GgmlType::kF32) {
        static_cast<float*>(data)[i] = x;
      } else {
        static_cast<uint16_t*>(data)[i] = type == GgmlType::kF16 ? f32_to_f16(x) : f32_to_bf16(x);
      }
    }
    return cpu::make_qmatrix(type_, data, rows, cols);
  }

  // Norm weights are ones (as HF initialises them); biases random. Rounded through the dtype,
  // as a checkpoint of that dtype would hold them.
  std::vector<float> vector(const std::string& name, int64_t n) override {
    std::vector<float> v(size_t(n), 1.0f);
    if (name.ends_with("norm.weight")) return v;
    const uint64_t seed = fnv1a(name);
    for (int64_t i = 0; i < n; ++i) {
      const float x = dummy_value(seed, i);
      v[size_t(i)] = type_ == GgmlType::kF32   ? x
                     : type_ == GgmlType::kF16 ? f16_to_f32(f32_to_f16(x))
                                               : bf16_to_f32(f32_to_bf16(x));
    }
    return v;
  }

  std::shared_ptr<const void> keep_alive() const override { return nullptr; }

 private:
  size_t element_size() const { return type_ == GgmlType::kF32 ? 4 : 2; }

  GgmlType type_;
};

// Stacks `parts` (made after storage held `mark` buffers); buffers the parts had of their own
// (dummy weights) are freed once copied, so the model does not hold them twice.
cpu::QMatrix stack_owned(const std::vector<StackPart>& parts, WeightStorage& storage, size_t mark) {
  const cpu::QMatrix stacked = stack_rows(parts, storage);
  if (stacked.data) storage.erase(storage.begin() + ptrdiff_t(mark), storage.end() - 1);
  return stacked;
}

std::vector<float> concat(std::initializer_list<std::vector<float>> parts) {
  std::vector<float> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

std::unique_ptr<HfWeightSource> make_checkpoint_source(const SafetensorsCheckpoint& checkpoint,
                                                       std::shared_ptr<const void> keep_alive,
                                                       const std::string& architecture) {
  return std::make_unique<CheckpointSource>(checkpoint, std::move(keep_alive), architecture);
}

std::unique_ptr<HfWeightSource> make_dummy_source(const ModelConfig& config) {
  return std::make_unique<DummySource>(config);
}

std::unique_ptr<Model> make_hf_decoder(const ModelConfig& cfg, DecoderVariant variant,
                                       HfWeightSource& src) {
  ATOM_CHECK(cfg.moe.num_experts == 0 && !cfg.mla, kUnsupported,
             "{}: mixture-of-experts and latent-attention layers are not supported yet",
             cfg.architecture);
  ATOM_CHECK(!cfg.sliding_window, kUnsupported,
             "{}: sliding-window attention (sliding_window {}) is not supported yet",
             cfg.architecture, cfg.sliding_window.value_or(0));
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  DecoderWeights w;
  w.embed = src.matrix("model.embed_tokens.weight", cfg.vocab_size, H, w.storage);
  w.lm_head = cfg.tie_word_embeddings ? w.embed
                                      : src.matrix("lm_head.weight", cfg.vocab_size, H, w.storage);
  w.final_norm = src.vector("model.norm.weight", H);
  w.layers.resize(size_t(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    DecoderLayerWeights& L = w.layers[size_t(l)];
    L.attn_norm = src.vector(p + "input_layernorm.weight", H);
    L.ffn_norm = src.vector(p + "post_attention_layernorm.weight", H);
    size_t mark = w.storage.size();
    const cpu::QMatrix q = src.matrix(p + "self_attn.q_proj.weight", nh * D, H, w.storage);
    const cpu::QMatrix k = src.matrix(p + "self_attn.k_proj.weight", nkv * D, H, w.storage);
    const cpu::QMatrix v = src.matrix(p + "self_attn.v_proj.weight", nkv * D, H, w.storage);
    L.qkv = stack_owned({{q}, {k}, {v}}, w.storage, mark);
    if (!L.qkv.data) L.q = q, L.k = k, L.v = v;
    L.o = src.matrix(p + "self_attn.o_proj.weight", H, nh * D, w.storage);
    if (cfg.attention_bias) {  // HF puts the bias on o_proj too
      L.qkv_bias = concat({src.vector(p + "self_attn.q_proj.bias", nh * D),
                           src.vector(p + "self_attn.k_proj.bias", nkv * D),
                           src.vector(p + "self_attn.v_proj.bias", nkv * D)});
      L.o_bias = src.vector(p + "self_attn.o_proj.bias", H);
    }
    if (variant.qk_norm) {
      L.q_norm = src.vector(p + "self_attn.q_norm.weight", D);
      L.k_norm = src.vector(p + "self_attn.k_norm.weight", D);
    }
    mark = w.storage.size();
    const cpu::QMatrix gate = src.matrix(p + "mlp.gate_proj.weight", I, H, w.storage);
    const cpu::QMatrix up = src.matrix(p + "mlp.up_proj.weight", I, H, w.storage);
    L.gate_up = stack_owned({{gate}, {up}}, w.storage, mark);
    if (!L.gate_up.data) L.gate = gate, L.up = up;
    L.down = src.matrix(p + "mlp.down_proj.weight", H, I, w.storage);
    if (cfg.mlp_bias) {
      L.gate_up_bias =
          concat({src.vector(p + "mlp.gate_proj.bias", I), src.vector(p + "mlp.up_proj.bias", I)});
      L.down_bias = src.vector(p + "mlp.down_proj.bias", H);
    }
  }
  w.keep_alive = src.keep_alive();
  cpu::RopeTable rope = cpu::make_rope_inv_freq(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling,
                                                cfg.max_position_embeddings);
  return make_decoder_model(cfg, variant, std::move(w), std::move(rope));
}

}  // namespace atom

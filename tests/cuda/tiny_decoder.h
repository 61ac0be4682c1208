// A tiny random-weight decoder (Llama or Qwen3) for the GPU tests: bf16 weights, so the CPU
// model and the CUDA runner see the same numbers.
#pragma once

#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/dtype.h"
#include "atom/models/decoder.h"
#include "atom/runner/model_runner.h"

namespace atom::cuda::test {

// bf16 values from N(0, std), so the CPU model's weights are exactly the GPU's.
inline std::vector<uint16_t> bf16_normal(size_t n, double std, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, float(std));
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = f32_to_bf16(dist(rng));
  return v;
}

inline cpu::QMatrix matrix(WeightStorage& storage, int64_t rows, int64_t cols, double std,
                           uint64_t seed) {
  const std::vector<uint16_t> v = bf16_normal(size_t(rows * cols), std, seed);
  WeightBytes& bytes = storage.emplace_back(v.size() * 2);
  std::memcpy(bytes.data(), v.data(), bytes.size());
  return cpu::make_qmatrix(GgmlType::kBF16, bytes.data(), rows, cols);
}

// Values in [lo, hi] rounded through bf16 (norm weights, biases).
inline std::vector<float> vec(int64_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(dist(rng)));
  return v;
}

// Shapes of make_tiny that tests may change (the defaults are make_tiny(qwen3)'s); the weights'
// seeds do not depend on them.
struct TinyShape {
  int64_t vocab = 0;  // 0: 500 (Qwen3; an LM head width that is not a multiple of 8) or 512
  int64_t heads = 4, kv_heads = 2;
  int64_t intermediate = 512;
};

// A 2-layer model at head_dim 64 (the attention kernels' smallest). Qwen3: q/k norm, tied
// embeddings and (to cover the bias path) QKV bias. Weight scales keep activations near unit
// variance and logits a few units wide, so top-2 gaps are mostly far above bf16 noise.
inline std::unique_ptr<Model> make_tiny(bool qwen3, const TinyShape& shape = {}) {
  ModelConfig c;
  c.architecture = qwen3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = shape.vocab > 0 ? shape.vocab : qwen3 ? 500 : 512;
  c.hidden_size = 256;
  c.intermediate_size = shape.intermediate;
  c.num_hidden_layers = 2;
  c.num_attention_heads = shape.heads;
  c.num_key_value_heads = shape.kv_heads;
  c.head_dim = 64;
  c.rotary_dim = 64;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = qwen3 ? 1e6 : 5e5;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = qwen3;
  c.attention_bias = qwen3;
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * D;
  DecoderWeights w;
  uint64_t seed = qwen3 ? 1000 : 2000;
  w.embed = matrix(w.storage, c.vocab_size, H, qwen3 ? 0.2 : 1.0, seed++);
  w.lm_head = qwen3 ? w.embed : matrix(w.storage, c.vocab_size, H, 3.0 / std::sqrt(H), seed++);
  w.final_norm = vec(H, 0.8f, 1.2f, seed++);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    DecoderLayerWeights& L = w.layers.emplace_back();
    L.attn_norm = vec(H, 0.8f, 1.2f, seed++);
    L.ffn_norm = vec(H, 0.8f, 1.2f, seed++);
    L.qkv = matrix(w.storage, qkv, H, 1.0 / std::sqrt(H), seed++);
    L.o = matrix(w.storage, H, c.num_attention_heads * D, 0.5 / std::sqrt(H), seed++);
    L.gate_up = matrix(w.storage, 2 * I, H, 1.0 / std::sqrt(H), seed++);
    L.down = matrix(w.storage, H, I, 0.5 / std::sqrt(I), seed++);
    if (qwen3) {
      L.q_norm = vec(D, 0.8f, 1.2f, seed++);
      L.k_norm = vec(D, 0.8f, 1.2f, seed++);
      L.qkv_bias = vec(qkv, -0.1f, 0.1f, seed++);
    }
  }
  DecoderVariant variant;
  variant.qk_norm = qwen3;
  cpu::RopeTable rope =
      cpu::make_rope_inv_freq(c.rotary_dim, c.rope_theta, cpu::RopeScaling{}, 1024);
  return make_decoder_model(c, variant, std::move(w), std::move(rope));
}

// n token ids drawn uniformly from [0, vocab), the same for the same seed.
inline std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(vocab) - 1);
  std::vector<int32_t> v(n);
  for (int32_t& t : v) t = dist(rng);
  return v;
}

// RMS of a logits row of n values.
inline double row_rms(const float* row, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(row[i]) * row[i];
  return std::sqrt(s / double(n));
}

// The gap between the two largest logits of a row.
inline double top2_gap(const float* row, int64_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return double(a) - double(b);
}

// Logits of the last position of `tokens` on the CPU model (a fresh cache, one prefill): the
// oracle the CUDA runner's logits and a near-tie are judged on.
inline std::vector<float> cpu_last_logits(Model& model, const std::vector<int32_t>& tokens) {
  const int64_t bs = 16, blocks = int64_t(tokens.size() + bs - 1) / bs;
  ModelRunner runner(model, blocks, bs);
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  std::iota(table.begin(), table.end(), 0);
  KvCache kv(model.config().num_hidden_layers, blocks, bs, model.config().num_key_value_heads,
             model.config().head_dim);
  StepSeq s{1, tokens, int64_t(tokens.size()), 0, int64_t(tokens.size()), table, true};
  std::vector<float> logits;
  model.forward(runner.plan(std::span<const StepSeq>(&s, 1)), kv, logits);
  return logits;
}

}  // namespace atom::cuda::test

// DecoderModel: the forward pass of HF's modeling_llama.py / modeling_qwen3.py over the paged KV
// cache, read top-down: embedding, per layer attention then MLP (pre-norm, residual), final
// norm, LM head for the rows that need logits.
#include "atom/models/decoder.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/profiler.h"

namespace atom {

namespace {

// Rows of `src` appended to `dst` (see StackPart::unpermute_heads).
// Copies part's rows (un-permuted when asked) to dst, rows in parallel: the buffer is fresh
// (uninitialised), so the copying threads also first-touch its pages.
void copy_rows(uint8_t* dst, const StackPart& part) {
  const cpu::QMatrix& src = part.m;
  const size_t rb = src.row_bytes;
  const int64_t hd = part.unpermute_heads > 0 ? src.rows / part.unpermute_heads : 0;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < src.rows; ++r) {
    int64_t from = r;
    if (part.unpermute_heads > 0) {
      const int64_t h = r / hd, within = r % hd, half = hd / 2;
      const int64_t j = within / half, i = within % half;
      from = h * hd + 2 * i + j;
    }
    std::memcpy(dst + size_t(r) * rb, src.row(from), rb);
  }
}

// y[t, :] += bias for t < T     y: [T, n]
void add_bias(float* y, int64_t T, int64_t n, const float* bias) {
  for (int64_t t = 0; t < T; ++t) cpu::add_inplace(y + t * n, bias, n);
}

class DecoderModel final : public Model {
 public:
  DecoderModel(ModelConfig cfg, DecoderVariant variant, DecoderWeights w, cpu::RopeTable rope)
      : cfg_(std::move(cfg)), variant_(variant), w_(std::move(w)), rope_(std::move(rope)) {
    ATOM_ASSERT(int64_t(w_.layers.size()) == cfg_.num_hidden_layers);
  }

  const ModelConfig& config() const override { return cfg_; }
  DecoderParts parts() const { return DecoderParts{&w_, variant_, &rope_}; }
  DecoderPathCounts path_counts() const {
    return DecoderPathCounts{forwards_.load(std::memory_order_relaxed),
                             fused_qk_forwards_.load(std::memory_order_relaxed)};
  }

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
    ws_memory_.resize(int64_t(ws_.capacity_bytes()));
    const cpu::AttentionBatch attn{b.cu_seqlens_q.data(), b.seq_lens.data(), b.block_tables.data(),
                                   b.num_seqs(), b.max_blocks_per_seq};
    const float scale = 1.0f / std::sqrt(float(D));
    // ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION: q/k norm, RoPE and the KV-cache write in one
    // pass (the quant step waits for an FP8 KV cache). Read once per forward, so every layer of a
    // step takes the same path and a value set between steps (envs re-read the environment)
    // applies from the next one. Models without q/k norm (Llama) have nothing to fuse.
    const bool fuse_qk = variant_.qk_norm && envs::ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION();
    forwards_.fetch_add(1, std::memory_order_relaxed);
    if (fuse_qk) fused_qk_forwards_.fetch_add(1, std::memory_order_relaxed);

    cpu::embedding(w_.embed, b.token_ids.data(), T, ws_.residual.data());  // [T, H]
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      const DecoderLayerWeights& L = w_.layers[size_t(l)];
      profiler::Scope layer_scope(profiler::kMoreOnly, "layer", l, "model",
                                  {{"tokens", T}, {"hidden", H}, {"heads", nh}, {"kv_heads", nkv}});
      // --- attention block ---
      if (l == 0) {
        cpu::rms_norm(ws_.residual.data(), L.attn_norm.data(), T, H, eps(), ws_.h.data());
      } else {  // residual += mlp_out; h = norm(residual)
        cpu::add_rms_norm(ws_.mlp_out.data(), ws_.residual.data(), L.attn_norm.data(), T, H, eps(),
                          ws_.h.data());
      }
      project_qkv(L, T, q_size, kv_size);  // q [T, nh, D], k and v [T, nkv, D]
      const cpu::KvCacheView cache = kv.layer(l);
      if (fuse_qk) {  // one pass: the same q, k and cache, bit for bit, as the branch below
        const cpu::QkNormRopeArgs args{L.q_norm.data(), L.k_norm.data(), eps(), cfg_.rotary_dim,
                                       &rope_};
        cpu::qk_norm_rope_and_cache(ws_.q.data(), ws_.k.data(), ws_.v.data(), b.positions.data(),
                                    b.slot_mapping.data(), T, nh, args, cache);
      } else {
        if (variant_.qk_norm) {  // per head: rows of D values
          cpu::rms_norm(ws_.q.data(), L.q_norm.data(), T * nh, D, eps(), ws_.q.data());
          cpu::rms_norm(ws_.k.data(), L.k_norm.data(), T * nkv, D, eps(), ws_.k.data());
        }
        cpu::rope_neox(ws_.q.data(), b.positions.data(), T, nh, D, cfg_.rotary_dim, rope_);
        cpu::rope_neox(ws_.k.data(), b.positions.data(), T, nkv, D, cfg_.rotary_dim, rope_);
        cpu::reshape_and_cache(ws_.k.data(), ws_.v.data(), b.slot_mapping.data(), T, cache);
      }
      cpu::paged_attention(ws_.q.data(), nh, cache, attn, scale, ws_.attn.data());
      cpu::matmul(ws_.attn.data(), T, L.o, ws_.attn_out.data());  // [T, H]
      if (!L.o_bias.empty()) add_bias(ws_.attn_out.data(), T, H, L.o_bias.data());
      // --- MLP block ---
      cpu::add_rms_norm(ws_.attn_out.data(), ws_.residual.data(), L.ffn_norm.data(), T, H, eps(),
                        ws_.h.data());
      if (L.gate_up.data) {
        cpu::matmul(ws_.h.data(), T, L.gate_up, ws_.gate_up.data());  // [T, 2I]
      } else {
        cpu::matmul(ws_.h.data(), T, L.gate, ws_.q.data());
        cpu::matmul(ws_.h.data(), T, L.up, ws_.k.data());
        interleave_gate_up(T, I);
      }
      if (!L.gate_up_bias.empty()) add_bias(ws_.gate_up.data(), T, 2 * I, L.gate_up_bias.data());
      cpu::silu_and_mul(ws_.gate_up.data(), T, I, ws_.act.data());  // [T, I]
      cpu::matmul(ws_.act.data(), T, L.down, ws_.mlp_out.data());   // [T, H]
      if (!L.down_bias.empty()) add_bias(ws_.mlp_out.data(), T, H, L.down_bias.data());
    }

    // Final norm and LM head only for the rows that need logits.
    const int64_t n_out = int64_t(b.logits_indices.size());
    ws_.h.resize(size_t(std::max(T, n_out) * H));
    cpu::add_rms_norm(ws_.mlp_out.data(), ws_.residual.data(), w_.final_norm.data(), T, H, eps(),
                      ws_.h.data());
    std::vector<float>& sel = ws_.selected;
    sel.resize(size_t(n_out * H));
    for (int64_t i = 0; i < n_out; ++i) {
      const int32_t row = b.logits_indices[size_t(i)];
      ATOM_CHECK(row >= 0 && row < T, kOutOfRange, "logits index {} out of range", row);
      std::memcpy(sel.data() + i * H, ws_.h.data() + int64_t(row) * H, size_t(H) * sizeof(float));
    }
    logits.resize(size_t(n_out * cfg_.vocab_size));
    profiler::Scope head_scope(profiler::kMoreOnly, "lm_head", -1, "model",
                               {{"rows", n_out}, {"hidden", H}, {"vocab", cfg_.vocab_size}});
    cpu::matmul(sel.data(), n_out, w_.lm_head, logits.data());  // [n_out, vocab]
  }

 private:
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
    size_t capacity_bytes() const {
      size_t n = 0;
      for (const auto* buf : {&residual, &h, &qkv, &q, &k, &v, &attn, &attn_out, &gate_up, &act,
                              &mlp_out, &selected})
        n += buf->capacity();
      return n * sizeof(float);
    }
  };

  float eps() const { return float(cfg_.rms_norm_eps); }

  // h [T, H] -> contiguous q [T, q_size], k, v [T, kv_size], biases added.
  void project_qkv(const DecoderLayerWeights& L, int64_t T, int64_t q_size, int64_t kv_size) {
    const bool bias = !L.qkv_bias.empty();
    if (L.qkv.data) {  // one GEMM into [T, q | k | v]
      const int64_t ld = q_size + 2 * kv_size;
      cpu::matmul(ws_.h.data(), T, L.qkv, ws_.qkv.data());
      if (bias) add_bias(ws_.qkv.data(), T, ld, L.qkv_bias.data());
      for (int64_t t = 0; t < T; ++t) {
        const float* row = ws_.qkv.data() + t * ld;
        std::memcpy(ws_.q.data() + t * q_size, row, size_t(q_size) * sizeof(float));
        std::memcpy(ws_.k.data() + t * kv_size, row + q_size, size_t(kv_size) * sizeof(float));
        std::memcpy(ws_.v.data() + t * kv_size, row + q_size + kv_size,
                    size_t(kv_size) * sizeof(float));
      }
      return;
    }
    cpu::matmul(ws_.h.data(), T, L.q, ws_.q.data());
    cpu::matmul(ws_.h.data(), T, L.k, ws_.k.data());
    cpu::matmul(ws_.h.data(), T, L.v, ws_.v.data());
    if (bias) {
      add_bias(ws_.q.data(), T, q_size, L.qkv_bias.data());
      add_bias(ws_.k.data(), T, kv_size, L.qkv_bias.data() + q_size);
      add_bias(ws_.v.data(), T, kv_size, L.qkv_bias.data() + q_size + kv_size);
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
  DecoderVariant variant_;
  DecoderWeights w_;
  cpu::RopeTable rope_;
  Workspace ws_;
  profiler::MemoryRecord ws_memory_{"cpu workspace", 0};  // ws_'s bytes, for the profiler
  // decoder_path_counts(); atomic so another thread may read them while a step runs.
  std::atomic<int64_t> forwards_{0}, fused_qk_forwards_{0};
};

}  // namespace

cpu::QMatrix stack_rows(const std::vector<StackPart>& parts, WeightStorage& storage) {
  ATOM_ASSERT(!parts.empty());
  for (const StackPart& p : parts)
    if (p.m.type != parts[0].m.type || p.m.cols != parts[0].m.cols) return cpu::QMatrix{};
  int64_t rows = 0;
  for (const StackPart& p : parts) rows += p.m.rows;
  WeightBytes& bytes = storage.emplace_back(size_t(rows) * parts[0].m.row_bytes);
  size_t at = 0;
  for (const StackPart& p : parts) {
    copy_rows(bytes.data() + at, p);
    at += size_t(p.m.rows) * p.m.row_bytes;
  }
  return cpu::QMatrix{parts[0].m.type, bytes.data(), rows, parts[0].m.cols, parts[0].m.row_bytes};
}

DecoderParts decoder_parts(const Model& model) {
  const auto* d = dynamic_cast<const DecoderModel*>(&model);
  return d ? d->parts() : DecoderParts{};
}

DecoderPathCounts decoder_path_counts(const Model& model) {
  const auto* d = dynamic_cast<const DecoderModel*>(&model);
  return d ? d->path_counts() : DecoderPathCounts{};
}

std::unique_ptr<Model> make_decoder_model(ModelConfig config, DecoderVariant variant,
                                          DecoderWeights weights, cpu::RopeTable rope) {
  return std::make_unique<DecoderModel>(std::move(config), variant, std::move(weights),
                                        std::move(rope));
}

}  // namespace atom

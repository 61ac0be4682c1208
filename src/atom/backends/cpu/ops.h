// CPU backend ops: plain, readable loops (OpenMP across rows/heads, SIMD where it pays). They are
// the execution path of the CPU backend and the oracle every CUDA kernel is tested against.
// All tensors are row-major f32 unless stated; shapes are in the comments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace atom::cpu {

// --- normalization ---
// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight    x, out: [n, dim]; weight: [dim]
// out may alias x.
void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);
// Fused residual add + RMSNorm (vLLM's fused_add_rms_norm):
//   residual[t, :] += x[t, :];  out[t, :] = rms_norm(residual[t, :])      all [n, dim]
void add_rms_norm(const float* x, float* residual, const float* weight, int64_t n, int64_t dim,
                  float eps, float* out);

// --- rotary embedding ---
// RoPE scaling as in HF config.json "rope_scaling" (rope_type: default, linear, dynamic, llama3,
// yarn). Unknown types are rejected by make_rope_inv_freq with atom::Error(kUnsupported).
// The frequencies follow HF transformers' modeling_rope_utils step by step in f32.
struct RopeScaling {
  std::string type = "default";
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn; 0 = max_position (as HF's standardize_rope_params fills it in)
  int64_t original_max_position_embeddings = 0;
  // yarn. attention_factor given in the config wins; otherwise it is
  // mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are non-zero, else
  // mscale(factor) = 0.1 * ln(factor) + 1 (1 when factor <= 1), as in HF.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  std::optional<double> attention_factor;
  bool truncate = true;  // floor/ceil the correction range (gpt-oss sets false)
};
// Per-pair inverse frequencies, [rotary_dim / 2], and the attention factor (yarn's mscale, 1
// otherwise) by which cos and sin are multiplied. `max_position` is the model's
// max_position_embeddings (dynamic NTK scaling uses it).
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_factor = 1.0f;
};
// dynamic (NTK): HF rescales the base per forward call from the longest sequence in the batch,
// which changes the frequencies of keys already in a KV cache. atom's table is fixed for a model,
// so this overload returns HF's table for seq_len <= max_position, i.e. the default frequencies
// (the model behaves exactly as HF up to its trained length). The overload below takes the
// sequence length explicitly for callers that want HF's rescaled table beyond it.
RopeTable make_rope_inv_freq(int64_t rotary_dim, double theta, const RopeScaling& scaling,
                             int64_t max_position);
// As above; for "dynamic" the base is rescaled for seq_len as HF's _compute_dynamic_ntk_parameters
// does (no effect while seq_len <= max_position). Other types ignore seq_len.
RopeTable make_rope_inv_freq(int64_t rotary_dim, double theta, const RopeScaling& scaling,
                             int64_t max_position, int64_t seq_len);

// NeoX-style (HF rotate_half) rotation in place of the first rotary_dim of each head:
//   x: [n_tokens, n_heads, head_dim]; positions: [n_tokens]
// For pair i < rotary_dim/2: (x[i], x[i + rotary_dim/2]) rotated by positions[t] * inv_freq[i]
// (that product in f32, as HF computes it), with cos and sin times table.attention_factor.
void rope_neox(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads,
               int64_t head_dim, int64_t rotary_dim, const RopeTable& table);

// --- activation ---
// out[t, i] = silu(x[t, i]) * x[t, d + i]      x: [n, 2 * d]; out: [n, d]
void silu_and_mul(const float* x, int64_t n, int64_t d, float* out);

// --- paged KV cache ---
// Cache layout (the engine's and the CUDA backend's): per layer, K and V each
//   [num_blocks, block_size, num_kv_heads, head_dim]
// Token with slot s lives at block s / block_size, offset s % block_size. slot -1 = skip (padding).
struct KvCacheView {
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};
// k, v: [n_tokens, num_kv_heads, head_dim]; slot_mapping: [n_tokens]
void reshape_and_cache(const float* k, const float* v, const int32_t* slot_mapping,
                       int64_t n_tokens, const KvCacheView& cache);

// Paged attention for a batch of sequences, prefill and decode alike (varlen, causal, GQA).
// Sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) and has seq_lens[s] tokens of
// context in the cache (its cached prefix plus these new tokens, already written with
// reshape_and_cache). Query row j of a sequence with q_len new tokens sits at position
// seq_len - q_len + j and attends to cache positions [0, that position].
//   q: [n_tokens, num_heads, head_dim]; out: [n_tokens, num_heads, head_dim]
//   block_tables: [num_seqs, max_blocks_per_seq] (physical block ids)
// num_heads must be a multiple of cache.num_kv_heads.
struct AttentionBatch {
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;
};
// Threads: prefill work is split over (sequence, query rows, kv head) and decode work over
// (sequence, key range), so a single long decode still uses several threads.
void paged_attention(const float* q, int64_t num_heads, const KvCacheView& cache,
                     const AttentionBatch& batch, float scale, float* out);

// --- fused q/k norm + RoPE + KV-cache write ---
// Qwen3's attention prologue in one pass over the tokens, the CPU path of
// ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION (its quant step waits for an FP8 KV cache).
// One pass over q, k and v instead of three; per token t:
//   each q head: rms_norm(q_weight) then rope_neox;  each k head: rms_norm(k_weight) then rope_neox
//   (cos/sin of positions[t] computed once for both);  k[t], v[t] -> cache slot slot_mapping[t]
// The same compiled row kernels as rms_norm + rope_neox (q, k) + reshape_and_cache, so the
// results (q, k, cache) equal the unfused sequence's bit for bit.
//   q: [n_tokens, num_heads, head_dim], k: [n_tokens, cache.num_kv_heads, head_dim], both in
//   place; v: [n_tokens, cache.num_kv_heads, head_dim]; q_weight, k_weight: [head_dim];
//   positions, slot_mapping: [n_tokens] (slot -1 = skip)
struct QkNormRopeArgs {
  const float* q_weight = nullptr;
  const float* k_weight = nullptr;
  float eps = 1e-6f;
  int64_t rotary_dim = 0;
  const RopeTable* rope = nullptr;
};
void qk_norm_rope_and_cache(float* q, float* k, const float* v, const int32_t* positions,
                            const int32_t* slot_mapping, int64_t n_tokens, int64_t num_heads,
                            const QkNormRopeArgs& args, const KvCacheView& cache);

// --- dense helpers ---
// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);

}  // namespace atom::cpu

// Element-wise CUDA ops of the decoder forward other than norm, attention and GEMM: embedding
// lookup (which is also the gather of the rows that need logits), the split of a fused QKV
// projection, SiLU-and-multiply, NeoX RoPE fused with the paged KV-cache write (and with the
// split and the q/k norm before it), and the greedy sampler's argmax. bf16 activations, f32 math,
// bf16 rounding wherever HF transformers rounds.
// Three levels as in norm.h: __global__ kernels (ops.cu), launchers on raw device pointers and a
// stream, entry points on Tensors that check shapes, dtypes and devices. Launchers validate their
// sizes on the host (atom::Error), never allocate or synchronize, and accept n == 0 (no launch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "atom/core/tensor.h"

namespace atom::cuda {

// --- embedding / row gather ---
// out[t, :] = table[ids[t], :]
//   table: [vocab, hidden]; ids: [n] int32 (device); out: [n, hidden]
// An id outside [0, vocab) writes a row of zeros and reads nothing (the runner validates ids on
// the host; the kernel still never reads out of bounds). The same launcher gathers the rows of
// the final hidden states that need logits: table = h [T, H], ids = logits_indices.
void launch_embedding(const __nv_bfloat16* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                      __nv_bfloat16* out, int64_t n, cudaStream_t stream);

// --- fused QKV projection output ---
// qkv: [n, q_size + 2 * kv_size] -> q: [n, q_size], k: [n, kv_size], v: [n, kv_size]
// (contiguous copies, so that per-head norms and attention see dense rows).
void launch_split_qkv(const __nv_bfloat16* qkv, __nv_bfloat16* q, __nv_bfloat16* k,
                      __nv_bfloat16* v, int64_t n, int64_t q_size, int64_t kv_size,
                      cudaStream_t stream);

// --- activation ---
// out[t, i] = silu(x[t, i]) * x[t, d + i]      x: [n, 2 * d]; out: [n, d]
// Rounded as HF's `act_fn(gate) * up` on bf16 tensors: silu in f32 rounded to bf16, then the
// product in f32 rounded to bf16 (two roundings, as torch does; not one fused rounding).
void launch_silu_and_mul(const __nv_bfloat16* x, __nv_bfloat16* out, int64_t n, int64_t d,
                         cudaStream_t stream);

// --- rotary embedding and paged KV cache ---
// The rotation of one batch. angle[t, i] = float(positions[t]) * inv_freq[i] in f32 (as
// cpu::rope_neox and HF compute it), cos and sin of it in f32 times attention_factor, then
// rounded to bf16 as HF's rotary embedding returns them in the activations' dtype; the rotation
// x * cos + rotate_half(x) * sin rounds each product and the sum to bf16, as HF's bf16 ops do.
struct RopeArgs {
  const int32_t* positions = nullptr;  // [n] (device)
  const float* inv_freq = nullptr;     // [rotary_dim / 2] (device): cpu::make_rope_inv_freq's
  float attention_factor = 1.0f;       // RopeTable::attention_factor
  int64_t rotary_dim = 0;              // even, <= head_dim; dims past it are left as they are
};

// Where a batch's K and V rows go in one layer's paged cache. Each cache is
// [num_blocks, block_size, num_kv_heads, head_dim], so slot s (block s / block_size, offset
// s % block_size) is simply row s of [num_slots, num_kv_heads, head_dim].
// Element type: bf16, or fp8 e4m3 (float8_e4m3fn, `--kv_cache_dtype fp8`; only
// launch_qkv_rope_and_cache writes it, the others reject it): the bf16 value the bf16 cache would
// hold, divided by k_scale (v_scale for V) in f32 and converted to e4m3 rounding to nearest even
// and saturating to +-448 (cvt.rn.satfinite: atom::f32_to_fp8e4m3). paged_attention reads it back
// as e4m3 * scale (PagedKvCache's scales must be the same).
struct KvCacheWrite {
  const int32_t* slot_mapping = nullptr;  // [n] (device); -1 = skip (padding)
  void* k_cache = nullptr;                // [num_slots, num_kv_heads, head_dim] of dtype
  void* v_cache = nullptr;                // [num_slots, num_kv_heads, head_dim] of dtype
  int64_t num_slots = 0;  // num_blocks * block_size; a slot >= num_slots is skipped, not written
  DType dtype = DType::kBF16;  // kBF16 or kF8E4M3 (kUnsupported otherwise)
  float k_scale = 1.0f;        // fp8: positive and finite; a bf16 cache ignores the scales
  float v_scale = 1.0f;
};

// In place: NeoX rotation of the first rotary_dim of each head.   x: [n, num_heads, head_dim]
void launch_rope_neox(__nv_bfloat16* x, const RopeArgs& rope, int64_t n, int64_t num_heads,
                      int64_t head_dim, cudaStream_t stream);

// Copies k and v rows into the cache (cpu::reshape_and_cache).   k, v: [n, num_kv_heads, head_dim]
// bf16 caches only (kUnsupported for fp8), as launch_rope_and_cache.
void launch_reshape_and_cache(const __nv_bfloat16* k, const __nv_bfloat16* v,
                              const KvCacheWrite& cache, int64_t n, int64_t num_kv_heads,
                              int64_t head_dim, cudaStream_t stream);

// Fused: rotates q and k in place, then writes the rotated k and v into the cache, one thread
// block per token (the rotated k goes to the cache from registers, without a second read).
//   q: [n, num_heads, head_dim]; k, v: [n, num_kv_heads, head_dim]
void launch_rope_and_cache(__nv_bfloat16* q, __nv_bfloat16* k, const __nv_bfloat16* v,
                           const RopeArgs& rope, const KvCacheWrite& cache, int64_t n,
                           int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                           cudaStream_t stream);

// Fused attention prologue of one layer, one launch instead of split_qkv -> (q/k norm) ->
// rope_and_cache, with the same bits as that sequence: per token, each q head and each k head of
// the fused projection is RMS-normed with q_norm / k_norm (as launch_rms_norm rounds it; both
// null: no norm, as Llama), then rotated as launch_rope_and_cache rotates it; q goes to q_out,
// the rotated k and v to the cache at slot_mapping[t] (-1 or >= num_slots: not written): as
// they are to a bf16 cache, quantized from those bf16 values to an fp8 one (KvCacheWrite).
//   qkv: [n, (num_heads + 2 * num_kv_heads) * head_dim] (q heads, then k, then v);
//   q_norm, k_norm: [head_dim] or both null; q_out: [n, num_heads, head_dim]
// head_dim: a multiple of 8 up to 256 (kUnsupported otherwise); qkv, q_out, the caches and the
// norm weights 16-byte aligned (kUnsupported otherwise).
void launch_qkv_rope_and_cache(const __nv_bfloat16* qkv, const __nv_bfloat16* q_norm,
                               const __nv_bfloat16* k_norm, float eps, const RopeArgs& rope,
                               const KvCacheWrite& cache, __nv_bfloat16* q_out, int64_t n,
                               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               cudaStream_t stream);

// --- greedy sampling ---
// out[t] = index of the largest logits[t, :], the lowest index among ties (atom::argmax and
// torch.argmax). NaNs as atom::argmax treats them: a NaN first logit gives 0, later NaNs are
// never chosen.   logits: [n, vocab] f32; out: [n] int32 (device); vocab <= INT32_MAX
void launch_argmax(const float* logits, int32_t* out, int64_t n, int64_t vocab,
                   cudaStream_t stream);

// --- entry points: contiguous tensors on the GPU ---
// table: [vocab, hidden] bf16; ids: [n] i32; out: [n, hidden] bf16
void embedding(const Tensor& table, const Tensor& ids, const Tensor& out, cudaStream_t stream);
// x: [..., 2 * d] bf16; out: [..., d] bf16 with the same leading dims
void silu_and_mul(const Tensor& x, const Tensor& out, cudaStream_t stream);
// q: [n, num_heads, head_dim], k and v: [n, num_kv_heads, head_dim] bf16; positions and
// slot_mapping: [n] i32; inv_freq: [rotary_dim / 2] f32; k_cache and v_cache:
// [num_blocks, block_size, num_kv_heads, head_dim] bf16.
void rope_and_cache(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                    const Tensor& inv_freq, float attention_factor, int64_t rotary_dim,
                    const Tensor& slot_mapping, const Tensor& k_cache, const Tensor& v_cache,
                    cudaStream_t stream);
// logits: [n, vocab] f32; out: [n] i32
void argmax(const Tensor& logits, const Tensor& out, cudaStream_t stream);

}  // namespace atom::cuda

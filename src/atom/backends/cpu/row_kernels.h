// Per-row kernels shared inside the CPU backend: the public ops (rms_norm, rope_neox,
// reshape_and_cache) and the fused qk_norm_rope_and_cache run the same compiled loops, so the fused op gives the unfused sequence's
// results bit for bit by construction (a reduction vectorised differently would not). Internal to
// backends/cpu: callers use ops.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "atom/backends/cpu/ops.h"

namespace atom::cpu::detail {

// out[:] = x[:] / sqrt(mean(x[:]^2) + eps) * weight      x, out, weight: [dim]; out may alias x.
void rms_norm_row(const float* x, const float* weight, int64_t dim, float eps, float* out);

// Throws kInvalidArgument unless rotary_dim is even, within head_dim and matches the table.
void check_rope(int64_t head_dim, int64_t rotary_dim, const RopeTable& table);
// cos and sin of one position, times table.attention_factor.     c, s: [rotary_dim / 2]
void rope_cos_sin(int32_t position, const RopeTable& table, float* c, float* s);
// NeoX rotation of one head in place: (v[i], v[i + half]) by (c[i], s[i]) for i < half.
void rope_rotate_head(float* v, int64_t half, const float* c, const float* s);

// The KV-cache write of reshape_and_cache and qk_norm_rope_and_cache:
// check_slots throws kOutOfRange (naming `op`) unless every slot is -1 (padding) or in the cache;
// store_kv copies one token's K and V rows ([num_kv_heads * head_dim] each) into slot `slot`,
// row `slot` of the [num_blocks, block_size, ...] layout; -1 writes nothing.
void check_slots(const char* op, const int32_t* slot_mapping, int64_t n_tokens,
                 const KvCacheView& cache);
inline void store_kv(const KvCacheView& cache, int64_t slot, const float* k, const float* v) {
  if (slot < 0) return;  // padding
  const int64_t row = cache.num_kv_heads * cache.head_dim;
  std::memcpy(cache.k + slot * row, k, size_t(row) * sizeof(float));
  std::memcpy(cache.v + slot * row, v, size_t(row) * sizeof(float));
}

}  // namespace atom::cpu::detail

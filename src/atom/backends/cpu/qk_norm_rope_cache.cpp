// The fused q/k RMSNorm + NeoX RoPE + KV-cache write (ops.h qk_norm_rope_and_cache): the unfused
// ops' row kernels (row_kernels.h) applied token by token, so each token's q, k and v are read
// once while they sit in L1 instead of once per op.
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/row_kernels.h"
#include "atom/core/error.h"

namespace atom::cpu {

void qk_norm_rope_and_cache(float* q, float* k, const float* v, const int32_t* positions,
                            const int32_t* slot_mapping, int64_t n_tokens, int64_t num_heads,
                            const QkNormRopeArgs& args, const KvCacheView& cache) {
  ATOM_CHECK(cache.k != nullptr && cache.v != nullptr, kInvalidArgument,
             "qk_norm_rope_and_cache: KV cache is not allocated");
  ATOM_CHECK(args.q_weight != nullptr && args.k_weight != nullptr && args.rope != nullptr,
             kInvalidArgument, "qk_norm_rope_and_cache: q/k norm weights and rope table required");
  const int64_t nkv = cache.num_kv_heads, hd = cache.head_dim;
  ATOM_CHECK(n_tokens >= 0 && num_heads > 0 && nkv > 0 && hd > 0, kInvalidArgument,
             "qk_norm_rope_and_cache of {} tokens, {} q heads, {} kv heads of {}", n_tokens,
             num_heads, nkv, hd);
  detail::check_rope(hd, args.rotary_dim, *args.rope);
  const int64_t row = nkv * hd;  // one token's K (or V), all heads
  detail::check_slots("qk_norm_rope_and_cache", slot_mapping, n_tokens, cache);
  const int64_t half = args.rotary_dim / 2;
  // As the unfused ops: a decode step's few kilobytes stay on one thread.
  const bool parallel = n_tokens > 1 && n_tokens * (num_heads + 2 * nkv) * hd >= (int64_t(1) << 15);
#pragma omp parallel if (parallel)
  {
    // cos and sin of one token, shared by its q and k heads. [half] each
    thread_local std::vector<float> cs;
    if (int64_t(cs.size()) < 2 * half) cs.resize(size_t(2 * half));
    float* c = cs.data();
    float* s = c + half;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tokens; ++t) {
      float* qt = q + t * num_heads * hd;  // [num_heads, hd]
      float* kt = k + t * row;             // [nkv, hd]
      // All heads normed, then all rotated: the token's rows (num_heads + nkv heads of hd
      // floats) stay in L1 between the two, and a rotation never waits on the stores of the
      // norm just before it.
      for (int64_t h = 0; h < num_heads; ++h)
        detail::rms_norm_row(qt + h * hd, args.q_weight, hd, args.eps, qt + h * hd);
      for (int64_t h = 0; h < nkv; ++h)
        detail::rms_norm_row(kt + h * hd, args.k_weight, hd, args.eps, kt + h * hd);
      detail::rope_cos_sin(positions[t], *args.rope, c, s);
      for (int64_t h = 0; h < num_heads; ++h) detail::rope_rotate_head(qt + h * hd, half, c, s);
      for (int64_t h = 0; h < nkv; ++h) detail::rope_rotate_head(kt + h * hd, half, c, s);
      // An FP8 cache would quantize here, the step the variable's name promises once atom has
      // one.
      detail::store_kv(cache, slot_mapping[t], kt, v + t * row);
    }
  }
}

}  // namespace atom::cpu

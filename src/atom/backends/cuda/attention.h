// Paged attention on the GPU (bf16 q and output, a bf16 or fp8 e4m3 KV cache; f32 softmax and
// accumulation), with the semantics of cpu::paged_attention: varlen, causal, GQA, reading each
// sequence's context (cached prefix plus its new tokens, already in the cache) through its block
// table.
//
// Two kernels, both on 16-bit tensor cores (mma.sync m16n8k16, f32 accumulators): bf16 for a bf16
// cache; f16 for an fp8 cache, whose tiles are copied to shared memory as fp8 (half the bytes)
// and converted while the mma fragments are built (e4m3 -> f16 is exact and one instruction per
// pair; q is rounded once from bf16 to f16, exact for magnitudes 2^-17 to 65504, saturated above):
// - decode (every sequence has one query row): one thread block per (sequence, kv head, split),
//   the query heads of the GQA group as the rows of one tile so each K/V byte is read once per
//   group; the grid's key splits (flash-decoding) divide each sequence's own context, read on
//   the device, into partial softmax states in a caller-provided workspace, merged by a second
//   small kernel.
// - prefill (any number of query rows per sequence, decodes included): flash-attention tiles of
//   64 (query row, group head) pairs against 64 keys, online softmax, causal mask.
// `paged_attention` dispatches: all-decode batches to the decode kernel, everything else to the
// prefill kernel. Nothing here allocates or synchronizes: the caller passes the host facts it
// already knows (batch sizes, longest query and context) and a workspace sized up front with
// `paged_attention_workspace_bytes`, so a step can be captured in a CUDA graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "atom/core/tensor.h"

namespace atom::cuda {

// One layer's paged KV cache on the GPU. Token slot s lives at block s / block_size, offset
// s % block_size. head_dim 64 or 128; any block_size >= 1.
// Element type: bf16, or fp8 e4m3 (float8_e4m3fn, `--kv_cache_dtype fp8`) with per-tensor scales:
// the cache holds e4m3(x / k_scale) and the kernels read e4m3 * k_scale (v likewise), as
// launch_qkv_rope_and_cache writes it. The scales are 1.0 when the checkpoint gives none; a bf16
// cache ignores them.
struct PagedKvCache {
  const void* k = nullptr;  // [num_blocks, block_size, num_kv_heads, head_dim] of dtype
  const void* v = nullptr;  // [num_blocks, block_size, num_kv_heads, head_dim] of dtype
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::kBF16;  // kBF16 or kF8E4M3 (kUnsupported otherwise)
  float k_scale = 1.0f;        // fp8: positive and finite
  float v_scale = 1.0f;
};

// Batch metadata: device pointers plus the host-side facts the runner knows without reading the
// device. Sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) and has seq_lens[s]
// context tokens in the cache; query row j of a sequence with q_len rows sits at position
// seq_len - q_len + j and attends to cache positions [0, that position]. A sequence with no
// query rows is skipped. Block-table entries past a sequence's ceil(seq_len / block_size) blocks
// are never read; an entry outside [0, num_blocks) reads as zeros rather than out of bounds.
struct PagedAttentionBatch {
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1], device
  const int32_t* seq_lens = nullptr;      // [num_seqs], device
  const int32_t* block_tables = nullptr;  // [num_seqs, stride], device
  // Optional device int32: the row stride of block_tables, <= max_blocks_per_seq. A CUDA graph
  // captured once for a batch size reads the stride of each replay's tables from here, so the
  // tables can be as narrow as the replayed batch needs. Null: the stride is max_blocks_per_seq.
  const int32_t* block_table_stride = nullptr;
  int64_t num_seqs = 0;
  int64_t num_tokens = 0;          // query rows in the batch (rows of q and out)
  int64_t max_blocks_per_seq = 0;  // row stride of block_tables (a bound with block_table_stride)
  // Picks the kernel: <= 1 promises at most one query row per sequence (the decode kernel
  // computes only a sequence's last row); anything larger runs the prefill kernel.
  int64_t max_q_len = 0;
  // >= every seq_lens[s]: bounds the block table's reach and the decode split count (a CUDA
  // graph passes max_model_len; the split sizes come from each sequence's own seq_lens[s]).
  int64_t max_seq_len = 0;
};

// --- workspace ---
// Key splits of the decode grid for this batch shape: the fewest that keep the resident decode
// blocks of the current device's multiprocessors >= 90% busy over the grid's waves (e.g. 33 for
// one sequence of 8 kv heads on 132 multiprocessors, 1 for 64 of them), at most
// ceil(max_seq_len / 64) (a split holds at least one 64-key tile) and at most 128. Independent of
// the contexts.
int paged_decode_num_splits(int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                            int64_t max_seq_len);
// Bytes of workspace the decode kernel needs for `num_splits` splits (0 for one split, which
// writes the output directly).
size_t paged_decode_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim,
                                    int num_splits);
// Bytes `paged_attention` needs for this batch shape (0 for prefill and unsplit decode).
size_t paged_attention_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                                       int64_t head_dim, int64_t max_q_len, int64_t max_seq_len);
// The most any batch of up to max_num_seqs sequences with contexts up to max_seq_len needs: what a
// runner allocates once at start-up.
size_t paged_attention_max_workspace_bytes(int64_t max_num_seqs, int64_t num_heads,
                                           int64_t num_kv_heads, int64_t head_dim,
                                           int64_t max_seq_len);

// --- launchers ---
// q, out: [num_tokens, num_heads, head_dim]; 16-byte aligned. scale multiplies q . k.
// Decode: every sequence has at most one query row (batch.max_q_len <= 1). The grid has
// num_splits key splits (any count from 1 to 65535); sequence s cuts its own context into chunks
// of ceil(seq_lens[s] / num_splits) keys rounded up to 64, which fill the first
// ceil(seq_lens[s] / chunk) splits, and its other blocks return at once. With num_splits > 1,
// partial states go to `workspace` (paged_decode_workspace_bytes(num_splits), 16-byte aligned)
// and a second kernel merges them; a sequence whose context fits one chunk is written directly.
void launch_paged_attention_decode(const __nv_bfloat16* q, int64_t num_heads,
                                   const PagedKvCache& cache, const PagedAttentionBatch& batch,
                                   float scale, int num_splits, __nv_bfloat16* out, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream);
// Prefill, decode or mixed rows alike; needs no workspace.
void launch_paged_attention_prefill(const __nv_bfloat16* q, int64_t num_heads,
                                    const PagedKvCache& cache, const PagedAttentionBatch& batch,
                                    float scale, __nv_bfloat16* out, cudaStream_t stream);

// --- entry points ---
// Dispatches on batch.max_q_len: decode with paged_decode_num_splits splits when <= 1, else
// prefill. workspace: paged_attention_workspace_bytes(...) bytes (may be null when that is 0).
void paged_attention(const __nv_bfloat16* q, int64_t num_heads, const PagedKvCache& cache,
                     const PagedAttentionBatch& batch, float scale, __nv_bfloat16* out,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Tensors on the GPU, all contiguous:
//   q, out: [num_tokens, num_heads, head_dim] bf16
//   k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] bf16, or both f8e4m3
//     (then read as e4m3 * k_scale and e4m3 * v_scale; a bf16 cache ignores the scales)
//   cu_seqlens_q: [num_seqs + 1] i32; seq_lens: [num_seqs] i32;
//   block_tables: [num_seqs, max_blocks_per_seq] i32
//   workspace: any dtype, at least paged_attention_workspace_bytes bytes (undefined when 0)
void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                     const Tensor& cu_seqlens_q, const Tensor& seq_lens, const Tensor& block_tables,
                     int64_t max_q_len, int64_t max_seq_len, float scale, const Tensor& out,
                     const Tensor& workspace, cudaStream_t stream, float k_scale = 1.0f,
                     float v_scale = 1.0f);

}  // namespace atom::cuda

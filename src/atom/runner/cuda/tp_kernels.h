// The two kernels tensor parallelism adds to the forward (SPEC 4.1), around its collectives:
// the vocabulary-parallel embedding lookup (each rank holds a slice of the table; the ranks'
// outputs are summed by an all-reduce) and the reassembly of the vocabulary-parallel LM head's
// all-gathered logits into dense rows for sampling.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace atom::cuda {

// out[t, :] = table[ids[t] - first, :] when first <= ids[t] < first + rows, else zeros.
//   table: [rows, hidden] (this rank's rows [first, first + rows) of the padded vocabulary);
//   ids: [n] int32 (device); out: [n, hidden]
// Summed over the ranks every id's row comes from exactly one rank, the others add exact zeros.
// n == 0 launches nothing.
void launch_vocab_shard_embedding(const __nv_bfloat16* table, int64_t first, int64_t rows,
                                  int64_t hidden, const int32_t* ids, __nv_bfloat16* out,
                                  int64_t n, cudaStream_t stream);

// out[r, c] = shards[c / rows, r, c % rows] for c < vocab: the padded vocabulary's columns,
// rank by rank, without the padding.
//   shards: [tp, n, rows] f32 (an all-gather of each rank's [n, rows] logits);
//   out: [n, vocab] f32 with vocab <= tp * rows
// n == 0 launches nothing.
void launch_merge_vocab_shards(const float* shards, int64_t tp, int64_t n, int64_t rows,
                               int64_t vocab, float* out, cudaStream_t stream);

}  // namespace atom::cuda

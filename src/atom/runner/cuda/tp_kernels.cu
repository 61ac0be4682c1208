#include "atom/runner/cuda/tp_kernels.h"

#include "atom/backends/cuda/check.h"

namespace atom::cuda {

namespace {

// One block per token; 16-byte chunks of 8 bf16 when the row allows them, else single values.
__global__ void vocab_shard_embedding_kernel(const __nv_bfloat16* table, int64_t first,
                                             int64_t rows, int64_t hidden, const int32_t* ids,
                                             __nv_bfloat16* out, bool vec) {
  const int64_t t = blockIdx.x;
  const int64_t row = int64_t(ids[t]) - first;
  const bool mine = row >= 0 && row < rows;
  __nv_bfloat16* dst = out + t * hidden;
  if (vec) {
    const int64_t chunks = hidden / 8;
    const uint4* src = reinterpret_cast<const uint4*>(table + (mine ? row : 0) * hidden);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x)
      d[i] = mine ? src[i] : make_uint4(0, 0, 0, 0);
  } else {
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      dst[i] = mine ? table[row * hidden + i] : zero;
  }
}

__global__ void merge_vocab_shards_kernel(const float* shards, int64_t n, int64_t rows,
                                          int64_t vocab, float* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * vocab) return;
  const int64_t r = i / vocab, c = i % vocab;
  const int64_t rank = c / rows, col = c % rows;
  out[i] = shards[(rank * n + r) * rows + col];
}

}  // namespace

void launch_vocab_shard_embedding(const __nv_bfloat16* table, int64_t first, int64_t rows,
                                  int64_t hidden, const int32_t* ids, __nv_bfloat16* out,
                                  int64_t n, cudaStream_t stream) {
  ATOM_CHECK(n >= 0 && first >= 0 && rows > 0 && hidden > 0, kInvalidArgument,
             "vocab_shard_embedding: {} ids, rows [{}, {} + {}), hidden {}", n, first, first,
             rows, hidden);
  ATOM_CHECK(n <= int64_t(INT32_MAX), kInvalidArgument, "vocab_shard_embedding: {} ids", n);
  if (n == 0) return;
  const bool vec = hidden % 8 == 0 && reinterpret_cast<uintptr_t>(table) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0;
  constexpr int kThreads = 128;
  vocab_shard_embedding_kernel<<<unsigned(n), kThreads, 0, stream>>>(table, first, rows, hidden,
                                                                     ids, out, vec);
  ATOM_CUDA_CHECK(cudaGetLastError());
}

void launch_merge_vocab_shards(const float* shards, int64_t tp, int64_t n, int64_t rows,
                               int64_t vocab, float* out, cudaStream_t stream) {
  ATOM_CHECK(tp >= 1 && n >= 0 && rows > 0 && vocab > 0 && vocab <= tp * rows, kInvalidArgument,
             "merge_vocab_shards: {} shards of [{}, {}] for a vocabulary of {}", tp, n, rows,
             vocab);
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int64_t total = n * vocab;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  ATOM_CHECK(blocks <= int64_t(INT32_MAX), kInvalidArgument,
             "merge_vocab_shards: [{}, {}] is too large", n, vocab);
  merge_vocab_shards_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(shards, n, rows, vocab,
                                                                        out);
  ATOM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace atom::cuda

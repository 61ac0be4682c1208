#include "atom/runner/cuda/gather_ids.h"

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/pdl.cuh"

namespace atom::cuda {

namespace {

__global__ void gather_ids_kernel(const int32_t* sampled, int64_t num_sampled,
                                  const int32_t* src_index, const int32_t* dst_rows, int64_t n,
                                  int32_t* token_ids, int64_t num_tokens) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t src = src_index[i], dst = dst_rows[i];
  if (src < 0 || src >= num_sampled || dst < 0 || dst >= num_tokens) return;
  token_ids[dst] = sampled[src];
}

}  // namespace

void launch_gather_ids(const int32_t* sampled, int64_t num_sampled, const int32_t* src_index,
                       const int32_t* dst_rows, int64_t n, int32_t* token_ids, int64_t num_tokens,
                       cudaStream_t stream) {
  ATOM_CHECK(n >= 0 && num_sampled >= 0 && num_tokens >= 0, kInvalidArgument,
             "gather_ids: negative size (n {}, sampled {}, tokens {})", n, num_sampled, num_tokens);
  if (n == 0) return;
  constexpr int kThreads = 128;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  launch_pdl(gather_ids_kernel, unsigned(blocks), kThreads, 0, stream, sampled, num_sampled,
             src_index, dst_rows, n, token_ids, num_tokens);
}

}  // namespace atom::cuda

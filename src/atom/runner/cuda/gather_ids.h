// The deferred-output gather on the GPU: decode inputs the host only knew as placeholders are
// read from the ids an earlier step sampled, still on the device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace atom::cuda {

// token_ids[dst_rows[i]] = sampled[src_index[i]] for i < n.
//   sampled: [num_sampled] (device); src_index, dst_rows: [n] (device); token_ids: [num_tokens]
// An index outside its array is skipped (the host checks them; the kernel never reads or writes
// out of bounds). n == 0 launches nothing.
void launch_gather_ids(const int32_t* sampled, int64_t num_sampled, const int32_t* src_index,
                       const int32_t* dst_rows, int64_t n, int32_t* token_ids, int64_t num_tokens,
                       cudaStream_t stream);

}  // namespace atom::cuda

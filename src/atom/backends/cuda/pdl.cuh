// Programmatic dependent launch (PDL, sm_90): a kernel launched with launch_pdl() may be
// scheduled onto the SMs while the kernel before it in the stream is still finishing, instead of
// after it has drained. A decode step of a 32-layer model is ~360 small kernels back to back
// (inside a CUDA graph); without PDL each boundary costs the launch latency plus the ramp of the
// next grid (~1 µs, measured as idle GPU time between kernels in the step's timeline).
//
// The contract, which makes early scheduling safe by construction:
//   * every kernel launched through launch_pdl() calls pdl_wait() before its first global-memory
//     read or write. griddepcontrol.wait returns only once the grids it depends on have completed
//     and their memory operations are visible, so no read-after-write or write-after-read on any
//     buffer can race;
//   * it then calls pdl_launch_dependents(), letting the next grid be scheduled once every block
//     of this one has started (its blocks then sit in their own pdl_wait()).
// Dependencies across several kernels hold by induction: a grid completes only after its
// pdl_wait() returned, i.e. after its predecessor completed. Kernels that do not take part
// (cuBLASLt's, memcpys) order as usual: a PDL launch after them starts when they are done.
// Both calls are no-ops for a kernel launched the ordinary way.
// Internal to backends/cuda: include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "atom/backends/cuda/check.h"

namespace atom::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization allowed,
// then the launch's error as an atom::Error. The kernel must follow the contract above.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  // The launch's own result is its check (launchers need no cudaGetLastError after it); clear
  // the error it also left as the thread's last one, so no later check reports it again.
  if (err != cudaSuccess) (void)cudaGetLastError();
  ATOM_CUDA_CHECK(err);
}

}  // namespace atom::cuda

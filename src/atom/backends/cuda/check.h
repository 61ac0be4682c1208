// CUDA runtime error checking: a failed call becomes an atom::Error naming the call site.
#pragma once

#include <cuda_runtime_api.h>

#include "atom/core/error.h"

#define ATOM_CUDA_CHECK(expr)                                                              \
  do {                                                                                     \
    const cudaError_t atom_cuda_err_ = (expr);                                             \
    if (atom_cuda_err_ != cudaSuccess) {                                                   \
      ::atom::throw_error(::atom::ErrorCode::kInternal, "CUDA error {} ({}) at {}:{}: {}", \
                          cudaGetErrorName(atom_cuda_err_), int(atom_cuda_err_), __FILE__, \
                          __LINE__, cudaGetErrorString(atom_cuda_err_));                   \
    }                                                                                      \
  } while (0)

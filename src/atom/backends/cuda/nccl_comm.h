// NcclComm: one rank's NCCL communicator of a tensor-parallel group (SPEC 4.1), and the three
// collectives the CUDA runner needs, enqueued on a caller's stream (so they can be captured in
// a CUDA graph): all-reduce (sum), all-gather and broadcast.
//
// A group is made from an ncclUniqueId that rank 0 creates (nccl_unique_id) and every rank
// receives. The id travels as bytes: the ranks of one process share the vector in memory, a
// later multi-process launch can pass the same bytes through its rendezvous. Each rank builds
// its NcclComm on its own thread with its own device current; the constructor returns once all
// ranks have joined.
//
// NVLink multicast (NVLS) is never asked for: atom creates no multicast objects and leaves
// NCCL_NVLS_ENABLE=0, which keeps NCCL's own use of it off (../shared/GPU.md), as it finds it.
//
// Errors are atom::Error naming the NCCL error string (and NCCL's last message). A build
// without NCCL (ATOM_NCCL undefined) still has this class: nccl_available() is false and the
// constructor throws kUnsupported, so callers refuse tensor parallelism with a clear message.
// This header names no NCCL type, so it is included without nccl.h.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "atom/core/dtype.h"

struct ncclComm;  // NCCL's opaque communicator (ncclComm_t is ncclComm*)

namespace atom::cuda {

// Whether this build has NCCL.
bool nccl_available();

// A fresh ncclUniqueId as its bytes (NCCL_UNIQUE_ID_BYTES, 128). Rank 0 calls it once per group.
std::vector<uint8_t> nccl_unique_id();

class NcclComm {
 public:
  // Joins rank `rank` of a `size`-rank group identified by `unique_id` (nccl_unique_id's bytes)
  // on the current CUDA device; blocks until every rank has joined. kInvalidArgument for a bad
  // size, rank or id length; kInternal naming NCCL's error when the initialisation fails;
  // kUnsupported in a build without NCCL.
  NcclComm(std::span<const uint8_t> unique_id, int size, int rank);
  // ncclCommDestroy (after abort(): nothing more). The caller has finished or aborted its work.
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // data[i] = sum over ranks of data[i], in place.   data: [count] (device)
  // bf16 sums are NCCL's: each addition in f32, rounded back to bf16.
  void all_reduce_sum(void* data, size_t count, DType type, cudaStream_t stream);
  // recv[r * count + i] = send[i] of rank r.   send: [count]; recv: [size * count] (device)
  // In place when send == recv + rank * count.
  void all_gather(const void* send, void* recv, size_t count, DType type, cudaStream_t stream);
  // data = root's data on every rank.   data: [count] (device)
  void broadcast(void* data, size_t count, DType type, int root, cudaStream_t stream);

  // ncclCommAbort: work the communicator has in flight stops, on every rank once each rank's
  // comm is aborted (a failed rank's peers would otherwise wait for it forever). Callable from
  // any thread; the communicator is unusable afterwards. Idempotent.
  void abort();

 private:
  ncclComm* comm_ = nullptr;
  int size_ = 0, rank_ = 0;
  std::atomic<bool> aborted_{false};  // abort() may come from another rank's thread
};

}  // namespace atom::cuda

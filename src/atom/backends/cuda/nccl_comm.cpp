#include "atom/backends/cuda/nccl_comm.h"

#include "atom/core/error.h"

#ifdef ATOM_NCCL

// cuda_bf16.h first: older nccl.h declares ncclBfloat16 only when CUDA's bf16 type is known.
#include <cuda_bf16.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>

namespace atom::cuda {

namespace {

// An NCCL call's failure as an atom::Error: the call, NCCL's error string and, when the
// communicator exists, NCCL's last message (which says which peer or transport failed).
void check_nccl(ncclResult_t r, const char* what, ncclComm_t comm) {
  if (r == ncclSuccess) return;
  const char* last = comm ? ncclGetLastError(comm) : nullptr;
  throw_error(ErrorCode::kInternal, "NCCL {} failed: {} ({}){}{}", what, ncclGetErrorString(r),
              int(r), last && *last ? ": " : "", last ? last : "");
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kF32:
      return ncclFloat32;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
    case DType::kI8:
      return ncclInt8;
    default:
      throw_error(ErrorCode::kUnsupported, "NCCL collectives on {} data", dtype_name(t));
  }
}

// NVLink multicast (NVLS) stays off unless the user chose otherwise: a program using it can put
// a shared host's GPUs out of service. Set before NCCL's first call in the process reads its
// environment (making the id, or joining with one made elsewhere).
void keep_nvls_off() { (void)setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0); }

}  // namespace

bool nccl_available() { return true; }

std::vector<uint8_t> nccl_unique_id() {
  keep_nvls_off();
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
  std::vector<uint8_t> bytes(sizeof(id.internal));
  std::memcpy(bytes.data(), id.internal, bytes.size());
  return bytes;
}

NcclComm::NcclComm(std::span<const uint8_t> unique_id, int size, int rank)
    : size_(size), rank_(rank) {
  keep_nvls_off();
  ATOM_CHECK(size >= 1 && rank >= 0 && rank < size, kInvalidArgument,
             "NCCL communicator: rank {} of {} ranks", rank, size);
  ncclUniqueId id;
  ATOM_CHECK(unique_id.size() == sizeof(id.internal), kInvalidArgument,
             "NCCL unique id of {} bytes (NCCL's has {})", unique_id.size(), sizeof(id.internal));
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRank(&comm, size, id, rank);
  if (r != ncclSuccess) {
    // NCCL may hand back a half-made communicator; free it before reporting.
    const char* last = comm ? ncclGetLastError(comm) : nullptr;
    const std::string detail = last && *last ? std::string(": ") + last : std::string();
    if (comm) (void)ncclCommAbort(comm);
    throw_error(ErrorCode::kInternal, "NCCL initialisation of rank {} of {} failed: {} ({}){}",
                rank, size, ncclGetErrorString(r), int(r), detail);
  }
  comm_ = comm;
}

NcclComm::~NcclComm() {
  if (comm_ && !aborted_) (void)ncclCommDestroy(comm_);
}

void NcclComm::all_reduce_sum(void* data, size_t count, DType type, cudaStream_t stream) {
  ATOM_CHECK(!aborted_, kInternal, "NCCL all-reduce on an aborted communicator");
  check_nccl(ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, stream),
             "all-reduce", comm_);
}

void NcclComm::all_gather(const void* send, void* recv, size_t count, DType type,
                          cudaStream_t stream) {
  ATOM_CHECK(!aborted_, kInternal, "NCCL all-gather on an aborted communicator");
  check_nccl(ncclAllGather(send, recv, count, nccl_type(type), comm_, stream), "all-gather", comm_);
}

void NcclComm::broadcast(void* data, size_t count, DType type, int root, cudaStream_t stream) {
  ATOM_CHECK(!aborted_, kInternal, "NCCL broadcast on an aborted communicator");
  ATOM_CHECK(root >= 0 && root < size_, kInvalidArgument, "NCCL broadcast from rank {} of {}", root,
             size_);
  check_nccl(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, stream), "broadcast",
             comm_);
}

void NcclComm::abort() {
  if (!comm_ || aborted_.exchange(true)) return;
  (void)ncclCommAbort(comm_);
}

}  // namespace atom::cuda

#else  // a build without NCCL: the class exists, every way in says so

namespace atom::cuda {

namespace {

[[noreturn]] void no_nccl() {
  throw_error(ErrorCode::kUnsupported,
              "tensor parallelism needs NCCL, and this build of atom has none: install NCCL "
              "(nccl.h, libnccl) and configure again (-DNCCL_ROOT=<prefix> if it is not in a "
              "system path)");
}

}  // namespace

bool nccl_available() { return false; }

std::vector<uint8_t> nccl_unique_id() { no_nccl(); }

NcclComm::NcclComm(std::span<const uint8_t>, int, int) { no_nccl(); }

NcclComm::~NcclComm() = default;

void NcclComm::all_reduce_sum(void*, size_t, DType, cudaStream_t) { no_nccl(); }

void NcclComm::all_gather(const void*, void*, size_t, DType, cudaStream_t) { no_nccl(); }

void NcclComm::broadcast(void*, size_t, DType, int, cudaStream_t) { no_nccl(); }

void NcclComm::abort() {}

}  // namespace atom::cuda

#endif

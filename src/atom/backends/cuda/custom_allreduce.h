// Custom all-reduce for small and medium bf16 messages over peer-to-peer GPU memory (NVLink),
// the latency path of tensor parallelism; NCCL stays the fallback for everything else.
//
// Model: the ranks of one tensor-parallel group are threads of one process, one GPU each. Every
// rank builds one CustomAllReduce with the group's devices; the constructors meet in a shared
// CustomAllReduceGroup (a rendezvous) to swap the addresses of their buffers. The only thing the
// rendezvous swaps is a CustomAllReducePeer of plain device pointers, so a multi-process version
// would swap cudaIpcMemHandle_t instead and open them into the same struct; the kernels would not
// change.
//
// Algorithms (all sum in f32 over the ranks in the order 0, 1, ..., W-1 and round once to bf16,
// so every rank, and both algorithms, give the same bits, equal to that host computation):
//   * one-shot: each rank writes its whole input into a slot of every peer's receive buffer
//     (remote stores over NVLink), one barrier, then each rank sums its W local slots. One
//     barrier, (W-1)*N bytes sent per GPU: the lowest latency, for small messages.
//   * two-shot: reduce-scatter then all-gather. Rank r owns shard r of the message; each rank
//     sends shard p of its input to rank p, barrier, rank r sums its shard and writes the bf16
//     result into every rank's gather buffer, barrier, each rank copies the gather buffer out.
//     2*(W-1)/W*N bytes per GPU and two barriers: for medium messages.
//   * fused all-reduce + residual add + RMSNorm (one-shot, one kernel): bit for bit
//     all_reduce(x -> t) followed by launch_add_rms_norm(t, residual, weight, out) with t
//     16-byte aligned (what any cudaMalloc'd buffer is).
//   * quantized transfer (AITER_QUICK_REDUCE_QUANTIZATION = INT8 or INT4): each rank quantizes
//     its contribution in groups of 32 values with one f32 scale (symmetric:
//     scale = amax / qmax, q = rint(v / scale) in [-qmax, qmax], qmax = 127 or 7) and the
//     receivers dequantize (q * scale) and sum in f32. A rank's own contribution takes the same
//     round trip, so every rank still gets the same bits. In two-shot only the reduce-scatter
//     is quantized; the gathered sums travel as bf16. Error bound, per element of group g:
//       |out - sum_r x_r| <= sum_r amax_{r,g} * (1 / (2 * qmax) + 2^-21 + W * 2^-24)
//                            + 2^-8 * |out|
//     (the quantization step; f32 rounding of scale, v / scale and q * scale; the f32
//     additions; the final rounding to bf16). INT8: about 0.4% of each rank's group max, INT4
//     about 7%.
//
// Barrier (per thread block, graph-safe): every rank's Signal holds
//   flags[barrier][block][from_rank]: written by the peers (release, system scope);
//   call: the number of this rank's finished calls; the last block of a call increments it.
// A launch reads `call` from device memory when it starts (never from its arguments), so a
// captured CUDA graph replayed any number of times still sees a fresh count. Call c (counted
// from 0) uses epoch c + 1 for its barriers: block b of rank r stores the epoch into
// flags[j][b][r] of every rank, then waits until every flags[j][b][p] of its own Signal has
// reached the epoch (wrap-safe signed compare). `>=` rather than `==` matters: a peer that has
// passed this barrier may already have written the next call's epoch before we looked. Every
// rank must launch the same sequence of calls (sizes, algorithms, quantization) on one stream
// per rank; then the grids, and so the epochs of every block, agree, and no rank waits for a
// call another will not make. Blocks are at most max_blocks (<= 64) so all are resident at once
// on a Hopper GPU (132 SMs), which a spin barrier needs.
//
// Buffer reuse: calls alternate between two halves of the receive and gather buffers by the
// parity of `call`. A rank writes a peer's half of parity c % 2 in call c only; the peer read
// that half last in call c - 2. A rank in call c has finished call c - 1 (one stream), whose
// barrier needed every peer to be in call c - 1, so every peer has finished call c - 2: no
// second "done reading" barrier is needed. (Kernels on the stream must not overlap: no
// programmatic dependent launch around these kernels.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace atom::cuda {

inline constexpr int kCustomAllReduceMaxRanks = 8;
inline constexpr int kCustomAllReduceMaxBlocks = 64;

// How each rank's contribution travels (AITER_QUICK_REDUCE_QUANTIZATION).
enum class AllReduceQuant { kNone, kInt8, kInt4 };

// "INT8", "INT4" (any case) -> kInt8/kInt4; unset, "", "NONE" or "FP" -> kNone; "INT6" -> kInt8
// (the reference also offers 6 bits; 8 is at least as precise). Anything else throws
// atom::Error(kInvalidArgument) naming the variable and the value.
AllReduceQuant parse_quick_reduce_quantization(std::optional<std::string_view> value);
// The same, read from the environment through atom/core/envs.h.
AllReduceQuant quick_reduce_quantization_from_env();
const char* all_reduce_quant_name(AllReduceQuant quant);

enum class AllReduceAlgo {
  kAuto,  // pick by size (choose_all_reduce_algo)
  kOneShot,
  kTwoShot,
  kNccl,  // outside the custom range: the caller runs NCCL
};
const char* all_reduce_algo_name(AllReduceAlgo algo);

// Message sizes in bytes of the bf16 message (quantized or not) where each algorithm is used.
struct AllReduceThresholds {
  int64_t one_shot_max_bytes = 0;  // one-shot for bytes <= this
  int64_t two_shot_max_bytes = 0;  // two-shot above one_shot_max_bytes up to this; NCCL above
};

// Defaults from arithmetic, to be tuned by measurement (bench prints both sides). Per GPU,
// one-shot sends (W-1)*N bytes behind one barrier, two-shot 2*(W-1)/W*N behind two, NCCL's ring
// the same as two-shot behind about 8-15 us of protocol latency at small sizes. With an H100's
// ~350 GB/s of usable NVLink send bandwidth and ~2 us per barrier, one-shot beats two-shot while
// (W-1)*(1-2/W)*N/BW < 2 us: always for W = 2 (equal bytes; capped at 1 MiB to keep buffers
// small), N < ~500 KiB for W = 4, ~130 KiB for W = 8 (rounded to 512 and 256 KiB: one-shot
// also skips a local pass). Two-shot moves NCCL's bytes with less latency up to a few MiB, where
// NCCL's pipelined protocols catch up: 8 MiB, the default max_bytes.
AllReduceThresholds default_all_reduce_thresholds(int world_size, int64_t max_bytes);
// kOneShot, kTwoShot or kNccl for a message of `bytes`.
AllReduceAlgo choose_all_reduce_algo(const AllReduceThresholds& t, int64_t bytes);

struct CustomAllReduceConfig {
  // Largest message (bf16 bytes) either algorithm takes; sizes the buffers. 8 MiB covers decode
  // and small prefill batches at any hidden size (512 tokens x 8192 x 2 bytes) and is where
  // NCCL's bandwidth takes over; each rank then holds 2 x (W slots + 1 gather buffer) ~ 32 MiB.
  int64_t max_bytes = int64_t(8) << 20;
  // Thresholds; unset = default_all_reduce_thresholds. Clamped to max_bytes.
  std::optional<AllReduceThresholds> thresholds;
  // Grid cap for the kernels (<= kCustomAllReduceMaxBlocks); 36 blocks of 512 threads keep enough
  // bytes in flight to saturate NVLink and leave the other SMs to concurrent work.
  int max_blocks = 36;
  // Quantization of the transfer (usually quick_reduce_quantization_from_env()).
  AllReduceQuant quant = AllReduceQuant::kNone;
  // A barrier that waits longer than this traps the kernel (an error at the next synchronization
  // instead of a hang when ranks launched different sequences); 0 = wait forever.
  int64_t barrier_timeout_ms = 0;
};

// What one rank publishes to the others: device pointers valid in this process. (A
// multi-process version carries IPC handles and opens them into these pointers.)
struct CustomAllReducePeer {
  int device = -1;
  void* recv = nullptr;    // [2 parities][W slots][slot_bytes]
  void* gather = nullptr;  // [2 parities][gather_bytes]
  void* signal = nullptr;  // the rank's Signal (flags, call counter)
};

// The rendezvous shared by the ranks of one group (one per group, used once).
class CustomAllReduceGroup {
 public:
  explicit CustomAllReduceGroup(int world_size);
  int world_size() const { return world_size_; }

  // Publishes this rank's buffers (or, with a non-empty `error`, its failure) and waits for every
  // rank to publish. Returns all ranks' buffers in rank order; throws atom::Error(kUnsupported)
  // naming the failed ranks if any rank failed, so that every rank throws and none waits for a
  // peer that will never come.
  std::vector<CustomAllReducePeer> exchange(int rank, const CustomAllReducePeer& mine,
                                            const std::string& error);

 private:
  int world_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int published_ = 0;
  std::vector<CustomAllReducePeer> peers_;
  std::vector<std::string> errors_;
  std::vector<bool> done_;
};

class CustomAllReduce {
 public:
  // Empty when every device of `devices` can access every other one directly, else why not (the
  // caller then keeps NCCL). Needs no rendezvous.
  static std::string peer_access_problem(std::span<const int> devices);

  // Rank `rank` of the group on devices[rank]: enables peer access to every other device (throws
  // atom::Error(kUnsupported) if cudaDeviceCanAccessPeer says no), allocates and zeroes its
  // buffers, then swaps pointers through `group`. Every rank of the group must construct its
  // instance concurrently (each on its own thread). Sets the current device to devices[rank].
  CustomAllReduce(std::shared_ptr<CustomAllReduceGroup> group, int rank,
                  std::span<const int> devices, const CustomAllReduceConfig& config = {});
  // Waits for this device's work, then frees. All ranks must be done with their calls.
  ~CustomAllReduce();
  CustomAllReduce(const CustomAllReduce&) = delete;
  CustomAllReduce& operator=(const CustomAllReduce&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int device() const { return device_; }
  AllReduceQuant quant() const { return quant_; }
  int64_t max_bytes() const { return max_bytes_; }

  const AllReduceThresholds& thresholds() const { return thresholds_; }
  // For benchmarks: every rank must set the same values. Checked against the buffer sizes.
  void set_thresholds(const AllReduceThresholds& t);
  AllReduceAlgo choose(int64_t bytes) const { return choose_all_reduce_algo(thresholds_, bytes); }
  // True when a bf16 message of `bytes` goes through this class rather than NCCL.
  bool should_use(int64_t bytes) const { return choose(bytes) != AllReduceAlgo::kNccl; }
  // Whether `algo` can carry n elements with these buffers (kAuto: the size's choice).
  bool fits(AllReduceAlgo algo, int64_t n) const;

  // out[i] = sum over ranks of in[i]   in, out: [n] bf16 on this rank's device; out may equal
  // in; any alignment. Launches on `stream` only (graph-capturable). kAuto picks by size and
  // throws atom::Error(kOutOfRange) when the size belongs to NCCL; `quant` overrides the
  // configured quantization. Every rank must make the same call.
  void all_reduce(const __nv_bfloat16* in, __nv_bfloat16* out, int64_t n, cudaStream_t stream,
                  AllReduceAlgo algo = AllReduceAlgo::kAuto,
                  std::optional<AllReduceQuant> quant = std::nullopt);

  // x: [rows, dim] this rank's partial sums; residual, out: [rows, dim]; weight: [dim].
  //   residual = bf16(residual + bf16(sum over ranks of x));  out = rms_norm(residual) * weight
  // One kernel when the message goes one-shot (kAuto by size, or kOneShot) and dim is a multiple
  // of the transfer unit (8 values; 32 when quantized); otherwise the chosen all-reduce into
  // `out` followed by launch_add_rms_norm. Either way bit for bit all_reduce(x -> t) +
  // launch_add_rms_norm(t, residual, weight, out, rows, dim, eps) for an aligned t. out may
  // equal x. kAuto throws kOutOfRange above the thresholds, as all_reduce does: check
  // should_use(2 * rows * dim) first and run NCCL + add_rms_norm otherwise.
  void all_reduce_add_rms_norm(const __nv_bfloat16* x, __nv_bfloat16* residual,
                               const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows,
                               int64_t dim, float eps, cudaStream_t stream,
                               AllReduceAlgo algo = AllReduceAlgo::kAuto,
                               std::optional<AllReduceQuant> quant = std::nullopt);

 private:
  struct DeviceMemory {
    void* ptr = nullptr;
    int device = -1;
    ~DeviceMemory();
  };

  bool fits_with(AllReduceAlgo algo, int64_t n, AllReduceQuant quant) const;
  // kOneShot or kTwoShot for n values; throws when neither applies.
  AllReduceAlgo resolve(AllReduceAlgo algo, int64_t n, AllReduceQuant quant) const;
  void check_device(const char* op) const;

  std::shared_ptr<CustomAllReduceGroup> group_;
  int rank_;
  int world_;
  int device_;
  int max_blocks_;
  int64_t max_bytes_;
  int64_t slot_bytes_ = 0;    // one sender's slot in a receive buffer half
  int64_t gather_bytes_ = 0;  // one gather buffer half
  uint64_t timeout_ns_ = 0;
  AllReduceQuant quant_;
  AllReduceThresholds thresholds_;
  DeviceMemory recv_, gather_, signal_;
  std::vector<CustomAllReducePeer> peers_;  // [W], rank order
};

}  // namespace atom::cuda

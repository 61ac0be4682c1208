// ParallelConfig: how many GPUs one engine spans (tensor parallelism), how many engine replicas
// run side by side (data parallelism), this process's place among them and where the replicas
// meet (SPEC 1.2, 4.1-4.4).
//
// Each value comes from, in order of precedence: its command-line flag when given, else its
// environment variable when set (ATOM_DP_SIZE, ATOM_DP_RANK, ATOM_DP_RANK_LOCAL,
// ATOM_DP_MASTER_IP, ATOM_DP_MASTER_PORT; read through atom::envs), else the default below.
// ATOM itself overwrites the DP variables with the CLI's values and never reads the master ones;
// atom makes all five count, under the flags.
//
// An engine spans tp GPUs (tensor parallelism: one CUDA runner, a worker thread per GPU). Data
// parallelism runs one engine per DP rank, each in its own process, behind one front end:
// `atom serve` accepts dp > 1 (require_single_engine), the other commands, which run one engine
// in-process, refuse it (require_single_rank) instead of silently running one replica.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace atom {

struct ParallelConfig {
  int64_t tensor_parallel_size = 1;      // GPUs one engine's layers are split over (1..8)
  int64_t data_parallel_size = 1;        // engine replicas, each with its own scheduler and KV
  int64_t data_parallel_rank = 0;        // this replica among all of them
  int64_t data_parallel_rank_local = 0;  // this replica on this node (device offset)
  std::string master_ip = "127.0.0.1";   // rendezvous of the data-parallel group
  int64_t master_port = 29500;
  bool enable_expert_parallel = false;  // MoE experts sharded over the tp*dp ranks
  bool enable_dp_attention = false;     // already applied: dp := tp*dp, tp := 1

  // GPUs the whole deployment spans.
  int64_t world_size() const { return tensor_parallel_size * data_parallel_size; }
  // The CUDA device of tensor-parallel rank `tp_rank` of this replica (SPEC 4.2): replicas on
  // one node take consecutive groups of tp devices, by local rank.
  int64_t cuda_device(int64_t tp_rank = 0) const {
    return data_parallel_rank_local * tensor_parallel_size + tp_rank;
  }
  // SPEC 8.1's trace folder of tensor-parallel rank `tp_rank` of this replica: "rank_<t>", or
  // "dp<rank_local>_tp<t>" when there are several replicas or this is not the first one.
  std::string profile_folder(int64_t tp_rank = 0) const;
};

// What the command line gave; nullopt: not given, so the variable (or the default) applies.
struct ParallelFlags {
  std::optional<int64_t> tensor_parallel_size;      // -tp, --tensor-parallel-size
  std::optional<int64_t> data_parallel_size;        // -dp, --data-parallel-size
  std::optional<int64_t> data_parallel_rank;        // --data-parallel-rank
  std::optional<int64_t> data_parallel_rank_local;  // --data-parallel-rank-local
  std::optional<std::string> master_ip;             // --data-parallel-master-ip
  std::optional<int64_t> master_port;               // --data-parallel-master-port
  bool enable_expert_parallel = false;              // --enable-expert-parallel
  bool enable_dp_attention = false;                 // --enable-dp-attention
};

// Flag, else variable, else default for each value; then --enable-dp-attention's flattening
// (dp := tp*dp, tp := 1, as ATOM's CoreManager); then the checks, each an
// atom::Error(kInvalidArgument) naming the flag or variable the bad value came from:
// 1 <= tp <= 8 (ATOM's assert, before flattening), dp >= 1, 0 <= rank < dp,
// 0 <= rank_local <= rank, 1 <= port <= 65535, a non-empty master address.
// A variable that is not an integer is reported by atom::envs (kInvalidArgument).
ParallelConfig resolve_parallel_config(const ParallelFlags& flags);

// resolve_parallel_config, then atom::Error(kUnsupported) when dp > 1, naming the flag or
// variable that asked for it: commands that run one engine in-process (generate, bench) have no
// data parallelism. Tensor parallelism is one engine, so any tp passes (the runner checks it).
ParallelConfig require_single_rank(const ParallelFlags& flags);

// How the data-parallel ranks step. kIndependent: each rank runs its own engine loop at its own
// pace (dense models: a rank's requests never need another rank). kLockstep: every rank steps
// together, an idle one running dummy batches, because each MoE layer exchanges tokens across
// ranks (expert parallelism; ATOM's DPEngineCoreProc). This is the hook where lock-step mode
// plugs in: it is asked for by --enable-expert-parallel with dp > 1 and not implemented yet.
enum class DpStepMode { kIndependent, kLockstep };
DpStepMode dp_step_mode(const ParallelConfig& config);

// resolve_parallel_config for `atom serve`, whose ranks are one engine each: any dp and tp, but
// atom::Error(kUnsupported) for a configuration that needs lock-step ranks (dp_step_mode),
// naming what asked for it.
ParallelConfig require_single_engine(const ParallelFlags& flags);

// Whether the data-parallel rank, or the master port, was given (flag or variable) rather than
// defaulted: `atom serve -dp N` without a rank launches the N ranks itself, and picks a free
// master port when none was given.
bool data_parallel_rank_given(const ParallelFlags& flags);
bool master_port_given(const ParallelFlags& flags);

// One line for each flag that is accepted but changes nothing in `config`: expert parallelism
// and DP attention on a single rank (ATOM applies neither unless tp*dp > 1; dense models ignore
// expert parallelism anyway). The engine logs them at start-up.
std::vector<std::string> ineffective_parallel_flags(const ParallelConfig& config);

}  // namespace atom

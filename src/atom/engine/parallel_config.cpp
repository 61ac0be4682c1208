#include "atom/engine/parallel_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <string_view>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/profiler.h"

namespace atom {

namespace {

// A resolved value and where it came from, as messages name it: "--data-parallel-size 2",
// "ATOM_DP_SIZE=2" or "default 1".
template <typename T>
struct Sourced {
  T value{};
  std::string origin;
};

Sourced<int64_t> pick_int(const std::optional<int64_t>& flag, std::string_view flag_name,
                          std::string_view var, int64_t (*read_var)(), int64_t fallback) {
  if (flag) return {*flag, fmt::format("{} {}", flag_name, *flag)};
  if (!var.empty() && envs::raw(var)) {  // tp has no variable
    const int64_t v = read_var();        // parses strictly: a bad value is an error naming `var`
    return {v, fmt::format("{}={}", var, v)};
  }
  return {fallback, fmt::format("default {}", fallback)};
}

Sourced<std::string> pick_str(const std::optional<std::string>& flag, std::string_view flag_name,
                              std::string_view var, std::string (*read_var)(),
                              std::string_view fallback) {
  if (flag) return {*flag, fmt::format("{} \"{}\"", flag_name, *flag)};
  if (envs::raw(var)) {
    std::string v = read_var();
    std::string origin = fmt::format("{}=\"{}\"", var, v);
    return {std::move(v), std::move(origin)};
  }
  return {std::string(fallback), fmt::format("default \"{}\"", fallback)};
}

// The resolved config plus the origins of tp and dp as given (before DP attention flattens
// them), which the single-rank check names.
struct Resolution {
  ParallelConfig config;
  Sourced<int64_t> tp, dp;
};

Resolution resolve(const ParallelFlags& flags) {
  const ParallelConfig defaults;
  Resolution r;
  r.tp = pick_int(flags.tensor_parallel_size, "--tensor-parallel-size", {}, nullptr,
                  defaults.tensor_parallel_size);
  r.dp = pick_int(flags.data_parallel_size, "--data-parallel-size", "ATOM_DP_SIZE",
                  envs::ATOM_DP_SIZE, defaults.data_parallel_size);
  const Sourced<int64_t> rank =
      pick_int(flags.data_parallel_rank, "--data-parallel-rank", "ATOM_DP_RANK", envs::ATOM_DP_RANK,
               defaults.data_parallel_rank);
  const Sourced<int64_t> rank_local =
      pick_int(flags.data_parallel_rank_local, "--data-parallel-rank-local", "ATOM_DP_RANK_LOCAL",
               envs::ATOM_DP_RANK_LOCAL, defaults.data_parallel_rank_local);
  const Sourced<std::string> ip =
      pick_str(flags.master_ip, "--data-parallel-master-ip", "ATOM_DP_MASTER_IP",
               envs::ATOM_DP_MASTER_IP, defaults.master_ip);
  const Sourced<int64_t> port =
      pick_int(flags.master_port, "--data-parallel-master-port", "ATOM_DP_MASTER_PORT",
               envs::ATOM_DP_MASTER_PORT, defaults.master_port);

  ATOM_CHECK(r.tp.value >= 1 && r.tp.value <= 8, kInvalidArgument,
             "{}: the tensor-parallel size must be between 1 and 8", r.tp.origin);
  ATOM_CHECK(r.dp.value >= 1, kInvalidArgument, "{}: the data-parallel size must be at least 1",
             r.dp.origin);

  ParallelConfig& c = r.config;
  c.tensor_parallel_size = r.tp.value;
  c.data_parallel_size = r.dp.value;
  std::string dp_origin = r.dp.origin;
  c.enable_dp_attention = flags.enable_dp_attention;
  if (c.enable_dp_attention) {
    // ATOM's CoreManager: every GPU becomes a replica that runs attention on its own requests.
    c.data_parallel_size = r.tp.value * r.dp.value;
    c.tensor_parallel_size = 1;
    dp_origin = fmt::format("--enable-dp-attention with {} and {}", r.tp.origin, r.dp.origin);
  }
  c.enable_expert_parallel = flags.enable_expert_parallel;

  ATOM_CHECK(rank.value >= 0 && rank.value < c.data_parallel_size, kInvalidArgument,
             "{}: the data-parallel rank must be in [0, {}), the data-parallel size ({})",
             rank.origin, c.data_parallel_size, dp_origin);
  c.data_parallel_rank = rank.value;
  ATOM_CHECK(rank_local.value >= 0 && rank_local.value <= rank.value, kInvalidArgument,
             "{}: the local data-parallel rank must be in [0, {}], the data-parallel rank ({})",
             rank_local.origin, rank.value, rank.origin);
  c.data_parallel_rank_local = rank_local.value;
  const bool blank = std::any_of(ip.value.begin(), ip.value.end(),
                                 [](unsigned char ch) { return std::isspace(ch) != 0; });
  ATOM_CHECK(!ip.value.empty() && !blank, kInvalidArgument,
             "{}: the data-parallel master address must be a host name or IP address", ip.origin);
  c.master_ip = ip.value;
  ATOM_CHECK(port.value >= 1 && port.value <= 65535, kInvalidArgument,
             "{}: the data-parallel master port must be a TCP port in 1..65535", port.origin);
  c.master_port = port.value;
  return r;
}

}  // namespace

std::string ParallelConfig::profile_folder(int64_t tp_rank) const {
  return profiler::rank_folder(tp_rank, data_parallel_rank_local, data_parallel_size);
}

ParallelConfig resolve_parallel_config(const ParallelFlags& flags) { return resolve(flags).config; }

ParallelConfig require_single_rank(const ParallelFlags& flags) {
  Resolution r = resolve(flags);
  if (r.config.data_parallel_size == 1) return r.config;  // tensor parallelism is one engine
  throw_error(ErrorCode::kUnsupported,
              "{}: data parallelism runs one engine per rank, each in its own process, and this "
              "command runs one engine in-process: use --data-parallel-size 1{}; `atom serve` "
              "runs data-parallel replicas",
              r.dp.origin, !flags.data_parallel_size ? ", or unset ATOM_DP_SIZE" : "");
}

DpStepMode dp_step_mode(const ParallelConfig& config) {
  return config.data_parallel_size > 1 && config.enable_expert_parallel ? DpStepMode::kLockstep
                                                                        : DpStepMode::kIndependent;
}

ParallelConfig require_single_engine(const ParallelFlags& flags) {
  Resolution r = resolve(flags);
  const ParallelConfig& c = r.config;
  if (dp_step_mode(c) == DpStepMode::kLockstep)
    throw_error(ErrorCode::kUnsupported,
                "--enable-expert-parallel with {} data-parallel ranks ({}) needs lock-step ranks "
                "(MoE expert parallelism), which are not implemented yet; dense models need no "
                "expert parallelism: drop --enable-expert-parallel",
                c.data_parallel_size, r.dp.origin);
  return c;
}

bool data_parallel_rank_given(const ParallelFlags& flags) {
  return flags.data_parallel_rank.has_value() || envs::raw("ATOM_DP_RANK").has_value();
}

bool master_port_given(const ParallelFlags& flags) {
  return flags.master_port.has_value() || envs::raw("ATOM_DP_MASTER_PORT").has_value();
}

std::vector<std::string> ineffective_parallel_flags(const ParallelConfig& config) {
  std::vector<std::string> notes;
  if (config.world_size() > 1) return notes;
  if (config.enable_expert_parallel)
    notes.push_back(
        "--enable-expert-parallel has no effect: expert parallelism shards the experts of MoE "
        "layers over tp*dp > 1 ranks, and this engine is one rank (dense models ignore it too)");
  if (config.enable_dp_attention)
    notes.push_back(
        "--enable-dp-attention has no effect: it turns tensor-parallel ranks into data-parallel "
        "replicas, and this engine is one rank (--tensor-parallel-size 1)");
  return notes;
}

}  // namespace atom

// LLMEngine::start_profile / stop_profile: one profiler session (core/profiler.h) per call pair,
// written to SPEC 8.1's per-rank folder under config().torch_profiler_dir.
#include <filesystem>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/core/profiler.h"
#include "atom/engine/llm_engine.h"

namespace atom {

namespace {

// This process's folder, from the resolved parallel config (flags, else ATOM_DP_*): the engine
// is tensor-parallel rank 0 of its replica.
std::string profile_folder(const EngineConfig& config) {
  return (std::filesystem::path(config.torch_profiler_dir) / config.parallel.profile_folder(0))
      .string();
}

}  // namespace

void LLMEngine::start_profile() {
  ATOM_CHECK(!config_.torch_profiler_dir.empty(), kInvalidArgument,
             "profiling is not enabled: start atom with --torch-profiler-dir DIR (or set "
             "ATOM_TORCH_PROFILER_DIR) to record traces");
  const std::string dir = profile_folder(config_);
  profiler::StartOptions options;
  options.dir = dir;
  options.more = envs::ATOM_PROFILER_MORE();
  options.process_name = "atom " + std::filesystem::path(dir).filename().string();
  profiler::start(options);
  ATOM_LOG_INFO("profiler started: tracing into {}{}", dir,
                options.more ? " (detailed: ATOM_PROFILER_MORE=1)" : "");
}

std::string LLMEngine::stop_profile() {
  ATOM_CHECK(!config_.torch_profiler_dir.empty(), kInvalidArgument,
             "profiling is not enabled: start atom with --torch-profiler-dir DIR (or set "
             "ATOM_TORCH_PROFILER_DIR) to record traces");
  const std::string path = profiler::stop();
  ATOM_LOG_INFO("profiler stopped: trace written to {}", path);
  return path;
}

}  // namespace atom

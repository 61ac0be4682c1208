// ParallelConfig resolution: for each value the flag beats its ATOM_DP_* variable, which beats
// the default; DP attention's flattening; the checks and the single-rank refusal, each naming
// where the bad value came from; and the profiler's per-rank folder taken from the config.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/profiler.h"
#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/engine/parallel_config.h"
#include "atom/io/hf_config.h"
#include "atom/models/model.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

// Unsets the five ATOM_DP_* variables for one test and restores what the process had after.
class DpEnv : public ::testing::Test {
 protected:
  static constexpr const char* kVars[] = {"ATOM_DP_SIZE", "ATOM_DP_RANK", "ATOM_DP_RANK_LOCAL",
                                          "ATOM_DP_MASTER_IP", "ATOM_DP_MASTER_PORT"};
  void SetUp() override {
    for (const char* name : kVars) {
      saved_[name] = envs::raw(name);
      envs::unset(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value)
        envs::set(name, *value);
      else
        envs::unset(name);
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

// Runs `f`, which must throw atom::Error with `code` and a message holding every needle.
template <typename F>
void expect_error(F f, ErrorCode code, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one with " << needles.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "\"" << n << "\" not in: " << e.what();
  }
}

using ParallelResolve = DpEnv;

TEST_F(ParallelResolve, DefaultsWithNoFlagAndNoVariable) {
  const ParallelConfig c = resolve_parallel_config({});
  EXPECT_EQ(c.tensor_parallel_size, 1);
  EXPECT_EQ(c.data_parallel_size, 1);
  EXPECT_EQ(c.data_parallel_rank, 0);
  EXPECT_EQ(c.data_parallel_rank_local, 0);
  EXPECT_EQ(c.master_ip, "127.0.0.1");
  EXPECT_EQ(c.master_port, 29500);
  EXPECT_FALSE(c.enable_expert_parallel);
  EXPECT_FALSE(c.enable_dp_attention);
  EXPECT_EQ(c.world_size(), 1);
}

TEST_F(ParallelResolve, TensorParallelSizeComesFromTheFlag) {
  ParallelFlags f;
  f.tensor_parallel_size = 4;
  const ParallelConfig c = resolve_parallel_config(f);
  EXPECT_EQ(c.tensor_parallel_size, 4);
  EXPECT_EQ(c.world_size(), 4);
}

TEST_F(ParallelResolve, DataParallelSizeFlagBeatsVariableBeatsDefault) {
  envs::set("ATOM_DP_SIZE", "4");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_size, 4);
  ParallelFlags f;
  f.data_parallel_size = 2;
  EXPECT_EQ(resolve_parallel_config(f).data_parallel_size, 2);
  envs::unset("ATOM_DP_SIZE");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_size, 1);
}

TEST_F(ParallelResolve, RankFlagBeatsVariableBeatsDefault) {
  envs::set("ATOM_DP_SIZE", "4");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_rank, 0);
  envs::set("ATOM_DP_RANK", "3");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_rank, 3);
  ParallelFlags f;
  f.data_parallel_rank = 1;
  EXPECT_EQ(resolve_parallel_config(f).data_parallel_rank, 1);
}

TEST_F(ParallelResolve, LocalRankFlagBeatsVariableBeatsDefault) {
  envs::set("ATOM_DP_SIZE", "4");
  envs::set("ATOM_DP_RANK", "3");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_rank_local, 0);
  envs::set("ATOM_DP_RANK_LOCAL", "2");
  EXPECT_EQ(resolve_parallel_config({}).data_parallel_rank_local, 2);
  ParallelFlags f;
  f.data_parallel_rank_local = 1;
  EXPECT_EQ(resolve_parallel_config(f).data_parallel_rank_local, 1);
}

TEST_F(ParallelResolve, MasterIpFlagBeatsVariableBeatsDefault) {
  envs::set("ATOM_DP_MASTER_IP", "10.1.2.3");
  EXPECT_EQ(resolve_parallel_config({}).master_ip, "10.1.2.3");
  ParallelFlags f;
  f.master_ip = "node7.cluster";
  EXPECT_EQ(resolve_parallel_config(f).master_ip, "node7.cluster");
  envs::unset("ATOM_DP_MASTER_IP");
  EXPECT_EQ(resolve_parallel_config({}).master_ip, "127.0.0.1");
}

TEST_F(ParallelResolve, MasterPortFlagBeatsVariableBeatsDefault) {
  envs::set("ATOM_DP_MASTER_PORT", "12345");
  EXPECT_EQ(resolve_parallel_config({}).master_port, 12345);
  ParallelFlags f;
  f.master_port = 40000;
  EXPECT_EQ(resolve_parallel_config(f).master_port, 40000);
  envs::unset("ATOM_DP_MASTER_PORT");
  EXPECT_EQ(resolve_parallel_config({}).master_port, 29500);
}

// A flag given means its variable is not consulted at all, so a bad value there is harmless;
// without the flag the variable's own error (naming it) comes through.
TEST_F(ParallelResolve, AGivenFlagMakesABadVariableIrrelevant) {
  envs::set("ATOM_DP_SIZE", "two");
  envs::set("ATOM_DP_MASTER_PORT", "http");
  ParallelFlags f;
  f.data_parallel_size = 1;
  f.master_port = 29501;
  EXPECT_EQ(resolve_parallel_config(f).master_port, 29501);
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_SIZE", "two"});
}

TEST_F(ParallelResolve, DpAttentionFlattensTensorIntoDataParallelism) {
  ParallelFlags f;
  f.tensor_parallel_size = 4;
  f.data_parallel_size = 2;
  f.data_parallel_rank = 7;
  f.data_parallel_rank_local = 7;
  f.enable_dp_attention = true;
  const ParallelConfig c = resolve_parallel_config(f);
  EXPECT_EQ(c.tensor_parallel_size, 1);
  EXPECT_EQ(c.data_parallel_size, 8);
  EXPECT_EQ(c.data_parallel_rank, 7);
  EXPECT_TRUE(c.enable_dp_attention);
  EXPECT_EQ(c.world_size(), 8);
  f.data_parallel_rank = 8;  // past the flattened size: the message says where that came from
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-rank 8", "--enable-dp-attention", "--tensor-parallel-size 4"});
}

using ParallelValidation = DpEnv;

TEST_F(ParallelValidation, TensorParallelSizeIsOneToEight) {
  for (const int64_t tp : {0, 9, -1}) {
    ParallelFlags f;
    f.tensor_parallel_size = tp;
    expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
                 {"--tensor-parallel-size " + std::to_string(tp), "between 1 and 8"});
  }
  ParallelFlags f;
  f.tensor_parallel_size = 8;
  EXPECT_EQ(resolve_parallel_config(f).tensor_parallel_size, 8);
}

TEST_F(ParallelValidation, DataParallelSizeIsPositive) {
  ParallelFlags f;
  f.data_parallel_size = 0;
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-size 0", "at least 1"});
  envs::set("ATOM_DP_SIZE", "0");  // the variable's own range check names it
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument, {"ATOM_DP_SIZE"});
}

TEST_F(ParallelValidation, RankIsBelowTheDataParallelSize) {
  ParallelFlags f;
  f.data_parallel_size = 2;
  f.data_parallel_rank = 2;
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-rank 2", "[0, 2)", "--data-parallel-size 2"});
  f.data_parallel_rank = -1;
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-rank -1"});
  envs::set("ATOM_DP_RANK", "1");  // with the default size 1
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_RANK=1", "default 1"});
}

TEST_F(ParallelValidation, LocalRankIsAtMostTheRank) {
  ParallelFlags f;
  f.data_parallel_size = 4;
  f.data_parallel_rank = 1;
  f.data_parallel_rank_local = 2;
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-rank-local 2", "--data-parallel-rank 1"});
  f.data_parallel_rank_local = -1;
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-rank-local -1"});
  envs::set("ATOM_DP_SIZE", "4");
  envs::set("ATOM_DP_RANK_LOCAL", "1");  // the rank defaults to 0
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_RANK_LOCAL=1", "default 0"});
}

TEST_F(ParallelValidation, MasterPortIsATcpPort) {
  for (const int64_t port : {0, 65536, -5}) {
    ParallelFlags f;
    f.master_port = port;
    expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
                 {"--data-parallel-master-port " + std::to_string(port), "1..65535"});
  }
  envs::set("ATOM_DP_MASTER_PORT", "0");  // the variable allows 0; the config does not
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_MASTER_PORT=0"});
  ParallelFlags f;
  f.master_port = 65535;
  EXPECT_EQ(resolve_parallel_config(f).master_port, 65535);
}

TEST_F(ParallelValidation, MasterIpIsNotEmpty) {
  ParallelFlags f;
  f.master_ip = "";
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-master-ip \"\"", "host name or IP address"});
  f.master_ip = "10.0.0.1 10.0.0.2";
  expect_error([&] { resolve_parallel_config(f); }, ErrorCode::kInvalidArgument,
               {"--data-parallel-master-ip"});
  envs::set("ATOM_DP_MASTER_IP", "");
  expect_error([] { resolve_parallel_config({}); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_MASTER_IP=\"\""});
}

using ParallelSingleRank = DpEnv;

TEST_F(ParallelSingleRank, OneRankPasses) {
  ParallelFlags f;
  f.master_ip = "10.0.0.1";
  f.enable_expert_parallel = true;
  const ParallelConfig c = require_single_rank(f);
  EXPECT_EQ(c.world_size(), 1);
  EXPECT_EQ(c.master_ip, "10.0.0.1");
  EXPECT_TRUE(c.enable_expert_parallel);
}

TEST_F(ParallelSingleRank, DataParallelIsUnsupportedNamingTheSourceTensorParallelPasses) {
  // Tensor parallelism is one engine: any tp passes here (the runner checks devices and shapes).
  ParallelFlags tp;
  tp.tensor_parallel_size = 2;
  EXPECT_EQ(require_single_rank(tp).tensor_parallel_size, 2);
  ParallelFlags dp;
  dp.data_parallel_size = 2;
  expect_error([&] { require_single_rank(dp); }, ErrorCode::kUnsupported,
               {"--data-parallel-size 2", "one engine in-process", "atom serve"});
  tp.data_parallel_size = 3;
  expect_error([&] { require_single_rank(tp); }, ErrorCode::kUnsupported,
               {"--data-parallel-size 3"});
  envs::set("ATOM_DP_SIZE", "2");
  expect_error([] { require_single_rank({}); }, ErrorCode::kUnsupported,
               {"ATOM_DP_SIZE=2", "unset ATOM_DP_SIZE"});
  // DP attention flattens tp 2 into dp 2: two replicas, refused like -dp 2.
  envs::unset("ATOM_DP_SIZE");
  ParallelFlags att;
  att.tensor_parallel_size = 2;
  att.enable_dp_attention = true;
  expect_error([&] { require_single_rank(att); }, ErrorCode::kUnsupported,
               {"data parallelism"});
}

TEST_F(ParallelSingleRank, InvalidValuesAreReportedBeforeTheRankCount) {
  ParallelFlags f;
  f.tensor_parallel_size = 16;
  expect_error([&] { require_single_rank(f); }, ErrorCode::kInvalidArgument,
               {"--tensor-parallel-size 16"});
}

TEST(ParallelNotes, ExpertParallelAndDpAttentionOnOneRankHaveNoEffect) {
  ParallelConfig c;
  EXPECT_TRUE(ineffective_parallel_flags(c).empty());
  c.enable_expert_parallel = true;
  c.enable_dp_attention = true;
  const std::vector<std::string> notes = ineffective_parallel_flags(c);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("--enable-expert-parallel has no effect"), std::string::npos);
  EXPECT_NE(notes[1].find("--enable-dp-attention has no effect"), std::string::npos);
  c.data_parallel_size = 2;  // several ranks: both flags act
  EXPECT_TRUE(ineffective_parallel_flags(c).empty());
}

// SPEC 8.1's folder names, from the resolved config (so from flags as much as variables).
TEST_F(ParallelResolve, ProfileFolderFollowsTheConfig) {
  EXPECT_EQ(resolve_parallel_config({}).profile_folder(), "rank_0");
  envs::set("ATOM_DP_SIZE", "2");
  envs::set("ATOM_DP_RANK", "1");
  envs::set("ATOM_DP_RANK_LOCAL", "1");
  EXPECT_EQ(resolve_parallel_config({}).profile_folder(), "dp1_tp0");
  EXPECT_EQ(resolve_parallel_config({}).profile_folder(3), "dp1_tp3");
  ParallelFlags f;
  f.data_parallel_rank = 0;
  f.data_parallel_rank_local = 0;
  EXPECT_EQ(resolve_parallel_config(f).profile_folder(), "dp0_tp0");  // dp 2 from the variable
  f.data_parallel_size = 1;
  EXPECT_EQ(resolve_parallel_config(f).profile_folder(), "rank_0");
}

// LLMEngine::start_profile writes under config().parallel's folder, not whatever the ATOM_DP_*
// variables say at the time.
TEST_F(ParallelResolve, EngineProfilesIntoTheConfiguredRankFolder) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny";
  const ModelConfig mc = load_hf_config(dir);
  const std::unique_ptr<Model> model = load_model_from_hf(dir, mc, LoadFormat::kDummy);
  const std::unique_ptr<Tokenizer> tok = Tokenizer::from_hf_folder(dir);
  const fs::path out =
      fs::temp_directory_path() / ("atom_parallel_profile_" + std::to_string(::getpid()));
  fs::remove_all(out);
  EngineConfig config;
  config.num_kv_blocks = 16;
  config.scheduler.max_model_len = 64;
  config.torch_profiler_dir = out.string();
  config.parallel.data_parallel_size = 2;
  config.parallel.data_parallel_rank = 1;
  config.parallel.data_parallel_rank_local = 1;
  envs::set("ATOM_DP_SIZE", "4");
  envs::set("ATOM_DP_RANK", "3");
  envs::set("ATOM_DP_RANK_LOCAL", "3");
  {
    LLMEngine engine(*model, *tok, config);
    engine.start_profile();
    const std::string trace = engine.stop_profile();
    EXPECT_EQ(fs::path(trace).parent_path(), out / "dp1_tp0");
    EXPECT_TRUE(fs::exists(trace));
  }
  fs::remove_all(out);
}

// A profile still recording when EngineCore shuts down is written out, and the profiler is free
// again for the next engine (it is one per process).
TEST(EngineCoreProfile, ASessionOpenAtShutdownIsWrittenOut) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny";
  const ModelConfig mc = load_hf_config(dir);
  const std::unique_ptr<Model> model = load_model_from_hf(dir, mc, LoadFormat::kDummy);
  const std::unique_ptr<Tokenizer> tok = Tokenizer::from_hf_folder(dir);
  const fs::path out =
      fs::temp_directory_path() / ("atom_core_profile_" + std::to_string(::getpid()));
  fs::remove_all(out);
  EngineConfig config;
  config.num_kv_blocks = 16;
  config.scheduler.max_model_len = 64;
  config.torch_profiler_dir = out.string();
  {
    EngineCore core(std::make_unique<LLMEngine>(*model, *tok, config));
    std::promise<std::exception_ptr> started;
    core.start_profile([&](std::exception_ptr e, const std::string&) { started.set_value(e); });
    EXPECT_EQ(started.get_future().get(), nullptr);
    EXPECT_TRUE(profiler::active());
    core.shutdown();
  }
  EXPECT_FALSE(profiler::active());
  size_t traces = 0;
  for (const auto& e : fs::recursive_directory_iterator(out))
    traces += e.path().string().ends_with(".pt.trace.json.gz");
  EXPECT_EQ(traces, 1u);
  fs::remove_all(out);
}

}  // namespace
}  // namespace atom

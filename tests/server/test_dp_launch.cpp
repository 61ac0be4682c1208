// `atom serve -dp N` starts ranks 1..N-1 with this process's arguments minus what each child gets
// through ATOM_DP_* instead: strip_data_parallel_args over every spelling CLI11 accepts.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "atom/apps/dp_launch.h"

namespace atom::apps {
namespace {

using Args = std::vector<std::string>;

TEST(DpLaunchArgs, DataParallelFlagsGoInEverySpelling) {
  const Args in = {"serve",
                   "--model",
                   "m",
                   "-dp",
                   "2",
                   "-dp3",
                   "-dp=4",
                   "--data-parallel-size",
                   "2",
                   "--data-parallel-size=2",
                   "--data-parallel-rank",
                   "0",
                   "--data-parallel-rank-local=0",
                   "--data-parallel-master-ip",
                   "10.0.0.1",
                   "--data-parallel-master-port=29600",
                   "--max-num-seqs",
                   "8"};
  EXPECT_EQ(strip_data_parallel_args(in), (Args{"serve", "--model", "m", "--max-num-seqs", "8"}));
}

TEST(DpLaunchArgs, TensorParallelStaysWithoutDpAttention) {
  // Each replica spans tp GPUs: the child keeps -tp.
  EXPECT_EQ(strip_data_parallel_args({"serve", "-dp", "2", "-tp", "2"}),
            (Args{"serve", "-tp", "2"}));
  EXPECT_EQ(strip_data_parallel_args({"serve", "-dp", "2", "--tensor-parallel-size=4"}),
            (Args{"serve", "--tensor-parallel-size=4"}));
  EXPECT_EQ(strip_data_parallel_args({"serve", "-tp2", "--enable-dp-attention=false"}),
            (Args{"serve", "-tp2"}));
}

TEST(DpLaunchArgs, DpAttentionFoldsTensorParallelIntoTheRanks) {
  // The resolved dp already multiplied tp in: the child runs tp 1 and no DP attention.
  for (const Args& in : {Args{"serve", "-tp", "2", "--enable-dp-attention"},
                         Args{"serve", "--tensor-parallel-size=2", "--enable-dp-attention=true"},
                         Args{"serve", "--enable-dp-attention", "-tp2"},
                         Args{"serve", "-tp=2", "--enable-dp-attention=1"}})
    EXPECT_EQ(strip_data_parallel_args(in), (Args{"serve"})) << in[1];
}

TEST(DpLaunchArgs, NothingAfterDoubleDashChanges) {
  EXPECT_EQ(strip_data_parallel_args({"serve", "-dp", "2", "--", "-dp", "2", "-tp", "2"}),
            (Args{"serve", "--", "-dp", "2", "-tp", "2"}));
}

}  // namespace
}  // namespace atom::apps

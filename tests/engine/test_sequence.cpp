// engine/sequence: token bookkeeping, ids, block geometry and block slices (ATOM test_sequence).
#include <gtest/gtest.h>

#include <vector>

#include "atom/core/error.h"
#include "atom/engine/sequence.h"
#include "engine_test_util.h"

namespace atom {
namespace {

using test::iota_tokens;
using test::make_seq;

class SequenceTest : public ::testing::Test {
 protected:
  void SetUp() override { Sequence::reset_id_counter(); }
};

TEST_F(SequenceTest, CopiesTokensAndCountsThem) {
  std::vector<int32_t> prompt = {5, 6, 7};
  Sequence seq(prompt, SamplingParams{}, 4);
  prompt[0] = 99;
  EXPECT_EQ(seq.token_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(seq.num_tokens(), 3);
  EXPECT_EQ(seq.num_prompt_tokens, 3);
  EXPECT_EQ(seq.num_output_tokens(), 0);
  EXPECT_EQ(seq.status, SequenceStatus::kWaiting);
  EXPECT_EQ(seq.num_computed_tokens, 0);
  EXPECT_EQ(seq.num_cached_tokens, 0);
  EXPECT_TRUE(seq.block_table.empty());
  EXPECT_FALSE(seq.has_first_token());
}

TEST_F(SequenceTest, IdsAutoIncrementAndExplicitIdsAreKept) {
  auto a = make_seq({1});
  auto b = make_seq({1});
  Sequence explicit_id({1}, SamplingParams{}, 4, 42);
  auto c = make_seq({1});
  EXPECT_EQ(a->id(), 0);
  EXPECT_EQ(b->id(), 1);
  EXPECT_EQ(explicit_id.id(), 42);
  EXPECT_EQ(c->id(), 2);  // an explicit id does not consume the counter
  Sequence::reset_id_counter();
  EXPECT_EQ(make_seq({1})->id(), 0);
}

TEST_F(SequenceTest, PropagatesSamplingParams) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = 7;
  p.max_tokens = 33;
  p.ignore_eos = true;
  p.stop_token_ids = {2, 99};
  Sequence seq({1, 2}, p, 4);
  EXPECT_EQ(seq.params.temperature, 0.0f);
  EXPECT_EQ(seq.params.top_k, 7);
  EXPECT_EQ(seq.params.max_tokens, 33);
  EXPECT_TRUE(seq.params.ignore_eos);
  EXPECT_EQ(seq.params.stop_token_ids, (std::vector<int32_t>{2, 99}));
}

TEST_F(SequenceTest, BlockGeometry) {
  Sequence four(iota_tokens(4), SamplingParams{}, 4);
  EXPECT_EQ(four.num_blocks(), 1);
  EXPECT_EQ(four.last_block_num_tokens(), 4);
  Sequence five(iota_tokens(5), SamplingParams{}, 4);
  EXPECT_EQ(five.num_blocks(), 2);
  EXPECT_EQ(five.last_block_num_tokens(), 1);
  Sequence one(iota_tokens(3), SamplingParams{}, 1);
  EXPECT_EQ(one.num_blocks(), 3);
  EXPECT_EQ(one.last_block_num_tokens(), 1);
  EXPECT_EQ(one.block_size(), 1);
}

TEST_F(SequenceTest, BlockTokensSlicesAndRejectsOutOfRange) {
  Sequence seq(iota_tokens(10, 100), SamplingParams{}, 4);
  auto b0 = seq.block_tokens(0);
  auto b2 = seq.block_tokens(2);
  EXPECT_EQ(std::vector<int32_t>(b0.begin(), b0.end()), (std::vector<int32_t>{100, 101, 102, 103}));
  EXPECT_EQ(std::vector<int32_t>(b2.begin(), b2.end()), (std::vector<int32_t>{108, 109}));
  EXPECT_THROW(seq.block_tokens(3), Error);
  EXPECT_THROW(seq.block_tokens(-1), Error);
}

TEST_F(SequenceTest, AppendTokenUpdatesOutputAndBlocks) {
  Sequence seq({1, 2, 3, 4}, SamplingParams{}, 4);
  EXPECT_EQ(seq.num_blocks(), 1);
  EXPECT_EQ(seq.last_token(), 4);
  seq.append_token(50);
  EXPECT_EQ(seq.num_tokens(), 5);
  EXPECT_EQ(seq.num_output_tokens(), 1);
  EXPECT_EQ(seq.last_token(), 50);
  EXPECT_EQ(seq.num_blocks(), 2);
  EXPECT_EQ(seq.last_block_num_tokens(), 1);
  seq.append_token(51);
  auto out = seq.output_ids();
  auto prompt = seq.prompt_ids();
  EXPECT_EQ(std::vector<int32_t>(out.begin(), out.end()), (std::vector<int32_t>{50, 51}));
  EXPECT_EQ(std::vector<int32_t>(prompt.begin(), prompt.end()), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(seq.token_ids[4], 50);
  EXPECT_EQ(seq.num_prompt_tokens, 4);
}

TEST_F(SequenceTest, IsFinishedFollowsStatus) {
  Sequence seq({1}, SamplingParams{}, 4);
  EXPECT_FALSE(seq.is_finished());
  seq.status = SequenceStatus::kRunning;
  EXPECT_FALSE(seq.is_finished());
  seq.status = SequenceStatus::kFinished;
  EXPECT_TRUE(seq.is_finished());
  EXPECT_STREQ(sequence_status_name(SequenceStatus::kRunning), "running");
}

TEST_F(SequenceTest, RejectsBadBlockSize) {
  EXPECT_THROW(Sequence({1}, SamplingParams{}, 0), Error);
}

}  // namespace
}  // namespace atom

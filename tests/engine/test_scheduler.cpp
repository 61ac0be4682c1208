// engine/scheduler: admission caps, chunked prefill token accounting, mixed batches, prefix-cache
// hit accounting, preemption by recompute, stop conditions, aborts and request validation; and
// ATOM's prefill-first policy with chunking off (ATOM test_scheduler, adapted).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "atom/core/error.h"
#include "atom/engine/scheduler.h"
#include "engine_test_util.h"

namespace atom {
namespace {

using test::iota_tokens;
using test::kBlockSize;
using test::kEos;
using test::kNumBlocks;
using test::make_seq;
using test::params_with;

SchedulerConfig mock_config() {
  SchedulerConfig c;
  c.max_num_seqs = test::kMaxNumSeqs;
  c.max_num_batched_tokens = test::kMaxBatchedTokens;
  c.max_model_len = 64;
  c.eos_token_id = kEos;
  return c;
}

struct Harness {
  explicit Harness(SchedulerConfig config = mock_config(), int64_t num_blocks = kNumBlocks,
                   bool prefix_caching = false)
      : bm(num_blocks, kBlockSize, prefix_caching), sched(config, bm) {
    Sequence::reset_id_counter();
  }
  // Postprocess with the same token for every sampled sequence.
  std::vector<SequencePtr> finish_step(const SchedulerOutput& out, int32_t token = 7) {
    std::vector<int32_t> sampled(size_t(out.num_samples()), token);
    return sched.postprocess(out, sampled);
  }
  BlockManager bm;
  Scheduler sched;
};

struct Planned {
  const Sequence* seq;
  int64_t tokens;
  bool sample;
};
std::vector<Planned> plan(const SchedulerOutput& out) {
  std::vector<Planned> p;
  for (const ScheduledSeq& s : out.seqs)
    p.push_back({s.seq.get(), s.num_new_tokens, s.needs_sample});
  return p;
}
bool operator==(const Planned& a, const Planned& b) {
  return a.seq == b.seq && a.tokens == b.tokens && a.sample == b.sample;
}
void PrintTo(const Planned& p, std::ostream* os) {
  *os << "{seq " << p.seq->id() << ", " << p.tokens << (p.sample ? ", sample}" : "}");
}

TEST(Scheduler, AddAndCounts) {
  Harness h;
  EXPECT_FALSE(h.sched.has_unfinished());
  auto a = make_seq({1, 3, 4, 5});
  h.sched.add(a);
  EXPECT_TRUE(h.sched.has_unfinished());
  EXPECT_EQ(h.sched.num_waiting(), 1);
  EXPECT_EQ(h.sched.num_running(), 0);
  h.sched.schedule();
  EXPECT_EQ(h.sched.num_waiting(), 0);
  EXPECT_EQ(h.sched.num_running(), 1);
  EXPECT_TRUE(h.sched.has_unfinished());
}

TEST(Scheduler, EmptyQueueGivesEmptyOutput) {
  Harness h;
  SchedulerOutput out = h.sched.schedule();
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(out.num_batched_tokens, 0);
  EXPECT_TRUE(out.preempted.empty());
}

// --scheduler-delay-factor (ATOM's and vLLM's): while sequences run, a new prompt waits until
// the oldest waiting one has waited longer than factor x the last prompt step's latency; with
// nothing running, or a factor of 0, it is admitted at once. Both policies.
TEST(Scheduler, DelayFactorHoldsNewPromptsBackToBatchThem) {
  for (const bool chunked : {true, false}) {
    for (const double factor : {0.0, 1.0}) {
      SchedulerConfig c = mock_config();
      c.chunked_prefill = chunked;
      c.delay_factor = factor;
      Harness h(c);
      using Clock = Sequence::Clock;
      const Clock::time_point t0 = Clock::now();
      Clock::time_point now = t0;
      h.sched.set_clock([&] { return now; });
      auto ms = [&](int n) { return t0 + std::chrono::milliseconds(n); };
      auto a = make_seq({1, 3, 4, 5}, params_with(8));
      a->arrival_time = t0;
      h.sched.add(a);
      SchedulerOutput out = h.sched.schedule();  // nothing runs: admitted at once
      ASSERT_EQ(plan(out), (std::vector<Planned>{{a.get(), 4, true}}));
      h.finish_step(out);
      auto b = make_seq({6, 7, 8}, params_with(8));
      b->arrival_time = ms(5);
      h.sched.add(b);
      now = ms(10);  // the prompt step took 10 ms; b has waited 5 ms
      out = h.sched.schedule();
      if (factor == 0.0 && chunked) {
        EXPECT_EQ(plan(out), (std::vector<Planned>{{a.get(), 1, true}, {b.get(), 3, true}}));
        continue;
      }
      if (factor == 0.0) {  // prefill-first: b's prompt alone
        EXPECT_EQ(plan(out), (std::vector<Planned>{{b.get(), 3, true}}));
        continue;
      }
      EXPECT_EQ(plan(out), (std::vector<Planned>{{a.get(), 1, true}})) << "b is held back";
      h.finish_step(out);
      now = ms(16);  // b has waited 11 ms > 1.0 x 10 ms
      out = h.sched.schedule();
      ASSERT_FALSE(out.seqs.empty());
      EXPECT_EQ(out.seqs.back().seq, b) << (chunked ? "chunked" : "prefill-first");
    }
  }
}

TEST(Scheduler, PrefillMarksRunning) {
  Harness h;
  auto a = make_seq({1, 3, 4, 5});
  h.sched.add(a);
  SchedulerOutput out = h.sched.schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].seq, a);
  EXPECT_EQ(out.seqs[0].num_new_tokens, 4);
  EXPECT_TRUE(out.seqs[0].needs_sample);
  EXPECT_EQ(out.num_batched_tokens, 4);
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(a->block_table.size(), 1u);
  EXPECT_EQ(a->num_computed_tokens, 0);  // advanced by postprocess, after the step ran
}

TEST(Scheduler, MaxNumSeqsCap) {
  SchedulerConfig c = mock_config();
  c.max_num_seqs = 2;
  Harness h(c);
  for (int i = 0; i < 5; ++i) h.sched.add(make_seq({5, 6, 7, 8}));
  SchedulerOutput out = h.sched.schedule();
  EXPECT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(h.sched.num_running(), 2);
  EXPECT_EQ(h.sched.num_waiting(), 3);
}

TEST(Scheduler, TokenCapChunksTheSecondPrompt) {
  SchedulerConfig c = mock_config();
  c.max_num_batched_tokens = 6;
  Harness h(c);
  auto a = make_seq({5, 6, 7, 8});
  auto b = make_seq({9, 10, 11, 12});
  h.sched.add(a);
  h.sched.add(b);
  SchedulerOutput s1 = h.sched.schedule();
  EXPECT_EQ(plan(s1), (std::vector<Planned>{{a.get(), 4, true}, {b.get(), 2, false}}));
  EXPECT_EQ(s1.num_batched_tokens, 6);
  h.finish_step(s1);
  EXPECT_EQ(b->num_computed_tokens, 2);
  EXPECT_EQ(b->num_tokens(), 4);  // no token sampled for a partial prompt
  SchedulerOutput s2 = h.sched.schedule();
  EXPECT_EQ(plan(s2), (std::vector<Planned>{{a.get(), 1, true}, {b.get(), 2, true}}));
  EXPECT_EQ(s2.num_batched_tokens, 3);
}

TEST(Scheduler, TokenCapWithoutChunkingSchedulesOnePrompt) {
  SchedulerConfig c = mock_config();
  c.chunked_prefill = false;
  c.max_num_batched_tokens = 6;
  c.max_model_len = 6;
  Harness h(c);
  auto a = make_seq({5, 6, 7, 8}, params_with(2));
  auto b = make_seq({9, 10, 11, 12}, params_with(2));
  h.sched.add(a);
  h.sched.add(b);
  SchedulerOutput out = h.sched.schedule();
  EXPECT_EQ(plan(out), (std::vector<Planned>{{a.get(), 4, true}}));
  EXPECT_EQ(h.sched.num_waiting(), 1);
}

TEST(Scheduler, PrefillFirstNeedsABudgetForWholePrompts) {
  SchedulerConfig c = mock_config();
  c.chunked_prefill = false;
  c.max_num_batched_tokens = 32;
  c.max_model_len = 64;
  BlockManager bm(kNumBlocks, kBlockSize, false);
  EXPECT_THROW(Scheduler(c, bm), Error);
  c.chunked_prefill = true;
  EXPECT_NO_THROW(Scheduler(c, bm));
}

TEST(Scheduler, BlockCapAndNoOvertakingOfTheHead) {
  Harness h;
  auto a = make_seq(iota_tokens(12), params_with(4));  // 3 blocks each
  auto b = make_seq(iota_tokens(12), params_with(4));
  auto c = make_seq(iota_tokens(12), params_with(4));
  auto d = make_seq(iota_tokens(12), params_with(4));
  for (auto& s : {a, b, c, d}) h.sched.add(s);
  SchedulerOutput out = h.sched.schedule();
  EXPECT_EQ(out.seqs.size(), 3u);
  EXPECT_EQ(h.bm.num_free_blocks(), 1);
  EXPECT_EQ(d->status, SequenceStatus::kWaiting);

  // A 24-token head that does not fit blocks a 4-token request behind it.
  Harness h2;
  auto big1 = make_seq(iota_tokens(24), params_with(4));
  auto big2 = make_seq(iota_tokens(24), params_with(4));
  auto small = make_seq(iota_tokens(4), params_with(4));
  h2.sched.add(big1);
  h2.sched.add(big2);
  h2.sched.add(small);
  h2.sched.schedule();
  EXPECT_EQ(big1->status, SequenceStatus::kRunning);
  EXPECT_EQ(big2->status, SequenceStatus::kWaiting);
  EXPECT_EQ(small->status, SequenceStatus::kWaiting);
  EXPECT_EQ(h2.bm.num_free_blocks(), 4);
}

TEST(Scheduler, DecodeFollowsPrefill) {
  Harness h;
  auto a = make_seq({1, 3, 4, 5});
  h.sched.add(a);
  SchedulerOutput s1 = h.sched.schedule();
  EXPECT_TRUE(h.finish_step(s1, 7).empty());
  EXPECT_EQ(a->num_computed_tokens, 4);
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, 7}));
  EXPECT_TRUE(a->has_first_token());
  SchedulerOutput s2 = h.sched.schedule();
  EXPECT_EQ(plan(s2), (std::vector<Planned>{{a.get(), 1, true}}));
  EXPECT_EQ(a->block_table.size(), 2u);  // the new token's slot is in block 1
  h.finish_step(s2, 8);
  EXPECT_EQ(a->num_computed_tokens, 5);
  EXPECT_EQ(a->last_token(), 8);
}

TEST(Scheduler, ChunkedPrefillExactTokenCounts) {
  SchedulerConfig c = mock_config();
  c.max_num_batched_tokens = 8;
  Harness h(c);
  auto a = make_seq(iota_tokens(20), params_with(3));  // longer than the budget
  h.sched.add(a);
  const std::vector<int64_t> chunks = {8, 8, 4, 1, 1};
  const std::vector<int64_t> computed = {8, 16, 20, 21, 22};
  for (size_t i = 0; i < chunks.size(); ++i) {
    SchedulerOutput out = h.sched.schedule();
    ASSERT_EQ(out.seqs.size(), 1u) << "step " << i;
    EXPECT_EQ(out.seqs[0].num_new_tokens, chunks[i]) << "step " << i;
    EXPECT_EQ(out.seqs[0].needs_sample, i >= 2) << "step " << i;
    EXPECT_EQ(out.num_batched_tokens, chunks[i]);
    if (i == 0) {
      EXPECT_EQ(a->block_table.size(), 5u);  // all prompt blocks at admission
    }
    h.finish_step(out);
    EXPECT_EQ(a->num_output_tokens(), i >= 2 ? int64_t(i) - 1 : 0);
    if (i + 1 < chunks.size()) {
      EXPECT_EQ(a->num_computed_tokens, computed[i]) << "step " << i;
    }
  }
  EXPECT_TRUE(a->is_finished());
  EXPECT_EQ(a->finish_reason, "length");
  EXPECT_EQ(a->num_output_tokens(), 3);
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks);
}

TEST(Scheduler, MixedPrefillAndDecodeUnderTheBudget) {
  SchedulerConfig c = mock_config();
  c.max_num_batched_tokens = 8;
  Harness h(c);
  auto a = make_seq({1, 3, 4, 5}, params_with(10));
  h.sched.add(a);
  h.finish_step(h.sched.schedule());
  auto b = make_seq(iota_tokens(20), params_with(4));
  h.sched.add(b);
  const std::vector<std::vector<Planned>> expected = {
      {{a.get(), 1, true}, {b.get(), 7, false}},
      {{a.get(), 1, true}, {b.get(), 7, false}},
      {{a.get(), 1, true}, {b.get(), 6, true}},
      {{a.get(), 1, true}, {b.get(), 1, true}},
  };
  for (size_t i = 0; i < expected.size(); ++i) {
    SchedulerOutput out = h.sched.schedule();
    EXPECT_EQ(plan(out), expected[i]) << "step " << i;
    EXPECT_LE(out.num_batched_tokens, 8);
    h.finish_step(out);
  }
  EXPECT_EQ(b->num_output_tokens(), 2);
  EXPECT_EQ(a->num_output_tokens(), 5);
}

TEST(Scheduler, PrefixHitsReduceScheduledTokensBeforeTheBudget) {
  SchedulerConfig c = mock_config();
  c.max_num_batched_tokens = 4;
  Harness h(c, kNumBlocks, /*prefix_caching=*/true);
  auto a = make_seq(iota_tokens(9), params_with(3));
  h.sched.add(a);
  for (int64_t n : {4, 4, 1}) {
    SchedulerOutput out = h.sched.schedule();
    ASSERT_EQ(out.seqs.size(), 1u);
    EXPECT_EQ(out.seqs[0].num_new_tokens, n);
    h.finish_step(out);
  }
  ASSERT_EQ(a->block_hashes.size(), 2u);  // 9 computed tokens: 2 full blocks registered

  std::vector<int32_t> prompt = iota_tokens(8);
  prompt.push_back(50);
  prompt.push_back(51);
  auto b = make_seq(prompt, params_with(2));
  h.sched.add(b);
  SchedulerOutput out = h.sched.schedule();
  // b's 10 tokens would take 3 of the 3 remaining budget tokens; with the 8-token hit it needs 2.
  EXPECT_EQ(plan(out), (std::vector<Planned>{{a.get(), 1, true}, {b.get(), 2, true}}));
  EXPECT_EQ(out.num_batched_tokens, 3);
  EXPECT_EQ(b->num_cached_tokens, 8);
  EXPECT_EQ(b->num_prompt_cached_tokens, 8);
  EXPECT_EQ(b->num_computed_tokens, 8);
  EXPECT_EQ(b->block_table[0], a->block_table[0]);
  EXPECT_EQ(b->block_table[1], a->block_table[1]);
  EXPECT_EQ(h.bm.ref_count(a->block_table[0]), 2);
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks - 4);  // a: 3, b: 1 of its own
  h.finish_step(out);
  while (h.sched.has_unfinished()) h.finish_step(h.sched.schedule());
  EXPECT_EQ(a->finish_reason, "length");
  EXPECT_EQ(b->finish_reason, "length");
  EXPECT_EQ(b->num_prompt_cached_tokens, 8);  // kept for the usage report
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks);
  for (int32_t id = 0; id < kNumBlocks; ++id) EXPECT_EQ(h.bm.ref_count(id), 0);
}

TEST(Scheduler, PreemptionByRecomputeAndLaterCompletion) {
  Harness h(mock_config(), /*num_blocks=*/2);
  auto a = make_seq({1, 3, 4, 5}, params_with(4));
  auto b = make_seq({6, 7, 8, 9}, params_with(4));
  h.sched.add(a);
  h.sched.add(b);
  h.finish_step(h.sched.schedule(), 11);  // both prefilled, 5 tokens: both need a 2nd block
  EXPECT_EQ(h.bm.num_free_blocks(), 0);
  SchedulerOutput out = h.sched.schedule();
  EXPECT_EQ(plan(out), (std::vector<Planned>{{a.get(), 1, true}}));
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0], b);  // the most recently admitted one goes
  EXPECT_EQ(a->status, SequenceStatus::kRunning);
  EXPECT_EQ(b->status, SequenceStatus::kWaiting);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->num_computed_tokens, 0);
  EXPECT_EQ(b->num_preemptions, 1);
  EXPECT_EQ(h.sched.waiting().front(), b);
  EXPECT_EQ(b->token_ids, (std::vector<int32_t>{6, 7, 8, 9, 11}));  // its output is kept
  EXPECT_EQ(h.sched.num_preemptions(), 1);
  h.finish_step(out, 12);

  int steps = 0;
  while (h.sched.has_unfinished() && steps++ < 50) {
    SchedulerOutput s = h.sched.schedule();
    for (const ScheduledSeq& sc : s.seqs) {
      if (sc.seq == b && sc.num_new_tokens > 1) {  // the recompute: prompt + output so far
        EXPECT_EQ(sc.num_new_tokens, 5);
      }
    }
    h.finish_step(s, 13);
  }
  EXPECT_FALSE(h.sched.has_unfinished());
  EXPECT_EQ(a->output_ids().size(), 4u);
  EXPECT_EQ(b->output_ids().size(), 4u);
  EXPECT_EQ(b->token_ids, (std::vector<int32_t>{6, 7, 8, 9, 11, 13, 13, 13}));
  EXPECT_EQ(b->raw_finish_reason, "max_tokens");
  EXPECT_EQ(h.bm.num_free_blocks(), 2);
}

TEST(Scheduler, PostprocessStopConditions) {
  {  // EOS finishes with "stop" / "eos" and frees the blocks.
    Harness h;
    auto a = make_seq({1, 3, 4, 5});
    h.sched.add(a);
    auto finished = h.finish_step(h.sched.schedule(), kEos);
    ASSERT_EQ(finished.size(), 1u);
    EXPECT_EQ(finished[0], a);
    EXPECT_TRUE(a->is_finished());
    EXPECT_EQ(a->finish_reason, "stop");
    EXPECT_EQ(a->raw_finish_reason, "eos");
    EXPECT_EQ(a->last_token(), kEos);  // the stop token stays in the output
    EXPECT_EQ(h.sched.num_running(), 0);
    EXPECT_FALSE(h.sched.has_unfinished());
    EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks);
    EXPECT_NE(a->finish_time, Sequence::Clock::time_point{});
  }
  {  // ignore_eos keeps going.
    Harness h;
    auto a = make_seq({1, 3, 4, 5}, params_with(16, /*ignore_eos=*/true));
    h.sched.add(a);
    EXPECT_TRUE(h.finish_step(h.sched.schedule(), kEos).empty());
    EXPECT_FALSE(a->is_finished());
    EXPECT_EQ(a->output_ids().size(), 1u);
  }
  {  // ignore_eos ignores EOS only: the request's own stop ids still stop it (vLLM).
    Harness h;
    SamplingParams p = params_with(16, /*ignore_eos=*/true);
    p.stop_token_ids = {99};
    auto a = make_seq({1, 3, 4, 5}, p);
    h.sched.add(a);
    EXPECT_TRUE(h.finish_step(h.sched.schedule(), kEos).empty());
    EXPECT_EQ(h.finish_step(h.sched.schedule(), 99).size(), 1u);
    EXPECT_EQ(a->raw_finish_reason, "stop_99");
    EXPECT_EQ(a->finish_reason, "stop");
  }
  {  // max_tokens.
    Harness h;
    auto a = make_seq({1, 3, 4, 5}, params_with(2));
    h.sched.add(a);
    EXPECT_TRUE(h.finish_step(h.sched.schedule()).empty());
    EXPECT_EQ(h.finish_step(h.sched.schedule()).size(), 1u);
    EXPECT_EQ(a->finish_reason, "length");
    EXPECT_EQ(a->raw_finish_reason, "max_tokens");
  }
  {  // Other stop ids.
    Harness h;
    SamplingParams p = params_with(16);
    p.stop_token_ids = {kEos, 99};
    auto a = make_seq({1, 3, 4, 5}, p);
    h.sched.add(a);
    h.finish_step(h.sched.schedule(), 99);
    EXPECT_EQ(a->finish_reason, "stop");
    EXPECT_EQ(a->raw_finish_reason, "stop_99");
  }
  {  // EOS on the last allowed token: EOS is checked first.
    Harness h;
    auto a = make_seq({1, 3, 4, 5}, params_with(1));
    h.sched.add(a);
    h.finish_step(h.sched.schedule(), kEos);
    EXPECT_EQ(a->raw_finish_reason, "eos");
  }
  {  // Without a configured tokenizer EOS, every stop id reports stop_<id>.
    SchedulerConfig c = mock_config();
    c.eos_token_id = -1;
    Harness h(c);
    auto a = make_seq({1, 3, 4, 5});
    h.sched.add(a);
    h.finish_step(h.sched.schedule(), kEos);
    EXPECT_EQ(a->raw_finish_reason, "stop_2");
  }
}

TEST(Scheduler, MinTokensDefersStopIds) {
  Harness h;
  SamplingParams p = params_with(8);
  p.min_tokens = 2;
  auto a = make_seq({1, 3, 4, 5}, p);
  h.sched.add(a);
  EXPECT_TRUE(h.finish_step(h.sched.schedule(), kEos).empty());
  EXPECT_FALSE(a->is_finished());
  EXPECT_EQ(h.finish_step(h.sched.schedule(), kEos).size(), 1u);
  EXPECT_EQ(a->raw_finish_reason, "eos");
  EXPECT_EQ(a->output_ids().size(), 2u);
}

TEST(Scheduler, PostprocessChecksTheSampleCount) {
  Harness h;
  h.sched.add(make_seq({1, 3, 4, 5}));
  SchedulerOutput out = h.sched.schedule();
  std::vector<int32_t> none;
  EXPECT_THROW(h.sched.postprocess(out, none), Error);
}

TEST(Scheduler, AbortWaitingAndRunningFreesBlocks) {
  SchedulerConfig c = mock_config();
  c.max_num_seqs = 1;
  Harness h(c);
  auto a = make_seq(iota_tokens(9));
  auto b = make_seq(iota_tokens(5));
  h.sched.add(a);
  h.sched.add(b);
  h.finish_step(h.sched.schedule());
  EXPECT_EQ(b->status, SequenceStatus::kWaiting);
  EXPECT_TRUE(h.sched.abort(b->id()));
  EXPECT_EQ(b->finish_reason, "abort");
  EXPECT_EQ(b->raw_finish_reason, "abort");
  EXPECT_TRUE(b->is_finished());
  EXPECT_EQ(h.sched.num_waiting(), 0);
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks - 3);
  EXPECT_TRUE(h.sched.abort(a->id()));
  EXPECT_EQ(h.sched.num_running(), 0);
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks);
  EXPECT_FALSE(h.sched.abort(a->id()));  // already finished
  EXPECT_FALSE(h.sched.abort(12345));    // unknown
  EXPECT_FALSE(h.sched.has_unfinished());
  EXPECT_TRUE(h.sched.schedule().empty());
}

TEST(Scheduler, FinishFromOutsideBetweenScheduleAndPostprocess) {
  Harness h;
  auto a = make_seq({1, 3, 4, 5});
  auto b = make_seq({6, 7, 8, 9});
  h.sched.add(a);
  h.sched.add(b);
  SchedulerOutput out = h.sched.schedule();
  EXPECT_TRUE(h.sched.finish(a->id(), "stop", "stop_sequence"));
  std::vector<int32_t> sampled = {20, 21};
  auto finished = h.sched.postprocess(out, sampled);
  EXPECT_TRUE(finished.empty());
  EXPECT_EQ(a->num_tokens(), 4);  // its sample is dropped
  EXPECT_EQ(a->raw_finish_reason, "stop_sequence");
  EXPECT_EQ(b->last_token(), 21);  // b still gets its own sample
  EXPECT_EQ(h.bm.num_free_blocks(), kNumBlocks - 1);
}

TEST(Scheduler, ValidatesRequests) {
  SchedulerConfig c = mock_config();
  c.max_model_len = 32;
  Harness h(c);
  try {
    h.sched.add(make_seq(iota_tokens(30), params_with(5)));
    FAIL() << "expected a context-length error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("maximum context length is 32"), std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(h.sched.add(make_seq(iota_tokens(20), params_with(12))));  // exactly 32
  EXPECT_THROW(h.sched.add(make_seq({}, params_with(5))), Error);
  SamplingParams zero = params_with(5);
  zero.max_tokens = 0;
  EXPECT_THROW(h.sched.add(make_seq({1, 3}, zero)), Error);
  EXPECT_THROW(h.sched.add(make_seq({1, 3}, params_with(5), /*block_size=*/8)), Error);
  auto twice = make_seq({1, 3});
  h.sched.add(twice);
  EXPECT_THROW(h.sched.add(twice), Error);
  EXPECT_EQ(h.sched.num_waiting(), 2);

  // A request larger than the whole KV cache (10 blocks of 4) could never be admitted.
  Harness big;
  EXPECT_THROW(big.sched.add(make_seq(iota_tokens(40), params_with(2))), Error);
  EXPECT_NO_THROW(big.sched.add(make_seq(iota_tokens(40), params_with(1))));
}

TEST(Scheduler, PrefillFirstPolicyNeverMixes) {
  SchedulerConfig c = mock_config();
  c.chunked_prefill = false;
  Harness h(c);
  auto a = make_seq({1, 3, 4, 5});
  h.sched.add(a);
  h.finish_step(h.sched.schedule());
  auto b = make_seq(iota_tokens(6));
  h.sched.add(b);
  SchedulerOutput s1 = h.sched.schedule();  // a prefill step: a's decode waits
  EXPECT_EQ(plan(s1), (std::vector<Planned>{{b.get(), 6, true}}));
  h.finish_step(s1);
  SchedulerOutput s2 = h.sched.schedule();
  EXPECT_EQ(plan(s2), (std::vector<Planned>{{a.get(), 1, true}, {b.get(), 1, true}}));
  EXPECT_EQ(s2.num_batched_tokens, 2);
}

}  // namespace
}  // namespace atom

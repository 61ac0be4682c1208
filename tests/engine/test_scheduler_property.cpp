// Randomized property test of Scheduler + BlockManager: random arrivals, prompt lengths (with
// shared prefixes so the prefix cache hits), output lengths, aborts and configs, driven by a
// fake model whose token at each position is a fixed function of (sequence, position). After
// every schedule and every postprocess the block and queue invariants are checked; at the end
// every sequence must have finished with exactly the tokens the fake model dictates, and every
// block must be free.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "atom/core/error.h"
#include "atom/engine/scheduler.h"

namespace atom {
namespace {

constexpr int32_t kEos = 2;

// The fake model: the token sampled after `position` tokens of sequence `id`. EOS now and then.
int32_t model_token(int64_t id, int64_t position) {
  uint64_t x = uint64_t(id) * 0x9E3779B97F4A7C15ull + uint64_t(position) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return x % 23 == 0 ? kEos : int32_t(3 + x % 50);
}

struct Stats {
  int64_t steps = 0, preemptions = 0, chunked = 0, mixed = 0, cache_hits = 0, aborts = 0,
          finished = 0, rejected = 0;
};

void check_blocks(const Scheduler& sched, const BlockManager& bm) {
  std::map<int32_t, int64_t> holders;
  for (const SequencePtr& s : sched.running()) {
    ASSERT_EQ(s->status, SequenceStatus::kRunning);
    ASSERT_GE(int64_t(s->block_table.size()),
              (s->num_computed_tokens + bm.block_size() - 1) / bm.block_size());
    ASSERT_LE(s->num_computed_tokens, s->num_tokens());
    std::set<int32_t> own(s->block_table.begin(), s->block_table.end());
    ASSERT_EQ(own.size(), s->block_table.size()) << "a block twice in one table";
    for (int32_t id : s->block_table) ++holders[id];
    // Registered hashes chain over the sequence's final tokens.
    ASSERT_LE(int64_t(s->block_hashes.size()) * bm.block_size(), s->num_computed_tokens);
    std::optional<uint64_t> prev;
    for (size_t i = 0; i < s->block_hashes.size(); ++i) {
      const uint64_t h = BlockManager::compute_hash(s->block_tokens(int64_t(i)), prev);
      ASSERT_EQ(s->block_hashes[i], h);
      ASSERT_EQ(bm.block_hash(s->block_table[i]), h);
      prev = h;
    }
  }
  for (const SequencePtr& s : sched.waiting()) {
    ASSERT_EQ(s->status, SequenceStatus::kWaiting);
    ASSERT_TRUE(s->block_table.empty());
    ASSERT_EQ(s->num_computed_tokens, 0);
  }
  int64_t num_free = 0;
  for (int32_t id = 0; id < bm.num_blocks(); ++id) {
    const int64_t held = holders.contains(id) ? holders[id] : 0;
    ASSERT_EQ(bm.ref_count(id), held) << "block " << id;
    ASSERT_EQ(bm.is_free(id), held == 0) << "block " << id << " both free and used";
    num_free += held == 0;
  }
  ASSERT_EQ(bm.num_free_blocks(), num_free);
  std::vector<int32_t> free_ids = bm.free_block_ids();
  ASSERT_EQ(std::set<int32_t>(free_ids.begin(), free_ids.end()).size(), free_ids.size());
}

// was_running: the sequences running before this schedule() (decodes come only from them; a
// newly admitted one is a prefill even when a cache hit leaves one token to compute).
void check_output(const SchedulerOutput& out, const Scheduler& sched,
                  const std::set<const Sequence*>& was_running, Stats& stats) {
  const SchedulerConfig& c = sched.config();
  ASSERT_LE(int64_t(out.seqs.size()), c.max_num_seqs);
  int64_t total = 0;
  bool any_prefill = false, any_decode = false;
  std::set<const Sequence*> seen;
  for (const ScheduledSeq& s : out.seqs) {
    ASSERT_TRUE(seen.insert(s.seq.get()).second) << "a sequence scheduled twice";
    ASSERT_EQ(s.seq->status, SequenceStatus::kRunning);
    ASSERT_GE(s.num_new_tokens, 1);
    const int64_t end = s.seq->num_computed_tokens + s.num_new_tokens;
    ASSERT_LE(end, s.seq->num_tokens());
    ASSERT_EQ(s.needs_sample, end == s.seq->num_tokens());
    ASSERT_GE(int64_t(s.seq->block_table.size()), s.seq->num_blocks());  // slots for all tokens
    total += s.num_new_tokens;
    const bool decode =
        was_running.contains(s.seq.get()) && s.seq->num_tokens() - s.seq->num_computed_tokens == 1;
    any_decode |= decode;
    any_prefill |= !decode;
    if (!s.needs_sample) ++stats.chunked;
  }
  ASSERT_EQ(total, out.num_batched_tokens);
  ASSERT_LE(total, c.max_num_batched_tokens);
  if (!c.chunked_prefill) {
    ASSERT_FALSE(any_prefill && any_decode) << "prefill-first mode mixed a batch";
    for (const ScheduledSeq& s : out.seqs)
      ASSERT_TRUE(s.needs_sample) << "a chunk without chunking";
  }
  if (any_prefill && any_decode) ++stats.mixed;
  for (const SequencePtr& p : out.preempted) {
    ASSERT_EQ(p->status, SequenceStatus::kWaiting);
    ASSERT_FALSE(seen.contains(p.get())) << "a preempted sequence was scheduled";
  }
  stats.preemptions += int64_t(out.preempted.size());
}

void run_simulation(uint32_t seed, Stats& stats) {
  std::mt19937 rng(seed);
  auto uni = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const int64_t block_size = std::array<int64_t, 4>{1, 2, 4, 8}[size_t(uni(0, 3))];
  const int64_t num_blocks = uni(6, 40);
  const bool caching = uni(0, 1) == 1;
  SchedulerConfig c;
  c.chunked_prefill = uni(0, 3) != 0;
  c.max_num_seqs = uni(1, 6);
  c.max_model_len = std::min<int64_t>(num_blocks * block_size, uni(8, 64));
  c.max_num_batched_tokens = c.chunked_prefill ? uni(1, 40) : uni(c.max_model_len, 80);
  c.eos_token_id = kEos;
  SCOPED_TRACE(testing::Message() << "seed " << seed << " bs " << block_size << " blocks "
                                  << num_blocks << " caching " << caching << " chunked "
                                  << c.chunked_prefill << " seqs " << c.max_num_seqs << " budget "
                                  << c.max_num_batched_tokens << " max_len " << c.max_model_len);
  BlockManager bm(num_blocks, block_size, caching);
  Scheduler sched(c, bm);

  // A few shared prefixes so requests hit each other's cached blocks.
  std::vector<std::vector<int32_t>> prefixes(3);
  for (auto& p : prefixes)
    for (int64_t i = 0, n = uni(1, 24); i < n; ++i) p.push_back(int32_t(uni(3, 60)));

  std::vector<SequencePtr> all;
  const int64_t arrival_steps = 150;
  for (int64_t step = 0; step < 5000; ++step) {
    if (step < arrival_steps) {
      for (int64_t k = uni(0, 2); k > 0; --k) {
        std::vector<int32_t> prompt;
        if (uni(0, 1)) prompt = prefixes[size_t(uni(0, 2))];
        for (int64_t i = 0, n = uni(prompt.empty() ? 1 : 0, 20); i < n; ++i)
          prompt.push_back(int32_t(uni(3, 60)));
        if (prompt.empty()) prompt.push_back(5);
        SamplingParams p;
        p.max_tokens = uni(1, 24);
        p.min_tokens = uni(0, 1) ? 0 : uni(0, p.max_tokens);
        p.ignore_eos = uni(0, 7) == 0;
        if (!p.ignore_eos) p.stop_token_ids = {kEos};
        auto seq = std::make_shared<Sequence>(prompt, p, block_size);
        const int64_t total = seq->num_prompt_tokens + p.max_tokens;
        const bool fits =
            total <= c.max_model_len && (total - 1 + block_size - 1) / block_size <= num_blocks;
        if (fits) {
          sched.add(seq);
          all.push_back(seq);
        } else {
          EXPECT_THROW(sched.add(seq), Error);
          ++stats.rejected;
        }
      }
    }
    if (uni(0, 19) == 0 && !all.empty()) {
      const SequencePtr& victim = all[size_t(uni(0, int64_t(all.size()) - 1))];
      const bool was_unfinished = !victim->is_finished();
      ASSERT_EQ(sched.abort(victim->id()), was_unfinished);
      stats.aborts += was_unfinished;
      check_blocks(sched, bm);
    }
    if (!sched.has_unfinished()) {
      if (step >= arrival_steps) break;
      continue;
    }
    std::set<const Sequence*> was_running;
    for (const SequencePtr& s : sched.running()) was_running.insert(s.get());
    SchedulerOutput out = sched.schedule();
    ++stats.steps;
    ASSERT_NO_FATAL_FAILURE(check_output(out, sched, was_running, stats));
    ASSERT_NO_FATAL_FAILURE(check_blocks(sched, bm));
    for (const ScheduledSeq& s : out.seqs)
      if (s.seq->num_computed_tokens == s.seq->num_cached_tokens && s.seq->num_cached_tokens > 0)
        ++stats.cache_hits;
    // Something is always schedulable unless a self-preemption just emptied the batch.
    if (out.empty()) {
      ASSERT_FALSE(out.preempted.empty()) << "stalled with work queued";
    }
    // Sometimes a client aborts while the step runs.
    if (uni(0, 29) == 0 && !out.seqs.empty()) {
      const SequencePtr& v = out.seqs[size_t(uni(0, int64_t(out.seqs.size()) - 1))].seq;
      ASSERT_TRUE(sched.abort(v->id()));
      ++stats.aborts;
    }
    std::vector<int32_t> sampled;
    for (const ScheduledSeq& s : out.seqs)
      if (s.needs_sample) sampled.push_back(model_token(s.seq->id(), s.seq->num_tokens()));
    const auto finished = sched.postprocess(out, sampled);
    for (const SequencePtr& f : finished) {
      ASSERT_TRUE(f->is_finished());
      ASSERT_TRUE(f->block_table.empty());
    }
    stats.finished += int64_t(finished.size());
    ASSERT_NO_FATAL_FAILURE(check_blocks(sched, bm));
  }

  EXPECT_FALSE(sched.has_unfinished()) << "not every sequence finished";
  EXPECT_EQ(bm.num_free_blocks(), num_blocks);
  for (const SequencePtr& s : all) {
    ASSERT_TRUE(s->is_finished()) << "sequence " << s->id();
    const auto out = s->output_ids();
    ASSERT_LE(int64_t(out.size()), s->params.max_tokens);
    // Every output token is the fake model's, whatever preemption and chunking did.
    for (size_t j = 0; j < out.size(); ++j)
      ASSERT_EQ(out[j], model_token(s->id(), s->num_prompt_tokens + int64_t(j)));
    if (s->finish_reason == "length") {
      ASSERT_EQ(int64_t(out.size()), s->params.max_tokens);
    } else if (s->finish_reason == "stop") {
      ASSERT_EQ(out.back(), kEos);
      ASSERT_FALSE(s->params.ignore_eos);
      ASSERT_GE(int64_t(out.size()), s->params.min_tokens);
    } else {
      ASSERT_EQ(s->finish_reason, "abort");
    }
    // No early stop: EOS before the end only where min_tokens or ignore_eos allowed it.
    for (size_t j = 0; j + 1 < out.size(); ++j) {
      if (out[j] == kEos) {
        ASSERT_TRUE(s->params.ignore_eos || int64_t(j) + 1 < s->params.min_tokens);
      }
    }
  }
}

TEST(SchedulerProperty, RandomWorkloadsKeepInvariantsAndFinish) {
  Stats stats;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    Sequence::reset_id_counter();
    ASSERT_NO_FATAL_FAILURE(run_simulation(seed, stats));
    if (HasFailure()) break;
  }
  // The workloads must actually exercise the interesting paths.
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_GT(stats.chunked, 0);
  EXPECT_GT(stats.mixed, 0);
  EXPECT_GT(stats.cache_hits, 0);
  EXPECT_GT(stats.aborts, 0);
  EXPECT_GT(stats.finished, 0);
  EXPECT_GT(stats.rejected, 0);
  std::printf(
      "steps %ld preemptions %ld chunks %ld mixed %ld cache-hit admissions %ld aborts %ld "
      "finished %ld rejected %ld\n",
      long(stats.steps), long(stats.preemptions), long(stats.chunked), long(stats.mixed),
      long(stats.cache_hits), long(stats.aborts), long(stats.finished), long(stats.rejected));
}

}  // namespace
}  // namespace atom

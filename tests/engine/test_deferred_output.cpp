// Deferred output without a model: the scheduler's placeholder / one-step-late logic driven by a
// fake backend (a token is a fixed function of sequence, position and input token, so any input
// the pipeline got wrong changes the output), ModelRunner::submit/collect on a fake Model
// (in-order execution, gathering in-flight ids, release ordering, failures), and LLMEngine /
// EngineCore draining the steps in flight when the backend fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "atom/core/error.h"
#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/engine/scheduler.h"
#include "atom/runner/model_runner.h"
#include "atom/tokenizer/tokenizer.h"
#include "common/fake_model.h"
#include "engine_test_util.h"

namespace atom {
namespace {

using test::iota_tokens;
using test::kEos;
constexpr int32_t kPh = Sequence::kPlaceholderToken;

// --- Scheduler + fake backend ---------------------------------------------------------------

// The fake model: the token sampled at `pos` of sequence `id`, whose input (the token at
// pos - 1) is `input`. EOS now and then.
int32_t fake_next(int64_t id, int64_t pos, int32_t input) {
  uint64_t x = uint64_t(id) * 0x9E3779B97F4A7C15ull + uint64_t(pos) * 0xBF58476D1CE4E5B9ull +
               uint64_t(uint32_t(input)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return x % 19 == 0 ? kEos : int32_t(3 + x % 40);
}

// Runs a scheduled step the way a runner does: reads the inputs the host planned, takes an
// in-flight input from its own record of what it sampled, and checks what the host promised
// (one placeholder at most, only as the last token; blocks covering every computed position).
class FakeBackend {
 public:
  using Rule = int32_t (*)(int64_t id, int64_t pos, int32_t input);
  explicit FakeBackend(int64_t block_size, Rule rule = &fake_next)
      : block_size_(block_size), rule_(rule) {}

  // Call right after schedule(), before mark_in_flight.
  std::vector<int32_t> run(const SchedulerOutput& out) {
    std::vector<int32_t> sampled;
    for (const ScheduledSeq& s : out.seqs) {
      const Sequence& q = *s.seq;
      EXPECT_EQ(q.status, SequenceStatus::kRunning);
      const int64_t start = q.num_scheduled_tokens();
      EXPECT_LE(start + s.num_new_tokens, q.num_tokens());
      EXPECT_GE(int64_t(q.block_table.size()) * block_size_, start + s.num_new_tokens);
      EXPECT_LE(q.num_placeholder_tokens, 1);
      int32_t input = -1;
      for (int64_t pos = start; pos < start + s.num_new_tokens; ++pos) {
        input = q.token_ids[size_t(pos)];
        if (input == kPh) {
          EXPECT_EQ(pos, q.num_tokens() - 1) << "a placeholder that is not the last token";
          auto it = record_.find(q.id());
          EXPECT_NE(it, record_.end()) << "in flight but never sampled";
          input = it == record_.end() ? 0 : it->second;
        }
      }
      if (!s.needs_sample) continue;
      const int32_t t = rule_(q.id(), start + s.num_new_tokens, input);
      record_[q.id()] = t;
      sampled.push_back(t);
      ++samples_[q.id()];
    }
    return sampled;
  }
  void submit(const SchedulerOutput& out) { results_.push_back(run(out)); }
  std::vector<int32_t> collect() {
    std::vector<int32_t> r = std::move(results_.front());
    results_.pop_front();
    return r;
  }
  int64_t samples(int64_t id) const {
    auto it = samples_.find(id);
    return it == samples_.end() ? 0 : it->second;
  }

 private:
  int64_t block_size_;
  Rule rule_;
  std::unordered_map<int64_t, int32_t> record_;
  std::unordered_map<int64_t, int64_t> samples_;
  std::deque<std::vector<int32_t>> results_;
};

// The engine loop without a model: synchronous, or one step ahead (submit N, postprocess N-1).
struct Pipeline {
  Pipeline(const SchedulerConfig& config, int64_t num_blocks, int64_t block_size,
           bool prefix_caching, bool async, FakeBackend::Rule rule = &fake_next)
      : bm(num_blocks, block_size, prefix_caching),
        sched(config, bm),
        backend(block_size, rule),
        async(async) {}

  void add(SequencePtr s) {
    sched.add(s);
    all.push_back(std::move(s));
  }
  // One engine step; returns whether schedule() produced a step.
  bool step() {
    SchedulerOutput out = sched.schedule();
    const bool submitted = !out.empty();
    if (!async) {
      if (submitted) {
        ++steps;
        const std::vector<int32_t> sampled = backend.run(out);
        sched.postprocess(out, sampled);
      }
      return submitted;
    }
    if (submitted) {
      ++steps;
      backend.submit(out);
      sched.mark_in_flight(out);
      inflight.push_back(std::move(out));
    }
    if (inflight.empty() || (submitted && inflight.size() < 2)) return submitted;
    const SchedulerOutput done = std::move(inflight.front());
    inflight.pop_front();
    for (const ScheduledSeq& s : done.seqs) discarded += s.needs_sample && s.seq->is_finished();
    sched.postprocess(done, backend.collect());
    return submitted;
  }
  bool busy() const { return sched.has_unfinished() || !inflight.empty(); }
  void run_to_completion() {
    for (int i = 0; busy() && i < 10000; ++i) {
      step();
      check();
      if (::testing::Test::HasFatalFailure()) return;
    }
    EXPECT_FALSE(busy());
  }

  // Block and token invariants after every step.
  void check() const {
    const int64_t bs = bm.block_size();
    std::map<int32_t, int64_t> holders;
    for (const SequencePtr& s : all) {
      ASSERT_GE(s->num_inflight_tokens, 0);
      ASSERT_LE(s->num_placeholder_tokens, 1) << "only the newest step's token may be pending";
      ASSERT_EQ(std::count(s->token_ids.begin(), s->token_ids.end(), kPh),
                s->num_placeholder_tokens);
      if (s->num_placeholder_tokens > 0) {
        ASSERT_EQ(s->token_ids.back(), kPh);
      }
      for (int32_t id : s->block_table) ++holders[id];
      switch (s->status) {
        case SequenceStatus::kFinished:
          ASSERT_EQ(s->num_placeholder_tokens, 0);
          // A finished sequence keeps its blocks only while a step in flight uses them.
          if (!s->block_table.empty()) {
            ASSERT_GT(s->num_inflight_steps, 0);
          }
          break;
        case SequenceStatus::kWaiting:
          ASSERT_TRUE(s->block_table.empty());
          ASSERT_EQ(s->num_computed_tokens, 0);
          ASSERT_EQ(s->num_inflight_tokens, 0);
          break;
        case SequenceStatus::kRunning: {
          ASSERT_LE(s->num_computed_tokens, s->num_tokens() - s->num_placeholder_tokens);
          ASSERT_GE(int64_t(s->block_table.size()) * bs, s->num_scheduled_tokens());
          // Hashes cover computed, final tokens only, chained.
          ASSERT_LE(int64_t(s->block_hashes.size()) * bs, s->num_computed_tokens);
          std::optional<uint64_t> prev;
          for (size_t i = 0; i < s->block_hashes.size(); ++i) {
            const auto toks = s->block_tokens(int64_t(i));
            ASSERT_EQ(std::count(toks.begin(), toks.end(), kPh), 0);
            const uint64_t h = BlockManager::compute_hash(toks, prev);
            ASSERT_EQ(s->block_hashes[i], h);
            ASSERT_EQ(bm.block_hash(s->block_table[i]), h);
            prev = h;
          }
          break;
        }
      }
    }
    int64_t used = 0;
    for (int32_t id = 0; id < bm.num_blocks(); ++id) {
      ASSERT_EQ(bm.ref_count(id), holders[id]) << "block " << id;
      ASSERT_EQ(bm.is_free(id), holders[id] == 0) << "block " << id;
      used += holders[id] > 0;
    }
    ASSERT_EQ(bm.num_free_blocks(), bm.num_blocks() - used);
  }

  BlockManager bm;
  Scheduler sched;
  FakeBackend backend;
  bool async;
  std::deque<SchedulerOutput> inflight;
  std::vector<SequencePtr> all;
  int64_t steps = 0, discarded = 0;
};

SchedulerConfig small_config() {
  SchedulerConfig c;
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 64;
  c.max_model_len = 64;
  c.eos_token_id = kEos;
  return c;
}

SequencePtr seq_with_id(int64_t id, std::vector<int32_t> prompt, SamplingParams p,
                        int64_t block_size = test::kBlockSize) {
  return std::make_shared<Sequence>(std::move(prompt), std::move(p), block_size, id);
}

// Scripted tokens: sequence 0 says 20, 21, EOS, 23, ...; others count up from 30.
int32_t script(int64_t id, int64_t pos, int32_t) {
  if (id == 0) {
    const int64_t k = pos - 4;  // output index (4-token prompts)
    return k == 2 ? kEos : int32_t(20 + k);
  }
  return int32_t(30 + pos);
}

TEST(DeferredScheduler, EosFoundOneStepLateDiscardsTheNextToken) {
  Pipeline p(small_config(), test::kNumBlocks, test::kBlockSize, false, /*async=*/true, &script);
  auto a = seq_with_id(0, {1, 3, 4, 5}, test::params_with(16));
  p.add(a);
  p.step();  // submits the prefill: no output yet
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, kPh}));
  EXPECT_EQ(a->num_inflight_tokens, 4);
  EXPECT_EQ(a->num_computed_tokens, 0);
  EXPECT_EQ(a->num_inflight_steps, 1);
  p.step();  // submits decode 1 (input: the in-flight token), postprocesses the prefill
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, 20, kPh}));
  EXPECT_EQ(a->num_computed_tokens, 4);
  EXPECT_EQ(a->num_inflight_tokens, 1);
  EXPECT_EQ(a->num_final_output_tokens(), 1);
  EXPECT_EQ(a->num_output_tokens(), 2);
  p.step();  // decode 2 submitted; decode 1 gives 21
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, 20, 21, kPh}));
  EXPECT_EQ(a->block_table.size(), 2u);  // the placeholder's slot is allocated
  p.step();  // decode 3 submitted; decode 2 gives EOS: finished, decode 3 is still running
  EXPECT_TRUE(a->is_finished());
  EXPECT_EQ(a->raw_finish_reason, "eos");
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, 20, 21, kEos}));
  EXPECT_EQ(a->num_inflight_steps, 1);
  EXPECT_EQ(a->block_table.size(), 2u);  // held by decode 3
  EXPECT_EQ(p.bm.num_free_blocks(), test::kNumBlocks - 2);
  EXPECT_FALSE(p.sched.has_unfinished());
  p.check();
  EXPECT_FALSE(p.step());  // nothing to schedule: drains decode 3, whose token is dropped
  EXPECT_EQ(p.discarded, 1);
  EXPECT_EQ(p.backend.samples(0), 4);
  EXPECT_EQ(a->token_ids, (std::vector<int32_t>{1, 3, 4, 5, 20, 21, kEos}));
  EXPECT_TRUE(a->block_table.empty());
  EXPECT_EQ(p.bm.num_free_blocks(), test::kNumBlocks);
  EXPECT_FALSE(p.busy());
}

TEST(DeferredScheduler, MaxTokensNeedsNoExtraStep) {
  for (const int64_t max_tokens : {1, 2, 5}) {
    Pipeline p(small_config(), test::kNumBlocks, test::kBlockSize, false, true, &script);
    auto b = seq_with_id(1, {6, 7, 8, 9}, test::params_with(max_tokens, /*ignore_eos=*/true));
    p.add(b);
    p.run_to_completion();
    EXPECT_EQ(b->num_output_tokens(), max_tokens);
    EXPECT_EQ(b->raw_finish_reason, "max_tokens");
    // The in-flight last token is known to be the last one: it is never decoded again.
    EXPECT_EQ(p.backend.samples(1), max_tokens);
    EXPECT_EQ(p.discarded, 0);
    EXPECT_EQ(p.steps, max_tokens);
  }
}

TEST(DeferredScheduler, PreemptedWithATokenInFlightKeepsIt) {
  // 3 blocks of 4. y (3 tokens) ends by EOS at its first token, which arrives while y's next
  // decode runs, so y's block stays taken one step more; x (7 tokens) then needs a third block,
  // preempts itself with its token in flight, gets that token, and is recomputed later.
  auto rule = [](int64_t id, int64_t pos, int32_t input) -> int32_t {
    if (id == 1) return kEos;
    return int32_t(40 + pos);
  };
  SchedulerConfig c = small_config();
  c.max_model_len = 16;
  for (const bool async : {false, true}) {
    Pipeline p(c, /*num_blocks=*/3, 4, false, async, rule);
    auto x = seq_with_id(0, iota_tokens(7), test::params_with(5));
    auto y = seq_with_id(1, iota_tokens(3, 20), test::params_with(5));
    p.add(x);
    p.add(y);
    p.run_to_completion();
    EXPECT_EQ(x->token_ids, (std::vector<int32_t>{10, 11, 12, 13, 14, 15, 16, 47, 48, 49, 50, 51}))
        << async;
    EXPECT_EQ(y->token_ids, (std::vector<int32_t>{20, 21, 22, kEos})) << async;
    EXPECT_EQ(p.sched.num_preemptions(), async ? 1 : 0);
    EXPECT_EQ(p.discarded, async ? 1 : 0);
    EXPECT_EQ(p.bm.num_free_blocks(), 3);
  }
}

TEST(DeferredScheduler, CancelUndoesStepsInFlight) {
  Pipeline p(small_config(), test::kNumBlocks, test::kBlockSize, false, true);
  SamplingParams no_stop = test::params_with(8, /*ignore_eos=*/true);
  no_stop.stop_token_ids.clear();  // 8 tokens whatever the fake model says
  auto a = seq_with_id(0, iota_tokens(6), no_stop);
  auto b = seq_with_id(1, iota_tokens(3), no_stop);
  p.add(a);
  p.add(b);
  p.step();
  p.step();
  p.step();  // a and b: decode in flight, with one placeholder each
  ASSERT_EQ(p.inflight.size(), 1u);
  const std::vector<int32_t> a_before(a->token_ids.begin(), a->token_ids.end() - 1);
  const int64_t a_computed = a->num_computed_tokens;
  p.sched.abort(b->id());  // finished while in flight: its blocks wait for the step
  EXPECT_FALSE(b->block_table.empty());
  // A new step goes in flight too, then the backend fails: both are cancelled.
  SchedulerOutput out = p.sched.schedule();
  ASSERT_FALSE(out.empty());
  p.sched.mark_in_flight(out);
  p.inflight.push_back(std::move(out));
  for (const SchedulerOutput& o : p.inflight) p.sched.cancel_in_flight(o);
  p.inflight.clear();
  EXPECT_EQ(a->token_ids, a_before);
  EXPECT_EQ(a->num_placeholder_tokens, 0);
  EXPECT_EQ(a->num_inflight_tokens, 0);
  EXPECT_EQ(a->num_inflight_steps, 0);
  EXPECT_EQ(a->num_computed_tokens, a_computed);
  EXPECT_TRUE(b->block_table.empty());
  p.check();
  // The synchronous path picks up from there and still produces the fake model's tokens.
  p.async = false;
  p.run_to_completion();
  std::vector<int32_t> want = iota_tokens(6);
  while (int64_t(want.size()) < 14) want.push_back(fake_next(0, int64_t(want.size()), want.back()));
  EXPECT_EQ(a->token_ids, want);
  EXPECT_EQ(p.bm.num_free_blocks(), test::kNumBlocks);
}

// Random workloads: arrivals over time, shared prefixes, small pools (preemption), small
// budgets (chunks), both policies, min_tokens, ignore_eos, extra stop ids, aborts. Synchronous
// and deferred runs produce exactly the tokens and reasons of a reference run, except aborted
// requests, whose output is a prefix of it.
struct Workload {
  SchedulerConfig config;
  int64_t block_size = 4, num_blocks = 16;
  bool prefix_caching = false;
  struct Request {
    std::vector<int32_t> prompt;
    SamplingParams params;
    int64_t arrival_step = 0;
    int64_t abort_step = -1;
  };
  std::vector<Request> requests;
};

Workload random_workload(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  Workload w;
  w.block_size = uni(0, 2) == 0 ? 1 : uni(2, 5);
  w.config.max_model_len = 40;
  w.config.eos_token_id = kEos;
  w.config.max_num_seqs = uni(1, 6);
  w.config.chunked_prefill = uni(0, 3) != 0;
  w.config.max_num_batched_tokens = w.config.chunked_prefill ? uni(3, 48) : uni(40, 80);
  w.num_blocks = uni((40 + w.block_size - 1) / w.block_size, 120 / w.block_size + 2);
  w.prefix_caching = uni(0, 1) == 1;
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 3; ++i) prefixes.push_back(iota_tokens(uni(4, 16), int32_t(100 + 20 * i)));
  const int64_t n = uni(3, 14);
  for (int64_t i = 0; i < n; ++i) {
    Workload::Request r;
    if (uni(0, 1) == 1) r.prompt = prefixes[size_t(uni(0, 2))];
    const int64_t extra = uni(r.prompt.empty() ? 1 : 0, 10);
    for (int64_t k = 0; k < extra; ++k) r.prompt.push_back(int32_t(uni(3, 60)));
    r.params.max_tokens =
        uni(1, 40 - int64_t(r.prompt.size()) > 14 ? 14 : 40 - int64_t(r.prompt.size()));
    r.params.min_tokens = uni(0, 2) == 0 ? uni(0, r.params.max_tokens) : 0;
    r.params.ignore_eos = uni(0, 4) == 0;
    if (!r.params.ignore_eos) r.params.stop_token_ids = {kEos};
    if (uni(0, 3) == 0) r.params.stop_token_ids.push_back(int32_t(uni(3, 42)));
    r.arrival_step = uni(0, 2) == 0 ? 0 : uni(0, 30);
    if (uni(0, 6) == 0) r.abort_step = r.arrival_step + uni(0, 12);
    w.requests.push_back(std::move(r));
  }
  return w;
}

struct Outcome {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::string> reasons;
  int64_t preemptions = 0, discarded = 0, steps = 0;
};

Outcome run_workload(const Workload& w, bool async, bool with_aborts) {
  Pipeline p(w.config, w.num_blocks, w.block_size, w.prefix_caching, async);
  std::vector<SequencePtr> seqs;
  for (size_t i = 0; i < w.requests.size(); ++i)
    seqs.push_back(
        seq_with_id(int64_t(i), w.requests[i].prompt, w.requests[i].params, w.block_size));
  std::set<size_t> pending;
  for (size_t i = 0; i < seqs.size(); ++i) pending.insert(i);
  for (int64_t t = 0; (p.busy() || !pending.empty()) && t < 5000; ++t) {
    for (auto it = pending.begin(); it != pending.end();) {
      if (w.requests[*it].arrival_step <= t) {
        p.add(seqs[*it]);
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
    if (with_aborts)
      for (size_t i = 0; i < seqs.size(); ++i)
        if (w.requests[i].abort_step == t) p.sched.abort(int64_t(i));
    p.step();
    p.check();
    if (::testing::Test::HasFatalFailure()) return {};
  }
  EXPECT_FALSE(p.busy());
  EXPECT_EQ(p.bm.num_free_blocks(), w.num_blocks);
  Outcome o;
  for (const SequencePtr& s : seqs) {
    EXPECT_TRUE(s->is_finished());
    o.tokens.push_back(s->token_ids);
    o.reasons.push_back(s->raw_finish_reason);
  }
  o.preemptions = p.sched.num_preemptions();
  o.discarded = p.discarded;
  o.steps = p.steps;
  return o;
}

TEST(DeferredScheduler, RandomWorkloadsMatchTheSynchronousPath) {
  int64_t preemptions = 0, discarded = 0, aborted = 0, sync_steps = 0, async_steps = 0;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const Workload w = random_workload(seed);
    const Outcome ref = run_workload(w, false, false);
    const Outcome sync = run_workload(w, false, true);
    const Outcome async = run_workload(w, true, true);
    const Outcome async_no_abort = run_workload(w, true, false);
    if (HasFatalFailure()) return;
    EXPECT_EQ(async_no_abort.tokens, ref.tokens);
    EXPECT_EQ(async_no_abort.reasons, ref.reasons);
    for (size_t i = 0; i < ref.tokens.size(); ++i) {
      for (const Outcome* o : {&sync, &async}) {
        if (o->reasons[i] == "abort") {
          ASSERT_LE(o->tokens[i].size(), ref.tokens[i].size());
          EXPECT_TRUE(std::equal(o->tokens[i].begin(), o->tokens[i].end(), ref.tokens[i].begin()));
        } else {
          EXPECT_EQ(o->tokens[i], ref.tokens[i]) << "request " << i;
          EXPECT_EQ(o->reasons[i], ref.reasons[i]) << "request " << i;
        }
      }
      aborted += async.reasons[i] == "abort";
    }
    preemptions += async.preemptions;
    discarded += async.discarded;
    sync_steps += ref.steps;
    async_steps += async_no_abort.steps;
  }
  // The workloads did exercise what they are for.
  EXPECT_GT(preemptions, 20);
  EXPECT_GT(discarded, 50);
  EXPECT_GT(aborted, 10);
  // One step late costs at most a few extra steps per workload, not a slower pipeline.
  EXPECT_LE(async_steps, sync_steps * 11 / 10);
}

// --- ModelRunner::submit / collect on a fake model --------------------------------------------


SamplingParams greedy_params() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

StepSeq step_of(int64_t id, const std::vector<int32_t>& tokens, int64_t prompt, int64_t start,
                int64_t count, const std::vector<int32_t>& table, const SamplingParams& p,
                bool in_flight = false) {
  return StepSeq{id, tokens, prompt, start, count, table, true, &p, in_flight};
}

TEST(DeferredRunner, SubmitGathersTheInFlightIdAndMatchesExecute) {
  FakeModel model(64);
  const SamplingParams p = greedy_params();
  const std::vector<int32_t> table = {0};
  const std::vector<int32_t> prompt = {5, 6, 7};
  // Synchronous reference: prefill, then two decodes with the real ids.
  std::vector<int32_t> ref = prompt;
  {
    ModelRunner runner(model, 4, 16);
    ref.push_back(runner.execute(std::vector<StepSeq>{step_of(1, ref, 3, 0, 3, table, p)})[0]);
    ref.push_back(runner.execute(std::vector<StepSeq>{step_of(1, ref, 3, 3, 1, table, p)})[0]);
    ref.push_back(runner.execute(std::vector<StepSeq>{step_of(1, ref, 3, 4, 1, table, p)})[0]);
  }
  ModelRunner runner(model, 4, 16);
  std::vector<int32_t> host = prompt;
  runner.submit(std::vector<StepSeq>{step_of(1, host, 3, 0, 3, table, p)});
  host.push_back(kPh);  // the prefill's token, in flight
  runner.submit(std::vector<StepSeq>{step_of(1, host, 3, 3, 1, table, p, true)});
  host.push_back(kPh);
  EXPECT_EQ(runner.num_in_flight(), 2);
  host[3] = runner.collect()[0];  // the runner read its own copies: the host edits freely
  runner.submit(std::vector<StepSeq>{step_of(1, host, 3, 4, 1, table, p, true)});
  host.push_back(kPh);
  host[4] = runner.collect()[0];
  host[5] = runner.collect()[0];
  EXPECT_EQ(runner.num_in_flight(), 0);
  EXPECT_EQ(host, ref);
  // The decodes read the ids sampled before them, never a placeholder.
  const auto inputs = model.inputs();
  ASSERT_EQ(inputs.size(), 6u);
  EXPECT_EQ(inputs[4], (std::vector<int32_t>{ref[3]}));
  EXPECT_EQ(inputs[5], (std::vector<int32_t>{ref[4]}));
  // execute() refuses a token in flight.
  EXPECT_THROW(runner.execute(std::vector<StepSeq>{step_of(1, host, 3, 5, 1, table, p, true)}),
               Error);
}

TEST(DeferredRunner, PenaltiesSeeTheInFlightTokenSampled) {
  // The model always prefers token 9, then 10. Greedy with a frequency penalty: once 9 was
  // sampled, the next step must pick 10, although the host still has a placeholder for that 9.
  FakeModel model(64);
  model.constant = true;
  SamplingParams p = greedy_params();
  p.frequency_penalty = 2.0f;
  const std::vector<int32_t> table = {0};
  std::vector<int32_t> ref = {5, 6};
  {
    ModelRunner runner(model, 4, 16);
    for (int k = 0; k < 4; ++k) {
      const int64_t n = int64_t(ref.size());
      const int64_t start = k == 0 ? 0 : n - 1;
      ref.push_back(
          runner.execute(std::vector<StepSeq>{step_of(3, ref, 2, start, n - start, table, p)})[0]);
    }
  }
  EXPECT_EQ(ref[2], 9);
  EXPECT_EQ(ref[3], 10);
  ModelRunner runner(model, 4, 16);
  std::vector<int32_t> host = {5, 6};
  runner.submit(std::vector<StepSeq>{step_of(3, host, 2, 0, 2, table, p)});
  host.push_back(kPh);
  for (int k = 1; k < 4; ++k) {
    const int64_t n = int64_t(host.size());
    runner.submit(std::vector<StepSeq>{step_of(3, host, 2, n - 1, 1, table, p, true)});
    host.push_back(kPh);
    host[size_t(n - 1)] = runner.collect()[0];
  }
  host.back() = runner.collect()[0];
  EXPECT_EQ(host, ref);
}

TEST(DeferredRunner, ReleaseWaitsForTheStepsSubmittedBeforeIt) {
  FakeModel model(64);
  const SamplingParams p = greedy_params();
  const std::vector<int32_t> table = {0};
  ModelRunner runner(model, 4, 16);
  std::vector<int32_t> host = {5, 6};
  runner.submit(std::vector<StepSeq>{step_of(7, host, 2, 0, 2, table, p)});
  host.push_back(kPh);
  runner.submit(std::vector<StepSeq>{step_of(7, host, 2, 2, 1, table, p, true)});
  host.push_back(kPh);
  // Found finished by the host while both still run: its sampler and record must outlive them.
  runner.release(7);
  EXPECT_NO_THROW(runner.collect());
  EXPECT_NO_THROW(runner.collect());
  // Then they are gone: a step that relies on the record fails (and is reported, not fatal).
  runner.submit(std::vector<StepSeq>{step_of(7, host, 2, 3, 1, table, p, true)});
  EXPECT_THROW(runner.collect(), Error);
  // A released sequence's next first sample makes a new sampler from its parameters.
  host.resize(4);
  host[2] = 11;
  host[3] = 12;
  runner.submit(std::vector<StepSeq>{step_of(7, host, 2, 0, 4, table, p)});
  EXPECT_EQ(runner.collect()[0], FakeModel::next(12, 3, 64));
}

TEST(DeferredRunner, FailuresAreRethrownInOrderAndLaterStepsStillRun) {
  FakeModel model(64);
  model.boom = 2;
  const SamplingParams p = greedy_params();
  const std::vector<int32_t> table = {0};
  ModelRunner runner(model, 4, 16);
  const std::vector<int32_t> good = {5, 6}, bad = {5, 2};
  runner.submit(std::vector<StepSeq>{step_of(1, good, 2, 0, 2, table, p)});
  runner.submit(std::vector<StepSeq>{step_of(2, bad, 2, 0, 2, table, p)});
  runner.submit(std::vector<StepSeq>{step_of(3, good, 2, 0, 2, table, p)});
  EXPECT_EQ(runner.collect()[0], FakeModel::next(6, 1, 64));
  try {
    runner.collect();
    FAIL() << "the second step should fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fed token 2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(runner.collect()[0], FakeModel::next(6, 1, 64));
  EXPECT_THROW(runner.collect(), Error);  // nothing in flight
}

TEST(DeferredRunner, DestroyedWithStepsInFlight) {
  FakeModel model(64);
  const SamplingParams p = greedy_params();
  const std::vector<int32_t> table = {0, 1};
  const std::vector<int32_t> prompt = iota_tokens(20, 3);
  {
    ModelRunner runner(model, 4, 16);
    for (int64_t i = 0; i < 5; ++i)
      runner.submit(std::vector<StepSeq>{step_of(i, prompt, 20, 0, 20, table, p)});
  }  // joins without collecting: no hang
  SUCCEED();
}

// --- LLMEngine and EngineCore on the fake model: a failing step ---------------------------------

class DeferredEngine : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    tok_ = Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny")
               .release();
  }
  static void TearDownTestSuite() { delete tok_; }
  static EngineConfig config(bool async) {
    EngineConfig c;
    c.async_output = async;
    c.num_kv_blocks = 32;
    c.scheduler.max_model_len = 128;
    return c;
  }
  static SamplingParams params(int64_t max_tokens) {
    SamplingParams p = greedy_params();
    p.max_tokens = max_tokens;
    return p;
  }
  static Tokenizer* tok_;
};
Tokenizer* DeferredEngine::tok_ = nullptr;

TEST_P(DeferredEngine, FailingStepIsDrainedAndTheOthersCarryOn) {
  const bool async = GetParam();
  FakeModel model(tok_->vocab_size());
  const std::vector<int32_t> prompt_a = {100, 101, 102}, prompt_b = {200, 2, 201};
  std::vector<int32_t> want_a;
  {
    LLMEngine ref(model, *tok_, config(async));
    want_a = ref.generate({prompt_a}, {params(12)})[0].output_ids;
  }
  model.boom = 2;
  LLMEngine engine(model, *tok_, config(async));
  const int64_t a = engine.add_request(prompt_a, params(12));
  std::vector<int32_t> got_a;
  auto take = [&](const std::vector<RequestOutput>& outs) {
    for (const RequestOutput& o : outs)
      if (o.request_id == a)
        got_a.insert(got_a.end(), o.new_token_ids.begin(), o.new_token_ids.end());
  };
  for (int i = 0; i < 4; ++i) take(engine.step());
  const int64_t b = engine.add_request(prompt_b, params(12));
  bool failed = false;
  for (int i = 0; i < 3 && !failed; ++i) {
    try {
      take(engine.step());
    } catch (const Error& e) {
      failed = true;
      EXPECT_NE(std::string(e.what()).find("fed token 2"), std::string::npos) << e.what();
    }
  }
  ASSERT_TRUE(failed);
  EXPECT_EQ(engine.num_steps_in_flight(), 0);  // drained
  EXPECT_TRUE(engine.abort(b));
  while (engine.has_unfinished()) take(engine.step());
  // The steps lost with the failure were recomputed: a's tokens are those of a clean run.
  EXPECT_EQ(got_a, want_a);
  EXPECT_EQ(engine.block_manager().num_free_blocks(), 32);
}

TEST_P(DeferredEngine, EngineCoreAbortsEverythingOnAFailingStepAndKeepsServing) {
  const bool async = GetParam();
  FakeModel model(tok_->vocab_size());
  model.boom = 2;
  EngineCore core(std::make_unique<LLMEngine>(model, *tok_, config(async)));
  std::promise<RequestOutput> long_done, bad_done;
  // The long request's first output holds the engine thread until the bad request is queued, so
  // the long one is still running when the bad prompt's step fails (the fake model would
  // otherwise finish all 100 tokens first).
  std::promise<void> bad_queued;
  std::shared_future<void> queued = bad_queued.get_future().share();
  bool first = true;
  core.add_request({100, 101, 102}, params(100), [&, queued](const RequestOutput& o) {
    if (first) {
      first = false;
      queued.wait();
    }
    if (o.finished) long_done.set_value(o);
  });
  core.add_request({200, 2, 201}, params(4), [&](const RequestOutput& o) {
    if (o.finished) bad_done.set_value(o);
  });
  bad_queued.set_value();
  EXPECT_EQ(bad_done.get_future().get().finish_reason, "abort");
  EXPECT_EQ(long_done.get_future().get().finish_reason, "abort");
  // Still serving, and the pool is whole again.
  std::promise<RequestOutput> next;
  core.add_request({100, 101, 102}, params(5), [&](const RequestOutput& o) {
    if (o.finished) next.set_value(o);
  });
  const RequestOutput o = next.get_future().get();
  EXPECT_EQ(o.finish_reason, "length");
  EXPECT_EQ(o.output_ids.size(), 5u);
  // Shut down with a request running: it ends with "abort" and nothing hangs.
  std::promise<RequestOutput> last;
  core.add_request({100, 101, 102}, params(100), [&](const RequestOutput& r) {
    if (r.finished) last.set_value(r);
  });
  core.shutdown();
  EXPECT_EQ(last.get_future().get().finish_reason, "abort");
  EXPECT_EQ(core.num_unfinished(), 0);
  EXPECT_EQ(core.kv_cache_usage(), 0.0);
}

// Health: one failing step is not a degraded engine; kFailedStepsUnhealthy in a row are (the
// server's /health turns 503), and the next good step makes it healthy again.
TEST_P(DeferredEngine, EngineCoreIsUnhealthyWhileItsStepsKeepFailing) {
  FakeModel model(tok_->vocab_size());
  model.boom = 2;
  EngineCore core(std::make_unique<LLMEngine>(model, *tok_, config(GetParam())));
  auto run = [&](std::vector<int32_t> prompt) {
    std::promise<RequestOutput> done;
    core.add_request(std::move(prompt), params(3), [&](const RequestOutput& o) {
      if (o.finished) done.set_value(o);
    });
    return done.get_future().get().finish_reason;
  };
  EXPECT_TRUE(core.healthy());
  for (int64_t i = 0; i < EngineCore::kFailedStepsUnhealthy; ++i) {
    EXPECT_TRUE(core.healthy()) << i << " failed steps";
    EXPECT_EQ(run({200, 2, 201}), "abort");
  }
  EXPECT_FALSE(core.healthy());
  EXPECT_NE(core.last_error().find("fake model"), std::string::npos) << core.last_error();
  EXPECT_EQ(run({100, 101, 102}), "length");
  EXPECT_TRUE(core.healthy());
}

INSTANTIATE_TEST_SUITE_P(SyncAndAsync, DeferredEngine, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Async" : "Sync";
                         });

}  // namespace
}  // namespace atom

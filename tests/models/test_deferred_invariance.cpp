// Deferred output on the default model: with the runner one step ahead of the host, every
// request's output tokens, text and finish reasons are exactly those of the synchronous engine,
// greedy and seeded, through batching, chunked prefill, prefix-cache hits, preemption, stop
// strings, stop ids, min_tokens, max_tokens 1 and aborts; the KV pool is empty at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <string>
#include <vector>

#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/models/model.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {
namespace {

// What must not depend on the engine mode.
struct Result {
  std::vector<int32_t> output_ids;
  std::string text, finish_reason, raw_finish_reason;
  bool operator==(const Result&) const = default;
};
void PrintTo(const Result& r, std::ostream* os) {
  *os << "{" << r.output_ids.size() << " ids, \"" << r.text << "\", " << r.finish_reason << "/"
      << r.raw_finish_reason << "}";
}

class DeferredOutput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = default_model_path();
    ASSERT_TRUE(std::filesystem::exists(path))
        << path << " is missing: run scripts/fetch-model.sh (scripts/test.sh does)";
    file_ = GgufFile::open(path).release();
    model_ = load_model_from_gguf(*file_).release();
    tok_ = Tokenizer::from_gguf(*file_).release();
    for (const char* text :
         {"The quick brown fox", "In 1492, Columbus", "def add(a, b):\n    return",
          "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n",
          "Water boils at a temperature of",
          "<|im_start|>user\nName a color.<|im_end|>\n"
          "<|im_start|>assistant\n"})
      prompts_.push_back(tok_->encode(text, false));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
    delete file_;
  }

  // Different lengths, stop ids on (the chat prompts end by EOS), greedy or seeded sampling
  // with penalties (which read the whole output, placeholders resolved).
  static std::vector<SamplingParams> params(bool seeded, int64_t max_tokens = 24) {
    std::vector<SamplingParams> ps;
    for (size_t i = 0; i < prompts_.size(); ++i) {
      SamplingParams p;
      p.max_tokens = max_tokens + int64_t(i) * 3;
      p.stop_token_ids = tok_->stop_ids();
      if (seeded) {
        p.temperature = 0.8f;
        p.top_p = 0.95f;
        p.seed = 1000 + i;
        p.repetition_penalty = 1.1f;
        p.frequency_penalty = 0.2f;
      } else {
        p.temperature = 0.0f;
      }
      ps.push_back(p);
    }
    return ps;
  }
  static EngineConfig config(bool async, int64_t num_blocks = 512, int64_t budget = 16384,
                             bool prefix_caching = false) {
    EngineConfig c;
    c.async_output = async;
    c.num_kv_blocks = num_blocks;
    c.scheduler.max_model_len = 256;
    c.scheduler.max_num_batched_tokens = budget;
    c.enable_prefix_caching = prefix_caching;
    return c;
  }
  static std::vector<Result> run(const EngineConfig& cfg,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const std::vector<SamplingParams>& ps,
                                 int64_t* preemptions = nullptr) {
    LLMEngine engine(*model_, *tok_, cfg);
    std::vector<Result> out;
    for (const RequestOutput& o : engine.generate(prompts, ps))
      out.push_back({o.output_ids, o.text, o.finish_reason, o.raw_finish_reason});
    EXPECT_FALSE(engine.has_unfinished());
    EXPECT_EQ(engine.num_steps_in_flight(), 0);
    EXPECT_EQ(engine.block_manager().num_free_blocks(), cfg.num_kv_blocks);
    if (preemptions != nullptr) *preemptions = engine.scheduler().num_preemptions();
    return out;
  }
  // The same workload with deferred output off and on.
  static void expect_same(EngineConfig cfg, const std::vector<std::vector<int32_t>>& prompts,
                          const std::vector<SamplingParams>& ps) {
    cfg.async_output = false;
    const std::vector<Result> sync = run(cfg, prompts, ps);
    cfg.async_output = true;
    const std::vector<Result> async = run(cfg, prompts, ps);
    EXPECT_EQ(async, sync);
    for (const Result& r : async)
      EXPECT_EQ(std::count(r.output_ids.begin(), r.output_ids.end(), Sequence::kPlaceholderToken),
                0);
  }

  static GgufFile* file_;
  static Model* model_;
  static Tokenizer* tok_;
  static std::vector<std::vector<int32_t>> prompts_;
};
GgufFile* DeferredOutput::file_ = nullptr;
Model* DeferredOutput::model_ = nullptr;
Tokenizer* DeferredOutput::tok_ = nullptr;
std::vector<std::vector<int32_t>> DeferredOutput::prompts_;

TEST_F(DeferredOutput, BatchGreedyAndSeeded) {
  expect_same(config(true), prompts_, params(false));
  expect_same(config(true), prompts_, params(true));
  // Some requests end by EOS, others by length: both stop paths are compared.
  const std::vector<Result> r = run(config(true), prompts_, params(false));
  EXPECT_TRUE(std::any_of(r.begin(), r.end(), [](const Result& x) {
    return x.raw_finish_reason == "eos" || x.raw_finish_reason.starts_with("stop_");
  }));
  EXPECT_TRUE(
      std::any_of(r.begin(), r.end(), [](const Result& x) { return x.finish_reason == "length"; }));
}

TEST_F(DeferredOutput, ChunkedPrefill) {
  // 7 tokens a step: prompts in chunks (which sample nothing) mixed with decodes.
  expect_same(config(true, 512, 7), prompts_, params(false));
  expect_same(config(true, 512, 7), prompts_, params(true));
}

TEST_F(DeferredOutput, PrefixCacheHits) {
  const std::vector<int32_t> prefix = tok_->encode(
      "You are a careful assistant. Answer briefly and precisely, never make up facts you do "
      "not know, say so when a question is ambiguous, and keep every answer to one short "
      "sentence. Question:",
      false);
  std::vector<std::vector<int32_t>> prompts;
  for (const char* q : {" What is the boiling point of water?", " Who wrote Hamlet?",
                        " What is the boiling point of water?", " Name a prime number."}) {
    std::vector<int32_t> p = prefix;
    for (int32_t t : tok_->encode(q, false)) p.push_back(t);
    prompts.push_back(std::move(p));
  }
  std::vector<SamplingParams> ps = params(false);
  ps.resize(prompts.size());
  // A chunk budget makes later prompts arrive after earlier ones computed the shared blocks.
  expect_same(config(true, 512, 40, /*prefix_caching=*/true), prompts, ps);
  // One engine, request after request: the later ones hit the cache in both modes.
  for (const bool async : {false, true}) {
    LLMEngine engine(*model_, *tok_, config(async, 512, 16384, true));
    const RequestOutput a = engine.generate({prompts[0]}, {ps[0]})[0];
    const RequestOutput b = engine.generate({prompts[1]}, {ps[0]})[0];
    const RequestOutput a2 = engine.generate({prompts[0]}, {ps[0]})[0];
    EXPECT_EQ(b.num_cached_tokens, int64_t(prefix.size()) / 16 * 16) << async;
    EXPECT_GE(a2.num_cached_tokens, b.num_cached_tokens) << async;
    EXPECT_EQ(a2.output_ids, a.output_ids) << async;
    EXPECT_EQ(engine.block_manager().usage(), 0.0);
  }
}

TEST_F(DeferredOutput, Preemption) {
  // 9 blocks of 16 tokens for 6 growing sequences: some are preempted and recomputed, some
  // while their token is in flight.
  for (const bool seeded : {false, true}) {
    EngineConfig c = config(true, 9);
    c.scheduler.max_model_len = 128;
    int64_t preempted_sync = 0, preempted_async = 0;
    // Every sequence runs to max_tokens, so the pool runs out whatever the samples are.
    std::vector<SamplingParams> ps = params(seeded);
    for (SamplingParams& p : ps) {
      p.ignore_eos = true;
      p.stop_token_ids.clear();
    }
    c.async_output = false;
    const std::vector<Result> sync = run(c, prompts_, ps, &preempted_sync);
    c.async_output = true;
    const std::vector<Result> async = run(c, prompts_, ps, &preempted_async);
    EXPECT_EQ(async, sync) << seeded;
    EXPECT_GT(preempted_sync, 0);
    EXPECT_GT(preempted_async, 0);
  }
}

TEST_F(DeferredOutput, StopStringsAndStopIds) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 40;
  p.ignore_eos = true;
  const std::vector<Result> full = run(config(false), {prompts_[4]}, {p});
  ASSERT_GE(full[0].output_ids.size(), 12u);
  ASSERT_GE(full[0].text.size(), 16u);
  std::vector<SamplingParams> ps(4, p);
  ps[0].stop = {full[0].text.substr(6, 4)};        // mid-token stop string
  ps[1].stop_token_ids = {full[0].output_ids[7]};  // a stop id of the greedy text
  ps[1].ignore_eos = false;
  ps[2].stop = {"\n\n\n\n", full[0].text.substr(12, 3)};  // two stop strings, one matches
  ps[3].stop = {full[0].text.substr(3, 5)};
  ps[3].min_tokens = 6;  // defers the stop string
  const std::vector<std::vector<int32_t>> prompts(4, prompts_[4]);
  expect_same(config(true), prompts, ps);
  const std::vector<Result> r = run(config(true), prompts, ps);
  EXPECT_EQ(r[0].raw_finish_reason, "stop_sequence");
  EXPECT_EQ(r[0].text, full[0].text.substr(0, full[0].text.find(ps[0].stop[0])));
  EXPECT_EQ(r[1].raw_finish_reason, "stop_" + std::to_string(full[0].output_ids[7]));
  EXPECT_EQ(r[2].raw_finish_reason, "stop_sequence");
  EXPECT_GE(r[3].output_ids.size(), 6u);
}

TEST_F(DeferredOutput, MinTokensAndMaxTokensOne) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 64;
  p.stop_token_ids = tok_->stop_ids();
  const std::vector<int32_t> chat = prompts_[3];
  const std::vector<Result> natural = run(config(true), {chat}, {p});
  ASSERT_EQ(natural[0].finish_reason, "stop");
  std::vector<SamplingParams> ps(4, p);
  ps[0].min_tokens = int64_t(natural[0].output_ids.size()) + 3;  // EOS masked, then allowed
  ps[1].max_tokens = 1;
  ps[2].max_tokens = 1;
  ps[2].ignore_eos = true;
  // EOS unmasked from the natural EOS position on: the natural output.
  ps[3].min_tokens = int64_t(natural[0].output_ids.size()) - 1;
  const std::vector<std::vector<int32_t>> prompts(4, chat);
  expect_same(config(true), prompts, ps);
  const std::vector<Result> r = run(config(true), prompts, ps);
  EXPECT_GE(r[0].output_ids.size(), natural[0].output_ids.size() + 3);
  EXPECT_EQ(r[1].output_ids.size(), 1u);
  EXPECT_EQ(r[1].finish_reason, "length");
  EXPECT_EQ(r[2].output_ids.size(), 1u);
  EXPECT_EQ(r[3], natural[0]);
}

TEST_F(DeferredOutput, StreamedTokensAndDeltasEqualTheFinalOutput) {
  // The token a finishing request samples one step late is never streamed.
  std::vector<SamplingParams> ps = params(false);
  ps[1].stop = {"\n"};
  LLMEngine engine(*model_, *tok_, config(true));
  std::vector<int64_t> ids;
  for (size_t i = 0; i < prompts_.size(); ++i)
    ids.push_back(engine.add_request(prompts_[i], ps[i]));
  std::vector<std::vector<int32_t>> streamed(ids.size());
  std::vector<std::string> text(ids.size());
  std::vector<RequestOutput> final(ids.size());
  while (engine.has_unfinished())
    for (RequestOutput& o : engine.step()) {
      const size_t i = size_t(std::find(ids.begin(), ids.end(), o.request_id) - ids.begin());
      ASSERT_LT(i, ids.size());
      ASSERT_TRUE(final[i].output_ids.empty()) << "output after the final one";
      streamed[i].insert(streamed[i].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      text[i] += o.delta_text;
      if (o.finished) final[i] = std::move(o);
    }
  const std::vector<Result> sync = run(config(false), prompts_, ps);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(streamed[i], final[i].output_ids);
    EXPECT_EQ(text[i], final[i].text);
    EXPECT_EQ(final[i].output_ids, sync[i].output_ids);
    EXPECT_EQ(final[i].text, sync[i].text);
  }
}

TEST_F(DeferredOutput, AbortsMidFlight) {
  const std::vector<SamplingParams> ps = params(false, 40);
  const std::vector<Result> sync = run(config(false), prompts_, ps);
  LLMEngine engine(*model_, *tok_, config(true, 64));
  std::vector<int64_t> ids;
  for (size_t i = 0; i < prompts_.size(); ++i)
    ids.push_back(engine.add_request(prompts_[i], ps[i]));
  std::vector<RequestOutput> final(ids.size());
  std::vector<std::vector<int32_t>> streamed(ids.size());
  auto take = [&](std::vector<RequestOutput> outs) {
    for (RequestOutput& o : outs) {
      const size_t i = size_t(std::find(ids.begin(), ids.end(), o.request_id) - ids.begin());
      streamed[i].insert(streamed[i].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (o.finished) final[i] = std::move(o);
    }
  };
  for (int s = 0; s < 4; ++s) take(engine.step());
  ASSERT_EQ(engine.num_steps_in_flight(), 1);
  // Request 0 with a token in flight; request 5 right after its prefill was submitted.
  EXPECT_TRUE(engine.abort(ids[0]));
  take(engine.step());
  EXPECT_TRUE(engine.abort(ids[5]));
  EXPECT_FALSE(engine.abort(ids[0]));
  while (engine.has_unfinished()) take(engine.step());
  for (const size_t i : {size_t(0), size_t(5)}) {
    EXPECT_EQ(final[i].finish_reason, "abort");
    EXPECT_EQ(streamed[i], final[i].output_ids);
    // What it produced before the abort is the start of its synchronous output.
    ASSERT_LE(final[i].output_ids.size(), sync[i].output_ids.size());
    EXPECT_TRUE(std::equal(final[i].output_ids.begin(), final[i].output_ids.end(),
                           sync[i].output_ids.begin()));
  }
  for (size_t i = 1; i < 5; ++i) EXPECT_EQ(final[i].output_ids, sync[i].output_ids) << i;
  EXPECT_EQ(engine.num_steps_in_flight(), 0);
  EXPECT_EQ(engine.block_manager().usage(), 0.0);
  EXPECT_EQ(engine.block_manager().num_free_blocks(), 64);
}

TEST_F(DeferredOutput, EngineCoreServesAndShutsDownWithStepsInFlight) {
  const std::vector<SamplingParams> ps = params(true);
  const std::vector<Result> sync = run(config(false), prompts_, ps);
  EngineCore core(std::make_unique<LLMEngine>(*model_, *tok_, config(true)));
  std::vector<std::promise<RequestOutput>> done(prompts_.size());
  std::vector<std::vector<int32_t>> streamed(prompts_.size());
  for (size_t i = 0; i < prompts_.size(); ++i)
    core.add_request(prompts_[i], ps[i], [&, i](const RequestOutput& o) {
      streamed[i].insert(streamed[i].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (o.finished) done[i].set_value(o);
    });
  for (size_t i = 0; i < prompts_.size(); ++i) {
    const RequestOutput o = done[i].get_future().get();
    EXPECT_EQ((Result{o.output_ids, o.text, o.finish_reason, o.raw_finish_reason}), sync[i]);
    EXPECT_EQ(streamed[i], o.output_ids);
  }
  EXPECT_EQ(core.num_unfinished(), 0);
  std::promise<std::string> last;
  core.add_request(prompts_[0], params(false, 200)[0], [&](const RequestOutput& o) {
    if (o.finished) last.set_value(o.finish_reason);
  });
  core.shutdown();
  EXPECT_EQ(last.get_future().get(), "abort");
  EXPECT_EQ(core.kv_cache_usage(), 0.0);  // the loop drained the step in flight before exiting
}

}  // namespace
}  // namespace atom

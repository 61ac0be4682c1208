// The engine on the default model, greedy: batching, prefix caching, chunked prefill and
// preemption must not change a single token, and stop strings, min_tokens, aborts and the
// threaded EngineCore behave as OpenAI users expect.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <future>

#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/models/model.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {
namespace {

class EngineInvariance : public ::testing::Test {
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
          "Paris is the capital of", "Water boils at a temperature of",
          "The three primary colors are"})
      prompts_.push_back(tok_->encode(text, false));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
    delete file_;
  }

  static SamplingParams greedy(int64_t max_tokens) {
    SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    return p;
  }
  static EngineConfig config(int64_t num_blocks = 512, int64_t budget = 16384,
                             bool prefix_caching = false) {
    EngineConfig c;
    c.num_kv_blocks = num_blocks;
    c.scheduler.max_model_len = 256;
    c.scheduler.max_num_batched_tokens = budget;
    c.enable_prefix_caching = prefix_caching;
    return c;
  }
  static std::vector<std::vector<int32_t>> run(const EngineConfig& cfg,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               int64_t max_tokens) {
    LLMEngine engine(*model_, *tok_, cfg);
    std::vector<std::vector<int32_t>> out;
    for (const RequestOutput& o : engine.generate(prompts, {greedy(max_tokens)}))
      out.push_back(o.output_ids);
    EXPECT_EQ(engine.block_manager().num_free_blocks(), cfg.num_kv_blocks);
    return out;
  }
  static const std::vector<std::vector<int32_t>>& singles() {
    static const std::vector<std::vector<int32_t>> s = [] {
      std::vector<std::vector<int32_t>> r;
      for (const auto& p : prompts_) r.push_back(run(config(), {p}, 24)[0]);
      return r;
    }();
    return s;
  }

  static GgufFile* file_;
  static Model* model_;
  static Tokenizer* tok_;
  static std::vector<std::vector<int32_t>> prompts_;
};
GgufFile* EngineInvariance::file_ = nullptr;
Model* EngineInvariance::model_ = nullptr;
Tokenizer* EngineInvariance::tok_ = nullptr;
std::vector<std::vector<int32_t>> EngineInvariance::prompts_;

TEST_F(EngineInvariance, BatchEqualsSingles) {
  EXPECT_EQ(run(config(), prompts_, 24), singles());
}

TEST_F(EngineInvariance, ChunkedPrefillEqualsOneShot) {
  // A budget of 7 tokens per step: prompts are prefilled in chunks, mixed with decodes.
  EXPECT_EQ(run(config(512, 7), prompts_, 24), singles());
}

TEST_F(EngineInvariance, PreemptionKeepsTokens) {
  // 9 blocks of 16 tokens for 6 sequences growing to ~30 tokens each: some must be preempted
  // (recomputed) to let the others finish.
  EngineConfig c = config(9);
  c.scheduler.max_model_len = 128;  // 8 blocks: one sequence always fits
  EXPECT_EQ(run(c, prompts_, 24), singles());
}

TEST_F(EngineInvariance, PrefixCacheHitEqualsColdRun) {
  // A 40-token shared prefix: the second request hits two cached blocks.
  std::vector<int32_t> prefix = tok_->encode(
      "You are a careful assistant. Answer briefly and precisely, never make up facts you do "
      "not know, say so when a question is ambiguous, and keep every answer to one short "
      "sentence. Question:",
      false);
  ASSERT_GE(prefix.size(), 33u);
  std::vector<int32_t> a = prefix, b = prefix;
  for (int32_t t : tok_->encode(" What is the boiling point of water?", false)) a.push_back(t);
  for (int32_t t : tok_->encode(" Who wrote Hamlet?", false)) b.push_back(t);

  const auto cold_b = run(config(), {b}, 16)[0];
  LLMEngine engine(*model_, *tok_, config(512, 16384, /*prefix_caching=*/true));
  const RequestOutput ra = engine.generate({a}, {greedy(16)})[0];
  EXPECT_EQ(ra.num_cached_tokens, 0);
  const RequestOutput rb = engine.generate({b}, {greedy(16)})[0];
  EXPECT_EQ(rb.num_cached_tokens, int64_t(prefix.size()) / 16 * 16);
  EXPECT_GT(rb.num_cached_tokens, 0);
  EXPECT_EQ(rb.output_ids, cold_b);
  // The same prompt again: everything but the last block is cached.
  const RequestOutput rb2 = engine.generate({b}, {greedy(16)})[0];
  EXPECT_EQ(rb2.output_ids, cold_b);
  EXPECT_GE(rb2.num_cached_tokens, rb.num_cached_tokens);
}

TEST_F(EngineInvariance, StopStringsAreMatchedOnTextAndRemoved) {
  LLMEngine engine(*model_, *tok_, config());
  SamplingParams p = greedy(40);
  const RequestOutput full = engine.generate({prompts_[3]}, {p})[0];
  ASSERT_GE(full.text.size(), 12u);
  // Stop at a piece of the greedy text that starts mid-token.
  const std::string stop = full.text.substr(5, 4);
  p.stop = {stop};
  const RequestOutput cut = engine.generate({prompts_[3]}, {p})[0];
  EXPECT_EQ(cut.finish_reason, "stop");
  EXPECT_EQ(cut.raw_finish_reason, "stop_sequence");
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
}

TEST_F(EngineInvariance, StreamedDeltasEqualTheFinalText) {
  LLMEngine engine(*model_, *tok_, config());
  SamplingParams p = greedy(30);
  const std::string reference = engine.generate({prompts_[1]}, {p})[0].text;
  p.stop = {reference.substr(reference.size() / 2, 3)};
  const int64_t id = engine.add_request(prompts_[1], p);
  std::string streamed, final_text;
  while (engine.has_unfinished())
    for (const RequestOutput& o : engine.step()) {
      ASSERT_EQ(o.request_id, id);
      streamed += o.delta_text;
      if (o.finished) final_text = o.text;
    }
  EXPECT_EQ(streamed, final_text);
  EXPECT_EQ(final_text, reference.substr(0, reference.find(p.stop[0])));
}

TEST_F(EngineInvariance, MinTokensAndMaxTokens) {
  LLMEngine engine(*model_, *tok_, config());
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 64;
  p.stop_token_ids = tok_->stop_ids();
  const std::vector<int32_t> chat = tok_->encode(
      "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n", false);
  const RequestOutput natural = engine.generate({chat}, {p})[0];
  ASSERT_EQ(natural.finish_reason, "stop");
  const int64_t n = int64_t(natural.output_ids.size());
  p.min_tokens = n + 5;
  const RequestOutput longer = engine.generate({chat}, {p})[0];
  EXPECT_GE(int64_t(longer.output_ids.size()), n + 5);
  p.min_tokens = 0;
  p.max_tokens = 2;
  const RequestOutput capped = engine.generate({chat}, {p})[0];
  EXPECT_EQ(capped.output_ids.size(), 2u);
  EXPECT_EQ(capped.finish_reason, "length");
}

TEST_F(EngineInvariance, AbortFreesBlocks) {
  LLMEngine engine(*model_, *tok_, config(64));
  const int64_t a = engine.add_request(prompts_[0], greedy(50));
  const int64_t b = engine.add_request(prompts_[1], greedy(50));
  engine.step();
  engine.step();
  EXPECT_LT(engine.block_manager().num_free_blocks(), 64);
  EXPECT_TRUE(engine.abort(a));
  EXPECT_FALSE(engine.abort(a));
  bool saw_abort = false;
  while (engine.has_unfinished())
    for (const RequestOutput& o : engine.step())
      if (o.request_id == a) {
        EXPECT_TRUE(o.finished);
        EXPECT_EQ(o.finish_reason, "abort");
        saw_abort = true;
      } else {
        EXPECT_EQ(o.request_id, b);
      }
  EXPECT_TRUE(saw_abort);
  EXPECT_EQ(engine.block_manager().num_free_blocks(), 64);
}

TEST_F(EngineInvariance, EngineCoreThreadServesConcurrentRequests) {
  // The references first: a Model runs one forward at a time, and the core's thread owns it.
  const std::vector<std::vector<int32_t>>& expected = singles();
  EngineCore core(std::make_unique<LLMEngine>(*model_, *tok_, config()));
  std::vector<std::promise<std::vector<int32_t>>> done(prompts_.size());
  std::vector<std::vector<int32_t>> got(prompts_.size());
  for (size_t i = 0; i < prompts_.size(); ++i) {
    core.add_request(prompts_[i], greedy(24), [&, i](const RequestOutput& o) {
      got[i].insert(got[i].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (o.finished) done[i].set_value(o.output_ids);
    });
  }
  for (size_t i = 0; i < prompts_.size(); ++i) {
    EXPECT_EQ(done[i].get_future().get(), expected[i]);
    EXPECT_EQ(got[i], expected[i]);
  }
  EXPECT_EQ(core.num_unfinished(), 0);
  // Bad input is rejected in the caller's thread and leaves the engine serving.
  EXPECT_THROW(core.add_request({}, greedy(4), [](const RequestOutput&) {}), Error);
  // Abort through the core; shutdown with a request in flight ends it with "abort".
  std::promise<std::string> reason;
  const int64_t id = core.add_request(prompts_[0], greedy(200), [&](const RequestOutput& o) {
    if (o.finished) reason.set_value(o.finish_reason);
  });
  core.abort(id);
  EXPECT_EQ(reason.get_future().get(), "abort");
  std::promise<std::string> last;
  core.add_request(prompts_[1], greedy(200), [&](const RequestOutput& o) {
    if (o.finished) last.set_value(o.finish_reason);
  });
  core.shutdown();
  EXPECT_EQ(last.get_future().get(), "abort");
}

}  // namespace
}  // namespace atom

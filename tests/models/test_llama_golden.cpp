// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers goldens made by
// scripts/gen_model_goldens.py: last-position logits within 1e-3 relative error, 32 greedy
// tokens exactly, and the tokenizer's ids equal to HF's.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/models/model.h"
#include "atom/engine/llm_engine.h"
#include "atom/runner/model_runner.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {
namespace {

using nlohmann::json;

struct Golden {
  json meta;
  std::vector<float> logits;
};

const Golden& golden() {
  static const Golden g = [] {
    Golden g;
    const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/goldens/";
    std::ifstream f(dir + "smollm2-135m-instruct-q4_1.json");
    EXPECT_TRUE(f.good());
    g.meta = json::parse(f);
    std::ifstream lf(dir + g.meta["logits_file"].get<std::string>(), std::ios::binary);
    lf.seekg(0, std::ios::end);
    g.logits.resize(size_t(lf.tellg()) / 4);
    lf.seekg(0);
    lf.read(reinterpret_cast<char*>(g.logits.data()), std::streamsize(g.logits.size() * 4));
    return g;
  }();
  return g;
}

class LlamaGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = default_model_path();
    ASSERT_TRUE(std::filesystem::exists(path))
        << path << " is missing: run scripts/fetch-model.sh (scripts/test.sh does)";
    file_ = GgufFile::open(path).release();
    model_ = load_model_from_gguf(*file_).release();
    tok_ = Tokenizer::from_gguf(*file_).release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
    delete file_;
  }
  static std::vector<int32_t> ids_of(const json& c, const char* key) {
    return c[key].get<std::vector<int32_t>>();
  }
  // Logits of the last prompt position, prefilling in chunks of `chunk` tokens.
  static std::vector<float> last_logits(const std::vector<int32_t>& ids, int64_t chunk) {
    const int64_t num_blocks = (int64_t(ids.size()) + 15) / 16;
    ModelRunner runner(*model_, num_blocks, 16);
    std::vector<int32_t> table(static_cast<size_t>(num_blocks));
    for (int64_t i = 0; i < num_blocks; ++i) table[size_t(i)] = int32_t(num_blocks - 1 - i);
    KvCache kv(model_->config().num_hidden_layers, num_blocks, 16,
               model_->config().num_key_value_heads, model_->config().head_dim);
    std::vector<float> logits;
    for (int64_t s = 0; s < int64_t(ids.size()); s += chunk) {
      const int64_t n = std::min<int64_t>(chunk, int64_t(ids.size()) - s);
      const StepSeq step{0, ids, int64_t(ids.size()), s, n, table, true, nullptr};
      model_->forward(runner.plan({&step, 1}), kv, logits);
    }
    return logits;
  }
  // Greedy generation through the engine.
  static RequestOutput greedy(const std::vector<int32_t>& ids, int64_t max_tokens, bool ignore_eos,
                              int64_t max_model_len = 512) {
    EngineConfig cfg;
    cfg.scheduler.max_model_len = max_model_len;
    cfg.num_kv_blocks = 256;
    LLMEngine engine(*model_, *tok_, cfg);
    SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    p.ignore_eos = ignore_eos;
    if (!ignore_eos) p.stop_token_ids = tok_->stop_ids();
    return engine.generate({ids}, {p})[0];
  }

  static GgufFile* file_;
  static Model* model_;
  static Tokenizer* tok_;
};
GgufFile* LlamaGolden::file_ = nullptr;
Model* LlamaGolden::model_ = nullptr;
Tokenizer* LlamaGolden::tok_ = nullptr;

TEST_F(LlamaGolden, ConfigFromGguf) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 8192);
}

TEST_F(LlamaGolden, TokenizerMatchesHf) {
  for (const json& c : golden().meta["cases"]) {
    EXPECT_EQ(tok_->encode(c["prompt"].get<std::string>(), false), ids_of(c, "prompt_ids"))
        << c["name"];
  }
}

TEST_F(LlamaGolden, LastPositionLogitsMatchTransformers) {
  const int64_t vocab = golden().meta["vocab_size"].get<int64_t>();
  ASSERT_GE(golden().meta["cases"].size(), 4u);
  for (const json& c : golden().meta["cases"]) {
    const std::vector<float> got = last_logits(ids_of(c, "prompt_ids"), 16384);
    ASSERT_EQ(int64_t(got.size()), vocab);
    const float* want = golden().logits.data() + c["logits_offset"].get<size_t>();
    double max_err = 0, max_ref = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      max_err = std::max(max_err, std::fabs(double(got[size_t(i)]) - want[i]));
      max_ref = std::max(max_ref, std::fabs(double(want[i])));
    }
    const double rel = max_err / max_ref;
    EXPECT_LE(rel, 1e-3) << c["name"] << ": max |atom - hf| = " << max_err
                         << ", max |hf| = " << max_ref;
    RecordProperty(c["name"].get<std::string>() + "_rel_err", std::to_string(rel));
  }
}

TEST_F(LlamaGolden, ChunkedPrefillEqualsOneShot) {
  const json& c = golden().meta["cases"][4];
  const std::vector<int32_t> ids = ids_of(c, "prompt_ids");
  const std::vector<float> one = last_logits(ids, 16384);
  for (int64_t chunk : {1, 7, 16, 17}) {
    const std::vector<float> chunked = last_logits(ids, chunk);
    double max_err = 0;
    for (size_t i = 0; i < one.size(); ++i)
      max_err = std::max(max_err, std::fabs(double(one[i]) - chunked[i]));
    EXPECT_LE(max_err, 1e-3) << "chunk " << chunk;
  }
}

TEST_F(LlamaGolden, GreedyTokensMatchTransformers) {
  for (const json& c : golden().meta["cases"]) {
    const RequestOutput r = greedy(ids_of(c, "prompt_ids"), int64_t(c["greedy_ids"].size()), true);
    EXPECT_EQ(r.output_ids, ids_of(c, "greedy_ids")) << c["name"];
    EXPECT_EQ(r.finish_reason, "length");
  }
}

TEST_F(LlamaGolden, ChatAnswersParis) {
  for (const json& c : golden().meta["cases"]) {
    if (c["name"] != "chat_capital") continue;
    const RequestOutput r = greedy(ids_of(c, "prompt_ids"), 32, false);
    EXPECT_NE(r.text.find("Paris"), std::string::npos) << r.text;
    EXPECT_EQ(r.finish_reason, "stop");
    EXPECT_EQ(r.raw_finish_reason, "eos");
  }
}

TEST_F(LlamaGolden, RejectsBadPrompts) {
  EngineConfig cfg;
  cfg.scheduler.max_model_len = 8;
  cfg.num_kv_blocks = 4;
  LLMEngine engine(*model_, *tok_, cfg);
  SamplingParams p;
  p.max_tokens = 1;
  EXPECT_THROW(engine.add_request({}, p), Error);
  try {
    engine.add_request(std::vector<int32_t>(8, 1), p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("context length"), std::string::npos) << e.what();
  }
  EXPECT_THROW(engine.add_request({1, 2, 999999}, p), Error);  // id beyond the vocabulary
  EXPECT_FALSE(engine.has_unfinished());
}

}  // namespace
}  // namespace atom

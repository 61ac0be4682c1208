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
#include "atom/runner/generate.h"
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
    const ModelConfig& cfg = model_->config();
    const int64_t num_blocks = (int64_t(ids.size()) + 15) / 16;
    KvCache kv(cfg.num_hidden_layers, num_blocks, 16, cfg.num_key_value_heads, cfg.head_dim);
    std::vector<float> logits;
    for (int64_t s = 0; s < int64_t(ids.size()); s += chunk) {
      const int64_t n = std::min<int64_t>(chunk, int64_t(ids.size()) - s);
      model_->forward(plan_single_sequence(ids, s, n, num_blocks), kv, logits);
    }
    return logits;
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
    GenerateOptions opts;
    opts.sampling.temperature = 0.0f;
    opts.sampling.max_tokens = int64_t(c["greedy_ids"].size());
    opts.sampling.ignore_eos = true;
    const GenerateResult r = generate(*model_, ids_of(c, "prompt_ids"), opts);
    EXPECT_EQ(r.output_ids, ids_of(c, "greedy_ids")) << c["name"];
    EXPECT_EQ(r.finish_reason, "length");
  }
}

TEST_F(LlamaGolden, ChatAnswersParis) {
  for (const json& c : golden().meta["cases"]) {
    if (c["name"] != "chat_capital") continue;
    GenerateOptions opts;
    opts.sampling.temperature = 0.0f;
    opts.sampling.max_tokens = 32;
    opts.sampling.stop_token_ids = tok_->stop_ids();
    const GenerateResult r = generate(*model_, ids_of(c, "prompt_ids"), opts);
    const std::string text = tok_->decode(r.output_ids, true);
    EXPECT_NE(text.find("Paris"), std::string::npos) << text;
    EXPECT_EQ(r.finish_reason, "stop");
  }
}

TEST_F(LlamaGolden, RejectsBadPrompts) {
  GenerateOptions opts;
  EXPECT_THROW(generate(*model_, {}, opts), Error);
  opts.max_model_len = 8;
  try {
    generate(*model_, std::vector<int32_t>(8, 1), opts);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
    EXPECT_NE(std::string(e.what()).find("context length"), std::string::npos);
  }
}

}  // namespace
}  // namespace atom

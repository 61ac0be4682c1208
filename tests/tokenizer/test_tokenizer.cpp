// Tokenizer behaviour beyond the shared suites: the SmolLM2 model file, special tokens written in
// text, the streaming detokenizer on characters split across tokens, merge order on hand-made
// vocabularies, corrupt vocabularies, UTF-8 handling, thread safety and speed.
#include "atom/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/tokenizer/pre_tokenizer.h"
#include "atom/tokenizer/unicode.h"
#include "tokenizer_test_util.h"

namespace atom {
namespace {

using test::escape;
using Ids = std::vector<int32_t>;

// The default model, fetched by scripts/fetch-model.sh (scripts/test.sh runs it).
static std::string test_model_path() { return default_model_path(); }

struct Loaded {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
};

Loaded load(const std::string& path) {
  Loaded l;
  l.file = GgufFile::open(path);
  l.tok = Tokenizer::from_gguf(*l.file);
  return l;
}

bool have_shared() { return std::filesystem::is_directory(test::shared_tokenizer_dir()); }

Loaded load_shared(const std::string& name) {
  return load(test::shared_tokenizer_dir() + "/ggml-vocab-" + name + ".gguf");
}

#define REQUIRE_SHARED()                                                           \
  do {                                                                             \
    if (!have_shared())                                                            \
      GTEST_SKIP() << "shared test data absent: " << test::shared_tokenizer_dir(); \
  } while (0)

// Streams ids through a detokenizer; returns the pieces push() returned, then flush()'s.
std::vector<std::string> stream(const Tokenizer& tok, const Ids& ids, bool skip_special = false) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::vector<std::string> pieces;
  for (const int32_t id : ids) pieces.push_back(detok.push(id));
  pieces.push_back(detok.flush());
  return pieces;
}

std::string join(const std::vector<std::string>& pieces) {
  std::string s;
  for (const auto& p : pieces) s += p;
  return s;
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct (byte-level BPE, pre "smollm"). Expected ids from HF tokenizers.

class SmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(test_model_path()))
        << "the SmolLM2 model file is missing: " << test_model_path()
        << " (run scripts/fetch-model.sh)";
    l_ = load(test_model_path());
  }
  const Tokenizer& tok() const { return *l_.tok; }
  Loaded l_;
};

TEST_F(SmolLM2, Metadata) {
  EXPECT_EQ(tok().kind(), Tokenizer::Kind::kByteLevelBpe);
  EXPECT_EQ(tok().vocab_size(), 49152);
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_FALSE(tok().add_bos());  // the file says add_bos_token = false
  EXPECT_EQ(tok().token_to_id("<|im_start|>"), 1);
  EXPECT_EQ(tok().token_to_id("<|im_end|>"), 2);
  EXPECT_EQ(tok().token_to_id("\xC4\xA0world"), 905);  // "Ġworld", as stored
  EXPECT_FALSE(tok().token_to_id("no such token").has_value());
  EXPECT_TRUE(tok().is_special(0));
  EXPECT_TRUE(tok().is_special(2));
  EXPECT_FALSE(tok().is_special(905));
  EXPECT_NE(tok().chat_template().find("<|im_start|>"), std::string::npos);
  const Ids stops = tok().stop_ids();
  ASSERT_FALSE(stops.empty());
  EXPECT_EQ(stops[0], 2);                                            // eos (<|im_end|>) first
  EXPECT_NE(std::find(stops.begin(), stops.end(), 0), stops.end());  // <|endoftext|>
  EXPECT_EQ(std::find(stops.begin(), stops.end(), 1), stops.end());  // not <|im_start|>
  EXPECT_EQ(tok().token_bytes(905), " world");
  EXPECT_EQ(tok().token_bytes(2), "<|im_end|>");
}

TEST_F(SmolLM2, EncodesLikeHf) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"Hello, world!", {19556, 28, 905, 17}},
      {"The year 2024 had 366 days.",
       {504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30}},
      {"naïve café 日本語 🚀",
       {3546, 46494, 37366, 17097, 241, 115, 40993, 179, 120, 248, 15107, 244, 218}},
      {"def f(x):\n    return x ** 2  # square",
       {1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 216, 907, 5222}},
      {"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
       "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
       "<|im_start|>assistant\n",
       {1,   9690, 198, 2683, 359,   253,  5356, 5646, 11173, 3365, 3511, 308,  34519,
        28,  7018, 411, 407,  19712, 8182, 2,    198,  1,     4093, 198,  1780, 314,
        260, 3575, 282, 4649, 47,    2,    198,  1,    520,   9531, 198}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [text, ids] = cases[i];
    EXPECT_EQ(tok().encode(text, /*add_special_tokens=*/false), ids)
        << "case " << i << " input " << escape(text);
    // add_bos_token is false for this model: add_special_tokens changes nothing.
    EXPECT_EQ(tok().encode(text, /*add_special_tokens=*/true), ids) << "case " << i;
    EXPECT_EQ(tok().decode(ids), text) << "case " << i;
  }
}

TEST_F(SmolLM2, DecodeSkipsSpecialTokensOnRequest) {
  const Ids ids = tok().encode("<|im_start|>user\nHi<|im_end|>", false);
  ASSERT_EQ(ids.front(), 1);
  ASSERT_EQ(ids.back(), 2);
  EXPECT_EQ(tok().decode(ids, /*skip_special_tokens=*/false), "<|im_start|>user\nHi<|im_end|>");
  EXPECT_EQ(tok().decode(ids, /*skip_special_tokens=*/true), "user\nHi");
  EXPECT_EQ(join(stream(tok(), ids, true)), "user\nHi");
}

TEST_F(SmolLM2, EncodesTenKilobytesQuickly) {
  // English prose of about 10 KB; the encode must take well under 10 ms.
  const std::string sentence =
      "The quick brown fox jumps over the lazy dog, and then it rested for 12 minutes; "
      "inference engines should tokenize text quickly and they're expected to. ";
  std::string text;
  while (text.size() < 10240) text += sentence;
  double best_ms = 1e9;
  size_t n_tokens = 0;
  for (int rep = 0; rep < 10; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = tok().encode(text, false);
    const auto t1 = std::chrono::steady_clock::now();
    best_ms = std::min(best_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
    n_tokens = ids.size();
  }
  RecordProperty("encode_10kb_ms", std::to_string(best_ms));
  EXPECT_GT(n_tokens, 1500u);
  EXPECT_LT(best_ms, 10.0) << "encoding " << text.size() << " bytes took " << best_ms << " ms";
}

TEST_F(SmolLM2, ConcurrentEncodesAgree) {
  const std::string text = "Concurrent tokenization: 1234 naïve 日本語 <|im_end|> done.";
  const Ids expected = tok().encode(text, false);
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 200; ++rep) results[t] = tok().encode(text, false);
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

// ---------------------------------------------------------------------------------------------
// Special tokens written in the text.

TEST(SpecialTokens, MatchedAsSingleTokensLongestFirst) {
  REQUIRE_SHARED();
  const Loaded gpt2 = load_shared("gpt-2");
  EXPECT_EQ(gpt2.tok->encode("a<|endoftext|>b", false), (Ids{64, 50256, 65}));
  EXPECT_EQ(gpt2.tok->encode("<|endoftext|><|endoftext|>", false), (Ids{50256, 50256}));
  // An unfinished marker is plain text.
  EXPECT_EQ(gpt2.tok->decode(gpt2.tok->encode("a<|endoftext|", false)), "a<|endoftext|");
  const Ids partial = gpt2.tok->encode("a<|endoftext|", false);
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 50256), 0);

  const Loaded starcoder = load_shared("starcoder");
  // <pr_status> and <pr_diff_hunk_comment_line> start with <pr>: the longest match wins.
  EXPECT_EQ(starcoder.tok->encode("<pr_status>x", false), (Ids{19, 125}));
  EXPECT_EQ(starcoder.tok->encode("<pr>x<pr_diff_hunk_comment_line>", false), (Ids{18, 125, 33}));
  EXPECT_EQ(starcoder.tok->encode("a<|endoftext|>b", false), (Ids{102, 0, 103}));
}

TEST(SpecialTokens, SentencePieceStretchesGetTheirOwnPrefixSpace) {
  REQUIRE_SHARED();
  const Loaded spm = load_shared("llama-spm");
  // "▁a", <unk>, "▁b": each stretch between added tokens is normalized on its own.
  EXPECT_EQ(spm.tok->encode("a<unk>b", false), (Ids{263, 0, 289}));
  EXPECT_EQ(spm.tok->encode("Hello world", true), (Ids{1, 15043, 3186}));  // BOS by default
  EXPECT_EQ(spm.tok->decode(Ids{1, 15043, 3186}), "<s> Hello world");
  EXPECT_EQ(spm.tok->decode(Ids{1, 15043, 3186}, true), "Hello world");
}

TEST(SpecialTokens, Phi3AddedTokensEatFollowingWhitespace) {
  REQUIRE_SHARED();
  const Loaded phi3 = load_shared("phi-3");
  // Phi-3's tokenizer.json marks <|user|>, <|end|>, </s>, ... rstrip, but not <s>.
  EXPECT_EQ(phi3.tok->encode("<|user|>\nHi there<|end|>\n<|assistant|>", false),
            (Ids{32010, 6324, 727, 32007, 32001}));
  EXPECT_EQ(phi3.tok->encode("<s> x</s>  y", false), (Ids{1, 29871, 921, 2, 343}));
  const Ids stops = phi3.tok->stop_ids();
  EXPECT_NE(std::find(stops.begin(), stops.end(), 32000), stops.end());  // eos <|endoftext|>
  EXPECT_NE(std::find(stops.begin(), stops.end(), 32007), stops.end());  // <|end|>
}

TEST(SpecialTokens, UserDefinedTokensAreNotSkipped) {
  REQUIRE_SHARED();
  const Loaded ds = load_shared("deepseek-coder");
  EXPECT_TRUE(ds.tok->add_bos());
  const Ids ids = ds.tok->encode("Führer", true);
  EXPECT_EQ(ids, (Ids{32013, 37, 32009, 71, 6247}));  // BOS, F, ü (added token), h, rer
  EXPECT_FALSE(ds.tok->is_special(32009));
  EXPECT_TRUE(ds.tok->is_special(32013));
  EXPECT_EQ(ds.tok->decode(ids, /*skip_special_tokens=*/true), "Führer");
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenizer.

TEST(IncrementalDetokenizer, ByteLevelCharactersSplitAcrossTokens) {
  REQUIRE_SHARED();
  const Loaded gpt2 = load_shared("gpt-2");
  const std::string text = "🚀 日本語 ok";
  const Ids ids = gpt2.tok->encode(text, false);
  // ðŁ ļ Ģ | Ġæ Ĺ ¥ | æľ ¬ | èª ŀ | Ġok: no character fits in one token.
  ASSERT_EQ(ids, (Ids{8582, 248, 222, 10545, 245, 98, 17312, 105, 45739, 252, 12876}));
  const auto pieces = stream(*gpt2.tok, ids);
  const std::vector<std::string> expected = {"", "",   "🚀", " ",  "",    "日",
                                             "", "本", "",  "語", " ok", ""};
  EXPECT_EQ(pieces, expected);
  EXPECT_EQ(join(pieces), text);
}

TEST(IncrementalDetokenizer, SentencePieceByteFallbackAndLeadingSpace) {
  REQUIRE_SHARED();
  const Loaded spm = load_shared("llama-spm");
  const Ids rocket = spm.tok->encode("🚀", false);
  ASSERT_EQ(rocket, (Ids{29871, 243, 162, 157, 131}));  // ▁ <0xF0> <0x9F> <0x9A> <0x80>
  // The first token's space is the one encode prepended: it never shows.
  EXPECT_EQ(stream(*spm.tok, rocket), (std::vector<std::string>{"", "", "", "", "🚀", ""}));
  EXPECT_EQ(spm.tok->decode(rocket), "🚀");

  const Ids words = spm.tok->encode("Hello world é日本", true);
  EXPECT_EQ(stream(*spm.tok, words, /*skip_special=*/true),
            (std::vector<std::string>{"", "Hello", " world", " é", "日", "本", ""}));
  // Without skipping, BOS comes first and the space after it stays (HF: "<s> Hello").
  EXPECT_EQ(join(stream(*spm.tok, words, false)), "<s> Hello world é日本");
  EXPECT_EQ(spm.tok->decode(words), "<s> Hello world é日本");
}

// A model may sample an id of its padded vocabulary rows, which the tokenizer lacks: no text,
// no error (HF's decode does the same); a negative id is still a bug and throws.
TEST(IncrementalDetokenizer, IdsPastTheTokenizerVocabularyEmitNoText) {
  REQUIRE_SHARED();
  const Loaded spm = load_shared("llama-spm");
  const int32_t a = *spm.tok->token_to_id("a");
  const int32_t n = spm.tok->vocab_size();
  IncrementalDetokenizer detok(*spm.tok, true);
  EXPECT_EQ(detok.push(a), "a");
  EXPECT_EQ(detok.push(n), "");
  EXPECT_EQ(detok.push(n + 1000), "");
  EXPECT_EQ(detok.push(a), "a");
  EXPECT_EQ(detok.flush(), "");
  EXPECT_THROW(detok.push(-1), Error);
}

TEST(IncrementalDetokenizer, UnfinishedCharacterIsReplacedAtFlush) {
  REQUIRE_SHARED();
  const Loaded spm = load_shared("llama-spm");
  const int32_t e2 = *spm.tok->token_to_id("<0xE2>");
  const int32_t x82 = *spm.tok->token_to_id("<0x82>");
  const int32_t a = *spm.tok->token_to_id("a");
  IncrementalDetokenizer detok(*spm.tok, false);
  EXPECT_EQ(detok.push(e2), "");
  EXPECT_EQ(detok.push(x82), "");
  EXPECT_EQ(detok.flush(), "\xEF\xBF\xBD");  // one U+FFFD for the unfinished E2 82
  EXPECT_EQ(spm.tok->decode(Ids{e2, x82}), "\xEF\xBF\xBD");
  // An interrupted character is replaced as soon as the interruption arrives.
  IncrementalDetokenizer detok2(*spm.tok, false);
  EXPECT_EQ(detok2.push(e2), "");
  EXPECT_EQ(detok2.push(a),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(detok2.flush(), "");
  EXPECT_EQ(spm.tok->decode(Ids{e2, a}),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(spm.tok->token_bytes(e2), "\xE2");
}

// ---------------------------------------------------------------------------------------------
// Hand-made vocabularies: merge order and corrupt files.

class HandMade : public ::testing::Test {
 protected:
  std::unique_ptr<Tokenizer> make(const std::vector<test::GgufKv>& kvs) {
    test::write_gguf(file_.path(), kvs);
    gguf_ = GgufFile::open(file_.path());
    return Tokenizer::from_gguf(*gguf_);
  }
  // The GGUF error (or the tokenizer's) for these keys; fails the test when none is thrown.
  Error error_of(const std::vector<test::GgufKv>& kvs) {
    try {
      make(kvs);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "no error thrown";
    return Error(ErrorCode::kInternal, "");
  }
  test::TempFile file_{"handmade.gguf"};
  std::unique_ptr<GgufFile> gguf_;
};

TEST_F(HandMade, ByteLevelMergesFollowRank) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  auto with_merges = [&](std::vector<std::string> merges) {
    return make({{"tokenizer.ggml.model", std::string("gpt2")},
                 {"tokenizer.ggml.pre", std::string("gpt-2")},
                 {"tokenizer.ggml.tokens", tokens},
                 {"tokenizer.ggml.merges", merges}});
  };
  // "b c" ranks first: a + bc; "a b" first: ab + c; both and "a bc": one token.
  EXPECT_EQ(with_merges({"b c", "a b"})->encode("abc", false), (Ids{0, 4}));
  EXPECT_EQ(with_merges({"a b", "b c"})->encode("abc", false), (Ids{3, 2}));
  EXPECT_EQ(with_merges({"b c", "a b", "a bc"})->encode("abc", false), (Ids{5}));
  EXPECT_EQ(with_merges({"b c", "a b", "a bc"})->encode("abcabc", false), (Ids{5, 5}));
  // Bytes without a token ("d") are dropped; the others still merge around nothing.
  EXPECT_EQ(with_merges({"a b"})->encode("adb", false), (Ids{3}));
}

TEST_F(HandMade, SentencePieceMergesHighestScoreFirst) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b",
                                     "c",     "ab",  "bc"};
  std::vector<int32_t> types = {2, 3, 3, 1, 1, 1, 1, 1, 1};
  auto with_scores = [&](float ab, float bc) {
    return make({{"tokenizer.ggml.model", std::string("llama")},
                 {"tokenizer.ggml.tokens", tokens},
                 {"tokenizer.ggml.token_type", types},
                 {"tokenizer.ggml.scores", std::vector<float>{0, 0, 0, -1, -2, -2, -2, ab, bc}},
                 {"tokenizer.ggml.unknown_token_id", int64_t{0}},
                 {"tokenizer.ggml.add_space_prefix", false}});
  };
  EXPECT_EQ(with_scores(-1.0f, -0.5f)->encode("abc", false), (Ids{4, 8}));  // a + bc
  EXPECT_EQ(with_scores(-0.5f, -1.0f)->encode("abc", false), (Ids{7, 6}));  // ab + c
  // No piece and no byte tokens for "x": <unk>.
  EXPECT_EQ(with_scores(-0.5f, -1.0f)->encode("axb", false), (Ids{4, 0, 5}));
}

TEST_F(HandMade, MissingTokensArray) {
  const Error e = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                            {"tokenizer.ggml.merges", std::vector<std::string>{"a b"}}});
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.tokens is missing"), std::string::npos)
      << e.what();
}

TEST_F(HandMade, TokenTypeOfWrongLength) {
  const Error e = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                            {"tokenizer.ggml.tokens", std::vector<std::string>{"a", "b", "ab"}},
                            {"tokenizer.ggml.token_type", std::vector<int32_t>{1, 1}},
                            {"tokenizer.ggml.merges", std::vector<std::string>{"a b"}}});
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e.what()).find("token_type has 2 entries for 3 tokens"), std::string::npos)
      << e.what();
}

TEST_F(HandMade, MergeOfUnknownToken) {
  const Error e = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                            {"tokenizer.ggml.tokens", std::vector<std::string>{"a", "b", "ab"}},
                            {"tokenizer.ggml.merges", std::vector<std::string>{"a b", "a z"}}});
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e.what()).find("merges[1] 'a z' refers to 'z'"), std::string::npos)
      << e.what();
  const Error e2 = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                             {"tokenizer.ggml.tokens", std::vector<std::string>{"a", "b"}},
                             {"tokenizer.ggml.merges", std::vector<std::string>{"a b"}}});
  EXPECT_NE(std::string(e2.what()).find("produces 'ab'"), std::string::npos) << e2.what();
}

TEST_F(HandMade, UnsupportedModelAndPreNameTheValue) {
  const Error e = error_of({{"tokenizer.ggml.model", std::string("bert")},
                            {"tokenizer.ggml.tokens", std::vector<std::string>{"a"}}});
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  EXPECT_NE(std::string(e.what()).find("'bert'"), std::string::npos) << e.what();
  const Error e2 = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                             {"tokenizer.ggml.pre", std::string("made-up-pre")},
                             {"tokenizer.ggml.tokens", std::vector<std::string>{"a"}}});
  EXPECT_EQ(e2.code(), ErrorCode::kUnsupported);
  EXPECT_NE(std::string(e2.what()).find("'made-up-pre'"), std::string::npos) << e2.what();
  const Error e3 = error_of({{"general.name", std::string("no tokenizer")}});
  EXPECT_EQ(e3.code(), ErrorCode::kNotFound);
}

TEST_F(HandMade, SpecialIdOutOfRangeAndMissingScores) {
  const Error e = error_of({{"tokenizer.ggml.model", std::string("gpt2")},
                            {"tokenizer.ggml.tokens", std::vector<std::string>{"a"}},
                            {"tokenizer.ggml.merges", std::vector<std::string>{}},
                            {"tokenizer.ggml.eos_token_id", int64_t{7}}});
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e.what()).find("eos_token_id = 7"), std::string::npos) << e.what();
  const Error e2 = error_of({{"tokenizer.ggml.model", std::string("llama")},
                             {"tokenizer.ggml.tokens", std::vector<std::string>{"a"}}});
  EXPECT_EQ(e2.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e2.what()).find("scores is missing"), std::string::npos) << e2.what();
}

TEST_F(HandMade, DecodeRejectsIdsOutsideTheVocabulary) {
  const auto tok = make({{"tokenizer.ggml.model", std::string("gpt2")},
                         {"tokenizer.ggml.tokens", std::vector<std::string>{"a", "b", "ab"}},
                         {"tokenizer.ggml.merges", std::vector<std::string>{"a b"}}});
  EXPECT_EQ(tok->decode(Ids{2, 0}), "aba");
  EXPECT_THROW(tok->decode(Ids{0, 3}), Error);
  EXPECT_THROW(tok->decode(Ids{-1}), Error);
  EXPECT_THROW(tok->token_bytes(3), Error);
  // Streaming a model's output, an id past the tokenizer (padded LM-head rows) has no text.
  IncrementalDetokenizer detok(*tok, false);
  EXPECT_EQ(detok.push(3), "");
  EXPECT_THROW(detok.push(-1), Error);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->eos_id(), -1);
  EXPECT_TRUE(tok->stop_ids().empty());
  EXPECT_EQ(tok->chat_template(), "");
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and pre-tokenizer details.

TEST(Utf8, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(unicode::utf8_lossy("abc"), "abc");
  EXPECT_EQ(unicode::utf8_lossy("\xE2\x82"
                                "A"),
            "\xEF\xBF\xBD"
            "A");                                                          // truncated E2 82 AC
  EXPECT_EQ(unicode::utf8_lossy("\xF0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // F0 needs 90..BF
  EXPECT_EQ(unicode::utf8_lossy("\xED\xA0\x80"),  // a surrogate: three subparts
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(unicode::utf8_lossy("\xF4\x90\x80\x80").size(), 12u);          // above U+10FFFF
  EXPECT_EQ(unicode::utf8_lossy("\xF0\x9F\x9A\x80"), "\xF0\x9F\x9A\x80");
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(unicode::utf8_incomplete_tail("ab"), 0u);
  EXPECT_EQ(unicode::utf8_incomplete_tail("a\xF0\x9F\x9A"), 3u);
  EXPECT_EQ(unicode::utf8_incomplete_tail("a\xF0\x9F"), 2u);
  EXPECT_EQ(unicode::utf8_incomplete_tail("a\xE2"), 1u);
  EXPECT_EQ(unicode::utf8_incomplete_tail("a\xF0\x9F\x9A\x80"), 0u);  // complete
  EXPECT_EQ(unicode::utf8_incomplete_tail("a\xF0\x80"), 0u);          // already invalid
  EXPECT_EQ(unicode::utf8_incomplete_tail("\x80\x80"), 0u);
}

TEST(Utf8, ByteLevelAlphabet) {
  const auto& a = unicode::byte_level_alphabet();
  EXPECT_EQ(a.byte_to_utf8['A'], "A");
  EXPECT_EQ(a.byte_to_utf8[' '], "\xC4\xA0");   // Ġ = U+0120
  EXPECT_EQ(a.byte_to_utf8['\n'], "\xC4\x8A");  // Ċ = U+010A
  EXPECT_EQ(a.byte_to_cp[0xAD], 0x143u);        // soft hyphen is the last remapped byte
  for (int b = 0; b < 256; ++b) EXPECT_EQ(a.byte_of(a.byte_to_cp[b]), b);
}

TEST(Encode, InvalidUtf8IsTokenizedAsReplacementCharacters) {
  REQUIRE_SHARED();
  const Loaded gpt2 = load_shared("gpt-2");
  EXPECT_EQ(gpt2.tok->encode("a\xFF"
                             "b\xE2\x82",
                             false),
            gpt2.tok->encode("a\xEF\xBF\xBD"
                             "b\xEF\xBF\xBD",
                             false));
  EXPECT_TRUE(gpt2.tok->encode("", true).empty());  // gpt-2 adds no BOS
}

TEST(PreTokenizer, KnownNamesAndSplits) {
  for (const char* name : {"default", "gpt-2", "starcoder", "smollm", "deepseek-coder", "falcon",
                           "llama3", "llama-bpe", "llama-v3", "qwen2"}) {
    EXPECT_NE(PreTokenizer::create(name), nullptr) << name;
  }
  EXPECT_EQ(PreTokenizer::create("nonexistent"), nullptr);

  auto pieces = [](const char* name, std::string_view text) {
    std::string mapped;
    std::vector<Span> words;
    PreTokenizer::create(name)->split(text, mapped, words);
    std::vector<std::string> out;
    for (const Span& w : words) out.push_back(mapped.substr(w.begin, w.end - w.begin));
    return out;
  };
  using V = std::vector<std::string>;
  // Outputs are in the byte alphabet: Ġ is a space, Ċ a newline.
  EXPECT_EQ(pieces("gpt-2", "Hello world's 123  x\n"), (V{"Hello", "\xC4\xA0world", "'s",
                                                          "\xC4\xA0"
                                                          "123",
                                                          "\xC4\xA0", "\xC4\xA0x", "\xC4\x8A"}));
  EXPECT_EQ(pieces("smollm", "ab 123"), (V{"ab", "\xC4\xA0", "1", "2", "3"}));
  EXPECT_EQ(pieces("llama3", "I'M 12345!\n\n"),
            (V{"I", "'M", "\xC4\xA0", "123", "45", "!\xC4\x8A\xC4\x8A"}));
  EXPECT_EQ(pieces("qwen2", "x 12"), (V{"x", "\xC4\xA0", "1", "2"}));
  // Falcon: punctuation runs, then digits in threes on the byte-level text.
  EXPECT_EQ(pieces("falcon", "a, 12345..."), (V{"a", ",", "\xC4\xA0", "123", "45", "..."}));
}

}  // namespace
}  // namespace atom

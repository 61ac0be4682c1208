// Tokenizer::from_hf against HF tokenizers: the fixtures of tests/data/tokenizers (made by
// scripts/gen_tokenizer_fixtures.py) hold small tokenizer.json files in the styles of Llama-3,
// Qwen2, SmolLM2/GPT-2, Llama-2 and Mistral, and the ids/decodes HF gives for each input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/tokenizer/hf_tokenizer.h"
#include "atom/tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace atom {
namespace {

using Ids = std::vector<int32_t>;
using test::escape;

std::string fixture(const std::string& name) {
  return std::string(ATOM_TEST_DATA_DIR) + "/tokenizers/" + name;
}

std::unique_ptr<Tokenizer> load_family(const std::string& family) {
  const std::string config = fixture(family + ".tokenizer_config.json");
  return Tokenizer::from_hf(fixture(family + ".tokenizer.json"),
                            std::filesystem::exists(config) ? config : "");
}

struct Case {
  std::string text;
  Ids ids, ids_special;
  std::string decoded, decoded_skip;
};

std::vector<Case> load_cases(const std::string& family) {
  std::ifstream in(fixture(family + ".expected.json"));
  EXPECT_TRUE(in.good()) << family;
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const auto& c : j.at("cases")) {
    cases.push_back({c.at("text").get<std::string>(), c.at("ids").get<Ids>(),
                     c.at("ids_special").get<Ids>(), c.at("decoded").get<std::string>(),
                     c.at("decoded_skip").get<std::string>()});
  }
  return cases;
}

class HfFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFamily, EncodeAndDecodeMatchHf) {
  const auto tok = load_family(GetParam());
  const std::vector<Case> cases = load_cases(GetParam());
  ASSERT_GT(cases.size(), 50u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    EXPECT_EQ(tok->encode(c.text, false), c.ids) << "case " << i << " " << escape(c.text);
    EXPECT_EQ(tok->encode(c.text, true), c.ids_special) << "case " << i << " " << escape(c.text);
    EXPECT_EQ(tok->decode(c.ids), c.decoded) << "case " << i << " " << escape(c.text);
    EXPECT_EQ(tok->decode(c.ids, true), c.decoded_skip) << "case " << i << " " << escape(c.text);
    // Streaming gives the same text as decoding all at once.
    for (const bool skip : {false, true}) {
      IncrementalDetokenizer detok(*tok, skip);
      std::string streamed;
      for (const int32_t id : c.ids) streamed += detok.push(id);
      streamed += detok.flush();
      EXPECT_EQ(streamed, skip ? c.decoded_skip : c.decoded) << "case " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfFamily,
                         ::testing::Values("llama3", "qwen2", "smollm", "gpt2-prefix", "llama2",
                                           "mistral-metaspace", "metaspace-split-lower"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(HfTokenizer, Llama3MetadataAndTemplate) {
  const auto tok = load_family("llama3");
  const int32_t bot = tok->token_to_id("<|begin_of_text|>").value();
  const int32_t eot = tok->token_to_id("<|eot_id|>").value();
  EXPECT_EQ(tok->kind(), Tokenizer::Kind::kByteLevelBpe);
  EXPECT_EQ(tok->bos_id(), bot);
  EXPECT_EQ(tok->eos_id(), eot);  // from tokenizer_config.json
  EXPECT_TRUE(tok->add_bos());
  EXPECT_FALSE(tok->add_eos());
  EXPECT_TRUE(tok->is_special(bot));
  EXPECT_FALSE(tok->is_special(tok->token_to_id("[MASK]").value()));  // added, not special
  EXPECT_NE(tok->chat_template().find("<|start_header_id|>"), std::string::npos);
  const Ids with = tok->encode("Hello", true);
  const Ids without = tok->encode("Hello", false);
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with[0], bot);
  const Ids stops = tok->stop_ids();
  EXPECT_NE(std::find(stops.begin(), stops.end(), eot), stops.end());
}

TEST(HfTokenizer, Llama3IgnoreMergesTakesWholeWords) {
  // " dsdfhu" is in the vocabulary but no merge builds it.
  const auto tok = load_family("llama3");
  const int32_t word = tok->token_to_id(
                              "\xC4\xA0"
                              "dsdfhu")
                           .value();
  EXPECT_EQ(tok->encode(" dsdfhu", false), Ids{word});
  EXPECT_EQ(tok->token_bytes(word), " dsdfhu");
}

TEST(HfTokenizer, Llama2ByteFallbackAndLeadingSpace) {
  const auto tok = load_family("llama2");
  EXPECT_EQ(tok->kind(), Tokenizer::Kind::kSentencePiece);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->add_bos());
  // A character the small vocabulary lacks comes out as its UTF-8 bytes.
  const Ids ids = tok->encode("\xE1\x88\xB4", false);  // U+1234
  ASSERT_FALSE(tok->token_to_id("\xE1\x88\xB4").has_value());
  ASSERT_GE(ids.size(), 3u);
  const std::vector<std::string> bytes = {"\xE1", "\x88", "\xB4"};
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(tok->token_bytes(ids[ids.size() - 3 + i]), bytes[i]);
  EXPECT_EQ(tok->decode(ids), "\xE1\x88\xB4");
  EXPECT_EQ(tok->decode(tok->encode(" Hello", false)), " Hello");
  EXPECT_EQ(tok->decode(tok->encode("Hello", true), true), "Hello");
}

TEST(HfTokenizer, AddedTokenFlags) {
  const auto tok = load_family("llama3");
  const int32_t mask = tok->token_to_id("[MASK]").value();
  // lstrip/rstrip: the spaces around a standalone [MASK] belong to it.
  const Ids a = tok->encode("a [MASK] b", false);
  EXPECT_EQ(a, (Ids{tok->encode("a", false)[0], mask, tok->encode("b", false)[0]}));
  // single_word: inside a word it is not the added token.
  const Ids b = tok->encode("x[MASK]y", false);
  EXPECT_EQ(std::find(b.begin(), b.end(), mask), b.end());
}

TEST(HfTokenizer, NfcComposesDecomposedText) {
  EXPECT_EQ(nfc_normalize("cafe\xCC\x81"), "caf\xC3\xA9");  // e + U+0301
  EXPECT_EQ(nfc_normalize("A\xCC\x8A"), "\xC3\x85");        // Å
  EXPECT_EQ(nfc_normalize("\xE2\x84\xAB"), "\xC3\x85");     // U+212B -> U+00C5
  EXPECT_EQ(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // 각
  // Marks reorder by combining class: dot below (220) before acute (230), then compose.
  EXPECT_EQ(nfc_normalize("q\xCC\x81\xCC\xA3"), "q\xCC\xA3\xCC\x81");
  EXPECT_EQ(nfc_normalize("plain ascii"), "plain ascii");
  EXPECT_EQ(nfc_normalize("\xE0\xA4\x95\xE0\xA4\xBC"), "\xE0\xA4\x95\xE0\xA4\xBC");  // excluded
  // Qwen2's NFC normalizer: decomposed and precomposed input tokenize the same.
  const auto tok = load_family("qwen2");
  EXPECT_EQ(tok->encode("cafe\xCC\x81", false), tok->encode("caf\xC3\xA9", false));
}

TEST(HfTokenizer, ErrorsNameTheProblem) {
  const std::string dir = ::testing::TempDir() + "/hf_tokenizer_errors";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  auto expect_error = [](const std::string& path, ErrorCode code, const std::string& needle) {
    try {
      Tokenizer::from_hf(path, "");
      ADD_FAILURE() << "no error for " << path;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string model =
      R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  expect_error(dir + "/absent.json", ErrorCode::kNotFound, "absent.json");
  expect_error(write("bad.json", "{not json"), ErrorCode::kCorrupt, "JSON");
  expect_error(write("unigram.json", R"({"model": {"type": "Unigram", "vocab": []}})"),
               ErrorCode::kUnsupported, "Unigram");
  expect_error(write("norm.json", "{" + model + R"(, "normalizer": {"type": "NFKD"}})"),
               ErrorCode::kUnsupported, "NFKD");
  expect_error(
      write("pre.json", "{" + model + R"(, "pre_tokenizer": {"type": "BertPreTokenizer"}})"),
      ErrorCode::kUnsupported, "BertPreTokenizer");
  expect_error(write("dec.json", "{" + model + R"(, "decoder": {"type": "WordPiece"}})"),
               ErrorCode::kUnsupported, "WordPiece");
  expect_error(write("post.json", "{" + model + R"(, "post_processor": {"type": "Foo"}})"),
               ErrorCode::kUnsupported, "Foo");
  expect_error(write("merge.json",
                     R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "c"]]}})"),
               ErrorCode::kCorrupt, "merges[0]");
  // The minimal file works: merges apply, and decode without a decoder gives the texts back.
  const auto tok = Tokenizer::from_hf(write("ok.json", "{" + model + "}"), "");
  EXPECT_EQ(tok->encode("abba", false), (Ids{2, 1, 0}));
  EXPECT_EQ(tok->decode(Ids{2, 1, 0}), "abba");
  EXPECT_THROW(tok->decode(Ids{3}), Error);
}

// The SmolLM2 model's own 49k-token vocabulary, converted from its GGUF to tokenizer.json by
// HF (with the published file's pre-tokenizer): matches HF's ids, and the GGUF path's.
TEST(HfTokenizer, SmolLM2MatchesHfAndGguf) {
  const auto hf = load_family("smollm2");
  const std::vector<Case> cases = load_cases("smollm2");
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(hf->encode(cases[i].text, false), cases[i].ids) << escape(cases[i].text);
    EXPECT_EQ(hf->decode(cases[i].ids), cases[i].decoded) << escape(cases[i].text);
  }
  ASSERT_TRUE(std::filesystem::exists(default_model_path()))
      << "the SmolLM2 model file is missing: " << default_model_path();
  const auto file = GgufFile::open(default_model_path());
  const auto gguf = Tokenizer::from_gguf(*file);
  ASSERT_EQ(hf->vocab_size(), gguf->vocab_size());
  for (const Case& c : cases) {
    EXPECT_EQ(hf->encode(c.text, false), gguf->encode(c.text, false)) << escape(c.text);
  }
}

}  // namespace
}  // namespace atom

// The shared vocab suites (ids produced by HF tokenizers for each original model): every case of
// every suite must encode exactly; decode must invert encode, and the streaming detokenizer must
// agree with decode.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "atom/io/gguf.h"
#include "atom/tokenizer/tokenizer.h"
#include "atom/tokenizer/unicode.h"
#include "tokenizer_test_util.h"

namespace atom {
namespace {

using test::escape;

struct Suite {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  std::vector<test::VocabCase> cases;
};

class VocabSuite : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!std::filesystem::is_directory(test::shared_tokenizer_dir())) {
      GTEST_SKIP() << "shared test data absent: " << test::shared_tokenizer_dir();
    }
    const std::string path = test::shared_tokenizer_dir() + "/ggml-vocab-" + GetParam() + ".gguf";
    s_.file = GgufFile::open(path);
    s_.tok = Tokenizer::from_gguf(*s_.file);
    s_.cases = test::load_vocab_cases(path);
    ASSERT_EQ(s_.cases.size(), 46u) << "unexpected number of cases in " << path;
  }
  Suite s_;
};

TEST_P(VocabSuite, EncodeMatchesReference) {
  for (size_t i = 0; i < s_.cases.size(); ++i) {
    const auto& c = s_.cases[i];
    EXPECT_EQ(s_.tok->encode(c.text, /*add_special_tokens=*/false), c.ids)
        << GetParam() << " case " << i << " input " << escape(c.text);
  }
}

TEST_P(VocabSuite, DecodeInvertsEncode) {
  for (size_t i = 0; i < s_.cases.size(); ++i) {
    const auto& c = s_.cases[i];
    // The reference ids decode to the input (SentencePiece: the prefix space it adds is the one
    // decode strips).
    EXPECT_EQ(s_.tok->decode(c.ids), c.text)
        << GetParam() << " case " << i << " input " << escape(c.text);
    // With BOS/EOS added, skipping special tokens gives the text back too.
    const auto ids = s_.tok->encode(c.text, /*add_special_tokens=*/true);
    EXPECT_EQ(s_.tok->decode(ids, /*skip_special_tokens=*/true), c.text)
        << GetParam() << " case " << i << " input " << escape(c.text);
  }
}

TEST_P(VocabSuite, IncrementalDetokenizerMatchesDecode) {
  for (size_t i = 0; i < s_.cases.size(); ++i) {
    const auto ids = s_.tok->encode(s_.cases[i].text, /*add_special_tokens=*/true);
    for (const bool skip : {false, true}) {
      IncrementalDetokenizer detok(*s_.tok, skip);
      std::string streamed;
      for (const int32_t id : ids) {
        const std::string piece = detok.push(id);
        EXPECT_TRUE(unicode::utf8_is_valid(piece))
            << GetParam() << " case " << i << ": push returned " << escape(piece);
        streamed += piece;
      }
      streamed += detok.flush();
      EXPECT_EQ(streamed, s_.tok->decode(ids, skip))
          << GetParam() << " case " << i << " skip_special=" << skip << " input "
          << escape(s_.cases[i].text);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, VocabSuite,
                         ::testing::Values("gpt-2", "starcoder", "deepseek-coder", "falcon",
                                           "llama-spm", "phi-3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace atom

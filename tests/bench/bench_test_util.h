// Shared helpers of the benchmark tests: a small real tokenizer (GPT-2's vocabulary from the
// shared test data) and temporary directories.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "atom/io/gguf.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::bench::testing {

inline std::string gpt2_vocab_path() {
  return std::string(ATOM_SHARED_TESTDATA_DIR) + "/tokenizer/ggml-vocab-gpt-2.gguf";
}

struct TestTokenizer {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
};

// Null when ../shared/testdata is absent (callers skip with that reason).
inline std::shared_ptr<TestTokenizer> gpt2_tokenizer() {
  static std::shared_ptr<TestTokenizer> cached = [] {
    std::shared_ptr<TestTokenizer> t;
    if (!std::filesystem::exists(gpt2_vocab_path())) return t;
    t = std::make_shared<TestTokenizer>();
    t->file = GgufFile::open(gpt2_vocab_path());
    t->tok = Tokenizer::from_gguf(*t->file);
    return t;
  }();
  return cached;
}

#define ATOM_REQUIRE_GPT2(var)                                                        \
  const auto var##_holder = ::atom::bench::testing::gpt2_tokenizer();                 \
  if (!var##_holder) GTEST_SKIP() << "../shared/testdata is absent (no GPT-2 vocab)"; \
  [[maybe_unused]] const ::atom::Tokenizer& var = *var##_holder->tok

inline std::string bench_data(const std::string& name) {
  return std::string(ATOM_TEST_DATA_DIR) + "/bench/" + name;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "atom_bench_XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace atom::bench::testing

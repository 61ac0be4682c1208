#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "common/gguf_writer.h"

namespace atom {
namespace {

using testing::GgufWriter;

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("atom_test_gguf_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

GgufWriter small_file() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 2);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_u64("big", 1ull << 40);
  w.add_i32("neg", -7);
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "<s>"});
  w.add_i32_array("tokenizer.ggml.token_type", {1, 1, 3});
  w.add_f32_array("tokenizer.ggml.scores", {0.5f, -1.0f, 0.0f});
  w.add_f32_tensor("w", {3, 2}, {1, 2, 3, 4, 5, 6});
  w.add_f32_tensor("b", {5}, {9, 8, 7, 6, 5});
  return w;
}

ErrorCode open_error(const std::string& path) {
  try {
    GgufFile::open(path);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    return e.code();
  }
  ADD_FAILURE() << "opening " << path << " did not fail";
  return ErrorCode::kInternal;
}

TEST(Gguf, ReadsMetadataAndTensors) {
  const std::string path = tmp_path("ok.gguf");
  small_file().write(path);
  for (bool use_mmap : {true, false}) {
    auto f = GgufFile::open(path, use_mmap);
    EXPECT_EQ(f->version(), 3u);
    EXPECT_EQ(f->get_string("general.architecture"), "llama");
    EXPECT_EQ(f->get_int("llama.block_count"), 2);
    EXPECT_FLOAT_EQ(f->get_float("llama.rope.freq_base"), 10000.0);
    EXPECT_TRUE(f->get_bool("tokenizer.ggml.add_bos_token"));
    EXPECT_EQ(f->get_int("big"), int64_t(1) << 40);
    EXPECT_EQ(f->get_int("neg"), -7);
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens"),
              (std::vector<std::string>{"a", "b", "<s>"}));
    EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 1, 3}));
    EXPECT_EQ(f->get_float_array("tokenizer.ggml.scores"), (std::vector<double>{0.5, -1.0, 0.0}));
    EXPECT_EQ(f->get_int_or("missing", 42), 42);
    EXPECT_EQ(f->keys().front(), "general.architecture");

    ASSERT_EQ(f->tensors().size(), 2u);
    const GgufTensorInfo& w = f->tensor("w");
    EXPECT_EQ(w.type, GgmlType::kF32);
    EXPECT_EQ(w.cols(), 3);
    EXPECT_EQ(w.rows(), 2);
    EXPECT_EQ(w.nbytes, 24u);
    const float* wd = reinterpret_cast<const float*>(f->tensor_data(w));
    EXPECT_EQ(wd[0], 1.0f);
    EXPECT_EQ(wd[5], 6.0f);
    const float* bd = reinterpret_cast<const float*>(f->tensor_data(f->tensor("b")));
    EXPECT_EQ(bd[4], 5.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(bd) % 32, 0u);
  }
  std::filesystem::remove(path);
}

TEST(Gguf, TypedGettersRejectWrongTypesAndMissingKeys) {
  const std::string path = tmp_path("types.gguf");
  small_file().write(path);
  auto f = GgufFile::open(path);
  try {
    f->get_int("general.architecture");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("general.architecture"), std::string::npos);
  }
  EXPECT_THROW(f->get_string_array("tokenizer.ggml.scores"), Error);
  try {
    f->get_string("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }
  EXPECT_THROW(f->tensor("nope"), Error);
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
  std::filesystem::remove(path);
}

// Every truncation of a valid file must fail with a clear error, never crash or hang.
TEST(Gguf, EveryTruncationIsACleanError) {
  const std::vector<uint8_t> full = small_file().bytes();
  const std::string path = tmp_path("trunc.gguf");
  // The last tensor ("b", 20 bytes) is followed by 12 bytes of alignment padding that a valid
  // file may omit; any cut before its end must fail.
  const size_t end_of_data = full.size() - 12;
  for (size_t n = 0; n < end_of_data; n += (n < 200 ? 1 : 7)) {
    GgufWriter::write_file(path, std::vector<uint8_t>(full.begin(), full.begin() + long(n)));
    const ErrorCode c = open_error(path);
    EXPECT_EQ(c, ErrorCode::kCorrupt) << "cut at " << n;
  }
  std::filesystem::remove(path);
}

TEST(Gguf, RejectsBadMagicVersionAndTypes) {
  const std::string path = tmp_path("bad.gguf");
  std::vector<uint8_t> b = small_file().bytes();
  b[0] = 'X';
  GgufWriter::write_file(path, b);
  EXPECT_EQ(open_error(path), ErrorCode::kCorrupt);

  GgufWriter v1(1);
  v1.add_u32("x", 1);
  v1.write(path);
  EXPECT_EQ(open_error(path), ErrorCode::kUnsupported);

  GgufWriter unknown_type;
  unknown_type.add_tensor("t", 99, {32}, std::vector<uint8_t>(32));
  unknown_type.write(path);
  EXPECT_EQ(open_error(path), ErrorCode::kUnsupported);

  GgufWriter bad_rowlen;  // Q4_0 rows must be multiples of 32 elements
  bad_rowlen.add_tensor("t", 2, {33}, std::vector<uint8_t>(40));
  bad_rowlen.write(path);
  EXPECT_EQ(open_error(path), ErrorCode::kCorrupt);

  GgufWriter dup;
  dup.add_u32("k", 1);
  dup.add_u32("k", 2);
  dup.write(path);
  EXPECT_EQ(open_error(path), ErrorCode::kCorrupt);

  GgufWriter bad_value_type;
  bad_value_type.add_u32("k", 1);
  std::vector<uint8_t> bv = bad_value_type.bytes();
  // header (24) + key length (8) + "k" (1) -> the value type field
  bv[24 + 8 + 1] = 77;
  GgufWriter::write_file(path, bv);
  EXPECT_EQ(open_error(path), ErrorCode::kCorrupt);

  // A huge string length must not allocate: corrupt the first key's length.
  std::vector<uint8_t> huge = small_file().bytes();
  for (int i = 0; i < 8; ++i) huge[24 + size_t(i)] = 0xff;
  GgufWriter::write_file(path, huge);
  EXPECT_EQ(open_error(path), ErrorCode::kCorrupt);
  std::filesystem::remove(path);
}

TEST(Gguf, MissingAndNonRegularFiles) {
  EXPECT_EQ(open_error("/nonexistent/dir/model.gguf"), ErrorCode::kNotFound);
  try {
    GgufFile::open(std::filesystem::temp_directory_path().string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  const std::string empty = tmp_path("empty.gguf");
  GgufWriter::write_file(empty, {});
  EXPECT_EQ(open_error(empty), ErrorCode::kCorrupt);
  std::filesystem::remove(empty);
}

// The default model: the file the rest of the suite relies on (scripts/fetch-model.sh).
TEST(Gguf, DefaultModelFile) {
  const std::string path = default_model_path();
  ASSERT_TRUE(std::filesystem::exists(path))
      << path << " is missing: run scripts/fetch-model.sh (scripts/test.sh does)";
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f->tensors().size(), 272u);
  EXPECT_EQ(f->tensor("token_embd.weight").type, GgmlType::kQ8_0);
  EXPECT_EQ(f->tensor("blk.0.attn_q.weight").type, GgmlType::kQ4_1);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
}

}  // namespace
}  // namespace atom

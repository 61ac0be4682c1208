#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "atom/core/envs.h"
#include "atom/io/safetensors.h"
#include "common/safetensors_writer.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using testing::SafetensorsWriter;

// A fresh folder per test under the temp directory, removed at the end.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("atom_test_st_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::vector<uint8_t> bytes_of(std::initializer_list<uint16_t> v) {
  std::vector<uint8_t> b(v.size() * 2);
  std::memcpy(b.data(), std::data(v), b.size());
  return b;
}

// The error of a call, checking that its message names `must_mention` (a file or folder) and
// `detail` (the problem).
template <typename F>
ErrorCode error_of(F&& f, const std::string& must_mention, const std::string& detail = "") {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(must_mention), std::string::npos) << msg;
    EXPECT_NE(msg.find(detail), std::string::npos) << "expected '" << detail << "' in: " << msg;
    return e.code();
  }
  ADD_FAILURE() << "no error (expected one mentioning " << must_mention << ")";
  return ErrorCode::kInternal;
}

ErrorCode open_error(const std::string& path, const std::string& detail = "") {
  return error_of([&] { SafetensorsFile::open(path); }, path, detail);
}

TEST(Safetensors, ReadsTensorsMetadataAndData) {
  TempDir dir("read");
  const std::string path = dir.file("model.safetensors");
  SafetensorsWriter w;
  w.add_f32("w", {2, 3}, {1, 2, 3, 4, 5, 6});
  w.add("b", "BF16", {4}, bytes_of({0x3f80, 0x4000, 0xbf80, 0x0000}));  // 1, 2, -1, 0
  w.add("step", "I64", {}, {7, 0, 0, 0, 0, 0, 0, 0});
  w.add("mask", "BOOL", {3}, {1, 0, 1});
  w.add("q", "F8_E4M3", {2, 2}, {0x38, 0x40, 0xb8, 0x00});  // 1, 2, -1, 0
  w.add("empty", "U8", {0, 5}, {});
  w.add("h", "F16", {1}, bytes_of({0x3c00}));
  w.add("ids", "I32", {2}, {1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff});
  w.add("s8", "I8", {2}, {0x80, 0x7f});
  w.set_metadata("format", "pt");
  w.write(path);

  for (bool use_mmap : {true, false}) {
    auto f = SafetensorsFile::open(path, use_mmap);
    EXPECT_EQ(f->mapped(), use_mmap);
    EXPECT_EQ(f->path(), path);
    EXPECT_EQ(f->tensors().size(), 9u);
    ASSERT_EQ(f->metadata().size(), 1u);
    EXPECT_EQ(f->metadata().at("format"), "pt");
    // tensors() is in data order; the writer laid them out in insertion order.
    EXPECT_EQ(f->tensors()[0].name, "w");
    EXPECT_EQ(f->tensors()[1].name, "b");
    EXPECT_EQ(f->tensors()[0].begin, 0u);
    EXPECT_EQ(f->tensors()[1].begin, 24u);

    const SafetensorsView wv = f->tensor("w");
    EXPECT_EQ(wv.dtype, SafetensorsDType::kF32);
    EXPECT_EQ(wv.atom_dtype(), DType::kF32);
    EXPECT_EQ(wv.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(wv.numel(), 6);
    EXPECT_EQ(wv.nbytes, 24u);
    EXPECT_EQ(wv.name, "w");
    const float* wd = static_cast<const float*>(wv.data);
    EXPECT_EQ(wd[0], 1.0f);
    EXPECT_EQ(wd[5], 6.0f);

    const SafetensorsView bv = f->tensor("b");
    EXPECT_EQ(bv.atom_dtype(), DType::kBF16);
    const uint16_t* bd = static_cast<const uint16_t*>(bv.data);
    EXPECT_EQ(bf16_to_f32(bd[0]), 1.0f);
    EXPECT_EQ(bf16_to_f32(bd[2]), -1.0f);

    const SafetensorsView step = f->tensor("step");
    EXPECT_TRUE(step.shape.empty());
    EXPECT_EQ(step.numel(), 1);
    EXPECT_EQ(*static_cast<const int64_t*>(step.data), 7);

    const SafetensorsView q = f->tensor("q");
    EXPECT_EQ(q.atom_dtype(), DType::kF8E4M3);
    EXPECT_EQ(fp8e4m3_to_f32(static_cast<const uint8_t*>(q.data)[1]), 2.0f);

    const SafetensorsView mask = f->tensor("mask");
    EXPECT_EQ(mask.dtype, SafetensorsDType::kBool);
    EXPECT_EQ(static_cast<const uint8_t*>(mask.data)[2], 1);
    EXPECT_EQ(error_of([&] { mask.atom_dtype(); }, "mask", "BOOL"), ErrorCode::kUnsupported);

    const SafetensorsView e = f->tensor("empty");
    EXPECT_EQ(e.numel(), 0);
    EXPECT_EQ(e.nbytes, 0u);
    EXPECT_EQ(f->tensor("h").atom_dtype(), DType::kF16);
    EXPECT_EQ(static_cast<const int32_t*>(f->tensor("ids").data)[1], -1);
    EXPECT_EQ(static_cast<const int8_t*>(f->tensor("s8").data)[0], -128);

    EXPECT_FALSE(f->find("nope").has_value());
    EXPECT_EQ(f->find_info("nope"), nullptr);
    EXPECT_EQ(error_of([&] { f->tensor("nope"); }, path, "nope"), ErrorCode::kNotFound);
  }
}

TEST(Safetensors, DTypeNamesAndSizes) {
  EXPECT_EQ(safetensors_dtype_name(SafetensorsDType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(safetensors_dtype_name(SafetensorsDType::kBool), "BOOL");
  EXPECT_EQ(safetensors_dtype_size(SafetensorsDType::kBF16), 2u);
  EXPECT_EQ(safetensors_dtype_size(SafetensorsDType::kI64), 8u);
  EXPECT_EQ(safetensors_dtype_size(SafetensorsDType::kUnsupported), 0u);
}

TEST(Safetensors, UnsupportedDTypeOpensButCannotBeRead) {
  TempDir dir("f64");
  const std::string path = dir.file("a.safetensors");
  SafetensorsWriter w;
  w.add("d", "F64", {2}, std::vector<uint8_t>(16, 0));
  w.add_f32("ok", {1}, {3.0f});
  w.write(path);
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->find_info("d")->dtype, SafetensorsDType::kUnsupported);
  EXPECT_EQ(f->find_info("d")->dtype_name, "F64");
  EXPECT_EQ(error_of([&] { f->tensor("d"); }, path, "F64"), ErrorCode::kUnsupported);
  EXPECT_EQ(error_of([&] { f->find("d"); }, path, "F64"), ErrorCode::kUnsupported);
  EXPECT_EQ(*static_cast<const float*>(f->tensor("ok").data), 3.0f);
}

TEST(Safetensors, RejectsMalformedFiles) {
  TempDir dir("bad");
  const std::vector<uint8_t> data16(16, 0);
  auto raw = [&](const std::string& name, const std::string& header,
                 const std::vector<uint8_t>& data, int64_t len = -1) {
    const std::string p = dir.file(name);
    SafetensorsWriter::write_raw(p, header, data, len);
    return p;
  };

  EXPECT_EQ(open_error(dir.file("missing.safetensors"), "not found"), ErrorCode::kNotFound);

  {  // fewer bytes than the header length field
    const std::string p = dir.file("tiny.safetensors");
    std::ofstream(p, std::ios::binary) << "abc";
    EXPECT_EQ(open_error(p, "truncated"), ErrorCode::kCorrupt);
  }
  {  // empty file
    const std::string p = dir.file("empty.safetensors");
    std::ofstream(p, std::ios::binary).flush();
    EXPECT_EQ(open_error(p, "truncated"), ErrorCode::kCorrupt);
  }
  const std::string ok = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  EXPECT_EQ(open_error(raw("len_beyond.safetensors", ok, data16, 4096), "past the end"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("len_huge.safetensors", ok, data16, int64_t(1) << 40), "limit"),
            ErrorCode::kCorrupt);
  {  // header cut short: the length field says more than the file holds
    const std::string p = dir.file("cut.safetensors");
    SafetensorsWriter::write_raw(p, ok, {});
    fs::resize_file(p, 8 + 10);
    EXPECT_EQ(open_error(p, "past the end"), ErrorCode::kCorrupt);
  }
  EXPECT_EQ(open_error(raw("json.safetensors", R"({"a":{"dtype":"F32",)", data16), "JSON"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("array.safetensors", "[1,2]", data16), "not a JSON object"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("entry.safetensors", R"({"a":3})", data16), "'a'"), ErrorCode::kCorrupt);
  EXPECT_EQ(
      open_error(raw("nodtype.safetensors", R"({"a":{"shape":[4],"data_offsets":[0,16]}})", data16),
                 "dtype"),
      ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("noshape.safetensors", R"({"a":{"dtype":"F32","data_offsets":[0,16]}})",
                           data16),
                       "shape"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("nooff.safetensors", R"({"a":{"dtype":"F32","shape":[4]}})", data16),
                       "data_offsets"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("negoff.safetensors",
                           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[-1,16]}})", data16),
                       "data_offsets"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("negshape.safetensors",
                           R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data16),
                       "shape"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("unknown.safetensors",
                           R"({"a":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})", data16),
                       "Q4_K"),
            ErrorCode::kUnsupported);
  EXPECT_EQ(open_error(raw("range.safetensors",
                           R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data16),
                       "outside the data section"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("reversed.safetensors",
                           R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", data16),
                       "outside the data section"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("size.safetensors",
                           R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", data16),
                       "needs 8 bytes"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("overflow.safetensors",
                           R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],)"
                           R"("data_offsets":[0,16]}})",
                           data16),
                       "overflows"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(open_error(raw("overlap.safetensors",
                           R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                           data16),
                       "overlap"),
            ErrorCode::kCorrupt);
  EXPECT_EQ(
      open_error(raw("meta.safetensors", R"({"__metadata__":{"format":1}})", {}), "__metadata__"),
      ErrorCode::kCorrupt);
  // Empty tensors share an offset with their neighbours without overlapping them.
  const std::string p = raw("zero.safetensors",
                            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                            R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                            data16);
  EXPECT_EQ(SafetensorsFile::open(p)->tensors().size(), 2u);
}

// A folder with two shards and an index, plus the stray files real repos carry.
void write_sharded(const TempDir& dir) {
  SafetensorsWriter a;
  a.add_f32("model.embed_tokens.weight", {2, 2}, {1, 2, 3, 4});
  a.add("model.layers.0.mlp.down_proj.weight", "F8_E4M3", {2, 2}, {0x38, 0x40, 0xb8, 0x00});
  a.add_f32("model.layers.0.mlp.down_proj.weight_scale_inv", {1, 1}, {0.5f});
  a.write(dir.file("model-00001-of-00002.safetensors"));
  SafetensorsWriter b;
  b.add("model.layers.0.self_attn.o_proj.weight", "F8_E4M3", {1, 2}, {0x38, 0x38});
  b.add_f32("model.layers.0.self_attn.o_proj.weight_scale", {}, {0.25f});
  b.add_f32("model.layers.0.self_attn.o_proj.input_scale", {}, {2.0f});
  b.add_f32("lm_head.weight", {2, 2}, {5, 6, 7, 8});
  b.write(dir.file("model-00002-of-00002.safetensors"));
  const nlohmann::json index = {
      {"metadata", {{"total_size", 60}}},
      {"weight_map",
       {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
        {"model.layers.0.mlp.down_proj.weight", "model-00001-of-00002.safetensors"},
        {"model.layers.0.mlp.down_proj.weight_scale_inv", "model-00001-of-00002.safetensors"},
        {"model.layers.0.self_attn.o_proj.weight", "model-00002-of-00002.safetensors"},
        {"model.layers.0.self_attn.o_proj.weight_scale", "model-00002-of-00002.safetensors"},
        {"model.layers.0.self_attn.o_proj.input_scale", "model-00002-of-00002.safetensors"},
        {"lm_head.weight", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir.file("model.safetensors.index.json")) << index.dump(2);
}

TEST(SafetensorsCheckpoint, ShardedThroughIndex) {
  TempDir dir("sharded");
  write_sharded(dir);
  // A duplicate consolidated file (as Mistral repos ship) must be ignored when an index exists.
  SafetensorsWriter dup;
  dup.add_f32("lm_head.weight", {2, 2}, {0, 0, 0, 0});
  dup.write(dir.file("consolidated.safetensors"));

  for (bool use_mmap : {true, false}) {
    auto c = SafetensorsCheckpoint::open(dir.str(), use_mmap);
    EXPECT_EQ(c->files().size(), 2u);  // each shard opened once
    EXPECT_EQ(c->files()[0]->mapped(), use_mmap);
    EXPECT_EQ(c->num_tensors(), 7u);
    EXPECT_EQ(c->names().front(), "lm_head.weight");
    EXPECT_TRUE(c->has("model.embed_tokens.weight"));
    EXPECT_FALSE(c->has("model.norm.weight"));
    EXPECT_EQ(c->file_of("lm_head.weight")->path(), dir.file("model-00002-of-00002.safetensors"));
    EXPECT_EQ(c->file_of("nope"), nullptr);

    const SafetensorsView head = c->tensor("lm_head.weight");
    EXPECT_EQ(static_cast<const float*>(head.data)[3], 8.0f);
    EXPECT_EQ(static_cast<const float*>(c->tensor("model.embed_tokens.weight").data)[0], 1.0f);
    EXPECT_FALSE(c->find("nope").has_value());
    EXPECT_EQ(error_of([&] { c->tensor("nope"); }, dir.str(), "nope"), ErrorCode::kNotFound);

    // fp8 weights keep their scales reachable by name.
    const SafetensorsView down = c->tensor("model.layers.0.mlp.down_proj.weight");
    EXPECT_EQ(down.dtype, SafetensorsDType::kF8E4M3);
    auto s1 = c->find_weight_scale("model.layers.0.mlp.down_proj.weight");
    ASSERT_TRUE(s1.has_value());
    EXPECT_EQ(s1->name, "model.layers.0.mlp.down_proj.weight_scale_inv");
    EXPECT_EQ(*static_cast<const float*>(s1->data), 0.5f);
    auto s2 = c->find_weight_scale("model.layers.0.self_attn.o_proj.weight");
    ASSERT_TRUE(s2.has_value());
    EXPECT_EQ(s2->name, "model.layers.0.self_attn.o_proj.weight_scale");
    EXPECT_EQ(*static_cast<const float*>(s2->data), 0.25f);
    EXPECT_EQ(
        *static_cast<const float*>(c->tensor("model.layers.0.self_attn.o_proj.input_scale").data),
        2.0f);
    EXPECT_FALSE(c->find_weight_scale("lm_head.weight").has_value());
  }
}

TEST(SafetensorsCheckpoint, DisableMmapEnvironmentReadsFiles) {
  TempDir dir("nommap");
  write_sharded(dir);
  const std::optional<std::string> saved = envs::raw("ATOM_DISABLE_MMAP");
  envs::set("ATOM_DISABLE_MMAP", "true");
  auto c = SafetensorsCheckpoint::open(dir.str(), !envs::ATOM_DISABLE_MMAP());
  for (const auto& f : c->files()) EXPECT_FALSE(f->mapped());
  EXPECT_EQ(static_cast<const float*>(c->tensor("lm_head.weight").data)[0], 5.0f);
  if (saved) {
    envs::set("ATOM_DISABLE_MMAP", *saved);
  } else {
    envs::unset("ATOM_DISABLE_MMAP");
  }
  auto m = SafetensorsCheckpoint::open(dir.str(), !envs::ATOM_DISABLE_MMAP());
  EXPECT_EQ(m->files()[0]->mapped(), !envs::ATOM_DISABLE_MMAP());
}

TEST(SafetensorsCheckpoint, SingleFileAndGlobFallback) {
  {
    TempDir dir("single");
    SafetensorsWriter w;
    w.add_f32("x", {1}, {4.0f});
    w.write(dir.file("model.safetensors"));
    // Without an index, model.safetensors wins over other files in the folder.
    SafetensorsWriter other;
    other.add_f32("x", {1}, {9.0f});
    other.write(dir.file("consolidated.safetensors"));
    auto c = SafetensorsCheckpoint::open(dir.str());
    EXPECT_EQ(c->files().size(), 1u);
    EXPECT_EQ(*static_cast<const float*>(c->tensor("x").data), 4.0f);
  }
  {
    TempDir dir("glob");
    SafetensorsWriter a, b;
    a.add_f32("a", {1}, {1.0f});
    b.add_f32("b", {1}, {2.0f});
    a.write(dir.file("part-1.safetensors"));
    b.write(dir.file("part-2.safetensors"));
    std::ofstream(dir.file("README.md")) << "not a shard";
    auto c = SafetensorsCheckpoint::open(dir.str());
    EXPECT_EQ(c->files().size(), 2u);
    EXPECT_EQ(c->names(), (std::vector<std::string>{"a", "b"}));
  }
}

TEST(SafetensorsCheckpoint, RejectsBrokenFolders) {
  {
    TempDir dir("nofiles");
    EXPECT_EQ(
        error_of([&] { SafetensorsCheckpoint::open(dir.str()); }, dir.str(), "no .safetensors"),
        ErrorCode::kNotFound);
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.file("absent")); }, "absent"),
              ErrorCode::kNotFound);
  }
  {
    TempDir dir("missing_shard");
    write_sharded(dir);
    fs::remove(dir.file("model-00002-of-00002.safetensors"));
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); },
                       "model-00002-of-00002.safetensors", "missing"),
              ErrorCode::kNotFound);
  }
  {
    TempDir dir("index_lies");
    write_sharded(dir);
    nlohmann::json index =
        nlohmann::json::parse(std::ifstream(dir.file("model.safetensors.index.json")));
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
    std::ofstream(dir.file("model.safetensors.index.json"), std::ios::trunc) << index.dump();
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); }, "model.norm.weight",
                       "does not contain it"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("dup_indexed");
    write_sharded(dir);
    // Shard 2 also carries the embedding that shard 1 holds.
    SafetensorsWriter b;
    b.add_f32("lm_head.weight", {2, 2}, {5, 6, 7, 8});
    b.add_f32("model.embed_tokens.weight", {2, 2}, {0, 0, 0, 0});
    b.add("model.layers.0.self_attn.o_proj.weight", "F8_E4M3", {1, 2}, {0x38, 0x38});
    b.add_f32("model.layers.0.self_attn.o_proj.weight_scale", {}, {0.25f});
    b.add_f32("model.layers.0.self_attn.o_proj.input_scale", {}, {2.0f});
    b.write(dir.file("model-00002-of-00002.safetensors"));
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); }, "model.embed_tokens.weight",
                       "two shards"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("dup_glob");
    SafetensorsWriter a;
    a.add_f32("x", {1}, {1.0f});
    a.write(dir.file("a.safetensors"));
    a.write(dir.file("b.safetensors"));
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); }, "'x'", "two shards"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("bad_index");
    std::ofstream(dir.file("model.safetensors.index.json")) << "{\"weight_map\": ";
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); },
                       "model.safetensors.index.json", "JSON"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("no_weight_map");
    std::ofstream(dir.file("model.safetensors.index.json")) << R"({"metadata": {}})";
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); },
                       "model.safetensors.index.json", "weight_map"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("escape");
    std::ofstream(dir.file("model.safetensors.index.json"))
        << R"({"weight_map": {"x": "../outside.safetensors"}})";
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); }, "../outside",
                       "not a file in the folder"),
              ErrorCode::kCorrupt);
  }
  {
    TempDir dir("corrupt_shard");
    write_sharded(dir);
    fs::resize_file(dir.file("model-00002-of-00002.safetensors"), 20);
    EXPECT_EQ(error_of([&] { SafetensorsCheckpoint::open(dir.str()); },
                       "model-00002-of-00002.safetensors", "truncated"),
              ErrorCode::kCorrupt);
  }
}

}  // namespace
}  // namespace atom

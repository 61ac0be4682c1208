// Helpers of the tokenizer tests: the vocab test suites of ../shared/testdata/tokenizer, printable
// escaping for failure messages, and a minimal GGUF writer for hand-made (and broken)
// vocabularies.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdint>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace atom::test {

inline std::string shared_tokenizer_dir() {
  return std::string(ATOM_SHARED_TESTDATA_DIR) + "/tokenizer";
}

inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Non-ASCII and control bytes as \xNN, so a failing case names its input on one line.
inline std::string escape(std::string_view s, size_t max_len = 120) {
  std::string out;
  for (const char c : s.substr(0, max_len)) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", u);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  if (s.size() > max_len) out += "...";
  return "\"" + out + "\"";
}

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// <name>.gguf.inp holds the strings, each followed by a line "__ggml_vocab_test__" (so the
// separator is "\n__ggml_vocab_test__\n" and the text after the last one is empty);
// <name>.gguf.out holds one line of space-separated ids per string.
inline std::vector<VocabCase> load_vocab_cases(const std::string& gguf_path) {
  const std::string inp = read_file_bytes(gguf_path + ".inp");
  const std::string out = read_file_bytes(gguf_path + ".out");
  constexpr std::string_view kSep = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t sep = inp.find(kSep, pos);
    if (sep == std::string::npos) {
      ADD_FAILURE() << gguf_path << ".inp: text after the last separator";
      break;
    }
    cases.push_back({inp.substr(pos, sep - pos), {}});
    pos = sep + kSep.size();
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    if (i >= cases.size()) {
      ADD_FAILURE() << gguf_path << ".out has more lines than .inp has cases";
      break;
    }
    std::istringstream ids(line);
    int32_t id = 0;
    while (ids >> id) cases[i].ids.push_back(id);
    ++i;
  }
  EXPECT_EQ(i, cases.size()) << gguf_path << ": .out and .inp disagree on the number of cases";
  return cases;
}

// --- a minimal GGUF v3 writer: metadata only, no tensors ---

struct GgufKv {
  using Value = std::variant<std::string, int64_t, bool, std::vector<std::string>,
                             std::vector<int32_t>, std::vector<float>>;
  std::string key;
  Value value;
};

inline void write_gguf(const std::string& path, const std::vector<GgufKv>& kvs) {
  std::string b;
  auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](std::string_view s) {
    u64(s.size());
    b.append(s);
  };
  constexpr uint32_t kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9, kI64 = 11;
  b.append("GGUF");
  u32(3);
  u64(0);  // tensors
  u64(kvs.size());
  for (const GgufKv& kv : kvs) {
    str(kv.key);
    if (const auto* s = std::get_if<std::string>(&kv.value)) {
      u32(kString);
      str(*s);
    } else if (const auto* i = std::get_if<int64_t>(&kv.value)) {
      u32(kI64);
      u64(static_cast<uint64_t>(*i));
    } else if (const auto* f = std::get_if<bool>(&kv.value)) {
      u32(kBool);
      b.push_back(*f ? 1 : 0);
    } else if (const auto* ss = std::get_if<std::vector<std::string>>(&kv.value)) {
      u32(kArray);
      u32(kString);
      u64(ss->size());
      for (const auto& s : *ss) str(s);
    } else if (const auto* is = std::get_if<std::vector<int32_t>>(&kv.value)) {
      u32(kArray);
      u32(kI32);
      u64(is->size());
      for (const int32_t v : *is) u32(static_cast<uint32_t>(v));
    } else if (const auto* fs = std::get_if<std::vector<float>>(&kv.value)) {
      u32(kArray);
      u32(kF32);
      u64(fs->size());
      for (const float v : *fs) b.append(reinterpret_cast<const char*>(&v), 4);
    }
  }
  while (b.size() % 32 != 0) b.push_back(0);  // the (empty) data section starts aligned
  std::ofstream out(path, std::ios::binary);
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A temporary file removed when the object goes out of scope.
class TempFile {
 public:
  explicit TempFile(std::string_view name)
      : path_((std::filesystem::temp_directory_path() /
               (std::string("atom_tok_") + std::to_string(::getpid()) + "_" + std::string(name)))
                  .string()) {}
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace atom::test

// core/envs: defaults, lazy re-evaluation, the parsing rules, the registry against the
// environment-variable document, and that no other source file reads the environment.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom::envs {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFakeHome = "/home/atom-test";

// Every test starts from an environment where no registered variable is set except HOME (fixed,
// so the expanded paths are known), and gets the original environment back afterwards.
class EnvsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const EnvVarInfo& e : all()) {
      const std::string name(e.name);
      saved_[name] = raw(name);
      ::unsetenv(name.c_str());
    }
    ::setenv("HOME", kFakeHome, 1);
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }
  static void put(const char* name, const char* value) { ::setenv(name, value, 1); }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

template <typename F>
void expect_error(F&& f, ErrorCode code, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "expected atom::Error(" << error_code_name(code) << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& s : fragments) {
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << s << "\"";
    }
  }
}

TEST_F(EnvsTest, DefaultsWhenUnset) {
  EXPECT_EQ(ATOM_DP_RANK(), 0);
  EXPECT_EQ(ATOM_DP_RANK_LOCAL(), 0);
  EXPECT_EQ(ATOM_DP_SIZE(), 1);
  EXPECT_EQ(ATOM_DP_MASTER_IP(), "127.0.0.1");
  EXPECT_EQ(ATOM_DP_MASTER_PORT(), 29500);
  EXPECT_FALSE(ATOM_ENFORCE_EAGER());
  EXPECT_FALSE(ATOM_USE_TRITON_GEMM());
  EXPECT_FALSE(ATOM_USE_TRITON_MXFP4_BMM());
  EXPECT_TRUE(ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION());
  EXPECT_TRUE(ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION());
  EXPECT_TRUE(ATOM_ENABLE_DS_QKNORM_QUANT_FUSION());
  EXPECT_FALSE(ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION());
  EXPECT_TRUE(ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT());
  EXPECT_TRUE(ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT());
  EXPECT_EQ(ATOM_TORCH_PROFILER_DIR(), std::nullopt);
  EXPECT_FALSE(ATOM_PROFILER_MORE());
  EXPECT_FALSE(ATOM_LOG_MORE());
  EXPECT_EQ(OPENAI_API_KEY(), std::nullopt);
  EXPECT_FALSE(VLLM_USE_MODELSCOPE());
  EXPECT_FALSE(SAVE_TO_PYTORCH_BENCHMARK_FORMAT());
  EXPECT_EQ(AITER_QUICK_REDUCE_QUANTIZATION(), std::nullopt);
  EXPECT_EQ(TORCHINDUCTOR_CACHE_DIR(), std::nullopt);
  EXPECT_EQ(TRITON_CACHE_DIR(), std::nullopt);
  EXPECT_FALSE(ATOM_DISABLE_MMAP());
  EXPECT_EQ(ATOM_CACHE_DIR(), "/home/atom-test/.cache/atom");
  EXPECT_EQ(models_dir(), "/home/atom-test/.cache/atom/models");
  EXPECT_EQ(ATOM_NUM_THREADS(), 0);
  EXPECT_EQ(HF_HOME(), "/home/atom-test/.cache/huggingface");
  EXPECT_EQ(HF_TOKEN(), std::nullopt);
  EXPECT_EQ(HOME(), kFakeHome);
}

// The default column of the table and the effective value of an unset variable agree.
TEST_F(EnvsTest, EffectiveValueOfUnsetMatchesDefaultColumn) {
  for (const EnvVarInfo& e : all()) {
    if (e.name == "HOME") continue;  // fixed by the fixture
    const std::string value = effective_value(e.name);
    if (e.type == "bool") {
      const bool on = e.default_value == "1" || e.default_value == "true";
      EXPECT_EQ(value, on ? "true" : "false") << e.name;
    } else if (e.default_value.starts_with("~")) {
      EXPECT_EQ(value, std::string(kFakeHome) + std::string(e.default_value.substr(1))) << e.name;
    } else {
      EXPECT_EQ(value, e.default_value) << e.name;
    }
  }
}

TEST_F(EnvsTest, ReEvaluatedOnEveryAccess) {
  EXPECT_EQ(ATOM_DP_SIZE(), 1);
  put("ATOM_DP_SIZE", "4");
  EXPECT_EQ(ATOM_DP_SIZE(), 4);
  put("ATOM_DP_SIZE", "8");
  EXPECT_EQ(ATOM_DP_SIZE(), 8);
  EXPECT_EQ(effective_value("ATOM_DP_SIZE"), "8");
  ::unsetenv("ATOM_DP_SIZE");
  EXPECT_EQ(ATOM_DP_SIZE(), 1);

  put("ATOM_ENFORCE_EAGER", "1");
  EXPECT_TRUE(ATOM_ENFORCE_EAGER());
  EXPECT_EQ(effective_value("ATOM_ENFORCE_EAGER"), "true");
  put("ATOM_ENFORCE_EAGER", "0");
  EXPECT_FALSE(ATOM_ENFORCE_EAGER());

  put("ATOM_DP_MASTER_IP", "10.1.2.3");
  EXPECT_EQ(ATOM_DP_MASTER_IP(), "10.1.2.3");
  put("ATOM_TORCH_PROFILER_DIR", "/tmp/prof");
  EXPECT_EQ(ATOM_TORCH_PROFILER_DIR(), "/tmp/prof");
  EXPECT_EQ(effective_value("ATOM_TORCH_PROFILER_DIR"), "/tmp/prof");

  put("ATOM_CACHE_DIR", "/data/atom");
  EXPECT_EQ(ATOM_CACHE_DIR(), "/data/atom");
  EXPECT_EQ(models_dir(), "/data/atom/models");
  put("ATOM_CACHE_DIR", "~/elsewhere/");
  EXPECT_EQ(ATOM_CACHE_DIR(), "/home/atom-test/elsewhere/");
  EXPECT_EQ(models_dir(), "/home/atom-test/elsewhere/models");
  put("HOME", "/root");
  EXPECT_EQ(ATOM_CACHE_DIR(), "/root/elsewhere/");
}

TEST_F(EnvsTest, AtomBooleansAreTrueOnlyForExactOne) {
  for (const char* off : {"0", "", "true", "TRUE", "yes", "on", "01", " 1", "1 ", "2", "-1"}) {
    put("ATOM_ENFORCE_EAGER", off);
    EXPECT_FALSE(ATOM_ENFORCE_EAGER()) << '"' << off << '"';
    // A default-true flag is switched off by anything but "1", too.
    put("ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", off);
    EXPECT_FALSE(ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION()) << '"' << off << '"';
    put("ATOM_PROFILER_MORE", off);
    EXPECT_FALSE(ATOM_PROFILER_MORE()) << '"' << off << '"';
  }
  put("ATOM_ENFORCE_EAGER", "1");
  put("ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", "1");
  put("ATOM_PROFILER_MORE", "1");
  EXPECT_TRUE(ATOM_ENFORCE_EAGER());
  EXPECT_TRUE(ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION());
  EXPECT_TRUE(ATOM_PROFILER_MORE());

  // Every "bool" ATOM_* flag of the table except the ones with their own rules follows it.
  for (const EnvVarInfo& e : all()) {
    if (e.type != "bool" || !e.name.starts_with("ATOM_") || e.name == "ATOM_LOG_MORE" ||
        e.name == "ATOM_DISABLE_MMAP") {
      continue;
    }
    const std::string name(e.name);
    put(name.c_str(), "1");
    EXPECT_EQ(effective_value(name), "true") << name;
    put(name.c_str(), "true");
    EXPECT_EQ(effective_value(name), "false") << name;
  }
}

TEST_F(EnvsTest, BenchmarkAndMmapBooleans) {
  for (const char* on : {"true", "TRUE", "True", "1"}) {
    put("VLLM_USE_MODELSCOPE", on);
    EXPECT_TRUE(VLLM_USE_MODELSCOPE()) << on;
    put("ATOM_DISABLE_MMAP", on);
    EXPECT_TRUE(ATOM_DISABLE_MMAP()) << on;
  }
  for (const char* off : {"false", "0", "yes", "", "truthy"}) {
    put("VLLM_USE_MODELSCOPE", off);
    EXPECT_FALSE(VLLM_USE_MODELSCOPE()) << off;
    put("ATOM_DISABLE_MMAP", off);
    EXPECT_FALSE(ATOM_DISABLE_MMAP()) << off;
  }
  // Any non-empty value, even "0" or "false", turns the PyTorch benchmark format on.
  for (const char* on : {"1", "0", "false", "x"}) {
    put("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", on);
    EXPECT_TRUE(SAVE_TO_PYTORCH_BENCHMARK_FORMAT()) << on;
  }
  put("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", "");
  EXPECT_FALSE(SAVE_TO_PYTORCH_BENCHMARK_FORMAT());
}

TEST_F(EnvsTest, IntegersParsedStrictly) {
  put("ATOM_DP_SIZE", " 7 ");
  EXPECT_EQ(ATOM_DP_SIZE(), 7);
  put("ATOM_DP_SIZE", "+3");
  EXPECT_EQ(ATOM_DP_SIZE(), 3);
  put("ATOM_DP_MASTER_PORT", "65535");
  EXPECT_EQ(ATOM_DP_MASTER_PORT(), 65535);
  put("ATOM_NUM_THREADS", "12");
  EXPECT_EQ(ATOM_NUM_THREADS(), 12);

  for (const char* bad : {"abc", "", " ", "1.5", "0x10", "1e3", "12abc", "4 4", "+", "--1", "1_0",
                          "99999999999999999999"}) {
    put("ATOM_DP_SIZE", bad);
    expect_error([] { ATOM_DP_SIZE(); }, ErrorCode::kInvalidArgument,
                 {"ATOM_DP_SIZE", std::string("\"") + bad + "\""});
    expect_error([] { effective_value("ATOM_DP_SIZE"); }, ErrorCode::kInvalidArgument,
                 {"ATOM_DP_SIZE"});
  }
  put("ATOM_DP_RANK", "x1");
  expect_error([] { ATOM_DP_RANK(); }, ErrorCode::kInvalidArgument, {"ATOM_DP_RANK", "x1"});
}

TEST_F(EnvsTest, IntegersOutOfTheirRangeRejected) {
  put("ATOM_NUM_THREADS", "-1");
  expect_error([] { ATOM_NUM_THREADS(); }, ErrorCode::kInvalidArgument, {"ATOM_NUM_THREADS"});
  put("ATOM_DP_SIZE", "0");
  expect_error([] { ATOM_DP_SIZE(); }, ErrorCode::kInvalidArgument, {"ATOM_DP_SIZE"});
  put("ATOM_DP_RANK_LOCAL", "-2");
  expect_error([] { ATOM_DP_RANK_LOCAL(); }, ErrorCode::kInvalidArgument, {"ATOM_DP_RANK_LOCAL"});
  put("ATOM_DP_MASTER_PORT", "65536");
  expect_error([] { ATOM_DP_MASTER_PORT(); }, ErrorCode::kInvalidArgument,
               {"ATOM_DP_MASTER_PORT", "65536"});
}

TEST_F(EnvsTest, LogMoreIsAnInteger) {
  for (const char* off : {"0", "-0", " 0 ", "+0"}) {
    put("ATOM_LOG_MORE", off);
    EXPECT_FALSE(ATOM_LOG_MORE()) << off;
  }
  for (const char* on : {"1", "2", "-1", " 1 "}) {
    put("ATOM_LOG_MORE", on);
    EXPECT_TRUE(ATOM_LOG_MORE()) << on;
  }
  for (const char* bad : {"yes", "true", "", "1.0"}) {
    put("ATOM_LOG_MORE", bad);
    expect_error([] { ATOM_LOG_MORE(); }, ErrorCode::kInvalidArgument, {"ATOM_LOG_MORE"});
  }
}

TEST_F(EnvsTest, UnknownNamesRejected) {
  for (const char* name : {"ATOM_NOT_A_VARIABLE", "atom_dp_size", "", "PATH"}) {
    expect_error([&] { info(name); }, ErrorCode::kNotFound, {name});
    expect_error([&] { effective_value(name); }, ErrorCode::kNotFound, {name});
    expect_error([&] { raw(name); }, ErrorCode::kNotFound, {name});
    expect_error([&] { set(name, "1"); }, ErrorCode::kNotFound, {name});
    expect_error([&] { unset(name); }, ErrorCode::kNotFound, {name});
  }
}

TEST_F(EnvsTest, SetAndUnsetWriteTheEnvironment) {
  set("ATOM_ENFORCE_EAGER", "1");
  EXPECT_EQ(raw("ATOM_ENFORCE_EAGER"), "1");
  EXPECT_TRUE(ATOM_ENFORCE_EAGER());
  set("AITER_QUICK_REDUCE_QUANTIZATION", "INT4");
  EXPECT_EQ(AITER_QUICK_REDUCE_QUANTIZATION(), "INT4");
  unset("ATOM_ENFORCE_EAGER");
  EXPECT_EQ(raw("ATOM_ENFORCE_EAGER"), std::nullopt);
  EXPECT_FALSE(ATOM_ENFORCE_EAGER());
}

TEST_F(EnvsTest, ExpandUser) {
  EXPECT_EQ(expand_user("~"), "/home/atom-test");
  EXPECT_EQ(expand_user("~/a/b"), "/home/atom-test/a/b");
  EXPECT_EQ(expand_user("~other/a"), "~other/a");
  EXPECT_EQ(expand_user("/abs/~/x"), "/abs/~/x");
  EXPECT_EQ(expand_user("rel"), "rel");
  EXPECT_EQ(expand_user(""), "");
  put("HOME", "/");
  EXPECT_EQ(expand_user("~/x"), "/x");
  EXPECT_EQ(expand_user("~"), "/");
  // Without HOME the password database still gives some absolute home directory.
  ::unsetenv("HOME");
  const std::string home = expand_user("~/x");
  EXPECT_TRUE(home.starts_with("/")) << home;
  EXPECT_TRUE(home.ends_with("/x")) << home;
}

const std::vector<std::string_view> kExpectedNames = {
    "ATOM_DP_RANK",
    "ATOM_DP_RANK_LOCAL",
    "ATOM_DP_SIZE",
    "ATOM_DP_MASTER_IP",
    "ATOM_DP_MASTER_PORT",
    "ATOM_ENFORCE_EAGER",
    "ATOM_USE_TRITON_GEMM",
    "ATOM_USE_TRITON_MXFP4_BMM",
    "ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION",
    "ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION",
    "ATOM_ENABLE_DS_QKNORM_QUANT_FUSION",
    "ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION",
    "ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT",
    "ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT",
    "ATOM_TORCH_PROFILER_DIR",
    "ATOM_PROFILER_MORE",
    "ATOM_LOG_MORE",
    "OPENAI_API_KEY",
    "VLLM_USE_MODELSCOPE",
    "SAVE_TO_PYTORCH_BENCHMARK_FORMAT",
    "AITER_QUICK_REDUCE_QUANTIZATION",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "ATOM_DISABLE_MMAP",
    "ATOM_CACHE_DIR",
    "ATOM_NUM_THREADS",
    "HF_HOME",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HOME",
};

TEST_F(EnvsTest, TableIsWellFormed) {
  std::vector<std::string_view> names;
  std::set<std::string_view> unique;
  for (const EnvVarInfo& e : all()) {
    names.push_back(e.name);
    EXPECT_TRUE(unique.insert(e.name).second) << "registered twice: " << e.name;
    EXPECT_TRUE(e.type == "bool" || e.type == "int" || e.type == "float" || e.type == "str")
        << e.name << ": " << e.type;
    EXPECT_FALSE(e.default_value.empty()) << e.name;
    EXPECT_FALSE(e.description.empty()) << e.name;
    EXPECT_EQ(&info(e.name), &e);
  }
  EXPECT_EQ(names, kExpectedNames);
  EXPECT_TRUE(info("HF_TOKEN").secret);
  EXPECT_TRUE(info("OPENAI_API_KEY").secret);
  EXPECT_FALSE(info("ATOM_DP_SIZE").secret);
}

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// Every variable of the document is registered, in the document's order, with the document's
// type and a default that has the document's meaning.
TEST_F(EnvsTest, TableMatchesTheDocument) {
  const fs::path doc = fs::path(ATOM_SOURCE_DIR) / ".." / "shared" / "environment_variables.md";
  if (!fs::exists(doc)) GTEST_SKIP() << "no ../shared/environment_variables.md beside the repo";
  std::ifstream in(doc);
  ASSERT_TRUE(in) << doc;
  struct Row {
    std::string name, type, default_value;
  };
  std::vector<Row> rows;
  // "| **NAME** | type | default | description |" or, for the internal ones,
  // "| **NAME** | description |".
  const std::regex row_re(R"(^\|\s*\*\*([A-Z0-9_]+)\*\*\s*\|(.*)\|\s*$)");
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (!std::regex_match(line, m, row_re)) continue;
    std::vector<std::string> cells;
    std::stringstream rest(m[2].str());
    for (std::string cell; std::getline(rest, cell, '|');) cells.push_back(trim(cell));
    Row r{m[1].str(), "", ""};
    if (cells.size() == 3) {
      r.type = cells[0];
      r.default_value = cells[1];
    } else {
      ASSERT_EQ(cells.size(), 1u) << line;
    }
    rows.push_back(r);
  }
  ASSERT_EQ(rows.size(), 23u) << "the document's tables changed shape";

  size_t last_index = 0;
  for (const Row& r : rows) {
    const EnvVarInfo& e = info(r.name);  // throws (fails the test) when not registered
    const size_t index = size_t(&e - all().data());
    EXPECT_GE(index, last_index) << r.name << " is out of the document's order";
    last_index = index;
    if (r.type.empty()) continue;  // internal variables: no type or default in the document
    EXPECT_EQ(e.type, r.type) << r.name;
    const std::string value = effective_value(r.name);
    if (r.type == "bool") {
      // "0 (false)", "1 (true)", "false"
      const bool doc_on = r.default_value.starts_with("1") || r.default_value.starts_with("true");
      EXPECT_EQ(value, doc_on ? "true" : "false") << r.name;
    } else if (r.default_value == "\u2014") {  // an em dash: no default
      EXPECT_EQ(e.default_value, kUnset) << r.name;
      EXPECT_EQ(value, kUnset) << r.name;
    } else {
      EXPECT_EQ(e.default_value, r.default_value) << r.name;
      EXPECT_EQ(value, r.default_value) << r.name;
    }
  }
}

TEST_F(EnvsTest, FormatEnvTable) {
  put("ATOM_DP_SIZE", "2");
  put("HF_TOKEN", "hf_very_secret");
  put("ATOM_NUM_THREADS", "lots");
  const std::string table = format_env_table();
  std::vector<std::string> lines;
  std::stringstream ss(table);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), all().size() + 1);
  EXPECT_TRUE(lines[0].starts_with("NAME")) << lines[0];
  for (const char* col : {"VALUE", "DEFAULT", "MEANING"}) {
    EXPECT_NE(lines[0].find(col), std::string::npos) << col;
  }
  // Columns are aligned: every line has its value where the header's VALUE is.
  const size_t value_col = lines[0].find("VALUE");
  for (size_t i = 0; i < all().size(); ++i) {
    const std::string& l = lines[i + 1];
    EXPECT_TRUE(l.starts_with(std::string(all()[i].name) + " ")) << l;
    EXPECT_NE(l[value_col], ' ') << l;
    EXPECT_EQ(l[value_col - 1], ' ') << l;
    EXPECT_NE(l.find(all()[i].description), std::string::npos) << l;
  }
  auto line_of = [&](std::string_view name) {
    for (const std::string& l : lines) {
      if (l.starts_with(std::string(name) + " ")) return l;
    }
    return std::string();
  };
  EXPECT_EQ(line_of("ATOM_DP_SIZE").substr(value_col, 2), "2 ");
  EXPECT_EQ(table.find("hf_very_secret"), std::string::npos);
  EXPECT_NE(line_of("HF_TOKEN").find("(set, hidden)"), std::string::npos);
  EXPECT_NE(line_of("OPENAI_API_KEY").find("unset"), std::string::npos);
  EXPECT_NE(line_of("ATOM_NUM_THREADS").find("invalid: \"lots\""), std::string::npos);
  EXPECT_NE(line_of("ATOM_CACHE_DIR").find("/home/atom-test/.cache/atom"), std::string::npos);
}

// The environment is read in one place only: envs.cpp.
TEST(EnvsSource, NoEnvironmentReadsOutsideEnvsCpp) {
  const fs::path src = fs::path(ATOM_SOURCE_DIR) / "src";
  ASSERT_TRUE(fs::is_directory(src)) << src;
  const fs::path allowed = fs::weakly_canonical(src / "atom" / "core" / "envs.cpp");
  std::vector<std::string> offenders;
  bool seen_allowed = false;
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(src)) {
    if (!entry.is_regular_file()) continue;
    ++files;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("getenv") == std::string::npos) continue;
    if (fs::weakly_canonical(entry.path()) == allowed) {
      seen_allowed = true;
    } else {
      offenders.push_back(entry.path().string());
    }
  }
  EXPECT_GT(files, 5u);
  // The scan must be able to find the word at all: envs.cpp itself uses it.
  EXPECT_TRUE(seen_allowed);
  EXPECT_TRUE(offenders.empty()) << "environment read outside envs.cpp: "
                                 << ::testing::PrintToString(offenders);
}

}  // namespace
}  // namespace atom::envs

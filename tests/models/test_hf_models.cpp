// Hugging Face checkpoints end to end: the tiny random Llama and Qwen3 folders of
// tests/data/hf_models (made by scripts/gen_hf_model_goldens.py with transformers) against their
// goldens, through the library and through `atom generate --model DIR`; dummy weights; and
// clear errors for broken folders.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/engine/llm_engine.h"
#include "atom/io/hf_config.h"
#include "atom/io/model_path.h"
#include "atom/io/safetensors.h"
#include "atom/models/model.h"
#include "atom/runner/model_runner.h"
#include "atom/tokenizer/tokenizer.h"
#include "common/safetensors_writer.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kModels[] = {"llama-tiny", "qwen3-tiny"};

std::string model_dir(const std::string& name) {
  return std::string(ATOM_TEST_DATA_DIR) + "/hf_models/" + name;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// {"prompts": [...]} of golden.json (4 prompts).
json golden_prompts(const std::string& name) {
  json g = json::parse(slurp(model_dir(name) + "/golden.json"));
  EXPECT_EQ(g["prompts"].size(), 4u) << name;
  return std::move(g["prompts"]);
}

// A scratch copy of a model folder, removed at the end of the test.
class TmpModel {
 public:
  explicit TmpModel(const std::string& name) {
    dir_ = (fs::temp_directory_path() / ("atom_hf_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter_++) + "_" + name))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(model_dir(name)))
      fs::copy_file(e.path(), fs::path(dir_) / e.path().filename());
  }
  ~TmpModel() { fs::remove_all(dir_); }
  const std::string& dir() const { return dir_; }
  std::string file(const std::string& f) const { return dir_ + "/" + f; }
  // config.json with `edit` applied.
  template <typename F>
  void edit_config(F&& edit) const {
    json c = json::parse(slurp(file("config.json")));
    edit(c);
    std::ofstream(file("config.json"), std::ios::trunc) << c.dump(2);
  }
  void write_garbage(const std::string& f) const {
    std::ofstream out(file(f), std::ios::binary | std::ios::trunc);
    for (int i = 0; i < 4096; ++i) out.put(char((i * 131 + 7) & 0xff));
  }

 private:
  static inline int counter_ = 0;
  std::string dir_;
};

// Logits of the last prompt position, prefilling in chunks of `chunk` tokens (so chunks > 1
// also exercise attention over cached keys).
std::vector<float> last_logits(Model& model, const std::vector<int32_t>& ids, int64_t chunk) {
  const ModelConfig& c = model.config();
  const int64_t num_blocks = (int64_t(ids.size()) + 15) / 16;
  ModelRunner runner(model, num_blocks, 16);
  std::vector<int32_t> table(static_cast<size_t>(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) table[size_t(i)] = int32_t(num_blocks - 1 - i);
  KvCache kv(c.num_hidden_layers, num_blocks, 16, c.num_key_value_heads, c.head_dim);
  std::vector<float> logits;
  for (int64_t s = 0; s < int64_t(ids.size()); s += chunk) {
    const int64_t n = std::min<int64_t>(chunk, int64_t(ids.size()) - s);
    const StepSeq step{0, ids, int64_t(ids.size()), s, n, table, true, nullptr};
    model.forward(runner.plan({&step, 1}), kv, logits);
  }
  return logits;
}

// max |got - want| / max |want|
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double err = 0, ref = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    err = std::max(err, std::fabs(double(got[i]) - double(want[i])));
    ref = std::max(ref, std::fabs(double(want[i])));
  }
  return err / ref;
}

RequestOutput greedy(Model& model, const Tokenizer& tok, const std::vector<int32_t>& ids,
                     int64_t max_tokens) {
  EngineConfig cfg;
  cfg.scheduler.max_model_len = model.config().max_position_embeddings;
  cfg.num_kv_blocks = 64;
  LLMEngine engine(model, tok, cfg);
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;  // and no stop ids: the full length, as the goldens
  return engine.generate({ids}, {p})[0];
}

std::unique_ptr<Tokenizer> tokenizer_of(const std::string& dir) {
  return Tokenizer::from_hf(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
}

// The atom::Error `f` throws (the test fails when it throws nothing); its message must contain
// every needle.
template <typename F>
ErrorCode error_of(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const Error& e) {
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "'" << n << "' not in: " << e.what();
    return e.code();
  }
  ADD_FAILURE() << "no atom::Error thrown";
  return ErrorCode::kInternal;
}

// ---------------------------------------------------------------------------------------------
// `atom <args>`: exit code, stdout, stderr.
struct RunResult {
  int exit_code = -1;
  bool crashed = false;
  std::string out, err;
};

RunResult atom_run(const std::vector<std::string>& args) {
  const std::string base =
      (fs::temp_directory_path() / ("atom_hf_cli_" + std::to_string(::getpid()))).string();
  const std::string out = base + ".out", err = base + ".err";
  std::string cmd = std::string("'") + ATOM_BINARY + "'";
  for (const std::string& a : args) {
    std::string q;
    for (char c : a) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    cmd += " '" + q + "'";
  }
  cmd += " < /dev/null > '" + out + "' 2> '" + err + "'";
  const int status = std::system(cmd.c_str());
  RunResult r;
  if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
    r.crashed = r.exit_code >= 128;  // the shell reports a signal as 128 + n
  } else {
    r.crashed = true;
  }
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out), fs::remove(err);
  return r;
}

std::vector<std::string> generate_args(const std::string& dir, const std::string& prompt) {
  return {"generate",     "--model",      dir,  "--prompt",  prompt, "--temperature", "0",
          "--ignore-eos", "--max-tokens", "16", "--threads", "2"};
}

void expect_clean_error(const RunResult& r, const std::vector<std::string>& needles) {
  EXPECT_FALSE(r.crashed) << r.err;
  EXPECT_NE(r.exit_code, 0) << r.out;
  for (const std::string& n : needles)
    EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' not in stderr: " << r.err;
}

// ---------------------------------------------------------------------------------------------
class HfModel : public ::testing::TestWithParam<const char*> {
 protected:
  std::string name() const { return GetParam(); }
  std::string dir() const { return model_dir(GetParam()); }
};

TEST_P(HfModel, ConfigAndTokenizer) {
  const json prompts = golden_prompts(name());
  const ModelConfig c = load_hf_config(dir());
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, name() == "qwen3-tiny" ? 32 : 16);
  const auto tok = tokenizer_of(dir());
  EXPECT_EQ(tok->vocab_size(), c.vocab_size);
  for (const json& p : prompts)
    EXPECT_EQ(tok->encode(p["text"].get<std::string>(), true),
              p["prompt_ids"].get<std::vector<int32_t>>())
        << p["text"];
}

TEST_P(HfModel, LastPositionLogitsMatchTransformers) {
  const json prompts = golden_prompts(name());
  const ModelConfig c = load_hf_config(dir());
  const auto model = load_model_from_hf(dir(), c, LoadFormat::kAuto);
  EXPECT_EQ(model->config().architecture,
            name() == "qwen3-tiny" ? "Qwen3ForCausalLM" : "LlamaForCausalLM");
  for (const json& p : prompts) {
    const auto ids = p["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = p["last_logits"].get<std::vector<float>>();
    ASSERT_EQ(int64_t(want.size()), c.vocab_size);
    for (const int64_t chunk : {int64_t(1000), int64_t(3)}) {
      const double rel = rel_error(last_logits(*model, ids, chunk), want);
      EXPECT_LE(rel, 1e-4) << p["text"] << " (prefill chunk " << chunk << ")";
    }
  }
}

TEST_P(HfModel, GreedyTokensMatchTransformers) {
  const json prompts = golden_prompts(name());
  // Through an opened checkpoint the model views (the CLI's path) rather than the folder.
  const ModelConfig c = load_hf_config(dir());
  const auto checkpoint = SafetensorsCheckpoint::open(dir());
  const auto model = load_model_from_hf(*checkpoint, c);
  const auto tok = tokenizer_of(dir());
  for (const json& p : prompts) {
    const RequestOutput out = greedy(*model, *tok, p["prompt_ids"].get<std::vector<int32_t>>(), 16);
    EXPECT_EQ(out.output_ids, p["greedy_ids"].get<std::vector<int32_t>>()) << p["text"];
    EXPECT_EQ(out.text, p["greedy_text"].get<std::string>()) << p["text"];
  }
}

TEST_P(HfModel, CliGenerateMatchesTransformers) {
  const json prompts = golden_prompts(name());
  for (const json& p : prompts) {
    const RunResult r = atom_run(generate_args(dir(), p["text"].get<std::string>()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, p["greedy_text"].get<std::string>() + "\n") << p["text"];
  }
}

TEST_P(HfModel, DummyWeightsReadNoWeightFile) {
  const json prompts = golden_prompts(name());
  const TmpModel t(name());
  t.write_garbage("model.safetensors");
  const ModelConfig c = load_hf_config(t.dir());
  const auto tok = tokenizer_of(t.dir());
  const auto ids = prompts[0]["prompt_ids"].get<std::vector<int32_t>>();

  const auto dummy = load_model_from_hf(t.dir(), c, LoadFormat::kDummy);
  const RequestOutput out = greedy(*dummy, *tok, ids, 16);
  EXPECT_EQ(out.output_ids.size(), 16u);
  // Deterministic, finite, and not all equal (random weights, not zeros).
  const std::vector<float> a = last_logits(*dummy, ids, 1000);
  const std::vector<float> b =
      last_logits(*load_model_from_hf(t.dir(), c, LoadFormat::kDummy), ids, 1000);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](float x) { return std::isfinite(x); }));
  EXPECT_NE(*std::min_element(a.begin(), a.end()), *std::max_element(a.begin(), a.end()));

  EXPECT_EQ(error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
                     {t.file("model.safetensors")}),
            ErrorCode::kCorrupt);

  const std::string prompt = prompts[0]["text"];
  std::vector<std::string> args = generate_args(t.dir(), prompt);
  args.insert(args.end(), {"--load-format", "dummy"});
  RunResult r = atom_run(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("decode: 16 tokens"), std::string::npos) << r.err;
  args.resize(args.size() - 2);
  args.push_back("--load_dummy");  // ATOM's spelling
  r = atom_run(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  expect_clean_error(atom_run(generate_args(t.dir(), prompt)), {"model.safetensors"});
}

INSTANTIATE_TEST_SUITE_P(Tiny, HfModel, ::testing::ValuesIn(kModels), [](const auto& info) {
  std::string s = info.param;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
});

// ---------------------------------------------------------------------------------------------
// The weights in f16 / bf16 are used as they are (no f32 copy): results stay close to f32's.
TEST(HfModels, HalfPrecisionCheckpoints) {
  for (const auto& [dtype, tolerance] :
       std::vector<std::pair<std::string, double>>{{"F16", 2e-3}, {"BF16", 2e-2}}) {
    const TmpModel t("llama-tiny");
    const auto f32 = SafetensorsCheckpoint::open(model_dir("llama-tiny"));
    testing::SafetensorsWriter w;
    for (const std::string& name : f32->names()) {
      const SafetensorsView v = f32->tensor(name);
      const float* x = static_cast<const float*>(v.data);
      std::vector<uint8_t> bytes(size_t(v.numel()) * 2);
      for (int64_t i = 0; i < v.numel(); ++i) {
        const uint16_t h = dtype == "F16" ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      w.add(name, dtype, v.shape, std::move(bytes));
    }
    w.write(t.file("model.safetensors"));
    const ModelConfig c = load_hf_config(t.dir());
    const auto model = load_model_from_hf(t.dir(), c, LoadFormat::kAuto);
    const json p = golden_prompts("llama-tiny")[1];
    const double rel =
        rel_error(last_logits(*model, p["prompt_ids"].get<std::vector<int32_t>>(), 1000),
                  p["last_logits"].get<std::vector<float>>());
    EXPECT_LE(rel, tolerance) << dtype;
    EXPECT_GT(rel, 0.0) << dtype << ": identical to f32, so the half weights were not used";
  }
}

TEST(HfModels, DummyWeightsInBf16) {
  const TmpModel t("qwen3-tiny");
  t.edit_config([](json& c) { c["dtype"] = "bfloat16"; });
  fs::remove(t.file("model.safetensors"));
  const ModelConfig c = load_hf_config(t.dir());
  const auto model = load_model_from_hf(t.dir(), c, LoadFormat::kDummy);
  const std::vector<float> logits = last_logits(*model, {1, 2, 3, 4, 5}, 1000);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
}

TEST(HfModels, ModelPathFindsCheckpointFolders) {
  const ModelLocation loc = locate_model(model_dir("llama-tiny"));
  EXPECT_EQ(loc.format, ModelFormat::kHfFolder);
  EXPECT_EQ(loc.path, model_dir("llama-tiny"));
  EXPECT_EQ(error_of([] { resolve_model_path(model_dir("llama-tiny")); }, {"Hugging Face"}),
            ErrorCode::kUnsupported);
  // A GGUF download that also keeps the repo's config.json stays GGUF.
  const TmpModel t("llama-tiny");
  fs::remove(t.file("model.safetensors"));
  std::ofstream(t.file("model.Q8_0.gguf")) << "GGUF";
  const ModelLocation gguf = locate_model(t.dir());
  EXPECT_EQ(gguf.format, ModelFormat::kGguf);
  EXPECT_EQ(gguf.path, t.file("model.Q8_0.gguf"));
}

TEST(HfModels, LoadFormatNames) {
  EXPECT_EQ(parse_load_format("auto"), LoadFormat::kAuto);
  EXPECT_EQ(parse_load_format("dummy"), LoadFormat::kDummy);
  EXPECT_EQ(error_of([] { parse_load_format("pt"); }, {"'pt'", "auto, dummy"}),
            ErrorCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Broken folders: a clear message naming the problem, from the library and from the CLI.

TEST(HfModelErrors, ShapeMismatch) {
  const TmpModel t("llama-tiny");
  t.edit_config([](json& c) { c["intermediate_size"] = 96; });
  const ModelConfig c = load_hf_config(t.dir());
  EXPECT_EQ(error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
                     {"model.layers.0.mlp.gate_proj.weight", "[128, 64]", "expected [96, 64]"}),
            ErrorCode::kCorrupt);
  expect_clean_error(atom_run(generate_args(t.dir(), "Hello")),
                     {"model.layers.0.mlp.gate_proj.weight", "expected [96, 64]"});
}

TEST(HfModelErrors, MissingTensor) {
  {  // untied: the LM head must be in the checkpoint
    const TmpModel t("qwen3-tiny");
    t.edit_config([](json& c) { c["tie_word_embeddings"] = false; });
    const ModelConfig c = load_hf_config(t.dir());
    EXPECT_EQ(error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
                       {"'lm_head.weight'", t.dir()}),
              ErrorCode::kNotFound);
    expect_clean_error(atom_run(generate_args(t.dir(), "Hello")), {"'lm_head.weight'"});
  }
  {  // attention_bias: the projections' biases
    const TmpModel t("llama-tiny");
    t.edit_config([](json& c) { c["attention_bias"] = true; });
    const ModelConfig c = load_hf_config(t.dir());
    EXPECT_EQ(error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
                       {"'model.layers.0.self_attn.q_proj.bias'", "LlamaForCausalLM"}),
              ErrorCode::kNotFound);
  }
}

TEST(HfModelErrors, UnknownArchitecture) {
  ModelConfig c = load_hf_config(model_dir("llama-tiny"));
  c.architecture = "MixtralForCausalLM";  // config.json reads it; no model builds it yet
  for (const LoadFormat f : {LoadFormat::kAuto, LoadFormat::kDummy})
    EXPECT_EQ(error_of([&] { load_model_from_hf(model_dir("llama-tiny"), c, f); },
                       {"MixtralForCausalLM", "LlamaForCausalLM, Qwen3ForCausalLM"}),
              ErrorCode::kUnsupported);
  EXPECT_EQ(supported_model_architectures(),
            std::vector<std::string>({"LlamaForCausalLM", "Qwen3ForCausalLM"}));

  const TmpModel t("llama-tiny");
  t.edit_config([](json& c) { c["architectures"] = {"FooForCausalLM"}; });
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"FooForCausalLM"}),
            ErrorCode::kUnsupported);
  expect_clean_error(atom_run(generate_args(t.dir(), "Hello")),
                     {"FooForCausalLM", "not supported"});
}

TEST(HfModelErrors, CorruptSafetensors) {
  const TmpModel t("qwen3-tiny");
  fs::resize_file(t.file("model.safetensors"), 5000);  // header intact, data cut short
  const ModelConfig c = load_hf_config(t.dir());
  error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
           {t.file("model.safetensors")});
  expect_clean_error(atom_run(generate_args(t.dir(), "Hello")), {"model.safetensors"});

  t.write_garbage("model.safetensors");
  EXPECT_EQ(error_of([&] { load_model_from_hf(t.dir(), c, LoadFormat::kAuto); },
                     {t.file("model.safetensors")}),
            ErrorCode::kCorrupt);
}

TEST(HfModelErrors, MissingTokenizer) {
  const TmpModel t("llama-tiny");
  fs::remove(t.file("tokenizer.json"));
  expect_clean_error(atom_run(generate_args(t.dir(), "Hello")), {"tokenizer.json"});
}

}  // namespace
}  // namespace atom

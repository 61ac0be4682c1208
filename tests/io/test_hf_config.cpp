#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "atom/core/logging.h"
#include "atom/io/hf_config.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture(const std::string& model) {
  return std::string(ATOM_TEST_DATA_DIR) + "/hf_configs/" + model;
}

json read_json(const std::string& path) { return json::parse(std::ifstream(path)); }

// A scratch folder holding one config.json (and whatever else a test writes).
class TempModel {
 public:
  explicit TempModel(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("atom_test_hfcfg_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempModel() { fs::remove_all(path_); }
  std::string dir() const { return path_.string(); }
  std::string file(const std::string& n) const { return (path_ / n).string(); }
  void write(const std::string& n, const std::string& text) const {
    std::ofstream(file(n), std::ios::trunc) << text;
  }
  void write_config(const json& j) const { write("config.json", j.dump(2)); }

 private:
  fs::path path_;
};

// The error of `f`, checking its message mentions each of `needles`.
template <typename F>
ErrorCode error_of(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "expected '" << n << "' in: " << msg;
    }
    return e.code();
  }
  ADD_FAILURE() << "no error";
  return ErrorCode::kInternal;
}

TEST(HfConfig, Llama31_8B) {
  const ModelConfig c = load_hf_config(fixture("llama-3.1-8b-instruct"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // hidden / heads: the config has no head_dim
  EXPECT_EQ(c.rotary_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_ids, (std::vector<int64_t>{128000}));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.moe.num_experts, 0);
  EXPECT_FALSE(c.mla.has_value());
  EXPECT_TRUE(c.quantization_config.empty());
  EXPECT_FALSE(is_moe_layer(c, 0));
  // The config.json path itself works as well as the folder.
  EXPECT_EQ(load_hf_config(fixture("llama-3.1-8b-instruct") + "/config.json").vocab_size, 128256);
}

TEST(HfConfig, Qwen3_0_6B) {
  const ModelConfig c = load_hf_config(fixture("qwen3-0.6b"));
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // explicit, not hidden / heads (= 64)
  EXPECT_EQ(c.rotary_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // written as an integer
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{151645}));
  EXPECT_FALSE(c.sliding_window.has_value());
}

TEST(HfConfig, Qwen3_30B_A3B) {
  const ModelConfig c = load_hf_config(fixture("qwen3-30b-a3b"));
  EXPECT_EQ(c.architecture, "Qwen3MoeForCausalLM");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 48);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.moe.num_experts, 128);
  EXPECT_EQ(c.moe.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe.moe_intermediate_size, 768);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  EXPECT_EQ(c.moe.decoder_sparse_step, 1);
  EXPECT_TRUE(c.moe.mlp_only_layers.empty());
  EXPECT_EQ(c.moe.n_shared_experts, 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) EXPECT_TRUE(is_moe_layer(c, l)) << l;

  // mlp_only_layers and decoder_sparse_step pick the dense layers.
  json j = read_json(fixture("qwen3-30b-a3b") + "/config.json");
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  TempModel t("qwen3moe_sparse");
  t.write_config(j);
  const ModelConfig s = load_hf_config(t.dir());
  EXPECT_FALSE(is_moe_layer(s, 0));  // (0 + 1) % 2 != 0
  EXPECT_TRUE(is_moe_layer(s, 1));
  EXPECT_FALSE(is_moe_layer(s, 3));  // listed in mlp_only_layers
  EXPECT_TRUE(is_moe_layer(s, 5));

  j["mlp_only_layers"] = {48};
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"mlp_only_layers", "48"}),
            ErrorCode::kCorrupt);
  j["mlp_only_layers"] = json::array();
  j["num_experts_per_tok"] = 129;
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"num_experts_per_tok", "129"}),
            ErrorCode::kCorrupt);
}

TEST(HfConfig, Mixtral_8x7B) {
  const ModelConfig c = load_hf_config(fixture("mixtral-8x7b"));
  EXPECT_EQ(c.architecture, "MixtralForCausalLM");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe.moe_intermediate_size, 14336);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.bos_token_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_TRUE(is_moe_layer(c, 0));
  EXPECT_TRUE(is_moe_layer(c, 31));

  // Mistral-style window (Mixtral v0.1 configs before the fix carried 4096).
  json j = read_json(fixture("mixtral-8x7b") + "/config.json");
  j["sliding_window"] = 4096;
  TempModel t("mixtral_window");
  t.write_config(j);
  EXPECT_EQ(load_hf_config(t.dir()).sliding_window, std::optional<int64_t>(4096));
  j.erase("num_local_experts");
  t.write_config(j);
  EXPECT_EQ(
      error_of([&] { load_hf_config(t.dir()); }, {"num_local_experts", t.file("config.json")}),
      ErrorCode::kCorrupt);
}

TEST(HfConfig, DeepSeekV3) {
  const ModelConfig c = load_hf_config(fixture("deepseek-v3"));
  EXPECT_EQ(c.architecture, "DeepseekV3ForCausalLM");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.num_key_value_heads, 128);
  EXPECT_EQ(c.head_dim, 192);  // qk_nope + qk_rope
  EXPECT_EQ(c.rotary_dim, 64);
  ASSERT_TRUE(c.mla.has_value());
  EXPECT_EQ(c.mla->q_lora_rank, std::optional<int64_t>(1536));
  EXPECT_EQ(c.mla->kv_lora_rank, 512);
  EXPECT_EQ(c.mla->qk_nope_head_dim, 128);
  EXPECT_EQ(c.mla->qk_rope_head_dim, 64);
  EXPECT_EQ(c.mla->v_head_dim, 128);
  EXPECT_EQ(c.moe.num_experts, 256);
  EXPECT_EQ(c.moe.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe.moe_intermediate_size, 2048);
  EXPECT_EQ(c.moe.n_shared_experts, 1);
  EXPECT_EQ(c.moe.first_k_dense_replace, 3);
  EXPECT_EQ(c.moe.moe_layer_freq, 1);
  EXPECT_DOUBLE_EQ(c.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.moe.n_group, 8);
  EXPECT_EQ(c.moe.topk_group, 4);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  EXPECT_EQ(c.moe.scoring_func, "sigmoid");
  EXPECT_EQ(c.moe.topk_method, "noaux_tc");
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_FALSE(is_moe_layer(c, 2));
  EXPECT_TRUE(is_moe_layer(c, 3));
  EXPECT_TRUE(is_moe_layer(c, 60));
  // yarn with DeepSeek's mscale fields ("type" spelling of transformers < 4.45).
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c.rope_scaling.attention_factor.has_value());
  EXPECT_EQ(c.bos_token_ids, (std::vector<int64_t>{0}));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1}));
  const json q = json::parse(c.quantization_config);
  EXPECT_EQ(q["quant_method"], "fp8");
  EXPECT_EQ(q["weight_block_size"], json({128, 128}));

  json j = read_json(fixture("deepseek-v3") + "/config.json");
  TempModel t("dsv3");
  j["q_lora_rank"] = nullptr;  // DeepSeek-V2-Lite style: a plain q_proj
  t.write_config(j);
  EXPECT_FALSE(load_hf_config(t.dir()).mla->q_lora_rank.has_value());
  j["topk_group"] = 9;
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"topk_group", "n_group"}),
            ErrorCode::kCorrupt);
  j["topk_group"] = 4;
  j["scoring_func"] = "sqrtsoftplus";
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"sqrtsoftplus"}), ErrorCode::kUnsupported);
  j["scoring_func"] = "sigmoid";
  j.erase("kv_lora_rank");
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"kv_lora_rank", t.file("config.json")}),
            ErrorCode::kCorrupt);
}

TEST(HfConfig, MissingRequiredFieldsNameFieldAndFile) {
  const json base = read_json(fixture("qwen3-0.6b") + "/config.json");
  TempModel t("missing");
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "architectures"}) {
    json j = base;
    j.erase(field);
    t.write_config(j);
    EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); },
                       {std::string("'") + field + "'", t.file("config.json")}),
              ErrorCode::kCorrupt)
        << field;
  }
  json j = base;
  j["hidden_size"] = "1024";
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"hidden_size", "integer"}),
            ErrorCode::kCorrupt);
  j = base;
  j["num_key_value_heads"] = 5;  // 16 heads are not a multiple of 5
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"num_key_value_heads"}),
            ErrorCode::kCorrupt);
  j = base;
  j["num_hidden_layers"] = 0;
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"num_hidden_layers", "positive"}),
            ErrorCode::kCorrupt);

  t.write("config.json", "{\"architectures\": [");
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {t.file("config.json"), "JSON"}),
            ErrorCode::kCorrupt);
  EXPECT_EQ(error_of([&] { load_hf_config(t.file("nowhere")); }, {"nowhere"}),
            ErrorCode::kNotFound);
}

TEST(HfConfig, DefaultsForOptionalFields) {
  // A minimal Llama config: kv heads, head_dim, eps, theta, max positions all defaulted.
  const json j = {{"architectures", {"LlamaForCausalLM"}},
                  {"vocab_size", 100},
                  {"hidden_size", 64},
                  {"intermediate_size", 128},
                  {"num_hidden_layers", 2},
                  {"num_attention_heads", 4},
                  {"head_dim", nullptr}};
  TempModel t("defaults");
  t.write_config(j);
  const ModelConfig c = load_hf_config(t.dir());
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rotary_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.max_position_embeddings, 0);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_TRUE(c.bos_token_ids.empty());
  EXPECT_EQ(resolve_max_model_len(std::nullopt, c), 8192);

  json k = j;
  k["partial_rotary_factor"] = 0.5;
  k["dtype"] = "float16";  // transformers 5 spelling wins over torch_dtype
  k["torch_dtype"] = "float32";
  k["attention_bias"] = true;
  k["sliding_window"] = 4096;
  k["use_sliding_window"] = false;  // Qwen-style: a window that is off
  t.write_config(k);
  const ModelConfig d = load_hf_config(t.dir());
  EXPECT_EQ(d.rotary_dim, 8);
  EXPECT_EQ(d.dtype, "float16");
  EXPECT_TRUE(d.attention_bias);
  EXPECT_FALSE(d.sliding_window.has_value());
}

TEST(HfConfig, RopeVariants) {
  const json base = read_json(fixture("llama-3.1-8b-instruct") + "/config.json");
  TempModel t("rope");
  auto with_scaling = [&](const json& s) {
    json j = base;
    j["rope_scaling"] = s;
    t.write_config(j);
    return load_hf_config(t.dir());
  };
  const ModelConfig lin = with_scaling({{"type", "linear"}, {"factor", 2.0}});
  EXPECT_EQ(lin.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(lin.rope_scaling.factor, 2.0);
  const ModelConfig dyn = with_scaling({{"rope_type", "dynamic"}, {"factor", 4}});
  EXPECT_EQ(dyn.rope_scaling.type, "dynamic");
  EXPECT_DOUBLE_EQ(dyn.rope_scaling.factor, 4.0);
  const ModelConfig def = with_scaling({{"rope_type", "default"}});
  EXPECT_EQ(def.rope_scaling.type, "default");

  // yarn: optional fields read, original_max from the top level when the dict lacks it.
  json j = base;
  j["rope_scaling"] = {{"rope_type", "yarn"},
                       {"factor", 4.0},
                       {"attention_factor", 0.8},
                       {"beta_fast", 16},
                       {"truncate", false}};
  j["original_max_position_embeddings"] = 4096;
  t.write_config(j);
  const ModelConfig y = load_hf_config(t.dir());
  EXPECT_EQ(y.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(y.rope_scaling.factor, 4.0);
  EXPECT_EQ(y.rope_scaling.attention_factor, std::optional<double>(0.8));
  EXPECT_DOUBLE_EQ(y.rope_scaling.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(y.rope_scaling.beta_slow, 1.0);
  EXPECT_FALSE(y.rope_scaling.truncate);
  EXPECT_EQ(y.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(with_scaling({{"rope_type", "deepseek_yarn"}, {"factor", 40}}).rope_scaling.type,
            "yarn");

  // transformers 5: rope_theta and the scaling live in rope_parameters.
  j = base;
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 250000.0},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  t.write_config(j);
  const ModelConfig v5 = load_hf_config(t.dir());
  EXPECT_DOUBLE_EQ(v5.rope_theta, 250000.0);
  EXPECT_EQ(v5.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(v5.rope_scaling.factor, 32.0);

  EXPECT_EQ(error_of(
                [&] {
                  with_scaling({{"rope_type", "longrope"}, {"factor", 2.0}});
                },
                {"longrope", "llama3", "yarn", t.file("config.json")}),
            ErrorCode::kUnsupported);
  EXPECT_EQ(error_of(
                [&] {
                  with_scaling({{"rope_type", "llama3"}, {"factor", 8.0}});
                },
                {"rope_scaling.low_freq_factor", t.file("config.json")}),
            ErrorCode::kCorrupt);
  EXPECT_EQ(error_of(
                [&] {
                  with_scaling({{"rope_type", "linear"}});
                },
                {"rope_scaling.factor"}),
            ErrorCode::kCorrupt);
  EXPECT_EQ(error_of(
                [&] {
                  with_scaling({{"factor", 2.0}});
                },
                {"rope_scaling.rope_type"}),
            ErrorCode::kCorrupt);
}

TEST(HfConfig, UnsupportedArchitectureAndActivation) {
  json j = read_json(fixture("qwen3-0.6b") + "/config.json");
  TempModel t("unsupported");
  j["architectures"] = {"GPT2LMHeadModel"};
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); },
                     {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM",
                      "Qwen3MoeForCausalLM", "MixtralForCausalLM", "DeepseekV3ForCausalLM"}),
            ErrorCode::kUnsupported);
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["hidden_act"] = "gelu";
  t.write_config(j);
  EXPECT_EQ(error_of([&] { load_hf_config(t.dir()); }, {"hidden_act", "gelu"}),
            ErrorCode::kUnsupported);
  EXPECT_EQ(supported_hf_architectures().size(), 5u);
}

TEST(HfConfig, GenerationConfig) {
  const auto llama = load_generation_config(fixture("llama-3.1-8b-instruct"));
  ASSERT_TRUE(llama.has_value());
  EXPECT_EQ(llama->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(llama->bos_token_id, std::optional<int64_t>(128000));
  const auto qwen = load_generation_config(fixture("qwen3-0.6b"));
  ASSERT_TRUE(qwen.has_value());
  EXPECT_EQ(qwen->eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  EXPECT_FALSE(load_generation_config(fixture("deepseek-v3")).has_value());

  TempModel t("gen");
  t.write("generation_config.json", R"({"eos_token_id": 7})");
  EXPECT_EQ(load_generation_config(t.dir())->eos_token_ids, (std::vector<int64_t>{7}));
  t.write("generation_config.json", R"({"eos_token_id": "7"})");
  EXPECT_EQ(error_of([&] { load_generation_config(t.dir()); },
                     {"eos_token_id", t.file("generation_config.json")}),
            ErrorCode::kCorrupt);
}

TEST(HfConfig, TokenizerConfig) {
  const TokenizerConfig llama = load_tokenizer_config(fixture("llama-3.1-8b-instruct"));
  ASSERT_TRUE(llama.chat_template.has_value());
  EXPECT_THAT(*llama.chat_template, ::testing::HasSubstr("<|start_header_id|>"));
  EXPECT_EQ(llama.bos_token, std::optional<std::string>("<|begin_of_text|>"));
  EXPECT_EQ(llama.eos_token, std::optional<std::string>("<|eot_id|>"));
  EXPECT_FALSE(llama.add_bos_token.has_value());

  const TokenizerConfig qwen = load_tokenizer_config(fixture("qwen3-0.6b"));
  EXPECT_FALSE(qwen.bos_token.has_value());  // null
  EXPECT_EQ(qwen.eos_token, std::optional<std::string>("<|im_end|>"));
  EXPECT_EQ(qwen.add_bos_token, std::optional<bool>(false));

  // List form of named templates, AddedToken objects for the special tokens.
  const TokenizerConfig mix = load_tokenizer_config(fixture("mixtral-8x7b"));
  ASSERT_TRUE(mix.chat_template.has_value());
  EXPECT_THAT(*mix.chat_template, ::testing::HasSubstr("[INST]"));
  EXPECT_EQ(mix.named_chat_templates.size(), 2u);
  EXPECT_THAT(mix.named_chat_templates.at("tool_use"), ::testing::HasSubstr("AVAILABLE_TOOLS"));
  EXPECT_EQ(mix.bos_token, std::optional<std::string>("<s>"));
  EXPECT_EQ(mix.eos_token, std::optional<std::string>("</s>"));
  EXPECT_EQ(mix.add_bos_token, std::optional<bool>(true));
  EXPECT_EQ(mix.add_eos_token, std::optional<bool>(false));

  TempModel t("tok");
  t.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  t.write("chat_template.jinja", "{{ messages[0].content }}");
  EXPECT_EQ(load_tokenizer_config(t.dir()).chat_template,
            std::optional<std::string>("{{ messages[0].content }}"));
  t.write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  const TokenizerConfig no_default = load_tokenizer_config(t.dir());
  EXPECT_FALSE(no_default.chat_template.has_value());
  EXPECT_EQ(no_default.named_chat_templates.at("tool_use"), "x");
  t.write("tokenizer_config.json", R"({"chat_template": [{"name": "default"}]})");
  EXPECT_EQ(error_of([&] { load_tokenizer_config(t.dir()); },
                     {"chat_template", t.file("tokenizer_config.json")}),
            ErrorCode::kCorrupt);
  t.write("tokenizer_config.json", R"({"bos_token": {"id": 1}})");
  EXPECT_EQ(error_of([&] { load_tokenizer_config(t.dir()); }, {"bos_token", "content"}),
            ErrorCode::kCorrupt);
  fs::remove(t.file("tokenizer_config.json"));
  EXPECT_EQ(error_of([&] { load_tokenizer_config(t.dir()); }, {"tokenizer_config.json"}),
            ErrorCode::kNotFound);
}

TEST(HfConfig, ResolveMaxModelLen) {
  ModelConfig c;
  c.max_position_embeddings = 40960;
  EXPECT_EQ(resolve_max_model_len(std::nullopt, c), 40960);
  EXPECT_EQ(resolve_max_model_len(4096, c), 4096);
  EXPECT_EQ(resolve_max_model_len(40960, c), 40960);

  std::ostringstream log;
  logging::set_sink(std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  EXPECT_EQ(resolve_max_model_len(100000, c), 40960);
  logging::set_sink(nullptr);
  EXPECT_THAT(log.str(), ::testing::HasSubstr("100000"));
  EXPECT_THAT(log.str(), ::testing::HasSubstr("40960"));

  c.max_position_embeddings = 0;  // absent from config.json
  EXPECT_EQ(resolve_max_model_len(std::nullopt, c), 8192);
  log.str("");
  logging::set_sink(std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  EXPECT_EQ(resolve_max_model_len(10000, c), 8192);
  logging::set_sink(nullptr);
  EXPECT_THAT(log.str(), ::testing::HasSubstr("8192"));
  EXPECT_EQ(error_of([&] { resolve_max_model_len(0, c); }, {"--max-model-len"}),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace atom

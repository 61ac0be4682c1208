#include "atom/io/hf_config.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// SPEC 1.2: the reference falls back to 8192 when the config has no max_position_embeddings.
constexpr int64_t kDefaultMaxModelLen = 8192;

constexpr const char* kLlama = "LlamaForCausalLM";
constexpr const char* kQwen3 = "Qwen3ForCausalLM";
constexpr const char* kQwen3Moe = "Qwen3MoeForCausalLM";
constexpr const char* kMixtral = "MixtralForCausalLM";
constexpr const char* kDeepseekV3 = "DeepseekV3ForCausalLM";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  ATOM_CHECK(in.good(), kIo, "cannot read {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json_file(const fs::path& path) {
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{}: not valid JSON: {}", path.string(), e.what());
  }
  ATOM_CHECK(j.is_object(), kCorrupt, "{}: not a JSON object", path.string());
  return j;
}

// Typed access to one JSON object of a file; errors name the file and the dotted field path.
// A field set to null reads as absent, as HF configs write "rope_scaling": null for "none".
class Fields {
 public:
  Fields(const json& j, std::string file, std::string prefix = "")
      : j_(j), file_(std::move(file)), prefix_(std::move(prefix)) {}

  const json* get(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }
  std::string where(const char* key) const { return prefix_ + key; }

  std::optional<int64_t> opt_int(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_number_integer()) return v->get<int64_t>();
    // Some exporters write integral sizes as floats (e.g. 4096.0).
    if (v->is_number_float()) {
      const double d = v->get<double>();
      ATOM_CHECK(std::floor(d) == d && std::abs(d) < 9.0e15, kCorrupt,
                 "{}: field '{}' must be an integer, got {}", file_, where(key), v->dump());
      return int64_t(d);
    }
    throw_error(ErrorCode::kCorrupt, "{}: field '{}' must be an integer, got {}", file_, where(key),
                v->dump());
  }
  int64_t req_int(const char* key) const {
    const std::optional<int64_t> v = opt_int(key);
    ATOM_CHECK(v.has_value(), kCorrupt, "{}: missing required field '{}'", file_, where(key));
    return *v;
  }
  int64_t int_or(const char* key, int64_t def) const { return opt_int(key).value_or(def); }
  int64_t req_positive(const char* key) const {
    const int64_t v = req_int(key);
    ATOM_CHECK(v > 0, kCorrupt, "{}: field '{}' must be positive, got {}", file_, where(key), v);
    return v;
  }

  std::optional<double> opt_double(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    ATOM_CHECK(v->is_number(), kCorrupt, "{}: field '{}' must be a number, got {}", file_,
               where(key), v->dump());
    return v->get<double>();
  }
  double req_double(const char* key) const {
    const std::optional<double> v = opt_double(key);
    ATOM_CHECK(v.has_value(), kCorrupt, "{}: missing required field '{}'", file_, where(key));
    return *v;
  }
  double double_or(const char* key, double def) const { return opt_double(key).value_or(def); }

  std::optional<bool> opt_bool(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    ATOM_CHECK(v->is_boolean(), kCorrupt, "{}: field '{}' must be true or false, got {}", file_,
               where(key), v->dump());
    return v->get<bool>();
  }
  bool bool_or(const char* key, bool def) const { return opt_bool(key).value_or(def); }

  std::optional<std::string> opt_string(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    ATOM_CHECK(v->is_string(), kCorrupt, "{}: field '{}' must be a string, got {}", file_,
               where(key), v->dump());
    return v->get<std::string>();
  }
  std::string string_or(const char* key, std::string def) const {
    return opt_string(key).value_or(std::move(def));
  }

  // An int or a list of ints (bos/eos_token_id); empty when absent.
  std::vector<int64_t> int_or_list(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return {};
    if (v->is_number_integer()) return {v->get<int64_t>()};
    ATOM_CHECK(v->is_array(), kCorrupt, "{}: field '{}' must be an integer or a list, got {}",
               file_, where(key), v->dump());
    std::vector<int64_t> out;
    for (const json& e : *v) {
      ATOM_CHECK(e.is_number_integer(), kCorrupt, "{}: field '{}' has a non-integer entry {}",
                 file_, where(key), e.dump());
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

  // A nested object, or nullopt when absent/null.
  std::optional<Fields> opt_object(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    ATOM_CHECK(v->is_object(), kCorrupt, "{}: field '{}' must be an object, got {}", file_,
               where(key), v->dump());
    return Fields(*v, file_, where(key) + ".");
  }

  const std::string& file() const { return file_; }

 private:
  const json& j_;
  std::string file_;
  std::string prefix_;
};

// rope_scaling (transformers < 5) or rope_parameters (transformers 5, which also carries
// rope_theta) -> cpu::RopeScaling. `top` is the whole config, for the Llama-style top-level
// original_max_position_embeddings.
cpu::RopeScaling parse_rope_scaling(const Fields& s, const Fields& top) {
  cpu::RopeScaling r;
  std::optional<std::string> type = s.opt_string("rope_type");
  if (!type) type = s.opt_string("type");
  ATOM_CHECK(type.has_value(), kCorrupt, "{}: missing required field '{}' (or '{}')", s.file(),
             s.where("rope_type"), s.where("type"));
  auto original_max = [&] {
    if (auto v = s.opt_int("original_max_position_embeddings")) return *v;
    return top.int_or("original_max_position_embeddings", 0);
  };
  auto positive_factor = [&] {
    const double f = s.req_double("factor");
    ATOM_CHECK(f > 0.0, kCorrupt, "{}: field '{}' must be positive, got {}", s.file(),
               s.where("factor"), f);
    return f;
  };
  if (*type == "default") {
    return r;
  } else if (*type == "linear" || *type == "dynamic") {
    r.type = *type;
    r.factor = positive_factor();
  } else if (*type == "llama3") {
    r.type = "llama3";
    r.factor = positive_factor();
    r.low_freq_factor = s.req_double("low_freq_factor");
    r.high_freq_factor = s.req_double("high_freq_factor");
    r.original_max_position_embeddings = s.req_int("original_max_position_embeddings");
    ATOM_CHECK(r.high_freq_factor > r.low_freq_factor, kCorrupt,
               "{}: {} ({}) must be greater than {} ({})", s.file(), s.where("high_freq_factor"),
               r.high_freq_factor, s.where("low_freq_factor"), r.low_freq_factor);
    ATOM_CHECK(r.original_max_position_embeddings > 0, kCorrupt, "{}: field '{}' must be positive",
               s.file(), s.where("original_max_position_embeddings"));
  } else if (*type == "yarn" || *type == "deepseek_yarn") {
    // deepseek_yarn differs from HF yarn only in how the model applies mscale to the softmax
    // scale (MLA); the frequencies and the cos/sin factor are the same, so both read as yarn.
    r.type = "yarn";
    r.factor = positive_factor();
    r.original_max_position_embeddings = original_max();
    r.beta_fast = s.double_or("beta_fast", r.beta_fast);
    r.beta_slow = s.double_or("beta_slow", r.beta_slow);
    r.mscale = s.double_or("mscale", r.mscale);
    r.mscale_all_dim = s.double_or("mscale_all_dim", r.mscale_all_dim);
    r.attention_factor = s.opt_double("attention_factor");
    r.truncate = s.bool_or("truncate", r.truncate);
  } else {
    throw_error(ErrorCode::kUnsupported,
                "{}: rope scaling type '{}' is not supported (supported: default, linear, "
                "dynamic, llama3, yarn, deepseek_yarn)",
                s.file(), *type);
  }
  return r;
}

void parse_moe_qwen3(const Fields& f, ModelConfig& c) {
  MoeConfig& m = c.moe;
  m.num_experts = f.req_positive("num_experts");
  m.num_experts_per_tok = f.req_positive("num_experts_per_tok");
  m.moe_intermediate_size = f.req_positive("moe_intermediate_size");
  m.norm_topk_prob = f.bool_or("norm_topk_prob", false);  // Qwen3MoeConfig's default
  m.decoder_sparse_step = f.int_or("decoder_sparse_step", 1);
  ATOM_CHECK(m.decoder_sparse_step >= 1, kCorrupt,
             "{}: field 'decoder_sparse_step' must be at least 1, got {}", f.file(),
             m.decoder_sparse_step);
  if (const json* v = f.get("mlp_only_layers")) {
    ATOM_CHECK(v->is_array(), kCorrupt, "{}: field 'mlp_only_layers' must be a list", f.file());
    for (const json& e : *v) {
      ATOM_CHECK(
          e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < c.num_hidden_layers,
          kCorrupt, "{}: field 'mlp_only_layers' has {}, not a layer index below {}", f.file(),
          e.dump(), c.num_hidden_layers);
      m.mlp_only_layers.push_back(e.get<int64_t>());
    }
  }
}

void parse_moe_mixtral(const Fields& f, ModelConfig& c) {
  MoeConfig& m = c.moe;
  m.num_experts = f.req_positive("num_local_experts");
  m.num_experts_per_tok = f.req_positive("num_experts_per_tok");
  m.moe_intermediate_size = c.intermediate_size;  // Mixtral's experts use intermediate_size
  m.norm_topk_prob = true;                        // Mixtral always renormalizes the top-k
}

void parse_deepseek_v3(const Fields& f, ModelConfig& c) {
  MlaConfig mla;
  mla.q_lora_rank = f.opt_int("q_lora_rank");
  ATOM_CHECK(!mla.q_lora_rank || *mla.q_lora_rank > 0, kCorrupt,
             "{}: field 'q_lora_rank' must be positive or null, got {}", f.file(),
             mla.q_lora_rank.value_or(0));
  mla.kv_lora_rank = f.req_positive("kv_lora_rank");
  mla.qk_nope_head_dim = f.req_positive("qk_nope_head_dim");
  mla.qk_rope_head_dim = f.req_positive("qk_rope_head_dim");
  mla.v_head_dim = f.req_positive("v_head_dim");
  // MLA q/k heads are nope + rope wide; only the rope part rotates.
  c.head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim;
  c.rotary_dim = mla.qk_rope_head_dim;
  c.mla = mla;

  MoeConfig& m = c.moe;
  m.num_experts = f.req_positive("n_routed_experts");
  m.num_experts_per_tok = f.req_positive("num_experts_per_tok");
  m.moe_intermediate_size = f.req_positive("moe_intermediate_size");
  m.n_shared_experts = f.int_or("n_shared_experts", 0);
  m.first_k_dense_replace = f.int_or("first_k_dense_replace", 0);
  m.moe_layer_freq = f.int_or("moe_layer_freq", 1);
  m.routed_scaling_factor = f.double_or("routed_scaling_factor", 1.0);
  m.n_group = f.int_or("n_group", 1);
  m.topk_group = f.int_or("topk_group", 1);
  m.norm_topk_prob = f.bool_or("norm_topk_prob", true);
  m.scoring_func = f.string_or("scoring_func", "softmax");
  m.topk_method = f.string_or("topk_method", "greedy");
  c.num_nextn_predict_layers = f.int_or("num_nextn_predict_layers", 0);

  ATOM_CHECK(m.n_shared_experts >= 0 && m.first_k_dense_replace >= 0 && m.moe_layer_freq >= 1 &&
                 c.num_nextn_predict_layers >= 0,
             kCorrupt,
             "{}: invalid MoE layout: n_shared_experts {}, first_k_dense_replace {}, "
             "moe_layer_freq {}, num_nextn_predict_layers {}",
             f.file(), m.n_shared_experts, m.first_k_dense_replace, m.moe_layer_freq,
             c.num_nextn_predict_layers);
  ATOM_CHECK(m.n_group >= 1 && m.topk_group >= 1 && m.topk_group <= m.n_group &&
                 m.num_experts % m.n_group == 0,
             kCorrupt,
             "{}: grouped top-k needs 1 <= topk_group ({}) <= n_group ({}) and n_routed_experts "
             "({}) divisible by n_group",
             f.file(), m.topk_group, m.n_group, m.num_experts);
  ATOM_CHECK(m.scoring_func == "softmax" || m.scoring_func == "sigmoid", kUnsupported,
             "{}: scoring_func '{}' is not supported (supported: softmax, sigmoid)", f.file(),
             m.scoring_func);
  ATOM_CHECK(m.routed_scaling_factor > 0.0, kCorrupt,
             "{}: field 'routed_scaling_factor' must be positive, got {}", f.file(),
             m.routed_scaling_factor);
}

fs::path config_path_of(const std::string& dir_or_config_json) {
  std::error_code ec;
  const fs::path p(dir_or_config_json);
  const fs::path file = fs::is_directory(p, ec) ? p / "config.json" : p;
  ATOM_CHECK(fs::is_regular_file(file, ec), kNotFound, "model config not found: {}", file.string());
  return file;
}

}  // namespace

const std::vector<std::string>& supported_hf_architectures() {
  static const std::vector<std::string> kArchs = {kLlama, kQwen3, kQwen3Moe, kMixtral, kDeepseekV3};
  return kArchs;
}

ModelConfig load_hf_config(const std::string& dir_or_config_json) {
  const fs::path path = config_path_of(dir_or_config_json);
  const json j = parse_json_file(path);
  const Fields f(j, path.string());

  ModelConfig c;
  const json* archs = f.get("architectures");
  ATOM_CHECK(archs != nullptr, kCorrupt, "{}: missing required field 'architectures'", f.file());
  ATOM_CHECK(archs->is_array() && !archs->empty() && (*archs)[0].is_string(), kCorrupt,
             "{}: field 'architectures' must be a non-empty list of names, got {}", f.file(),
             archs->dump());
  c.architecture = (*archs)[0].get<std::string>();
  const auto& supported = supported_hf_architectures();
  ATOM_CHECK(std::find(supported.begin(), supported.end(), c.architecture) != supported.end(),
             kUnsupported, "{}: architecture '{}' is not supported (supported: {})", f.file(),
             c.architecture, fmt::join(supported, ", "));

  c.vocab_size = f.req_positive("vocab_size");
  c.hidden_size = f.req_positive("hidden_size");
  c.intermediate_size = f.req_positive("intermediate_size");
  c.num_hidden_layers = f.req_positive("num_hidden_layers");
  c.num_attention_heads = f.req_positive("num_attention_heads");
  c.num_key_value_heads = f.int_or("num_key_value_heads", c.num_attention_heads);
  c.head_dim = f.int_or("head_dim", c.hidden_size / c.num_attention_heads);
  c.rms_norm_eps = f.double_or("rms_norm_eps", 1e-6);
  c.max_position_embeddings = f.int_or("max_position_embeddings", 0);
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  c.attention_bias = f.bool_or("attention_bias", f.bool_or("qkv_bias", false));
  c.mlp_bias = f.bool_or("mlp_bias", false);
  c.hidden_act = f.string_or("hidden_act", "silu");
  c.dtype = f.opt_string("dtype").value_or(f.string_or("torch_dtype", "bfloat16"));
  c.bos_token_ids = f.int_or_list("bos_token_id");
  c.eos_token_ids = f.int_or_list("eos_token_id");
  // Qwen-style configs keep a sliding_window value that is off unless use_sliding_window.
  if (f.bool_or("use_sliding_window", true)) c.sliding_window = f.opt_int("sliding_window");
  if (const json* q = f.get("quantization_config")) c.quantization_config = q->dump();

  ATOM_CHECK(c.hidden_act == "silu", kUnsupported,
             "{}: hidden_act '{}' is not supported for {} (supported: silu)", f.file(),
             c.hidden_act, c.architecture);
  ATOM_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0,
             kCorrupt, "{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
             f.file(), c.num_attention_heads, c.num_key_value_heads);
  ATOM_CHECK(c.head_dim > 0, kCorrupt, "{}: field 'head_dim' must be positive, got {}", f.file(),
             c.head_dim);
  ATOM_CHECK(c.rms_norm_eps > 0.0, kCorrupt, "{}: field 'rms_norm_eps' must be positive, got {}",
             f.file(), c.rms_norm_eps);
  ATOM_CHECK(c.max_position_embeddings >= 0, kCorrupt,
             "{}: field 'max_position_embeddings' must not be negative, got {}", f.file(),
             c.max_position_embeddings);
  ATOM_CHECK(!c.sliding_window || *c.sliding_window > 0, kCorrupt,
             "{}: field 'sliding_window' must be positive or null", f.file());

  const double partial = f.double_or("partial_rotary_factor", 1.0);
  ATOM_CHECK(partial > 0.0 && partial <= 1.0, kCorrupt,
             "{}: field 'partial_rotary_factor' must be in (0, 1], got {}", f.file(), partial);
  c.rotary_dim = int64_t(double(c.head_dim) * partial);

  // RoPE: transformers 5 moves rope_theta and the scaling into rope_parameters.
  const std::optional<Fields> rope_params = f.opt_object("rope_parameters");
  if (auto theta = f.opt_double("rope_theta")) {
    c.rope_theta = *theta;
  } else if (rope_params && rope_params->has("rope_theta")) {
    c.rope_theta = rope_params->req_double("rope_theta");
  }
  ATOM_CHECK(c.rope_theta > 0.0, kCorrupt, "{}: rope_theta must be positive, got {}", f.file(),
             c.rope_theta);
  if (const std::optional<Fields> rs = f.opt_object("rope_scaling")) {
    c.rope_scaling = parse_rope_scaling(*rs, f);
  } else if (rope_params && (rope_params->has("rope_type") || rope_params->has("type"))) {
    c.rope_scaling = parse_rope_scaling(*rope_params, f);
  }

  if (c.architecture == kQwen3Moe) {
    parse_moe_qwen3(f, c);
  } else if (c.architecture == kMixtral) {
    parse_moe_mixtral(f, c);
  } else if (c.architecture == kDeepseekV3) {
    parse_deepseek_v3(f, c);
  }
  if (c.moe.num_experts > 0) {
    ATOM_CHECK(c.moe.num_experts_per_tok <= c.moe.num_experts, kCorrupt,
               "{}: num_experts_per_tok ({}) exceeds the number of experts ({})", f.file(),
               c.moe.num_experts_per_tok, c.moe.num_experts);
  }
  ATOM_CHECK(c.rotary_dim > 0 && c.rotary_dim <= c.head_dim && c.rotary_dim % 2 == 0, kCorrupt,
             "{}: rotary dimension {} does not fit head_dim {}", f.file(), c.rotary_dim,
             c.head_dim);
  return c;
}

bool is_moe_layer(const ModelConfig& config, int64_t layer) {
  const MoeConfig& m = config.moe;
  if (m.num_experts <= 0) return false;
  if (config.architecture == kQwen3Moe) {
    const bool dense_only = std::find(m.mlp_only_layers.begin(), m.mlp_only_layers.end(), layer) !=
                            m.mlp_only_layers.end();
    return !dense_only && (layer + 1) % m.decoder_sparse_step == 0;
  }
  if (config.architecture == kDeepseekV3) {
    return layer >= m.first_k_dense_replace && layer % m.moe_layer_freq == 0;
  }
  return true;  // Mixtral: every layer
}

std::optional<GenerationConfig> load_generation_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "generation_config.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  const json j = parse_json_file(path);
  const Fields f(j, path.string());
  GenerationConfig g;
  g.eos_token_ids = f.int_or_list("eos_token_id");
  g.bos_token_id = f.opt_int("bos_token_id");
  return g;
}

TokenizerConfig load_tokenizer_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "tokenizer_config.json";
  std::error_code ec;
  ATOM_CHECK(fs::is_regular_file(path, ec), kNotFound, "tokenizer config not found: {}",
             path.string());
  const json j = parse_json_file(path);
  const Fields f(j, path.string());
  TokenizerConfig t;

  if (const json* ct = f.get("chat_template")) {
    if (ct->is_string()) {
      t.chat_template = ct->get<std::string>();
    } else {
      ATOM_CHECK(ct->is_array(), kCorrupt,
                 "{}: field 'chat_template' must be a string or a list of {{name, template}}",
                 f.file());
      for (const json& e : *ct) {
        ATOM_CHECK(e.is_object() && e.contains("name") && e["name"].is_string() &&
                       e.contains("template") && e["template"].is_string(),
                   kCorrupt, "{}: chat_template entry {} is not a {{name, template}} object",
                   f.file(), e.dump());
        t.named_chat_templates[e["name"].get<std::string>()] = e["template"].get<std::string>();
      }
      const auto def = t.named_chat_templates.find("default");
      if (def != t.named_chat_templates.end()) t.chat_template = def->second;
    }
  } else {
    const fs::path jinja = fs::path(dir) / "chat_template.jinja";
    if (fs::is_regular_file(jinja, ec)) t.chat_template = read_file(jinja);
  }

  // A special token is a string or an AddedToken object {"content": "<s>", ...}.
  auto token = [&](const char* key) -> std::optional<std::string> {
    const json* v = f.get(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_string()) return v->get<std::string>();
    ATOM_CHECK(v->is_object() && v->contains("content") && (*v)["content"].is_string(), kCorrupt,
               "{}: field '{}' must be a string or an object with a string 'content', got {}",
               f.file(), key, v->dump());
    return (*v)["content"].get<std::string>();
  };
  t.bos_token = token("bos_token");
  t.eos_token = token("eos_token");
  t.add_bos_token = f.opt_bool("add_bos_token");
  t.add_eos_token = f.opt_bool("add_eos_token");
  return t;
}

int64_t resolve_max_model_len(std::optional<int64_t> flag, const ModelConfig& config) {
  const int64_t limit =
      config.max_position_embeddings > 0 ? config.max_position_embeddings : kDefaultMaxModelLen;
  if (!flag) return limit;
  ATOM_CHECK(*flag >= 1, kInvalidArgument, "--max-model-len must be at least 1, got {}", *flag);
  if (*flag > limit) {
    ATOM_LOG_WARN(
        "--max-model-len {} exceeds the model's maximum length {} "
        "(max_position_embeddings{}); using {}",
        *flag, limit, config.max_position_embeddings > 0 ? "" : ", absent: default", limit);
    return limit;
  }
  return *flag;
}

}  // namespace atom

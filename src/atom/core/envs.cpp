#include "atom/core/envs.h"

#include <fmt/format.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <vector>

#include "atom/core/error.h"

namespace atom::envs {

namespace {

// Document order of the environment-variable reference; atom's own variables follow.
constexpr std::array kTable = {
    // The data-parallel ones are the fallbacks of the engine's flags (flag > variable >
    // default, engine/parallel_config.h): the meaning names the flag that overrides each.
    EnvVarInfo{"ATOM_DP_RANK", "int", "0",
               "Rank of this process in data parallelism (--data-parallel-rank overrides)."},
    EnvVarInfo{"ATOM_DP_RANK_LOCAL", "int", "0",
               "Local rank of this process in data parallelism (SPMD mode) "
               "(--data-parallel-rank-local overrides)."},
    EnvVarInfo{"ATOM_DP_SIZE", "int", "1",
               "Total number of data-parallel ranks (-dp/--data-parallel-size overrides)."},
    EnvVarInfo{"ATOM_DP_MASTER_IP", "str", "127.0.0.1",
               "Master IP address for data-parallel rank coordination "
               "(--data-parallel-master-ip overrides)."},
    EnvVarInfo{"ATOM_DP_MASTER_PORT", "int", "29500",
               "Master port for data-parallel rank coordination (--data-parallel-master-port "
               "overrides)."},
    EnvVarInfo{"ATOM_ENFORCE_EAGER", "bool", "0",
               "If 1, launch kernels eagerly instead of replaying CUDA graphs."},
    EnvVarInfo{"ATOM_USE_TRITON_GEMM", "bool", "0",
               "If 1, use the Triton FP4 preshuffled-weight GEMM instead of the assembly one."},
    EnvVarInfo{"ATOM_USE_TRITON_MXFP4_BMM", "bool", "0",
               "If 1, use the FP4 batched GEMM in the MLA attention module."},
    EnvVarInfo{"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", "bool", "1",
               "If 1, fuse the tensor-parallel all-reduce with RMSNorm."},
    EnvVarInfo{"ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION", "bool", "1",
               "If 1, fuse the DeepSeek input RMSNorm with activation quantization."},
    EnvVarInfo{"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", "bool", "1",
               "If 1, fuse the DeepSeek MLA q/kv norm with quantization."},
    EnvVarInfo{"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", "bool", "0",
               "If 1, fuse q/k norm, RoPE and KV-cache write (+quant) in one op (Qwen3)."},
    EnvVarInfo{"ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT", "bool", "1",
               "If 1, fuse the Llama RMSNorm with quantization."},
    EnvVarInfo{"ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT", "bool", "1",
               "If 1, fuse the Llama SiLU-and-mul with quantization in the MLP."},
    EnvVarInfo{"ATOM_TORCH_PROFILER_DIR", "str", kUnset,
               "When set, enables the profiler and writes traces under this directory."},
    EnvVarInfo{"ATOM_PROFILER_MORE", "bool", "0",
               "If 1 (with a profiler directory), also record shapes, stacks and memory."},
    EnvVarInfo{"ATOM_LOG_MORE", "bool", "0",
               "Integer; non-zero switches to the verbose log format (process, pid, file:line)."},
    EnvVarInfo{"OPENAI_API_KEY", "str", kUnset,
               "Benchmark: API key sent to OpenAI-compatible servers.", true},
    EnvVarInfo{"VLLM_USE_MODELSCOPE", "bool", "false",
               "Benchmark: if true, download tokenizers through ModelScope."},
    EnvVarInfo{"SAVE_TO_PYTORCH_BENCHMARK_FORMAT", "bool", kUnset,
               "Benchmark: any non-empty value also saves results in PyTorch benchmark format."},
    EnvVarInfo{"AITER_QUICK_REDUCE_QUANTIZATION", "str", kUnset,
               "Set by atom: INT4 quantizes the one-shot all-reduce (Llama bf16/fp16)."},
    EnvVarInfo{"TORCHINDUCTOR_CACHE_DIR", "str", kUnset,
               "Set by atom's compiler interface: the inductor cache directory."},
    EnvVarInfo{"TRITON_CACHE_DIR", "str", kUnset,
               "Set by atom's compiler interface: the Triton cache directory."},
    EnvVarInfo{"ATOM_DISABLE_MMAP", "bool", "false",
               "If true or 1, read weight files fully into memory instead of memory-mapping them."},
    EnvVarInfo{"ATOM_CACHE_DIR", "str", "~/.cache/atom",
               "atom's cache directory; models are stored under <dir>/models."},
    EnvVarInfo{"ATOM_NUM_THREADS", "int", "0", "CPU threads for compute; 0 uses every core."},
    EnvVarInfo{"HF_HOME", "str", "~/.cache/huggingface", "Hugging Face cache root."},
    EnvVarInfo{"HF_TOKEN", "str", kUnset, "Hugging Face access token.", true},
    EnvVarInfo{"HF_ENDPOINT", "str", "https://huggingface.co",
               "Hugging Face Hub address that models are downloaded from."},
    EnvVarInfo{"HF_HUB_OFFLINE", "bool", "false",
               "If true or 1, never contact the Hub: models come from the HF_HOME cache only."},
    EnvVarInfo{"HOME", "str", kUnset, "Home directory; expands a leading ~ in the paths above."},
};

const EnvVarInfo* find(std::string_view name) {
  for (const EnvVarInfo& e : kTable) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

// Reads a variable by its registered name; registration is checked so that a typo in an
// accessor fails loudly instead of silently reading nothing.
std::optional<std::string> read(std::string_view name) {
  const EnvVarInfo& e = info(name);
  const std::string key(e.name);
  const char* v = std::getenv(key.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Python's int(): blanks around, one optional sign, decimal digits; nothing else.
int64_t parse_int(std::string_view name, const std::string& value) {
  std::string_view s = trim(value);
  bool negative = false;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  const bool digits_only =
      !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  ATOM_CHECK(digits_only, kInvalidArgument, "environment variable {}=\"{}\" is not an integer",
             name, value);
  // Parse with the sign attached so that INT64_MIN is accepted and anything past it rejected.
  std::string signed_digits = negative ? "-" : "";
  signed_digits.append(s);
  int64_t out = 0;
  const auto [ptr, ec] =
      std::from_chars(signed_digits.data(), signed_digits.data() + signed_digits.size(), out);
  ATOM_CHECK(ec == std::errc() && ptr == signed_digits.data() + signed_digits.size(),
             kInvalidArgument, "environment variable {}=\"{}\" is out of the 64-bit integer range",
             name, value);
  return out;
}

int64_t int_var(std::string_view name, int64_t fallback) {
  const std::optional<std::string> v = read(name);
  return v ? parse_int(name, *v) : fallback;
}

int64_t int_var_at_least(std::string_view name, int64_t fallback, int64_t min) {
  const int64_t v = int_var(name, fallback);
  ATOM_CHECK(v >= min, kInvalidArgument, "environment variable {}={} must be at least {}", name, v,
             min);
  return v;
}

// The reference engine's rule for ATOM_* flags: os.getenv(name, default) == "1".
bool flag_var(std::string_view name, bool fallback) {
  const std::optional<std::string> v = read(name);
  return v ? *v == "1" : fallback;
}

std::string str_var(std::string_view name, std::string_view fallback) {
  const std::optional<std::string> v = read(name);
  return v ? *v : std::string(fallback);
}

std::optional<std::string> home_dir() {
  if (std::optional<std::string> h = read("HOME")) return h;
  // As Python's expanduser does when HOME is unset: the password database entry of this user.
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* result = nullptr;
  if (getpwuid_r(getuid(), &pw, buf.data(), buf.size(), &result) == 0 && result != nullptr &&
      result->pw_dir != nullptr) {
    return std::string(result->pw_dir);
  }
  return std::nullopt;
}

std::string bool_text(bool b) { return b ? "true" : "false"; }
std::string opt_text(const std::optional<std::string>& v) { return v ? *v : std::string(kUnset); }

struct Renderer {
  std::string_view name;
  std::string (*render)();
};

// How each variable's effective value is rendered; every table entry has exactly one renderer
// (the tests call effective_value for every name).
const std::array kRenderers = {
    Renderer{"ATOM_DP_RANK", [] { return std::to_string(ATOM_DP_RANK()); }},
    Renderer{"ATOM_DP_RANK_LOCAL", [] { return std::to_string(ATOM_DP_RANK_LOCAL()); }},
    Renderer{"ATOM_DP_SIZE", [] { return std::to_string(ATOM_DP_SIZE()); }},
    Renderer{"ATOM_DP_MASTER_IP", [] { return ATOM_DP_MASTER_IP(); }},
    Renderer{"ATOM_DP_MASTER_PORT", [] { return std::to_string(ATOM_DP_MASTER_PORT()); }},
    Renderer{"ATOM_ENFORCE_EAGER", [] { return bool_text(ATOM_ENFORCE_EAGER()); }},
    Renderer{"ATOM_USE_TRITON_GEMM", [] { return bool_text(ATOM_USE_TRITON_GEMM()); }},
    Renderer{"ATOM_USE_TRITON_MXFP4_BMM", [] { return bool_text(ATOM_USE_TRITON_MXFP4_BMM()); }},
    Renderer{"ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION",
             [] { return bool_text(ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION()); }},
    Renderer{"ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION",
             [] { return bool_text(ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION()); }},
    Renderer{"ATOM_ENABLE_DS_QKNORM_QUANT_FUSION",
             [] { return bool_text(ATOM_ENABLE_DS_QKNORM_QUANT_FUSION()); }},
    Renderer{"ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION",
             [] { return bool_text(ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION()); }},
    Renderer{"ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT",
             [] { return bool_text(ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT()); }},
    Renderer{"ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT",
             [] { return bool_text(ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT()); }},
    Renderer{"ATOM_TORCH_PROFILER_DIR", [] { return opt_text(ATOM_TORCH_PROFILER_DIR()); }},
    Renderer{"ATOM_PROFILER_MORE", [] { return bool_text(ATOM_PROFILER_MORE()); }},
    Renderer{"ATOM_LOG_MORE", [] { return bool_text(ATOM_LOG_MORE()); }},
    Renderer{"OPENAI_API_KEY", [] { return opt_text(OPENAI_API_KEY()); }},
    Renderer{"VLLM_USE_MODELSCOPE", [] { return bool_text(VLLM_USE_MODELSCOPE()); }},
    Renderer{"SAVE_TO_PYTORCH_BENCHMARK_FORMAT",
             [] { return bool_text(SAVE_TO_PYTORCH_BENCHMARK_FORMAT()); }},
    Renderer{"AITER_QUICK_REDUCE_QUANTIZATION",
             [] { return opt_text(AITER_QUICK_REDUCE_QUANTIZATION()); }},
    Renderer{"TORCHINDUCTOR_CACHE_DIR", [] { return opt_text(TORCHINDUCTOR_CACHE_DIR()); }},
    Renderer{"TRITON_CACHE_DIR", [] { return opt_text(TRITON_CACHE_DIR()); }},
    Renderer{"ATOM_DISABLE_MMAP", [] { return bool_text(ATOM_DISABLE_MMAP()); }},
    Renderer{"ATOM_CACHE_DIR", [] { return ATOM_CACHE_DIR(); }},
    Renderer{"ATOM_NUM_THREADS", [] { return std::to_string(ATOM_NUM_THREADS()); }},
    Renderer{"HF_HOME", [] { return HF_HOME(); }},
    Renderer{"HF_TOKEN", [] { return opt_text(HF_TOKEN()); }},
    Renderer{"HF_ENDPOINT", [] { return HF_ENDPOINT(); }},
    Renderer{"HF_HUB_OFFLINE", [] { return bool_text(HF_HUB_OFFLINE()); }},
    Renderer{"HOME", [] { return opt_text(HOME()); }},
};
static_assert(kRenderers.size() == kTable.size(), "every variable needs one renderer");

}  // namespace

std::span<const EnvVarInfo> all() { return kTable; }

const EnvVarInfo& info(std::string_view name) {
  const EnvVarInfo* e = find(name);
  ATOM_CHECK(e != nullptr, kNotFound, "unknown environment variable {}", name);
  return *e;
}

std::optional<std::string> raw(std::string_view name) { return read(name); }

void set(std::string_view name, std::string_view value) {
  const std::string key(info(name).name);
  const std::string v(value);
  ATOM_CHECK(::setenv(key.c_str(), v.c_str(), 1) == 0, kInvalidArgument,
             "cannot set environment variable {}=\"{}\"", name, value);
}

void unset(std::string_view name) {
  const std::string key(info(name).name);
  ATOM_CHECK(::unsetenv(key.c_str()) == 0, kInvalidArgument, "cannot unset environment variable {}",
             name);
}

std::string effective_value(std::string_view name) {
  const EnvVarInfo& e = info(name);
  const auto it = std::find_if(kRenderers.begin(), kRenderers.end(),
                               [&](const Renderer& r) { return r.name == e.name; });
  ATOM_ASSERT(it != kRenderers.end());
  return it->render();
}

std::string format_env_table() {
  struct Row {
    std::string name, value, default_value, meaning;
  };
  std::vector<Row> rows;
  rows.push_back({"NAME", "VALUE", "DEFAULT", "MEANING"});
  for (const EnvVarInfo& e : kTable) {
    std::string value;
    try {
      value = effective_value(e.name);
      if (e.secret && value != kUnset) value = "(set, hidden)";
    } catch (const Error&) {
      value = fmt::format("invalid: \"{}\"", raw(e.name).value_or(""));
    }
    rows.push_back({std::string(e.name), std::move(value), std::string(e.default_value),
                    std::string(e.description)});
  }
  size_t w_name = 0, w_value = 0, w_default = 0;
  for (const Row& r : rows) {
    w_name = std::max(w_name, r.name.size());
    w_value = std::max(w_value, r.value.size());
    w_default = std::max(w_default, r.default_value.size());
  }
  std::string out;
  for (const Row& r : rows) {
    out += fmt::format("{:<{}}  {:<{}}  {:<{}}  {}\n", r.name, w_name, r.value, w_value,
                       r.default_value, w_default, r.meaning);
  }
  return out;
}

std::string expand_user(std::string_view path) {
  if (path.empty() || path.front() != '~' || (path.size() > 1 && path[1] != '/')) {
    return std::string(path);
  }
  const std::optional<std::string> home = home_dir();
  if (!home) return std::string(path);
  std::string out = *home;
  // "~/" on a home of "/" must not become "//x".
  if (path.size() > 1 && !out.empty() && out.back() == '/') out.pop_back();
  out.append(path.substr(1));
  return out;
}

int64_t ATOM_DP_RANK() { return int_var_at_least("ATOM_DP_RANK", 0, 0); }
int64_t ATOM_DP_RANK_LOCAL() { return int_var_at_least("ATOM_DP_RANK_LOCAL", 0, 0); }
int64_t ATOM_DP_SIZE() { return int_var_at_least("ATOM_DP_SIZE", 1, 1); }
std::string ATOM_DP_MASTER_IP() { return str_var("ATOM_DP_MASTER_IP", "127.0.0.1"); }
int64_t ATOM_DP_MASTER_PORT() {
  const int64_t port = int_var_at_least("ATOM_DP_MASTER_PORT", 29500, 0);
  ATOM_CHECK(port <= 65535, kInvalidArgument,
             "environment variable ATOM_DP_MASTER_PORT={} is not a TCP port (0-65535)", port);
  return port;
}

bool ATOM_ENFORCE_EAGER() { return flag_var("ATOM_ENFORCE_EAGER", false); }
bool ATOM_USE_TRITON_GEMM() { return flag_var("ATOM_USE_TRITON_GEMM", false); }
bool ATOM_USE_TRITON_MXFP4_BMM() { return flag_var("ATOM_USE_TRITON_MXFP4_BMM", false); }

bool ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION() {
  return flag_var("ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION", true);
}
bool ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION() {
  return flag_var("ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION", true);
}
bool ATOM_ENABLE_DS_QKNORM_QUANT_FUSION() {
  return flag_var("ATOM_ENABLE_DS_QKNORM_QUANT_FUSION", true);
}
bool ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION() {
  return flag_var("ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", false);
}
bool ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT() {
  return flag_var("ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT", true);
}
bool ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT() {
  return flag_var("ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT", true);
}

std::optional<std::string> ATOM_TORCH_PROFILER_DIR() { return read("ATOM_TORCH_PROFILER_DIR"); }
bool ATOM_PROFILER_MORE() { return flag_var("ATOM_PROFILER_MORE", false); }
bool ATOM_LOG_MORE() { return int_var("ATOM_LOG_MORE", 0) != 0; }

std::optional<std::string> OPENAI_API_KEY() { return read("OPENAI_API_KEY"); }
bool VLLM_USE_MODELSCOPE() {
  const std::string v = lower(str_var("VLLM_USE_MODELSCOPE", "false"));
  return v == "true" || v == "1";
}
bool SAVE_TO_PYTORCH_BENCHMARK_FORMAT() {
  const std::optional<std::string> v = read("SAVE_TO_PYTORCH_BENCHMARK_FORMAT");
  return v && !v->empty();
}

std::optional<std::string> AITER_QUICK_REDUCE_QUANTIZATION() {
  return read("AITER_QUICK_REDUCE_QUANTIZATION");
}
std::optional<std::string> TORCHINDUCTOR_CACHE_DIR() { return read("TORCHINDUCTOR_CACHE_DIR"); }
std::optional<std::string> TRITON_CACHE_DIR() { return read("TRITON_CACHE_DIR"); }

bool ATOM_DISABLE_MMAP() {
  const std::string v = lower(str_var("ATOM_DISABLE_MMAP", "false"));
  return v == "true" || v == "1";
}
std::string ATOM_CACHE_DIR() { return expand_user(str_var("ATOM_CACHE_DIR", "~/.cache/atom")); }
std::string models_dir() {
  std::string dir = ATOM_CACHE_DIR();
  if (!dir.empty() && dir.back() != '/') dir += '/';
  return dir + "models";
}
int64_t ATOM_NUM_THREADS() { return int_var_at_least("ATOM_NUM_THREADS", 0, 0); }
std::string HF_HOME() { return expand_user(str_var("HF_HOME", "~/.cache/huggingface")); }
std::optional<std::string> HF_TOKEN() { return read("HF_TOKEN"); }
std::string HF_ENDPOINT() { return str_var("HF_ENDPOINT", "https://huggingface.co"); }
bool HF_HUB_OFFLINE() {
  const std::string v = lower(str_var("HF_HUB_OFFLINE", "false"));
  return v == "true" || v == "1";
}
std::optional<std::string> HOME() { return read("HOME"); }

}  // namespace atom::envs

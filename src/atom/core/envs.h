// Environment variables: the one place atom reads the process environment. Every variable is
// registered once in a table (name, type, default, meaning) that `atom env` prints; the typed
// accessors below re-read the environment on each call, so a value set after start-up (or by a
// test) is seen at the next access, as the lazy attributes of the reference engine are.
//
// Parsing rules:
//   * ATOM_* booleans are true only for the exact string "1" (so "true" and "01" are false);
//     VLLM_USE_MODELSCOPE accepts "true" or "1" in any case, SAVE_TO_PYTORCH_BENCHMARK_FORMAT any
//     non-empty value, ATOM_DISABLE_MMAP and HF_HUB_OFFLINE "true" or "1" in any case.
//   * Integers are parsed strictly (surrounding blanks and one sign allowed, nothing else); a bad
//     value throws atom::Error(kInvalidArgument) naming the variable and the value.
//   * ATOM_LOG_MORE is an integer: any non-zero value is on, a non-integer is an error.
// Names that are not registered throw atom::Error(kNotFound).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace atom::envs {

// Marker used in the default column (and as the effective value) of a variable with no default.
inline constexpr std::string_view kUnset = "unset";

struct EnvVarInfo {
  std::string_view name;
  std::string_view type;           // "bool", "int", "float" or "str"
  std::string_view default_value;  // as it would be written in the environment, or kUnset
  std::string_view description;
  bool secret = false;  // a credential: `atom env` shows whether it is set, never its value
};

// The table, in the order of the environment-variable document, atom's own variables last.
std::span<const EnvVarInfo> all();
const EnvVarInfo& info(std::string_view name);

// The raw value of a registered variable (nullopt when unset).
std::optional<std::string> raw(std::string_view name);
// Writes a registered variable for this process and the processes it starts (the engine sets
// ATOM_ENFORCE_EAGER and AITER_QUICK_REDUCE_QUANTIZATION this way, as the reference does).
void set(std::string_view name, std::string_view value);
void unset(std::string_view name);

// The value the engine would use, rendered as text: "true"/"false" for booleans, decimal for
// integers, the (expanded) string, or kUnset for an unset variable without a default.
std::string effective_value(std::string_view name);

// The `atom env` table: one line per variable with name, effective value, default and meaning,
// columns aligned; a bad value shows as `invalid: "<value>"` instead of failing the listing.
std::string format_env_table();

// --- Data parallelism ---
int64_t ATOM_DP_RANK();           // default 0
int64_t ATOM_DP_RANK_LOCAL();     // default 0
int64_t ATOM_DP_SIZE();           // default 1
std::string ATOM_DP_MASTER_IP();  // default "127.0.0.1"
int64_t ATOM_DP_MASTER_PORT();    // default 29500

// --- Execution mode and kernel selection ---
bool ATOM_ENFORCE_EAGER();         // default false
bool ATOM_USE_TRITON_GEMM();       // default false
bool ATOM_USE_TRITON_MXFP4_BMM();  // default false

// --- Fusion passes ---
bool ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION();                 // default true
bool ATOM_ENABLE_DS_INPUT_RMSNORM_QUANT_FUSION();            // default true
bool ATOM_ENABLE_DS_QKNORM_QUANT_FUSION();                   // default true
bool ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION();          // default false
bool ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_RMSNORM_QUANT();   // default true
bool ATOM_LLAMA_ENABLE_AITER_TRITON_FUSED_SILU_MUL_QUANT();  // default true

// --- Profiling and debugging ---
std::optional<std::string> ATOM_TORCH_PROFILER_DIR();
bool ATOM_PROFILER_MORE();  // default false
bool ATOM_LOG_MORE();       // default false; integer, non-zero = verbose log format

// --- Benchmarks ---
std::optional<std::string> OPENAI_API_KEY();
bool VLLM_USE_MODELSCOPE();               // default false
bool SAVE_TO_PYTORCH_BENCHMARK_FORMAT();  // default false (unset)

// --- Set by the engine for its kernels and compilers ---
std::optional<std::string> AITER_QUICK_REDUCE_QUANTIZATION();
std::optional<std::string> TORCHINDUCTOR_CACHE_DIR();
std::optional<std::string> TRITON_CACHE_DIR();

// --- atom's own ---
bool ATOM_DISABLE_MMAP();      // default false: weights are memory-mapped
std::string ATOM_CACHE_DIR();  // default "~/.cache/atom"; a leading "~" is expanded
std::string models_dir();      // ATOM_CACHE_DIR()/models, where downloaded models are stored
int64_t ATOM_NUM_THREADS();    // default 0 = one thread per core; negative is an error
std::string HF_HOME();         // default "~/.cache/huggingface"; a leading "~" is expanded
std::optional<std::string> HF_TOKEN();
std::string HF_ENDPOINT();  // default "https://huggingface.co"
bool HF_HUB_OFFLINE();      // default false; "true" or "1" in any case
std::optional<std::string> HOME();

// "~" or "~/x" -> the home directory (HOME, else the password database) joined with "x";
// anything else is returned unchanged, as is the path when no home directory is known.
std::string expand_user(std::string_view path);

}  // namespace atom::envs

// The engine flags shared by generate, bench throughput and (later) serve, with ATOM's names
// and both the `-` and `_` spellings where ATOM has them (SPEC.md 1.2).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "atom/engine/llm_engine.h"
#include "atom/engine/parallel_config.h"
#include "atom/io/gguf.h"
#include "atom/io/safetensors.h"
#include "atom/models/model.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::apps {

// --model and how to load its weights (--load-format, --load_dummy): what load_model needs.
struct ModelSource {
  std::string path;                  // GGUF file, folder with one, or HF checkpoint folder
  std::string load_format = "auto";  // "auto" or "dummy"
  bool load_dummy = false;           // ATOM's --load_dummy: same as --load-format dummy

  LoadFormat format() const;
};

struct EngineArgs {
  ModelSource model;
  int64_t max_model_len = 0;  // 0: the model's context length
  int64_t block_size = 16;
  int64_t max_num_seqs = 512;
  int64_t max_num_batched_tokens = 16384;
  bool enable_prefix_caching = false;
  bool no_chunked_prefill = false;
  double scheduler_delay_factor = 0.0;  // ATOM's: hold new prompts back to batch them
  bool enforce_eager = false;  // no CUDA graphs (also ATOM_ENFORCE_EAGER=1); the CPU is eager
  // ATOM's Python list literal, e.g. "[1,2,4,8]" (brackets optional); empty: ATOM's default.
  std::string cudagraph_capture_sizes;
  // ATOM's flags for features atom does not have yet or does not need, accepted so ATOM command
  // lines run, and validated: bf16 KV only (fp8 arrives with FP8 quantization); --level 0-3
  // changes nothing (atom has no runtime compiler; CUDA graphs follow --enforce-eager at every
  // level, as in ATOM); --method mtp (speculative decoding) is refused until it exists.
  std::string kv_cache_dtype = "bf16";
  int64_t level = 3;
  std::string method;
  int64_t num_speculative_tokens = 1;
  double cpu_kv_cache_space = 1.0;  // GiB of KV cache on the CPU backend
  int64_t threads = 0;
  // Deferred output (SPEC 3.4); unset: on for the CUDA device, off for the CPU, where the
  // forward dwarfs the host's share of a step (docs/benchmarks.md).
  std::optional<bool> async_output;
  std::string device;                   // "cuda" or "cpu"; empty: default_device()
  double gpu_memory_utilization = 0.9;  // share of the GPU's memory atom may use (KV pool)
  int64_t num_gpu_blocks_override = 0;  // vLLM's: the GPU KV pool in blocks (0: from the budget)
  // Enables /start_profile, /stop_profile and LLMEngine::start_profile; empty: the
  // ATOM_TORCH_PROFILER_DIR variable, else profiling is off.
  std::string torch_profiler_dir;
  // -tp/-dp, the data-parallel rank and rendezvous flags, expert parallelism and DP attention
  // (SPEC 1.2, 4); a flag not given falls back to its ATOM_DP_* variable, then the default.
  ParallelFlags parallel;
  // `atom serve` sets it before add_to: data-parallel replicas (dp > 1) are accepted, each rank
  // one engine process (require_single_engine); other commands refuse dp > 1.
  bool allow_data_parallel = false;

  // Adds the flags to `app` (which keeps references to this object's members) and a check that
  // runs once `app` is parsed: the parallel settings resolve and ask for one rank (one engine
  // per rank with allow_data_parallel), else parsing throws atom::Error (kInvalidArgument, or
  // kUnsupported for tp > 1 / dp > 1) before any model is loaded.
  void add_to(CLI::App& app);
  // The engine's config; throws as the parse-time check does. Logs the parallel flags that have
  // no effect on one rank.
  EngineConfig engine_config() const;
  // The parallel settings as engine_config() resolves them (and checks them).
  ParallelConfig parallel_config() const;
};

// The arguments after the program name in the last-first order CLI::App::parse(std::vector&)
// takes, with ATOM's two-letter short flags (-tp N, -tp=N, -tpN; -dp likewise) rewritten to
// their long names, since CLI11 knows one-letter short flags only. Nothing after "--" changes.
std::vector<std::string> cli_args(int argc, const char* const* argv);

// "[1, 2, 4]", "1,2,4" or "[]" -> sizes; kInvalidArgument for anything but positive integers.
std::vector<int64_t> parse_capture_sizes(const std::string& text);

// "cuda" when this build has the CUDA backend and a GPU is visible, else "cpu".
std::string default_device();

// A loaded model: the file its weights are views of (a GGUF file, a safetensors checkpoint, or
// neither for dummy weights), its tokenizer and the model. Members are destroyed bottom-up, so
// the model goes before the files it points into.
struct LoadedModel {
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;
  // The tokenizer's stop ids plus, for HF folders, generation_config.json's eos_token_id(s).
  std::vector<int32_t> stop_ids;
};
// GGUF: tokenizer and weights from the file (kUnsupported with LoadFormat::kDummy). HF folder:
// config.json, tokenizer.json (+ tokenizer_config.json for specials and the chat template),
// generation_config.json, and the safetensors weights unless kDummy, which reads no weight file.
LoadedModel load_model(const ModelSource& source);

// A model's tokenizer (and chat template) without its weights.
struct LoadedTokenizer {
  std::unique_ptr<GgufFile> gguf;  // GGUF models: the file the tokenizer reads from
  std::unique_ptr<Tokenizer> tokenizer;
};
LoadedTokenizer load_tokenizer(const std::string& model);
LoadedModel load_model(const std::string& model, LoadFormat format = LoadFormat::kAuto);

// --threads, else ATOM_NUM_THREADS, else one per core.
void set_threads(int64_t flag);

}  // namespace atom::apps

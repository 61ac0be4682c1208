#include "atom/models/model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/io/safetensors.h"
#include "atom/models/hf_loader.h"

namespace atom {

std::unique_ptr<Model> make_llama_from_gguf(const GgufFile& file);

namespace {

// One architecture: its HF name, the GGUF general.architecture llama.cpp writes for it (null:
// none), and the factories.
struct Architecture {
  const char* hf_name;
  const char* gguf_name;
  std::unique_ptr<Model> (*from_gguf)(const GgufFile&);
  std::unique_ptr<Model> (*from_hf)(const ModelConfig&, HfWeightSource&);
};

// llama.cpp writes "llama" for every LlamaForCausalLM-shaped model (Llama 2/3, Mistral, SmolLM).
const std::vector<Architecture>& registry() {
  static const std::vector<Architecture> kRegistry = {
      {"LlamaForCausalLM", "llama", make_llama_from_gguf, make_llama_from_hf},
      {"Qwen3ForCausalLM", nullptr, nullptr, make_qwen3_from_hf},
  };
  return kRegistry;
}

const Architecture& hf_architecture(const ModelConfig& config) {
  for (const Architecture& a : registry())
    if (config.architecture == a.hf_name) return a;
  throw_error(ErrorCode::kUnsupported, "model architecture '{}' is not supported (atom runs: {})",
              config.architecture, fmt::join(supported_model_architectures(), ", "));
}

}  // namespace

const std::vector<std::string>& supported_model_architectures() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> v;
    for (const Architecture& a : registry()) v.emplace_back(a.hf_name);
    return v;
  }();
  return kNames;
}

void check_model_architecture(const ModelConfig& config) { hf_architecture(config); }

KvCache::KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t num_kv_heads,
                 int64_t head_dim)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim) {
  ATOM_CHECK(num_layers > 0 && num_blocks > 0 && block_size > 0, kInvalidArgument,
             "invalid KV cache geometry: {} layers, {} blocks of {} tokens", num_layers, num_blocks,
             block_size);
  size_ = size_t(num_layers * 2 * num_blocks * block_size * num_kv_heads * head_dim);
  storage_.reset(new float[size_]);
  memory_ = profiler::MemoryRecord("cpu kv cache", int64_t(nbytes()));
}

cpu::KvCacheView KvCache::layer(int64_t i) {
  const size_t per = size_t(num_blocks_ * block_size_ * num_kv_heads_ * head_dim_);
  float* base = storage_.get() + size_t(i) * 2 * per;
  return cpu::KvCacheView{base, base + per, num_blocks_, block_size_, num_kv_heads_, head_dim_};
}

std::unique_ptr<Model> load_model_from_gguf(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture");
  std::vector<std::string> known;
  for (const Architecture& a : registry()) {
    if (!a.gguf_name) continue;
    if (arch == a.gguf_name) return a.from_gguf(file);
    known.emplace_back(a.gguf_name);
  }
  throw_error(ErrorCode::kUnsupported,
              "{}: model architecture '{}' is not supported (atom runs GGUF: {})", file.path(),
              arch, fmt::join(known, ", "));
}

LoadFormat parse_load_format(std::string_view name) {
  if (name == "auto") return LoadFormat::kAuto;
  if (name == "dummy") return LoadFormat::kDummy;
  throw_error(ErrorCode::kInvalidArgument, "unknown load format '{}' (choices: auto, dummy)", name);
}

std::unique_ptr<Model> load_model_from_hf(const std::string& dir, const ModelConfig& config,
                                          LoadFormat format) {
  const Architecture& arch = hf_architecture(config);  // before any weight file is opened
  if (format == LoadFormat::kDummy) {
    const std::unique_ptr<HfWeightSource> source = make_dummy_source(config);
    return arch.from_hf(config, *source);
  }
  std::shared_ptr<const SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::open(dir, !envs::ATOM_DISABLE_MMAP());
  const std::unique_ptr<HfWeightSource> source =
      make_checkpoint_source(*checkpoint, checkpoint, config.architecture);
  return arch.from_hf(config, *source);
}

std::unique_ptr<Model> load_model_from_hf(const SafetensorsCheckpoint& checkpoint,
                                          const ModelConfig& config) {
  const Architecture& arch = hf_architecture(config);
  const std::unique_ptr<HfWeightSource> source =
      make_checkpoint_source(checkpoint, nullptr, config.architecture);
  return arch.from_hf(config, *source);
}

}  // namespace atom

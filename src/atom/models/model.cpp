#include "atom/models/model.h"

#include "atom/core/error.h"
#include "atom/io/gguf.h"

namespace atom {

std::unique_ptr<Model> make_llama_from_gguf(const GgufFile& file);

KvCache::KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t num_kv_heads,
                 int64_t head_dim)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim) {
  ATOM_CHECK(num_layers > 0 && num_blocks > 0 && block_size > 0, kInvalidArgument,
             "invalid KV cache geometry: {} layers, {} blocks of {} tokens", num_layers,
             num_blocks, block_size);
  storage_.assign(size_t(num_layers * 2 * num_blocks * block_size * num_kv_heads * head_dim),
                  0.0f);
}

cpu::KvCacheView KvCache::layer(int64_t i) {
  const size_t per = size_t(num_blocks_ * block_size_ * num_kv_heads_ * head_dim_);
  float* base = storage_.data() + size_t(i) * 2 * per;
  return cpu::KvCacheView{base, base + per, num_blocks_, block_size_, num_kv_heads_, head_dim_};
}

// Registry: general.architecture of a GGUF file -> factory. llama.cpp writes "llama" for every
// LlamaForCausalLM-shaped model (Llama 2/3, Mistral, SmolLM).
std::unique_ptr<Model> load_model_from_gguf(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture");
  if (arch == "llama") return make_llama_from_gguf(file);
  throw_error(ErrorCode::kUnsupported,
              "{}: model architecture '{}' is not supported (atom runs: llama)", file.path(), arch);
}

}  // namespace atom

// Qwen3ForCausalLM: Llama's decoder plus an RMSNorm over each q and k head (weights [head_dim])
// before RoPE; head_dim comes from config.json and may differ from hidden_size / heads.
#include "atom/models/decoder.h"
#include "atom/models/hf_loader.h"

namespace atom {

std::unique_ptr<Model> make_qwen3_from_hf(const ModelConfig& config, HfWeightSource& source) {
  return make_hf_decoder(config, DecoderVariant{.qk_norm = true}, source);
}

}  // namespace atom

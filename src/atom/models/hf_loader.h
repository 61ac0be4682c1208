// Building a DecoderModel from Hugging Face tensor names
// ("model.layers.0.self_attn.q_proj.weight"), whatever supplies them: a safetensors checkpoint
// (views of the mapped file, f32/f16/bf16 used as they are) or random dummy weights of the
// checkpoint's shapes and dtype.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "atom/models/decoder.h"
#include "atom/models/model.h"

namespace atom {

class SafetensorsCheckpoint;

class HfWeightSource {
 public:
  virtual ~HfWeightSource() = default;
  // The 2-D weight `name`, PyTorch's [rows (out), cols (in)]; buffers it needs go to `storage`.
  // Throws kNotFound when absent, kCorrupt on a shape other than [rows, cols], kUnsupported on
  // a dtype atom cannot compute with; each message names the tensor.
  virtual cpu::QMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                              WeightStorage& storage) = 0;
  // The 1-D tensor `name` of n elements (a norm weight or a bias), as f32.
  virtual std::vector<float> vector(const std::string& name, int64_t n) = 0;
  // What the returned views point into, for the model to keep alive (null: nothing).
  virtual std::shared_ptr<const void> keep_alive() const = 0;
};

// Views of `checkpoint`; `keep_alive` (may be null) is handed to the model so the checkpoint
// outlives it. `architecture` only goes into error messages.
std::unique_ptr<HfWeightSource> make_checkpoint_source(const SafetensorsCheckpoint& checkpoint,
                                                       std::shared_ptr<const void> keep_alive,
                                                       const std::string& architecture);
// Random weights: matrices and biases N(0, 0.02), norm weights 1, in the config's dtype
// (float32, float16 or bfloat16; other dtypes give bfloat16). Deterministic: each tensor's
// values depend only on its name and shape.
std::unique_ptr<HfWeightSource> make_dummy_source(const ModelConfig& config);

// The dense decoder with HF's names for `config`, from `source`. kUnsupported for options the
// shared decoder does not implement (MoE, MLA, sliding window).
std::unique_ptr<Model> make_hf_decoder(const ModelConfig& config, DecoderVariant variant,
                                       HfWeightSource& source);

// Per-architecture factories (llama.cpp, qwen3.cpp), registered in model.cpp.
std::unique_ptr<Model> make_llama_from_hf(const ModelConfig& config, HfWeightSource& source);
std::unique_ptr<Model> make_qwen3_from_hf(const ModelConfig& config, HfWeightSource& source);

}  // namespace atom

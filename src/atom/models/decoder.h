// The dense decoder-only transformer every supported architecture is (Llama, Qwen3): weights as
// plain views plus the forward pass, parameterised by the few ways the architectures differ.
// Loaders (GGUF in llama.cpp, safetensors / dummy in hf_loader.cpp) only fill DecoderWeights.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/quants.h"
#include "atom/models/model.h"

namespace atom {

// What differs between the architectures that share DecoderModel.
struct DecoderVariant {
  // Qwen3: RMSNorm over each q and k head (weights [head_dim]) before RoPE.
  bool qk_norm = false;
};

// An allocator that default-initialises: resize() leaves new bytes untouched, so the loop that
// fills a buffer (in parallel) is also the first to touch its pages. Value-initialising (zeroing)
// 16 GB of weights first cost an 8B model's start-up ~10 s of single-threaded page faults.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Bytes of one weight buffer; new bytes are uninitialised (see DefaultInitAllocator).
using WeightBytes = std::vector<uint8_t, DefaultInitAllocator<uint8_t>>;

// Buffers the weights point into when they are not views of a mapped file: stacked QKV /
// gate-up copies, dummy weights. Moving the vectors keeps their data where it is.
using WeightStorage = std::vector<WeightBytes>;

struct DecoderLayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [hidden]
  // Projections: stacked [q | k | v] in qkv when the parts share a type (one GEMM), else q, k, v.
  cpu::QMatrix qkv, q, k, v;
  cpu::QMatrix o;                     // [hidden, heads * head_dim]
  std::vector<float> qkv_bias;        // [q_size + 2 * kv_size]; empty: no bias
  std::vector<float> o_bias;          // [hidden]; empty: no bias
  std::vector<float> q_norm, k_norm;  // [head_dim], DecoderVariant::qk_norm
  // MLP: stacked [gate | up] when the parts share a type, else gate and up.
  cpu::QMatrix gate_up, gate, up;
  cpu::QMatrix down;                // [hidden, intermediate]
  std::vector<float> gate_up_bias;  // [2 * intermediate]; empty: no bias
  std::vector<float> down_bias;     // [hidden]; empty: no bias
};

struct DecoderWeights {
  cpu::QMatrix embed;    // [vocab, hidden]
  cpu::QMatrix lm_head;  // [vocab, hidden]; the embedding when tied
  std::vector<float> final_norm;
  std::vector<DecoderLayerWeights> layers;
  WeightStorage storage;
  // Whatever else the views point into and the model must keep alive (an opened checkpoint);
  // null when the caller owns the file (GGUF: LoadedModel), or everything is in `storage`.
  std::shared_ptr<const void> keep_alive;
};

// One part of a matrix stacked along the output dimension.
struct StackPart {
  cpu::QMatrix m;
  // GGUF Q/K: heads whose rotary pairs llama.cpp's converter interleaved (row h*hd + 2i + j);
  // the copy puts them back in HF/NeoX order (row h*hd + j*hd/2 + i). 0: rows kept as they are.
  int64_t unpermute_heads = 0;
};
// The parts stacked into one matrix copied into `storage`; an empty QMatrix (data == nullptr)
// when their types or widths differ, so the caller keeps them separate.
cpu::QMatrix stack_rows(const std::vector<StackPart>& parts, WeightStorage& storage);

// What another backend needs to run a DecoderModel: its weights (views valid while the model
// lives), variant and rotary table. Null members when `model` is not a DecoderModel.
struct DecoderParts {
  const DecoderWeights* weights = nullptr;
  DecoderVariant variant;
  const cpu::RopeTable* rope = nullptr;
};
DecoderParts decoder_parts(const Model& model);

// Which code paths a DecoderModel's CPU forwards took, for tests to observe a switch without
// timing. Zeros when `model` is not a DecoderModel.
struct DecoderPathCounts {
  int64_t forwards = 0;
  // Forwards that ran the fused cpu::qk_norm_rope_and_cache instead of rms_norm + rope_neox +
  // reshape_and_cache: ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION=1 on a q/k-norm model (Qwen3).
  int64_t fused_qk_norm_rope_cache = 0;
};
DecoderPathCounts decoder_path_counts(const Model& model);

std::unique_ptr<Model> make_decoder_model(ModelConfig config, DecoderVariant variant,
                                          DecoderWeights weights, cpu::RopeTable rope);

}  // namespace atom

// A Model for engine, runner and server tests that needs no weights: deterministic logits from
// the input token and position, a constant mode, and a token that makes forward throw.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "atom/core/error.h"
#include "atom/models/model.h"

namespace atom {

// Logits: 1.0 at next(input, pos), 0.5 at (next + 1) % vocab, 0 elsewhere. Throws on `boom`.
class FakeModel : public Model {
 public:
  explicit FakeModel(int64_t vocab, bool constant_logits = false) : constant(constant_logits) {
    config_.architecture = "FakeForCausalLM";
    config_.vocab_size = vocab;
    config_.num_hidden_layers = 1;
    config_.num_key_value_heads = 1;
    config_.head_dim = 1;
    config_.max_position_embeddings = 256;
  }
  const ModelConfig& config() const override { return config_; }
  static int32_t next(int32_t input, int64_t pos, int64_t vocab) {
    return int32_t((int64_t(input) * 31 + pos * 7) % (vocab - 8) + 3);
  }
  void forward(const ForwardBatch& batch, KvCache&, std::vector<float>& logits) override {
    const int64_t vocab = config_.vocab_size;
    {
      std::lock_guard<std::mutex> lock(mu_);
      inputs_.push_back(batch.token_ids);
    }
    for (int32_t t : batch.token_ids)
      ATOM_CHECK(t != boom, kInternal, "the fake model was fed token {}", t);
    logits.assign(batch.logits_indices.size() * size_t(vocab), 0.0f);
    for (size_t r = 0; r < batch.logits_indices.size(); ++r) {
      const int32_t i = batch.logits_indices[r];
      const int32_t n = constant ? kConstantToken
                                 : next(batch.token_ids[size_t(i)], batch.positions[size_t(i)], vocab);
      logits[r * size_t(vocab) + size_t(n)] = 1.0f;
      logits[r * size_t(vocab) + size_t((n + 1) % vocab)] = 0.5f;
    }
  }
  std::vector<std::vector<int32_t>> inputs() {
    std::lock_guard<std::mutex> lock(mu_);
    return inputs_;
  }
  static constexpr int32_t kConstantToken = 9;
  int32_t boom = -2;      // an input that makes forward throw (next() never produces 0..2)
  bool constant = false;  // always prefer kConstantToken, then kConstantToken + 1

 private:
  ModelConfig config_;
  std::mutex mu_;
  std::vector<std::vector<int32_t>> inputs_;
};

}  // namespace atom

// Token sampling on the host: greedy, temperature, top-k, top-p, min-p, with a per-request seed.
// The order follows vLLM: temperature scales the logits, top-k and top-p filter them, min-p
// filters the resulting probabilities, then one token is drawn.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace atom {

// One request's sampling and stopping parameters (OpenAI / vLLM semantics).
struct SamplingParams {
  float temperature = 1.0f;      // 0 (below 1e-5) means greedy
  int32_t top_k = -1;            // -1 or 0: off
  float top_p = 1.0f;            // (0, 1]
  float min_p = 0.0f;            // [0, 1]
  std::optional<uint64_t> seed;  // reproducible sampling when set
  // Penalties over the tokens generated so far (presence, frequency: OpenAI's, in [-2, 2]) and
  // over prompt + output (repetition: HF/vLLM's multiplicative one, > 0; 1 = off).
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  // Stopping.
  int64_t max_tokens = 16;
  int64_t min_tokens = 0;                // no EOS / stop id / stop string before this many
  bool ignore_eos = false;               // keep going past the model's EOS (stop_token_ids and
                                         // stop strings still apply, as in vLLM)
  // The caller's stop ids plus, unless ignore_eos, the model's EOS and other end-of-turn ids.
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;         // stop strings, matched on the text, not returned
  bool skip_special_tokens = true;       // detokenization of the output

  // Throws atom::Error(kInvalidArgument) naming the bad field.
  void validate() const;
  bool greedy() const { return temperature < 1e-5f || top_k == 1; }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: [vocab_size]; returns the chosen token id.
  int32_t sample(const float* logits, int64_t vocab_size);
  // The logits processors, in place, before sample(): repetition penalty over prompt + output,
  // frequency and presence penalties over the output, and min_tokens (stop ids masked to -inf
  // while fewer than min_tokens tokens were generated).
  void apply_penalties(float* logits, int64_t vocab_size, std::span<const int32_t> prompt,
                       std::span<const int32_t> output);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // reused scratch: (logit or prob, id)
  std::vector<int32_t> counts_;                   // reused scratch: output token counts
};

// Index of the largest logit (the lowest index among ties, as torch.argmax).
int32_t argmax(const float* logits, int64_t n);

}  // namespace atom

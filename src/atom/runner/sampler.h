// Token sampling on the host: greedy, temperature, top-k, top-p, min-p, with a per-request seed.
// One definition of sampling (runner/sampling_math.h) that the CUDA kernels implement too: the
// filters are thresholds on p = exp((logit - max) / T), and the draw is a pure function of the
// request's seed and the token's position in the output, so the same seed gives the same tokens
// on either backend, whatever the batching, preemption or deferred output.
#pragma once

#include <cstdint>
#include <optional>
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
  // An unseeded request gets a seed from std::random_device here, used as a given one is.
  explicit Sampler(const SamplingParams& params);
  // logits: [vocab_size]; returns the chosen token id. `counter`: the position of the token being
  // sampled in the output (output tokens before it, an in-flight one included); it picks the
  // draw of the seed's stream, so a token's draw never depends on how many draws came before.
  //   greedy (temperature < 1e-5 or top_k 1): the first maximum.
  //   otherwise, with p_i = exp((l_i - max_l) / T) (the top token has p = 1):
  //     t_k = p of the k-th largest logit (0 < top_k < vocab, counting ties), else 0
  //     t_p = the largest p_v among {p >= t_k} whose tokens with p >= p_v hold top_p of the mass
  //           of {p >= t_k} (top_p < 1), else 0: the smallest prefix of the sorted distribution
  //           reaching top_p, the crossing token kept
  //     t_m = min_p
  //   every token with p >= max(t_k, t_p, t_m) is kept, ties at the threshold included; the
  //   token is the inverse CDF, in vocabulary order, of the kept masses at the draw (see
  //   sampling_math.h for the fixed-point masses that make it exact). O(vocab) unless top-p
  //   is on (a sort of the tokens top-k kept, or of all with nonzero mass).
  int32_t sample(const float* logits, int64_t vocab_size, uint64_t counter);
  // The logits processors, in place, before sample(): repetition penalty over prompt + output,
  // frequency and presence penalties over the output, and min_tokens (stop ids masked to -inf
  // while fewer than min_tokens tokens were generated).
  void apply_penalties(float* logits, int64_t vocab_size, std::span<const int32_t> prompt,
                       std::span<const int32_t> output);
  const SamplingParams& params() const { return params_; }
  // The seed of the draws: the request's, or the one drawn at construction.
  uint64_t seed() const { return seed_; }

 private:
  SamplingParams params_;
  uint64_t seed_ = 0;
  std::vector<float> probs_;     // reused scratch: [vocab] p of every token
  std::vector<float> scratch_;   // reused scratch: logits or p for the top-k and top-p thresholds
  std::vector<int32_t> counts_;  // reused scratch: output token counts
};

// Index of the largest logit (the lowest index among ties, as torch.argmax).
int32_t argmax(const float* logits, int64_t n);

}  // namespace atom

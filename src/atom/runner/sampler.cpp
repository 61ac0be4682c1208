#include "atom/runner/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "atom/core/error.h"

namespace atom {

void SamplingParams::validate() const {
  ATOM_CHECK(std::isfinite(temperature) && temperature >= 0.0f, kInvalidArgument,
             "temperature must be a non-negative number, got {}", temperature);
  ATOM_CHECK(top_k >= -1, kInvalidArgument, "top_k must be -1 (off) or positive, got {}", top_k);
  ATOM_CHECK(top_p > 0.0f && top_p <= 1.0f, kInvalidArgument, "top_p must be in (0, 1], got {}",
             top_p);
  ATOM_CHECK(min_p >= 0.0f && min_p <= 1.0f, kInvalidArgument, "min_p must be in [0, 1], got {}",
             min_p);
  ATOM_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f, kInvalidArgument,
             "presence_penalty must be in [-2, 2], got {}", presence_penalty);
  ATOM_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f, kInvalidArgument,
             "frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  ATOM_CHECK(repetition_penalty > 0.0f && std::isfinite(repetition_penalty), kInvalidArgument,
             "repetition_penalty must be a positive number, got {}", repetition_penalty);
  ATOM_CHECK(max_tokens >= 1, kInvalidArgument, "max_tokens must be at least 1, got {}",
             max_tokens);
  ATOM_CHECK(min_tokens >= 0 && min_tokens <= max_tokens, kInvalidArgument,
             "min_tokens must be in [0, max_tokens], got {}", min_tokens);
  for (const std::string& s : stop)
    ATOM_CHECK(!s.empty(), kInvalidArgument, "stop strings must not be empty");
}

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  params_.validate();
  rng_.seed(params_.seed ? *params_.seed : std::random_device{}());
}

void Sampler::apply_penalties(float* logits, int64_t vocab, std::span<const int32_t> prompt,
                              std::span<const int32_t> output) {
  const auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
  if (params_.repetition_penalty != 1.0f) {
    // HF/vLLM: each distinct token seen in prompt or output is penalized once.
    std::vector<bool> seen(size_t(vocab), false);
    for (auto ids : {prompt, output})
      for (int32_t id : ids)
        if (in_vocab(id) && !seen[size_t(id)]) {
          seen[size_t(id)] = true;
          float& l = logits[id];
          l = l > 0 ? l / params_.repetition_penalty : l * params_.repetition_penalty;
        }
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    counts_.assign(size_t(vocab), 0);
    for (int32_t id : output)
      if (in_vocab(id)) ++counts_[size_t(id)];
    for (int32_t id : output) {
      if (!in_vocab(id) || counts_[size_t(id)] == 0) continue;
      logits[id] -= params_.frequency_penalty * float(counts_[size_t(id)]) +
                    params_.presence_penalty;
      counts_[size_t(id)] = 0;  // once per distinct token
    }
  }
  // The stop ids in force (the caller leaves the model's EOS ids out under ignore_eos) may not
  // end the output before min_tokens.
  if (int64_t(output.size()) < params_.min_tokens) {
    for (int32_t id : params_.stop_token_ids)
      if (in_vocab(id)) logits[id] = -std::numeric_limits<float>::infinity();
  }
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (params_.greedy()) return argmax(logits, vocab);

  // Unnormalised probabilities exp((logit - max) / T), with ids. Only top-p needs them sorted;
  // top-k selects with nth_element and min-p filters in place, so the common cases stay O(vocab).
  const float inv_t = 1.0f / params_.temperature;
  const float max_logit = logits[argmax(logits, vocab)];
  cand_.resize(size_t(vocab));
  for (int64_t i = 0; i < vocab; ++i)
    cand_[size_t(i)] = {std::exp((logits[i] - max_logit) * inv_t), int32_t(i)};
  const auto by_prob = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = size_t(vocab);
  if (params_.top_k > 0 && size_t(params_.top_k) < n) {
    n = size_t(params_.top_k);
    std::nth_element(cand_.begin(), cand_.begin() + long(n) - 1, cand_.end(), by_prob);
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += cand_[i].first;

  // top-p: the smallest set of most likely tokens whose mass reaches top_p (the top one stays).
  if (params_.top_p < 1.0f) {
    std::sort(cand_.begin(), cand_.begin() + long(n), by_prob);
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += cand_[i].first / total;
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }

  // min-p: drop tokens whose probability is below min_p times the top token's (which is 1 here
  // unless top-k or top-p removed it, which they never do).
  if (params_.min_p > 0.0f) {
    size_t keep = 0;
    for (size_t i = 0; i < n; ++i)
      if (cand_[i].first >= params_.min_p) cand_[keep++] = cand_[i];
    n = keep;
  }
  total = 0.0;
  for (size_t i = 0; i < n; ++i) total += cand_[i].first;

  std::uniform_real_distribution<double> uni(0.0, total);
  const double r = uni(rng_);
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += cand_[i].first;
    if (r < cum) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace atom

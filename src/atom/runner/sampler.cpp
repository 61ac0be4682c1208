#include "atom/runner/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "atom/core/error.h"
#include "atom/runner/sampling_math.h"

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
  if (params_.seed) {
    seed_ = *params_.seed;
  } else {
    std::random_device rd;
    seed_ = (uint64_t(rd()) << 32) | uint64_t(rd());
  }
}

void Sampler::apply_penalties(float* logits, int64_t vocab, std::span<const int32_t> prompt,
                              std::span<const int32_t> output) {
  const auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
  // penalize_logit (sampling_math.h) is the GPU kernel's arithmetic too: same rounding.
  const float rep = params_.repetition_penalty;
  const float freq = params_.frequency_penalty;
  const float pres = params_.presence_penalty;
  if (rep != 1.0f) {
    // HF/vLLM: each distinct token seen in prompt or output is penalized once.
    std::vector<bool> seen(size_t(vocab), false);
    for (auto ids : {prompt, output})
      for (int32_t id : ids)
        if (in_vocab(id) && !seen[size_t(id)]) {
          seen[size_t(id)] = true;
          logits[id] = penalize_logit(logits[id], true, 0, rep, 0.0f, 0.0f, true, false);
        }
  }
  if (freq != 0.0f || pres != 0.0f) {
    counts_.assign(size_t(vocab), 0);
    for (int32_t id : output)
      if (in_vocab(id)) ++counts_[size_t(id)];
    for (int32_t id : output) {
      if (!in_vocab(id) || counts_[size_t(id)] == 0) continue;
      logits[id] =
          penalize_logit(logits[id], false, counts_[size_t(id)], 1.0f, freq, pres, false, true);
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

int32_t Sampler::sample(const float* logits, int64_t vocab, uint64_t counter) {
  ATOM_CHECK(vocab > 0 && vocab <= kMaxSamplingVocab, kInvalidArgument,
             "sample: vocabulary of {} tokens (1 to {} supported)", vocab, kMaxSamplingVocab);
  const int32_t best = argmax(logits, vocab);
  if (params_.greedy()) return best;

  const float max_logit = logits[best];
  const float inv_t = 1.0f / params_.temperature;
  probs_.resize(size_t(vocab));
  for (int64_t i = 0; i < vocab; ++i)
    probs_[size_t(i)] = sampling_prob(logits[i], max_logit, inv_t);

  // t_k: p of the k-th largest logit, which is the k-th largest p since p grows with the logit
  // (the GPU's radix select works on the logits too). O(vocab).
  float t_k = 0.0f;
  const int64_t k = params_.top_k;
  if (k > 0 && k < vocab) {
    scratch_.assign(logits, logits + vocab);
    std::nth_element(scratch_.begin(), scratch_.begin() + (k - 1), scratch_.end(),
                     std::greater<float>());
    t_k = sampling_prob(scratch_[size_t(k - 1)], max_logit, inv_t);
  }

  // t_p: walk the kept-by-k tokens from the most likely, a run of equal p at a time, until the
  // mass reaches the target. Tokens of zero mass can never be the threshold (the target is
  // reached by the time every token of positive mass is in), so only those with mass are sorted.
  float t_p = 0.0f;
  if (params_.top_p < 1.0f) {
    uint64_t mass_k = 0;
    scratch_.clear();
    for (float p : probs_) {
      const uint64_t m = p >= t_k ? sampling_mass(p) : 0;
      if (m == 0) continue;
      mass_k += m;
      scratch_.push_back(p);
    }
    const uint64_t target = top_p_target(mass_k, params_.top_p);
    // Only the most likely tokens are sorted: the c largest first (nth_element, O(n)), walked a
    // run of equal p at a time, the prefix growing when the target lies deeper. A run of equal p
    // cut by the prefix's end needs no care: if its part in the prefix reaches the target the
    // threshold is its value either way, and if not the prefix grows. Usually the target falls in
    // the first 1024 tokens, so a step over a 152k vocabulary no longer sorts it all.
    const size_t n = scratch_.size();
    for (size_t c = std::min<size_t>(n, 1024);; c = std::min(n, 4 * c)) {
      if (c < n)
        std::nth_element(scratch_.begin(), scratch_.begin() + ptrdiff_t(c), scratch_.end(),
                         std::greater<float>());
      std::sort(scratch_.begin(), scratch_.begin() + ptrdiff_t(c), std::greater<float>());
      uint64_t cum = 0;
      bool found = false;
      for (size_t j = 0; j < c;) {
        const float v = scratch_[j];
        for (; j < c && scratch_[j] == v; ++j) cum += sampling_mass(scratch_[j]);
        if (cum >= target) {
          t_p = v;
          found = true;
          break;
        }
      }
      if (found || c == n) break;
    }
  }

  // Every token at or above the threshold is kept (ties included); the draw inverts the CDF of
  // the kept masses in vocabulary order. The top token (p = 1 >= every threshold) keeps the
  // total positive unless the logits have no maximum (NaN): then the first maximum, as greedy.
  const float t = std::max({t_k, t_p, params_.min_p});
  uint64_t total = 0;
  for (float p : probs_)
    if (p >= t) total += sampling_mass(p);
  if (total == 0) return best;
  const uint64_t r = scale_uniform(sampling_bits53(seed_, counter), total);
  uint64_t cum = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const float p = probs_[size_t(i)];
    if (p < t) continue;
    cum += sampling_mass(p);
    if (cum > r) return int32_t(i);
  }
  ATOM_ASSERT(false);  // r < total: some prefix exceeds it
  return best;
}

}  // namespace atom

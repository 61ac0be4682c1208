#include "atom/runner/sampler.h"

#include <algorithm>
#include <cmath>

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

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (params_.greedy()) return argmax(logits, vocab);

  // Candidates sorted by logit, descending; top-k keeps only the first k (partial sort).
  cand_.resize(size_t(vocab));
  for (int64_t i = 0; i < vocab; ++i) cand_[size_t(i)] = {logits[i], int32_t(i)};
  const auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = size_t(vocab);
  if (params_.top_k > 0 && size_t(params_.top_k) < n) {
    n = size_t(params_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + n, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }

  // Softmax of logit / temperature over the kept candidates (max subtracted for stability).
  const float inv_t = 1.0f / params_.temperature;
  const float max_logit = cand_[0].first;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float p = std::exp((cand_[i].first - max_logit) * inv_t);
    cand_[i].first = p;
    total += p;
  }

  // top-p: the smallest prefix whose mass reaches top_p (the top token always stays).
  if (params_.top_p < 1.0f) {
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
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += cand_[i].first;
  }

  // min-p: drop tokens whose probability is below min_p times the top token's.
  if (params_.min_p > 0.0f) {
    const double threshold = params_.min_p * cand_[0].first;
    size_t keep = 1;
    while (keep < n && cand_[keep].first >= threshold) ++keep;
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += cand_[i].first;
  }

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

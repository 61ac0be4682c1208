// The CPU Sampler: greedy, the counter-based draws (same seed and counter, same token; draws of
// different counters independent), the threshold definition of top-k / top-p / min-p with ties
// kept, the inverse-CDF pick, the fixed-point arithmetic of sampling_math.h shared with the GPU,
// and the penalties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "atom/core/error.h"
#include "atom/runner/sampler.h"
#include "atom/runner/sampling_math.h"

namespace atom {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
constexpr float kInf = std::numeric_limits<float>::infinity();

// Tokens drawn at counters [0, n).
std::map<int32_t, int> histogram(SamplingParams p, int n, const std::vector<float>& logits) {
  Sampler s(p);
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits.data(), int64_t(logits.size()), uint64_t(i))];
  return h;
}

// Pearson's chi-square of counts against probabilities (cells with probability 0 must be empty).
double chi_square(const std::map<int32_t, int>& h, const std::vector<double>& prob, int n) {
  double chi2 = 0.0;
  for (size_t i = 0; i < prob.size(); ++i) {
    const auto it = h.find(int32_t(i));
    const double got = it == h.end() ? 0.0 : it->second;
    if (prob[i] == 0.0) {
      EXPECT_EQ(got, 0.0) << "token " << i << " has probability 0";
      continue;
    }
    const double want = prob[i] * n;
    chi2 += (got - want) * (got - want) / want;
  }
  return chi2;
}

TEST(Sampler, GreedyTakesTheFirstMaximum) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p);
  EXPECT_EQ(s.sample(kLogits.data(), 6, 0), 1);
  EXPECT_EQ(s.sample(kLogits.data(), 6, 17), 1);
  EXPECT_EQ(argmax(kLogits.data(), 6), 1);
  p.temperature = 1.0f;
  p.top_k = 1;  // top-k 1 is greedy too
  EXPECT_EQ(Sampler(p).sample(kLogits.data(), 6, 3), 1);
}

TEST(Sampler, SameSeedAndCounterGiveTheSameToken) {
  SamplingParams p;
  p.seed = 1234;
  Sampler s1(p), s2(p);
  std::vector<int32_t> a(200), b(200);
  for (int i = 0; i < 200; ++i) a[size_t(i)] = s1.sample(kLogits.data(), 6, uint64_t(i));
  // Another sampler, the counters in another order and some repeated: the same token per counter
  // (a draw depends on nothing but the seed and its counter).
  for (int i = 199; i >= 0; --i) b[size_t(i)] = s2.sample(kLogits.data(), 6, uint64_t(i));
  EXPECT_EQ(a, b);
  for (int i = 0; i < 200; i += 7)
    EXPECT_EQ(s1.sample(kLogits.data(), 6, uint64_t(i)), a[size_t(i)]);
  p.seed = 999;
  Sampler s3(p);
  std::vector<int32_t> c(200);
  for (int i = 0; i < 200; ++i) c[size_t(i)] = s3.sample(kLogits.data(), 6, uint64_t(i));
  EXPECT_NE(a, c);
}

TEST(Sampler, UnseededRequestsDrawTheirOwnSeed) {
  SamplingParams p;
  Sampler s1(p), s2(p);
  EXPECT_NE(s1.seed(), s2.seed());
  // The drawn seed is used as a given one is.
  SamplingParams q;
  q.seed = s1.seed();
  Sampler s3(q);
  EXPECT_EQ(s3.seed(), s1.seed());
  for (uint64_t c = 0; c < 100; ++c)
    EXPECT_EQ(s1.sample(kLogits.data(), 6, c), s3.sample(kLogits.data(), 6, c)) << c;
}

TEST(Sampler, DifferentCountersDrawIndependently) {
  // Two equally likely tokens: single draws are fair and consecutive counters' draws are
  // independent (each of the four pairs a quarter of the time).
  const std::vector<float> two = {0.0f, 0.0f};
  SamplingParams p;
  p.seed = 42;
  Sampler s(p);
  const int n = 40000;
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[size_t(i)] = s.sample(two.data(), 2, uint64_t(i));
  int ones = 0;
  int pairs[2][2] = {{0, 0}, {0, 0}};
  for (int i = 0; i < n; ++i) {
    ones += t[size_t(i)];
    if (i > 0) ++pairs[t[size_t(i - 1)]][t[size_t(i)]];
  }
  // 5 standard deviations: sqrt(n / 4) = 100 for the ones, sqrt(n * 3/16) = 87 for a pair.
  EXPECT_NEAR(ones, n / 2, 500);
  for (auto& row : pairs)
    for (int c : row) EXPECT_NEAR(c, (n - 1) / 4.0, 435);
}

TEST(Sampler, DrawIsTheInverseCdfInVocabularyOrder) {
  // Four equal logits: every p is 1 (mass 2^42), so the token is floor(4 u) of the draw u.
  const std::vector<float> flat = {0.5f, 0.5f, 0.5f, 0.5f};
  SamplingParams p;
  p.seed = 77;
  Sampler s(p);
  for (uint64_t c = 0; c < 2000; ++c) {
    const double u = sampling_uniform(77, c);
    ASSERT_EQ(s.sample(flat.data(), 4, c), int32_t(std::floor(u * 4.0))) << c;
  }
  // Masked tokens (-inf) are never drawn, wherever they sit.
  const std::vector<float> masked = {-kInf, 1.0f, -kInf, 1.0f, -kInf};
  for (uint64_t c = 0; c < 2000; ++c) {
    const int32_t t = s.sample(masked.data(), 5, c);
    ASSERT_TRUE(t == 1 || t == 3) << t;
    ASSERT_EQ(t, sampling_uniform(77, c) < 0.5 ? 1 : 3) << c;
  }
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  SamplingParams p;
  p.seed = 7;
  p.temperature = 2.0f;
  const int n = 40000;
  auto h = histogram(p, n, kLogits);
  double z = 0;
  for (float l : kLogits) z += std::exp(l / 2.0);
  std::vector<double> prob;
  for (float l : kLogits) prob.push_back(std::exp(l / 2.0) / z);
  for (int32_t i = 0; i < 6; ++i)
    EXPECT_NEAR(double(h[i]) / n, prob[size_t(i)], 0.01) << "token " << i;
  // 5 degrees of freedom: P(chi2 > 25) is about 1e-4.
  EXPECT_LT(chi_square(h, prob, n), 25.0);
}

TEST(Sampler, TopKTopPMinPRestrictTheCandidates) {
  SamplingParams p;
  p.seed = 3;
  p.top_k = 3;  // tokens 1, 3 (logit 3) and 2 (logit 2)
  auto h = histogram(p, 3000, kLogits);
  EXPECT_EQ(h.size(), 3u);
  EXPECT_TRUE(h.count(1) && h.count(2) && h.count(3));

  SamplingParams q;
  q.seed = 3;
  q.top_p = 0.5f;  // the two logit-3 tokens hold ~0.58 of the mass: just they remain
  auto hq = histogram(q, 3000, kLogits);
  EXPECT_EQ(hq.size(), 2u);
  EXPECT_TRUE(hq.count(1) && hq.count(3));

  SamplingParams m;
  m.seed = 3;
  m.min_p = 0.3f;  // p(2)/p(1) = e^-1 = 0.37 stays; p(0)/p(1) = e^-2 = 0.14 goes
  auto hm = histogram(m, 3000, kLogits);
  EXPECT_EQ(hm.size(), 3u);
  EXPECT_FALSE(hm.count(0));

  // top_k beyond the vocabulary, top_p 1, min_p 0: no filter at all.
  SamplingParams all;
  all.seed = 3;
  all.top_k = 100;
  EXPECT_EQ(histogram(all, 3000, kLogits).size(), 6u);
}

TEST(Sampler, TopPKeepsTheCrossingToken) {
  // p = 1, e^-1, e^-2: masses 0.665, 0.245, 0.090 of the total. top_p 0.6 stops at the first
  // token, 0.7 crosses at the second (kept), 0.95 at the third.
  const std::vector<float> l = {0.0f, -1.0f, -2.0f};
  for (const auto& [top_p, kept] :
       std::vector<std::pair<float, size_t>>{{0.6f, 1}, {0.7f, 2}, {0.95f, 3}}) {
    SamplingParams p;
    p.seed = 5;
    p.top_p = top_p;
    EXPECT_EQ(histogram(p, 4000, l).size(), kept) << top_p;
  }
}

TEST(Sampler, TiesAtTheThresholdAreAllKept) {
  // Three tokens tie for second place: top_k 2 keeps all of them (four tokens), not two.
  const std::vector<float> l = {3.0f, 2.0f, 1.0f, 2.0f, 0.0f, 2.0f};
  SamplingParams p;
  p.seed = 11;
  p.top_k = 2;
  auto h = histogram(p, 6000, l);
  EXPECT_EQ(h.size(), 4u);
  EXPECT_TRUE(h.count(0) && h.count(1) && h.count(3) && h.count(5));
  // The kept tokens are drawn in proportion to their p (chi-square, 3 degrees of freedom).
  const double e1 = std::exp(-1.0);
  const double z = 1.0 + 3.0 * e1;
  EXPECT_LT(chi_square(h, {1 / z, e1 / z, 0.0, e1 / z, 0.0, e1 / z}, 6000), 21.0);

  // top_p crossing inside a run of ties keeps the whole run: the top token holds 1/(1 + 3 e^-1)
  // = 0.48 of the mass, so 0.5 crosses at the tied tokens.
  SamplingParams q;
  q.seed = 11;
  q.top_p = 0.5f;
  q.top_k = 4;
  auto hq = histogram(q, 6000, l);
  EXPECT_EQ(hq.size(), 4u);
  EXPECT_FALSE(hq.count(2) || hq.count(4));

  // min_p exactly at a token's p keeps it (p >= min_p); just above drops it.
  SamplingParams m;
  m.seed = 11;
  m.min_p = sampling_prob(2.0f, 3.0f, 1.0f);
  EXPECT_EQ(histogram(m, 3000, l).size(), 4u);
  m.min_p = std::nextafter(m.min_p, 1.0f);
  auto hm = histogram(m, 3000, l);
  EXPECT_EQ(hm.size(), 1u);
  EXPECT_TRUE(hm.count(0));
}

// The definition written out the slow way: every p sorted, the top-p walk over all of them.
int32_t reference_sample(const std::vector<float>& logits, const SamplingParams& sp,
                         uint64_t seed, uint64_t counter) {
  const int64_t n = int64_t(logits.size());
  const float max_l = *std::max_element(logits.begin(), logits.end());
  const float inv_t = 1.0f / sp.temperature;
  std::vector<float> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = sampling_prob(logits[i], max_l, inv_t);
  std::vector<float> sorted = p;
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const float t_k = sp.top_k > 0 && sp.top_k < n ? sorted[size_t(sp.top_k - 1)] : 0.0f;
  float t_p = 0.0f;
  if (sp.top_p < 1.0f) {
    uint64_t mass_k = 0;
    for (float x : p)
      if (x >= t_k) mass_k += sampling_mass(x);
    const uint64_t target = top_p_target(mass_k, sp.top_p);
    uint64_t cum = 0;
    for (size_t j = 0; j < sorted.size();) {
      const float v = sorted[j];
      for (; j < sorted.size() && sorted[j] == v; ++j)
        if (v >= t_k) cum += sampling_mass(sorted[j]);
      if (v >= t_k && sampling_mass(v) > 0 && cum >= target) {
        t_p = v;
        break;
      }
    }
  }
  const float t = std::max({t_k, t_p, sp.min_p});
  uint64_t total = 0;
  for (float x : p)
    if (x >= t) total += sampling_mass(x);
  const uint64_t r = scale_uniform(sampling_bits53(seed, counter), total);
  uint64_t cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (p[size_t(i)] < t) continue;
    cum += sampling_mass(p[size_t(i)]);
    if (cum > r) return int32_t(i);
  }
  return -1;
}

// Top-p over a Qwen-sized vocabulary sorts only the most likely tokens, growing that prefix
// when the target lies deeper (top_p near 1, a flat distribution) or a run of equal p crosses its
// end: the same tokens as the full sort, every time.
TEST(Sampler, TopPOverALargeVocabularyEqualsTheFullSort) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> peaked(151936), flat(151936), tied(151936);
  for (float& x : peaked) x = normal(rng);
  for (float& x : flat) x = 0.05f * normal(rng);
  // 3000 tokens share the second-largest logit: a run across the 1024 and 4096 boundaries.
  for (size_t i = 0; i < tied.size(); ++i) tied[i] = i % 50 == 0 ? 4.0f : normal(rng) * 0.5f;
  tied[7] = 9.0f;
  for (const auto* logits : {&peaked, &flat, &tied}) {
    for (const float top_p : {0.1f, 0.5f, 0.9f, 0.999f, 0.99999f}) {
      for (const int32_t top_k : {-1, 50, 5000}) {
        SamplingParams sp;
        sp.temperature = 0.8f;
        sp.top_p = top_p;
        sp.top_k = top_k;
        sp.seed = 5;
        Sampler s(sp);
        for (uint64_t c = 0; c < 6; ++c)
          ASSERT_EQ(s.sample(logits->data(), int64_t(logits->size()), c),
                    reference_sample(*logits, sp, 5, c))
              << "top_p " << top_p << " top_k " << top_k << " counter " << c;
      }
    }
  }
}

TEST(Sampler, SeededDrawsDoNotDependOnOtherRows) {
  // The runner samples rows in any order and batch; a sampler's draw depends only on its seed,
  // counter and logits.
  SamplingParams p;
  p.seed = 8;
  p.top_p = 0.9f;
  p.top_k = 4;
  Sampler a(p), b(p);
  std::vector<float> noise(50);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (uint64_t c = 0; c < 100; ++c) {
    for (float& x : noise) x = nd(rng);
    (void)b.sample(noise.data(), int64_t(noise.size()), c);  // b samples other logits too
    EXPECT_EQ(a.sample(kLogits.data(), 6, c), b.sample(kLogits.data(), 6, c)) << c;
  }
}

TEST(Sampler, AllButOneMaskedGivesThatToken) {
  const std::vector<float> l = {-kInf, -kInf, 0.25f, -kInf};
  SamplingParams p;
  p.seed = 1;
  p.temperature = 0.7f;
  p.top_p = 0.3f;
  p.top_k = 2;
  for (uint64_t c = 0; c < 50; ++c) EXPECT_EQ(Sampler(p).sample(l.data(), 4, c), 2);
  const std::vector<float> one = {1.0f};
  EXPECT_EQ(Sampler(p).sample(one.data(), 1, 0), 0);
}

TEST(SamplingMath, Arithmetic) {
  // splitmix64's first output from state 0.
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafull);
  for (uint64_t c = 0; c < 1000; ++c) {
    const double u = sampling_uniform(3, c);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    EXPECT_EQ(u, double(sampling_bits53(3, c)) * 0x1.0p-53);
  }
  EXPECT_NE(sampling_bits53(3, 0), sampling_bits53(4, 0));
  EXPECT_NE(sampling_bits53(3, 0), sampling_bits53(3, 1));
  // scale_uniform: floor(bits * total / 2^53), always < total.
  const uint64_t top = (uint64_t(1) << 53) - 1;
  EXPECT_EQ(scale_uniform(0, 12345), 0u);
  EXPECT_EQ(scale_uniform(top, 12345), 12344u);
  EXPECT_EQ(scale_uniform(uint64_t(1) << 52, 1000), 500u);
  EXPECT_EQ(scale_uniform(top, uint64_t(1) << 62), (uint64_t(1) << 62) - (uint64_t(1) << 9));
  // Masses: floor(p * 2^42).
  EXPECT_EQ(sampling_mass(1.0f), uint64_t(1) << kMassBits);
  EXPECT_EQ(sampling_mass(0.5f), uint64_t(1) << (kMassBits - 1));
  EXPECT_EQ(sampling_mass(0.75f), uint64_t(3) << (kMassBits - 2));
  EXPECT_EQ(sampling_mass(0x1.0p-42f), 1u);
  EXPECT_EQ(sampling_mass(0x1.fp-43f), 0u);
  EXPECT_EQ(sampling_mass(0.0f), 0u);
  EXPECT_EQ(sampling_mass(1e-40f), 0u);
  // The device's integer formula equals the host's: every 997th float of [0, 1].
  for (uint32_t b = 0; b <= float_bits(1.0f); b += 997)
    ASSERT_EQ(sampling_mass_from_bits(bits_float(b)), sampling_mass(bits_float(b))) << b;
  EXPECT_EQ(sampling_mass_from_bits(1.0f), sampling_mass(1.0f));
  EXPECT_EQ(top_p_target(1000, 0.5f), 500u);
  EXPECT_EQ(top_p_target(1001, 0.5f), 501u);
  // Order keys sort floats, -inf and -0 included.
  const std::vector<float> sorted = {-kInf, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, kInf};
  for (size_t i = 1; i < sorted.size(); ++i)
    EXPECT_LT(float_order_key(sorted[i - 1]), float_order_key(sorted[i])) << i;
}

TEST(SamplingMath, ExpIsAccurateAndMonotone) {
  // Within 9 ulp of exp (the input's rounding to 2^-20 is most of it) and never decreasing: every
  // float of windows around range-reduction switches (-ln2/2, -3 ln2/2) and binade edges of the
  // input (-0.25, -1, -64), then every 61st float of (-86, -2^-30].
  double worst = 0.0;
  auto check_from = [&worst](float x, int64_t count, int stride) {
    float prev = sampling_exp(x);
    for (int64_t i = 0; i < count && x < 0.0f; ++i) {
      for (int j = 0; j < stride; ++j) x = std::nextafter(x, 1.0f);
      const float e = sampling_exp(x);
      const double want = std::exp(double(x));
      const double ulp = double(std::nextafter(float(want), 2.0f)) - double(float(want));
      worst = std::max(worst, std::fabs(double(e) - want) / ulp);
      ASSERT_GE(e, prev) << "at " << x;
      prev = e;
    }
  };
  for (float c : {-0.34657359f, -1.03972077f, -0.25f, -1.0f, -64.0f})
    check_from(std::nextafter(c, -kInf) - 0.001f * std::fabs(c), 300000, 1);
  const uint32_t hi_bits = float_bits(-85.99f);
  const uint32_t lo_bits = float_bits(-0x1.0p-30f);
  float prev = 0.0f;
  int64_t steps = 0;
  for (uint32_t b = hi_bits; b > lo_bits; b -= 61, ++steps) {  // -86 up to 0
    const float e = sampling_exp(bits_float(b));
    ASSERT_GE(e, prev) << "at " << bits_float(b);
    prev = e;
  }
  EXPECT_GT(steps, 1000000);
  EXPECT_LT(worst, 9.0);
  EXPECT_EQ(sampling_exp(0.0f), 1.0f);
  EXPECT_EQ(sampling_exp(-0.0f), 1.0f);
  EXPECT_EQ(sampling_exp(-kInf), 0.0f);
  EXPECT_EQ(sampling_exp(-100.0f), 0.0f);
  EXPECT_EQ(sampling_prob(5.0f, 5.0f, 3.0f), 1.0f);
  EXPECT_EQ(sampling_prob(kInf, kInf, 1.0f), 1.0f);
  EXPECT_EQ(sampling_prob(1.0f, kInf, 1.0f), 0.0f);
}

TEST(Sampler, PenaltiesAndMinTokens) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  p.min_tokens = 4;
  p.stop_token_ids = {5, 99};  // 99 is outside the vocabulary: ignored
  Sampler s(p);
  std::vector<float> l = {1.0f, -1.0f, 2.0f, 4.0f, 3.0f, 6.0f};
  const std::vector<int32_t> prompt = {0, 1, 0};
  const std::vector<int32_t> output = {2, 2, 1};
  s.apply_penalties(l.data(), 6, prompt, output);
  EXPECT_EQ(l[0], 0.5f);                        // prompt only: repetition
  EXPECT_EQ(l[1], -2.0f - (0.5f * 1 + 0.25f));  // prompt and output once
  EXPECT_EQ(l[2], 1.0f - (0.5f * 2 + 0.25f));   // output twice
  EXPECT_EQ(l[3], 4.0f);                        // unseen
  EXPECT_EQ(l[4], 3.0f);
  EXPECT_EQ(l[5], -kInf);  // a stop id while fewer than min_tokens were generated
  // Once min_tokens are out, stop ids stay.
  std::vector<float> l2 = {1.0f, -1.0f, 2.0f, 4.0f, 3.0f, 6.0f};
  const std::vector<int32_t> longer = {2, 2, 1, 4};
  s.apply_penalties(l2.data(), 6, prompt, longer);
  EXPECT_EQ(l2[5], 6.0f);
  EXPECT_EQ(l2[4], 1.5f - (0.5f * 1 + 0.25f));
}

TEST(Sampler, ValidatesParameters) {
  SamplingParams p;
  p.temperature = -1.0f;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = {};
  p.top_k = -2;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.min_p = 1.5f;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.temperature = NAN;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  Sampler s(p);
  EXPECT_THROW(s.sample(kLogits.data(), 0, 0), Error);
}

}  // namespace
}  // namespace atom

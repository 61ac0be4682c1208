#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "atom/core/error.h"
#include "atom/runner/sampler.h"

namespace atom {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

std::map<int32_t, int> histogram(SamplingParams p, int n, const std::vector<float>& logits) {
  Sampler s(p);
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits.data(), int64_t(logits.size()))];
  return h;
}

TEST(Sampler, GreedyTakesTheFirstMaximum) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p);
  EXPECT_EQ(s.sample(kLogits.data(), 6), 1);
  EXPECT_EQ(argmax(kLogits.data(), 6), 1);
  p.temperature = 1.0f;
  p.top_k = 1;  // top-k 1 is greedy too
  EXPECT_EQ(Sampler(p).sample(kLogits.data(), 6), 1);
}

TEST(Sampler, SeedMakesSamplingReproducible) {
  SamplingParams p;
  p.seed = 1234;
  std::vector<int32_t> a, b;
  Sampler s1(p), s2(p);
  for (int i = 0; i < 200; ++i) {
    a.push_back(s1.sample(kLogits.data(), 6));
    b.push_back(s2.sample(kLogits.data(), 6));
  }
  EXPECT_EQ(a, b);
  p.seed = 999;
  Sampler s3(p);
  std::vector<int32_t> c;
  for (int i = 0; i < 200; ++i) c.push_back(s3.sample(kLogits.data(), 6));
  EXPECT_NE(a, c);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  SamplingParams p;
  p.seed = 7;
  p.temperature = 2.0f;
  const int n = 40000;
  auto h = histogram(p, n, kLogits);
  double z = 0;
  for (float l : kLogits) z += std::exp(l / 2.0);
  for (int32_t i = 0; i < 6; ++i) {
    const double want = std::exp(kLogits[size_t(i)] / 2.0) / z;
    EXPECT_NEAR(double(h[i]) / n, want, 0.01) << "token " << i;
  }
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
}

}  // namespace
}  // namespace atom

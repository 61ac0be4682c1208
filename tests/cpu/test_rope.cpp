// RoPE tables and rotation against double-precision transcriptions of HF transformers'
// modeling_rope_utils (_compute_*_parameters) and LlamaRotaryEmbedding / apply_rotary_pos_emb.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <ostream>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/error.h"
#include "cpu/test_util.h"

namespace atom::cpu {
namespace {

using test::all_near;
using test::random_vector;

constexpr double kPi = std::numbers::pi;

// inv_freq = 1 / base^(arange(0, dim, 2) / dim)
std::vector<double> default_ref(int64_t dim, double base) {
  std::vector<double> inv;
  for (int64_t i = 0; i < dim; i += 2) inv.push_back(1.0 / std::pow(base, double(i) / double(dim)));
  return inv;
}

std::vector<double> linear_ref(int64_t dim, double base, double factor) {
  auto inv = default_ref(dim, base);
  for (double& f : inv) f /= factor;
  return inv;
}

// base *= ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2)), seq_len >= max_pos
std::vector<double> dynamic_ref(int64_t dim, double base, double factor, int64_t max_pos,
                                int64_t seq_len) {
  const double len = double(std::max(seq_len, max_pos));
  base *= std::pow(factor * len / double(max_pos) - (factor - 1.0), double(dim) / double(dim - 2));
  return default_ref(dim, base);
}

std::vector<double> llama3_ref(int64_t dim, double base, double factor, double low_ff,
                               double high_ff, double old_ctx) {
  auto inv = default_ref(dim, base);
  const double low_wl = old_ctx / low_ff;
  const double high_wl = old_ctx / high_ff;
  for (double& f : inv) {
    const double wl = 2 * kPi / f;
    if (wl < high_wl) continue;
    if (wl > low_wl) {
      f /= factor;
      continue;
    }
    const double smooth = (old_ctx / wl - low_ff) / (high_ff - low_ff);
    f = (1 - smooth) * f / factor + smooth * f;
  }
  return inv;
}

struct YarnRef {
  std::vector<double> inv_freq;
  double attention_factor;
};

YarnRef yarn_ref(int64_t dim, double base, double factor, double orig, double beta_fast,
                 double beta_slow, bool truncate) {
  auto corr_dim = [&](double rot) {
    return dim * std::log(orig / (rot * 2 * kPi)) / (2 * std::log(base));
  };
  double low = corr_dim(beta_fast);
  double high = corr_dim(beta_slow);
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  YarnRef r;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double pos_freq = std::pow(base, double(2 * i) / double(dim));
    const double extrapolation = 1.0 / pos_freq;
    const double interpolation = 1.0 / (factor * pos_freq);
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double ef = 1.0 - ramp;  // extrapolation weight
    r.inv_freq.push_back(interpolation * (1.0 - ef) + extrapolation * ef);
  }
  r.attention_factor = factor <= 1.0 ? 1.0 : 0.1 * std::log(factor) + 1.0;
  return r;
}

TEST(RopeTable, DefaultMatchesFormula) {
  for (const auto& [dim, theta] :
       {std::pair<int64_t, double>{64, 10000.0}, {128, 500000.0}, {80, 1000000.0}, {2, 10000.0}}) {
    const RopeTable t = make_rope_inv_freq(dim, theta, RopeScaling{}, 2048);
    EXPECT_TRUE(all_near(t.inv_freq, default_ref(dim, theta), 0.0, 2e-6)) << "dim " << dim;
    EXPECT_EQ(t.inv_freq[0], 1.0f);
    EXPECT_EQ(t.attention_factor, 1.0f);
  }
}

TEST(RopeTable, LinearDividesByFactor) {
  RopeScaling s;
  s.type = "linear";
  s.factor = 4.0;
  const RopeTable t = make_rope_inv_freq(128, 10000.0, s, 4096);
  EXPECT_TRUE(all_near(t.inv_freq, linear_ref(128, 10000.0, 4.0), 0.0, 2e-6));
  EXPECT_EQ(t.inv_freq[0], 0.25f);
  EXPECT_EQ(t.attention_factor, 1.0f);
}

TEST(RopeTable, DynamicIsDefaultWithinTrainedLength) {
  RopeScaling s;
  s.type = "dynamic";
  s.factor = 2.0;
  const RopeTable plain = make_rope_inv_freq(64, 10000.0, RopeScaling{}, 2048);
  // HF at seq_len <= max_position_embeddings: base unchanged.
  EXPECT_EQ(make_rope_inv_freq(64, 10000.0, s, 2048).inv_freq, plain.inv_freq);
  EXPECT_EQ(make_rope_inv_freq(64, 10000.0, s, 2048, 17).inv_freq, plain.inv_freq);
  EXPECT_EQ(make_rope_inv_freq(64, 10000.0, s, 2048, 2048).inv_freq, plain.inv_freq);
}

TEST(RopeTable, DynamicRescalesBaseBeyondTrainedLength) {
  RopeScaling s;
  s.type = "dynamic";
  s.factor = 2.0;
  for (const int64_t seq_len : {2049, 4096, 10000}) {
    const RopeTable t = make_rope_inv_freq(64, 10000.0, s, 2048, seq_len);
    EXPECT_TRUE(all_near(t.inv_freq, dynamic_ref(64, 10000.0, 2.0, 2048, seq_len), 0.0, 2e-6))
        << "seq_len " << seq_len;
    EXPECT_LT(t.inv_freq[31], make_rope_inv_freq(64, 10000.0, s, 2048).inv_freq[31]);
  }
}

TEST(RopeTable, Llama3MatchesHf) {
  // Llama 3.1's rope_scaling.
  RopeScaling s;
  s.type = "llama3";
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = 8192;
  const RopeTable t = make_rope_inv_freq(128, 500000.0, s, 131072);
  const auto ref = llama3_ref(128, 500000.0, 8.0, 1.0, 4.0, 8192.0);
  EXPECT_TRUE(all_near(t.inv_freq, ref, 0.0, 2e-6));
  EXPECT_EQ(t.attention_factor, 1.0f);

  // All three regimes occur: kept (high frequency), divided by 8 (low), smoothed (between).
  const auto plain = default_ref(128, 500000.0);
  int kept = 0, divided = 0, smoothed = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double ratio = ref[i] / plain[i];
    if (std::fabs(ratio - 1.0) < 1e-12) {
      ++kept;
    } else if (std::fabs(ratio - 0.125) < 1e-12) {
      ++divided;
    } else {
      ++smoothed;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
}

TEST(RopeTable, Llama3OriginalLengthDefaultsToMaxPosition) {
  RopeScaling s;
  s.type = "llama3";
  s.factor = 8.0;
  const RopeTable implicit = make_rope_inv_freq(64, 500000.0, s, 8192);
  s.original_max_position_embeddings = 8192;
  EXPECT_EQ(implicit.inv_freq, make_rope_inv_freq(64, 500000.0, s, 1 << 20).inv_freq);
}

TEST(RopeTable, YarnMatchesHf) {
  // Qwen3-style (truncated correction range) and gpt-oss-style (truncate = false).
  struct Case {
    int64_t dim;
    double theta, factor;
    int64_t orig;
    bool truncate;
  };
  for (const Case c :
       {Case{128, 1000000.0, 4.0, 32768, true}, Case{64, 150000.0, 32.0, 4096, false},
        Case{80, 10000.0, 16.0, 4096, true}}) {
    RopeScaling s;
    s.type = "yarn";
    s.factor = c.factor;
    s.original_max_position_embeddings = c.orig;
    s.truncate = c.truncate;
    const RopeTable t = make_rope_inv_freq(c.dim, c.theta, s, c.orig * int64_t(c.factor));
    const YarnRef ref = yarn_ref(c.dim, c.theta, c.factor, double(c.orig), 32.0, 1.0, c.truncate);
    EXPECT_TRUE(all_near(t.inv_freq, ref.inv_freq, 0.0, 2e-6)) << "dim " << c.dim;
    EXPECT_FLOAT_EQ(t.attention_factor, float(ref.attention_factor));
    EXPECT_FLOAT_EQ(t.attention_factor, float(0.1 * std::log(c.factor) + 1.0));
    // The fastest pair extrapolates (unchanged), the slowest interpolates (divided by factor).
    EXPECT_FLOAT_EQ(t.inv_freq.front(), 1.0f);
    EXPECT_NEAR(t.inv_freq.back(), ref.inv_freq.back(), 1e-12 + 2e-6 * ref.inv_freq.back());
    EXPECT_NEAR(t.inv_freq.back() * c.factor, default_ref(c.dim, c.theta).back(),
                2e-6 * default_ref(c.dim, c.theta).back());
  }
}

TEST(RopeTable, YarnAttentionFactorChoices) {
  RopeScaling s;
  s.type = "yarn";
  s.factor = 40.0;
  s.original_max_position_embeddings = 4096;
  // DeepSeek-V3: mscale = mscale_all_dim = 1 -> the ratio is 1.
  s.mscale = 1.0;
  s.mscale_all_dim = 1.0;
  EXPECT_FLOAT_EQ(make_rope_inv_freq(64, 10000.0, s, 163840).attention_factor, 1.0f);
  // Different mscales: get_mscale(f, mscale) / get_mscale(f, mscale_all_dim).
  s.mscale = 0.707;
  s.mscale_all_dim = 1.0;
  const double l = std::log(40.0);
  EXPECT_FLOAT_EQ(make_rope_inv_freq(64, 10000.0, s, 163840).attention_factor,
                  float((0.1 * 0.707 * l + 1.0) / (0.1 * l + 1.0)));
  // mscale without mscale_all_dim is ignored, as in HF.
  s.mscale_all_dim = 0.0;
  EXPECT_FLOAT_EQ(make_rope_inv_freq(64, 10000.0, s, 163840).attention_factor,
                  float(0.1 * l + 1.0));
  // An explicit attention_factor wins.
  s.attention_factor = 1.25;
  EXPECT_FLOAT_EQ(make_rope_inv_freq(64, 10000.0, s, 163840).attention_factor, 1.25f);
  // factor <= 1: no scaling.
  RopeScaling one;
  one.type = "yarn";
  one.factor = 1.0;
  one.original_max_position_embeddings = 4096;
  EXPECT_EQ(make_rope_inv_freq(64, 10000.0, one, 4096).attention_factor, 1.0f);
}

TEST(RopeTable, RejectsUnknownTypes) {
  for (const char* type : {"longrope", "mrope", "su", ""}) {
    RopeScaling s;
    s.type = type;
    try {
      make_rope_inv_freq(64, 10000.0, s, 4096);
      FAIL() << "accepted rope type '" << type << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      EXPECT_THAT(e.what(), ::testing::HasSubstr("rope_scaling type '" + std::string(type) +
                                                 "' is not supported"));
    }
  }
}

TEST(RopeTable, RejectsBadArguments) {
  EXPECT_THROW(make_rope_inv_freq(63, 10000.0, RopeScaling{}, 4096), Error);
  EXPECT_THROW(make_rope_inv_freq(0, 10000.0, RopeScaling{}, 4096), Error);
  EXPECT_THROW(make_rope_inv_freq(64, 0.0, RopeScaling{}, 4096), Error);
  RopeScaling s;
  s.type = "linear";
  s.factor = 0.0;
  EXPECT_THROW(make_rope_inv_freq(64, 10000.0, s, 4096), Error);
}

// HF: freqs = position.float() * inv_freq (in f32); emb = cat(freqs, freqs);
// out = x * cos(emb) * af + rotate_half(x) * sin(emb) * af, rotate_half(x) = cat(-x2, x1).
// Only the f32 angle is taken from atom's arithmetic; cos, sin and the rotation are in double.
std::vector<double> rope_ref(const std::vector<float>& x, const std::vector<int32_t>& pos,
                             int64_t n_heads, int64_t head_dim, int64_t rotary_dim,
                             const RopeTable& t) {
  std::vector<double> out(x.begin(), x.end());
  const int64_t half = rotary_dim / 2;
  for (size_t tok = 0; tok < pos.size(); ++tok) {
    for (int64_t h = 0; h < n_heads; ++h) {
      const size_t base = (tok * size_t(n_heads) + size_t(h)) * size_t(head_dim);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = float(pos[tok]) * t.inv_freq[size_t(i)];
        const double c = std::cos(double(angle)) * t.attention_factor;
        const double s = std::sin(double(angle)) * t.attention_factor;
        const double a = x[base + i];
        const double b = x[base + i + half];
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
    }
  }
  return out;
}

struct RopeCase {
  const char* type;
  int64_t n_tokens, n_heads, head_dim, rotary_dim;
};

void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << c.type << " tokens " << c.n_tokens << " heads " << c.n_heads << " head_dim " << c.head_dim
      << " rotary_dim " << c.rotary_dim;
}

class RopeNeoxTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeNeoxTest, MatchesReference) {
  const RopeCase c = GetParam();
  RopeScaling s;
  s.type = c.type;
  s.factor = 4.0;
  s.original_max_position_embeddings = 4096;
  const RopeTable t = make_rope_inv_freq(c.rotary_dim, 500000.0, s, 16384);
  std::vector<int32_t> pos(size_t(c.n_tokens));
  const int32_t interesting[] = {0, 1, 17, 54, 97, 4095, 100000, 131071};
  for (int64_t i = 0; i < c.n_tokens; ++i) pos[i] = interesting[i % 8] + int32_t(i / 8);
  const auto x = random_vector(c.n_tokens * c.n_heads * c.head_dim, 21, -2.0f, 2.0f);
  const auto ref = rope_ref(x, pos, c.n_heads, c.head_dim, c.rotary_dim, t);
  std::vector<float> got = x;
  rope_neox(got.data(), pos.data(), c.n_tokens, c.n_heads, c.head_dim, c.rotary_dim, t);
  EXPECT_TRUE(all_near(got, ref, 2e-6, 2e-6));
  // Dimensions past rotary_dim pass through bit for bit.
  for (int64_t r = 0; r < c.n_tokens * c.n_heads; ++r) {
    for (int64_t d = c.rotary_dim; d < c.head_dim; ++d) {
      ASSERT_EQ(got[r * c.head_dim + d], x[r * c.head_dim + d]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeNeoxTest,
    ::testing::Values(RopeCase{"default", 1, 1, 64, 64}, RopeCase{"default", 17, 3, 128, 128},
                      RopeCase{"llama3", 9, 4, 128, 128}, RopeCase{"yarn", 17, 2, 64, 64},
                      RopeCase{"linear", 3, 5, 80, 32}, RopeCase{"dynamic", 8, 2, 96, 48},
                      // many tokens: the threaded path
                      RopeCase{"yarn", 97, 8, 128, 128}),
    [](const auto& info) {
      return std::string(info.param.type) + "_t" + std::to_string(info.param.n_tokens) + "_h" +
             std::to_string(info.param.n_heads) + "_d" + std::to_string(info.param.head_dim) +
             "_r" + std::to_string(info.param.rotary_dim);
    });

TEST(RopeNeox, PositionZeroIsIdentityAndPairsKeepTheirNorm) {
  const RopeTable t = make_rope_inv_freq(64, 10000.0, RopeScaling{}, 4096);
  const auto x = random_vector(2 * 64, 5);
  std::vector<float> got = x;
  const int32_t pos[2] = {0, 1234};
  rope_neox(got.data(), pos, 2, 1, 64, 64, t);
  for (int64_t i = 0; i < 64; ++i) EXPECT_EQ(got[i], x[i]);
  for (int64_t i = 0; i < 32; ++i) {
    const double before = std::hypot(double(x[64 + i]), double(x[96 + i]));
    const double after = std::hypot(double(got[64 + i]), double(got[96 + i]));
    EXPECT_NEAR(after, before, 1e-6 * (1 + before));
  }
}

TEST(RopeNeox, RejectsMismatchedTable) {
  const RopeTable t = make_rope_inv_freq(32, 10000.0, RopeScaling{}, 4096);
  std::vector<float> x(64);
  const int32_t pos = 3;
  EXPECT_THROW(rope_neox(x.data(), &pos, 1, 1, 64, 64, t), Error);
  EXPECT_THROW(rope_neox(x.data(), &pos, 1, 1, 16, 32, t), Error);
}

}  // namespace
}  // namespace atom::cpu

// The tensor-parallel layout (models/tp_layout.h): every rank's attention is local (its q heads
// use only kv heads it holds), the shards cover each weight exactly (kv heads replicated when
// fewer than the ranks), and a decoder layer computed shard by shard and summed over the ranks
// (what the all-reduce does) equals the unsharded layer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "atom/core/error.h"
#include "atom/models/tp_layout.h"

namespace atom {
namespace {

ModelConfig shape(int64_t nh, int64_t nkv, int64_t head_dim = 8, int64_t hidden = 32,
                  int64_t inter = 48, int64_t vocab = 1000) {
  ModelConfig c;
  c.num_attention_heads = nh;
  c.num_key_value_heads = nkv;
  c.head_dim = head_dim;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.vocab_size = vocab;
  return c;
}

TEST(TpLayout, EveryRanksAttentionIsLocalAndTheShardsCoverEveryHead) {
  // (q heads, kv heads, tp): Llama-3.1-8B/70B, Qwen3-0.6B (16/8), Qwen2.5-0.5B-like (14/2),
  // kv heads fewer than the ranks (replicated).
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> cases = {
      {32, 8, 1}, {32, 8, 2}, {32, 8, 4}, {32, 8, 8}, {64, 8, 8}, {16, 8, 4},
      {14, 2, 2}, {32, 4, 8}, {16, 2, 8}, {8, 1, 4},  {64, 8, 16}};
  for (const auto& [nh, nkv, tp] : cases) {
    const ModelConfig c = shape(nh, nkv);
    std::map<int64_t, int> q_owner, kv_copies;
    for (int64_t r = 0; r < tp; ++r) {
      const TpLayout l = make_tp_layout(c, tp, r);
      EXPECT_EQ(l.num_q_heads * tp, nh);
      for (int64_t h = l.q_head_begin; h < l.q_head_begin + l.num_q_heads; ++h) {
        ++q_owner[h];
        const int64_t kv = l.kv_head_of(h);
        EXPECT_GE(kv, l.kv_head_begin) << nh << "/" << nkv << " tp " << tp << " rank " << r;
        EXPECT_LT(kv, l.kv_head_begin + l.num_kv_heads) << nh << "/" << nkv << " tp " << tp;
      }
      for (int64_t k = l.kv_head_begin; k < l.kv_head_begin + l.num_kv_heads; ++k) ++kv_copies[k];
    }
    EXPECT_EQ(int64_t(q_owner.size()), nh);
    for (const auto& [h, n] : q_owner) EXPECT_EQ(n, 1) << "q head " << h;
    EXPECT_EQ(int64_t(kv_copies.size()), nkv);
    for (const auto& [k, n] : kv_copies) EXPECT_EQ(n, std::max<int64_t>(1, tp / nkv));
  }
}

TEST(TpLayout, ImpossibleLayoutsAreClearErrors) {
  auto message = [](const ModelConfig& c, int64_t tp, int64_t rank = 0) -> std::string {
    try {
      (void)make_tp_layout(c, tp, rank);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(shape(14, 2), 4).find("14 attention heads"), std::string::npos);
  EXPECT_NE(message(shape(12, 3), 2).find("3 key-value heads"), std::string::npos);
  EXPECT_NE(message(shape(32, 8, 8, 32, 50), 4).find("50 intermediate"), std::string::npos);
  EXPECT_NE(message(shape(32, 8), 4, 4).find("rank 4 of 4"), std::string::npos);
  EXPECT_NE(message(shape(32, 8), 0).find("rank 0 of 0"), std::string::npos);
}

TEST(TpLayout, VocabularyIsPaddedNotRestricted) {
  const ModelConfig c = shape(32, 8, 8, 4, 48, 1000);  // 1000 % 3 != 0 and % 64 != 0
  std::vector<float> table(size_t(1000 * 4));
  for (size_t i = 0; i < table.size(); ++i) table[i] = float(i) + 1.0f;
  std::vector<float> joined;
  for (int64_t r = 0; r < 8; ++r) {
    const TpLayout l = make_tp_layout(c, 8, r);
    EXPECT_EQ(l.vocab_padded % (8 * TpLayout::kVocabAlign), 0);
    EXPECT_GE(l.vocab_padded, 1000);
    const std::vector<float> s = vocab_shard<float>(table, 4, l);
    ASSERT_EQ(int64_t(s.size()), l.vocab_rows * 4);
    joined.insert(joined.end(), s.begin(), s.end());
  }
  ASSERT_EQ(joined.size(), size_t(1024 * 4));
  for (size_t i = 0; i < joined.size(); ++i)
    EXPECT_EQ(joined[i], i < table.size() ? table[i] : 0.0f) << i;  // padded rows are zero
}

// --- a decoder layer, unsharded and shard by shard --------------------------------------------

std::vector<float> randn(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// y[o] = sum_i w[o, i] x[i]  (w: [out, in])
std::vector<float> matvec(const std::vector<float>& w, const std::vector<float>& x, int64_t out) {
  const int64_t in = int64_t(x.size());
  std::vector<float> y(size_t(out), 0.0f);
  for (int64_t o = 0; o < out; ++o) {
    double s = 0;
    for (int64_t i = 0; i < in; ++i) s += double(w[size_t(o * in + i)]) * x[size_t(i)];
    y[size_t(o)] = float(s);
  }
  return y;
}

// One decode token through attention (over `ctx` cached keys/values per kv head, given as
// [ctx, nkv, d] tensors) and the O projection, then a SiLU MLP on the attention output: the
// sum of both blocks' outputs (the two row-parallel results an all-reduce would sum).
struct Layer {
  int64_t nh, nkv, d, hidden, inter, ctx;
  std::vector<float> qkv, o, gate_up, down, k_cache, v_cache;
};

std::vector<float> layer_forward(const Layer& L, const std::vector<float>& x, int64_t nh,
                                 int64_t nkv, int64_t q_begin, int64_t kv_begin, int64_t inter,
                                 const std::vector<float>& qkv, const std::vector<float>& o,
                                 const std::vector<float>& gate_up,
                                 const std::vector<float>& down) {
  const int64_t d = L.d, group = L.nh / L.nkv;
  const std::vector<float> p = matvec(qkv, x, (nh + 2 * nkv) * d);  // [q | k | v] of this shard
  std::vector<float> attn(size_t(nh * d), 0.0f);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t kv = (q_begin + h) / group - kv_begin;  // local index of its kv head
    // Keys: the cache plus this token's own k.
    std::vector<double> scores;
    for (int64_t t = 0; t <= L.ctx; ++t) {
      double s = 0;
      for (int64_t i = 0; i < d; ++i) {
        const float k = t < L.ctx ? L.k_cache[size_t((t * L.nkv + kv_begin + kv) * d + i)]
                                  : p[size_t((nh + kv) * d + i)];
        s += double(p[size_t(h * d + i)]) * k;
      }
      scores.push_back(s / std::sqrt(double(d)));
    }
    const double mx = *std::max_element(scores.begin(), scores.end());
    double sum = 0;
    for (double& s : scores) sum += (s = std::exp(s - mx));
    for (int64_t t = 0; t <= L.ctx; ++t)
      for (int64_t i = 0; i < d; ++i) {
        const float v = t < L.ctx ? L.v_cache[size_t((t * L.nkv + kv_begin + kv) * d + i)]
                                  : p[size_t((nh + nkv + kv) * d + i)];
        attn[size_t(h * d + i)] += float(scores[size_t(t)] / sum * v);
      }
  }
  std::vector<float> y = matvec(o, attn, L.hidden);
  const std::vector<float> gu = matvec(gate_up, x, 2 * inter);
  std::vector<float> act(static_cast<size_t>(inter));
  for (int64_t i = 0; i < inter; ++i) {
    const float g = gu[size_t(i)];
    act[size_t(i)] = g / (1.0f + std::exp(-g)) * gu[size_t(inter + i)];
  }
  const std::vector<float> m = matvec(down, act, L.hidden);
  for (int64_t i = 0; i < L.hidden; ++i) y[size_t(i)] += m[size_t(i)];
  return y;
}

TEST(TpLayout, ShardedLayerSummedOverRanksEqualsTheFullLayer) {
  for (const auto& [nh, nkv, tp] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {8, 2, 2}, {8, 2, 4}, {8, 2, 8}, {8, 8, 4}, {4, 1, 4}, {8, 4, 1}}) {
    Layer L{nh, nkv, 8, 24, 16, 5, {}, {}, {}, {}, {}, {}};
    const int64_t d = L.d, H = L.hidden, I = L.inter;
    L.qkv = randn(size_t((nh + 2 * nkv) * d * H), 1, 0.3f);
    L.o = randn(size_t(H * nh * d), 2, 0.3f);
    L.gate_up = randn(size_t(2 * I * H), 3, 0.3f);
    L.down = randn(size_t(H * I), 4, 0.3f);
    L.k_cache = randn(size_t(L.ctx * nkv * d), 5, 1.0f);
    L.v_cache = randn(size_t(L.ctx * nkv * d), 6, 1.0f);
    const std::vector<float> x = randn(size_t(H), 7, 1.0f);
    const std::vector<float> full =
        layer_forward(L, x, nh, nkv, 0, 0, I, L.qkv, L.o, L.gate_up, L.down);

    ModelConfig c = shape(nh, nkv, d, H, I);
    std::vector<float> summed(size_t(H), 0.0f);
    for (int64_t r = 0; r < tp; ++r) {
      const TpLayout l = make_tp_layout(c, tp, r);
      const std::vector<float> qkv =
          slice_rows<float>(L.qkv, (nh + 2 * nkv) * d, H, l.qkv_rows());
      const std::vector<float> o = slice_cols<float>(L.o, H, nh * d, l.o_cols());
      const std::vector<float> gu = slice_rows<float>(L.gate_up, 2 * I, H, l.gate_up_rows());
      const std::vector<float> down = slice_cols<float>(L.down, H, I, l.down_cols());
      const std::vector<float> part =
          layer_forward(L, x, l.num_q_heads, l.num_kv_heads, l.q_head_begin, l.kv_head_begin,
                        l.inter_size, qkv, o, gu, down);
      for (int64_t i = 0; i < H; ++i) summed[size_t(i)] += part[size_t(i)];  // the all-reduce
    }
    for (int64_t i = 0; i < H; ++i)
      EXPECT_NEAR(summed[size_t(i)], full[size_t(i)], 1e-4 * (1.0 + std::abs(full[size_t(i)])))
          << nh << "/" << nkv << " tp " << tp << " element " << i;
  }
}

TEST(TpLayout, SlicesCheckTheirBounds) {
  const std::vector<float> m(12, 1.0f);
  EXPECT_THROW(slice_rows<float>(m, 3, 4, {{2, 2}}), Error);
  EXPECT_THROW(slice_cols<float>(m, 3, 4, {3, 2}), Error);
  EXPECT_THROW(slice_rows<float>(m, 4, 4, {{0, 1}}), Error);
  EXPECT_EQ(slice_cols<float>(m, 3, 4, {1, 2}).size(), 6u);
}

}  // namespace
}  // namespace atom

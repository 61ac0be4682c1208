// The fused qk_norm_rope_and_cache against the unfused sequence it replaces (rms_norm on q and k
// heads, rope_neox on q and k, reshape_and_cache), on awkward sizes: 1, 17 and 97 tokens, GQA
// groups 1/4/8, head_dim 64/128, full and partial rotary dims, block sizes 16/32, padding slots.
// The results must be equal bit for bit: q, k and both caches, untouched slots included.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/error.h"
#include "cpu/test_util.h"

namespace atom::cpu {
namespace {

using test::random_vector;

constexpr float kSentinel = 1e30f;  // fills cache slots nothing may write
constexpr int64_t kKvHeads = 2;
constexpr float kEps = 1e-6f;

// tokens, GQA group, head_dim, partial rotary, block size
using Shape = std::tuple<int64_t, int64_t, int64_t, bool, int64_t>;

struct Problem {
  int64_t tokens, heads, head_dim, rotary_dim;
  RopeTable rope;
  std::vector<float> q, k, v, q_weight, k_weight;  // q: [T, heads, hd]; k, v: [T, kKvHeads, hd]
  std::vector<int32_t> positions, slots;           // [T]
  int64_t num_blocks, block_size;

  static Problem make(const Shape& shape, uint32_t seed) {
    const auto [tokens, group, head_dim, partial, block_size] = shape;
    Problem p;
    p.tokens = tokens;
    p.heads = kKvHeads * group;
    p.head_dim = head_dim;
    p.block_size = block_size;
    // Partial rotary (as partial_rotary_factor) with yarn, so attention_factor != 1 as well.
    p.rotary_dim = partial ? head_dim / 2 : head_dim;
    RopeScaling scaling;
    if (partial) {
      scaling.type = "yarn";
      scaling.factor = 4.0;
      scaling.original_max_position_embeddings = 4096;
    }
    p.rope = make_rope_inv_freq(p.rotary_dim, 1e6, scaling, 32768);
    // Activations of a trained model's scale (q/k rows far from unit RMS), weights around 1.
    p.q = random_vector(tokens * p.heads * head_dim, seed, -8.0f, 8.0f);
    p.k = random_vector(tokens * kKvHeads * head_dim, seed + 1, -8.0f, 8.0f);
    p.v = random_vector(tokens * kKvHeads * head_dim, seed + 2);
    p.q_weight = random_vector(head_dim, seed + 3, 0.25f, 2.0f);
    p.k_weight = random_vector(head_dim, seed + 4, 0.25f, 2.0f);
    // Scattered positions (a batch mixes sequences) and shuffled physical slots from a pool
    // larger than needed; every fifth token is padding (-1).
    std::mt19937 rng(seed + 5);
    p.positions.resize(size_t(tokens));
    for (int32_t& pos : p.positions) pos = int32_t(rng() % 30000);
    p.num_blocks = tokens / block_size + 3;
    std::vector<int32_t> pool(size_t(p.num_blocks * block_size));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    p.slots.assign(pool.begin(), pool.begin() + tokens);
    for (int64_t t = 3; t < tokens; t += 5) p.slots[size_t(t)] = -1;
    return p;
  }

  int64_t cache_elems() const { return num_blocks * block_size * kKvHeads * head_dim; }
};

// Outputs of one path: q and k after the op, and the two caches.
struct Outputs {
  std::vector<float> q, k, cache_k, cache_v;

  explicit Outputs(const Problem& p)
      : q(p.q),
        k(p.k),
        cache_k(size_t(p.cache_elems()), kSentinel),
        cache_v(size_t(p.cache_elems()), kSentinel) {}
  KvCacheView view(const Problem& p) {
    return KvCacheView{cache_k.data(), cache_v.data(), p.num_blocks,
                       p.block_size,   kKvHeads,       p.head_dim};
  }
};

Outputs run_unfused(const Problem& p) {
  Outputs o(p);
  const int64_t T = p.tokens, hd = p.head_dim;
  rms_norm(o.q.data(), p.q_weight.data(), T * p.heads, hd, kEps, o.q.data());
  rms_norm(o.k.data(), p.k_weight.data(), T * kKvHeads, hd, kEps, o.k.data());
  rope_neox(o.q.data(), p.positions.data(), T, p.heads, hd, p.rotary_dim, p.rope);
  rope_neox(o.k.data(), p.positions.data(), T, kKvHeads, hd, p.rotary_dim, p.rope);
  reshape_and_cache(o.k.data(), p.v.data(), p.slots.data(), T, o.view(p));
  return o;
}

Outputs run_fused(const Problem& p) {
  Outputs o(p);
  const QkNormRopeArgs args{p.q_weight.data(), p.k_weight.data(), kEps, p.rotary_dim, &p.rope};
  qk_norm_rope_and_cache(o.q.data(), o.k.data(), p.v.data(), p.positions.data(), p.slots.data(),
                         p.tokens, p.heads, args, o.view(p));
  return o;
}

// Bitwise equality (NaN-safe, -0 != +0), reporting the first differing element.
::testing::AssertionResult bits_equal(const std::vector<float>& got,
                                      const std::vector<float>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "[" << i << "] " << got[i] << " vs " << want[i];
  }
  return ::testing::AssertionSuccess();
}

class FusedQkNormRope : public ::testing::TestWithParam<Shape> {};

TEST_P(FusedQkNormRope, EqualsUnfusedBitForBit) {
  const Problem p = Problem::make(GetParam(), 1234);
  const Outputs want = run_unfused(p);
  // The reference really did something: q and k moved, some slots were written.
  ASSERT_FALSE(bits_equal(want.q, p.q));
  ASSERT_FALSE(bits_equal(want.k, p.k));

  const Outputs got = run_fused(p);
  EXPECT_TRUE(bits_equal(got.q, want.q)) << "q";
  EXPECT_TRUE(bits_equal(got.k, want.k)) << "k";
  EXPECT_TRUE(bits_equal(got.cache_k, want.cache_k)) << "cache k";
  EXPECT_TRUE(bits_equal(got.cache_v, want.cache_v)) << "cache v";

  // Every token with a slot is in the cache as (normed, rotated) k and raw v; the rest of the
  // pool, padding tokens' slots included, still holds the sentinel.
  const int64_t row = kKvHeads * p.head_dim;
  std::vector<bool> written(size_t(p.num_blocks * p.block_size), false);
  for (int64_t t = 0; t < p.tokens; ++t) {
    const int32_t s = p.slots[size_t(t)];
    if (s < 0) continue;
    written[size_t(s)] = true;
    EXPECT_EQ(0, std::memcmp(got.cache_k.data() + s * row, got.k.data() + t * row,
                             size_t(row) * sizeof(float)))
        << "token " << t;
    EXPECT_EQ(0, std::memcmp(got.cache_v.data() + s * row, p.v.data() + t * row,
                             size_t(row) * sizeof(float)))
        << "token " << t;
  }
  for (size_t s = 0; s < written.size(); ++s) {
    if (written[s]) continue;
    for (int64_t i = 0; i < row; ++i) {
      ASSERT_EQ(got.cache_k[s * size_t(row) + size_t(i)], kSentinel) << "slot " << s;
      ASSERT_EQ(got.cache_v[s * size_t(row) + size_t(i)], kSentinel) << "slot " << s;
    }
  }
}

TEST_P(FusedQkNormRope, SameOnOneThread) {
  // Tokens are independent: the thread count must not change a bit.
  const Problem p = Problem::make(GetParam(), 99);
  const Outputs many = run_fused(p);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Outputs one = run_fused(p);
  omp_set_num_threads(saved);
  EXPECT_TRUE(bits_equal(one.q, many.q));
  EXPECT_TRUE(bits_equal(one.k, many.k));
  EXPECT_TRUE(bits_equal(one.cache_k, many.cache_k));
  EXPECT_TRUE(bits_equal(one.cache_v, many.cache_v));
}

std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  const auto [tokens, group, head_dim, partial, block_size] = info.param;
  return "t" + std::to_string(tokens) + "_gqa" + std::to_string(group) + "_hd" +
         std::to_string(head_dim) + (partial ? "_partial" : "_full") + "_bs" +
         std::to_string(block_size);
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedQkNormRope,
                         ::testing::Combine(::testing::Values(1, 17, 97),
                                            ::testing::Values(1, 4, 8), ::testing::Values(64, 128),
                                            ::testing::Bool(), ::testing::Values(16, 32)),
                         shape_name);

TEST(FusedQkNormRopeErrors, RejectsBadInput) {
  Problem p = Problem::make(Shape{4, 2, 64, false, 16}, 7);
  auto code_of = [&](auto&& edit) {
    Problem bad = p;
    Outputs o(bad);
    QkNormRopeArgs args{bad.q_weight.data(), bad.k_weight.data(), kEps, bad.rotary_dim, &bad.rope};
    KvCacheView cache = o.view(bad);
    edit(bad, args, cache);
    try {
      qk_norm_rope_and_cache(o.q.data(), o.k.data(), bad.v.data(), bad.positions.data(),
                             bad.slots.data(), bad.tokens, bad.heads, args, cache);
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kInternal;  // accepted
  };
  EXPECT_EQ(code_of([](Problem&, QkNormRopeArgs&, KvCacheView&) {}), ErrorCode::kInternal);
  EXPECT_EQ(code_of([](Problem& b, QkNormRopeArgs&, KvCacheView&) {
              b.slots[1] = int32_t(b.num_blocks * b.block_size);
            }),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(code_of([](Problem& b, QkNormRopeArgs&, KvCacheView&) { b.slots[2] = -2; }),
            ErrorCode::kOutOfRange);
  EXPECT_EQ(code_of([](Problem&, QkNormRopeArgs& a, KvCacheView&) { a.rotary_dim = 31; }),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([](Problem&, QkNormRopeArgs& a, KvCacheView&) { a.rotary_dim = 32; }),
            ErrorCode::kInvalidArgument);  // the table has 32 frequencies, not 16
  EXPECT_EQ(code_of([](Problem&, QkNormRopeArgs& a, KvCacheView&) { a.k_weight = nullptr; }),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of([](Problem&, QkNormRopeArgs&, KvCacheView& c) { c.v = nullptr; }),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace atom::cpu

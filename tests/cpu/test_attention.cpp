// reshape_and_cache + paged_attention against contiguous causal attention computed in double,
// over awkward block sizes, lengths, GQA ratios and batch mixes, with shuffled physical blocks.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/ops.h"
#include "atom/core/error.h"
#include "cpu/test_util.h"

namespace atom::cpu {
namespace {

using test::all_near;
using test::random_vector;

constexpr float kSentinel = 1e30f;  // fills cache slots nothing may write

// One sequence of a batch: `cached` tokens already in the cache, `q_len` new tokens this step.
struct SeqSpec {
  int64_t cached;
  int64_t q_len;
};

struct AttnCase {
  std::string name;
  int64_t block_size;
  int64_t num_kv_heads;
  int64_t group;  // query heads per kv head
  int64_t head_dim;
  std::vector<SeqSpec> seqs;
  int threads;  // 0: leave OpenMP's default
};

void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

// Contiguous causal attention for one sequence, in double:
//   q: [q_len, H, D]; k, v: [seq_len, Hkv, D] -> out: [q_len, H, D]
void attention_ref(const float* q, const float* k, const float* v, int64_t q_len, int64_t seq_len,
                   int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double scale,
                   double* out) {
  const int64_t group = num_heads / num_kv_heads;
  std::vector<double> w(static_cast<size_t>(seq_len));
  for (int64_t j = 0; j < q_len; ++j) {
    const int64_t pos = seq_len - q_len + j;
    for (int64_t h = 0; h < num_heads; ++h) {
      const int64_t kh = h / group;
      const float* qv = q + (j * num_heads + h) * head_dim;
      double mx = -1e300;
      for (int64_t p = 0; p <= pos; ++p) {
        const float* kv = k + (p * num_kv_heads + kh) * head_dim;
        double s = 0.0;
        for (int64_t d = 0; d < head_dim; ++d) s += double(qv[d]) * kv[d];
        w[p] = s * scale;
        mx = std::max(mx, w[p]);
      }
      double sum = 0.0;
      for (int64_t p = 0; p <= pos; ++p) sum += (w[p] = std::exp(w[p] - mx));
      double* o = out + (j * num_heads + h) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) o[d] = 0.0;
      for (int64_t p = 0; p <= pos; ++p) {
        const float* vv = v + (p * num_kv_heads + kh) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) o[d] += w[p] / sum * vv[d];
      }
    }
  }
}

// Runs one batch through the paged path and the contiguous reference.
void run_case(const AttnCase& c) {
  const int64_t num_heads = c.num_kv_heads * c.group;
  const int64_t hd = c.head_dim;
  const int64_t bs = c.block_size;
  const int64_t row = c.num_kv_heads * hd;  // one token's K, all kv heads
  const int64_t n_seqs = int64_t(c.seqs.size());
  std::mt19937 rng(uint32_t(std::hash<std::string>{}(c.name)));

  // Blocks per sequence, plus spares that must stay untouched, handed out in shuffled order.
  int64_t max_blocks = 1;
  int64_t total_blocks = 3;
  for (const SeqSpec& s : c.seqs) {
    const int64_t nb = (s.cached + s.q_len + bs - 1) / bs;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
  }
  std::vector<int32_t> physical(static_cast<size_t>(total_blocks));
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  std::vector<int32_t> block_tables(size_t(n_seqs * max_blocks), -7);  // unused entries: junk
  size_t next = 0;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t nb = (c.seqs[s].cached + c.seqs[s].q_len + bs - 1) / bs;
    for (int64_t b = 0; b < nb; ++b) block_tables[s * max_blocks + b] = physical[next++];
  }

  std::vector<float> k_cache(size_t(total_blocks * bs * row), kSentinel);
  std::vector<float> v_cache(size_t(total_blocks * bs * row), kSentinel);
  const KvCacheView cache{k_cache.data(), v_cache.data(), total_blocks, bs, c.num_kv_heads, hd};
  auto slot_of = [&](int64_t s, int64_t p) {
    return int32_t(block_tables[s * max_blocks + p / bs] * bs + p % bs);
  };

  // Full K/V of every sequence, contiguous: [seq_len, Hkv, D].
  std::vector<std::vector<float>> k_full, v_full;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t len = c.seqs[s].cached + c.seqs[s].q_len;
    k_full.push_back(random_vector(len * row, uint32_t(rng())));
    v_full.push_back(random_vector(len * row, uint32_t(rng())));
  }

  // Earlier steps: write each cached prefix, one sequence at a time.
  for (int64_t s = 0; s < n_seqs; ++s) {
    std::vector<int32_t> slots;
    for (int64_t p = 0; p < c.seqs[s].cached; ++p) slots.push_back(slot_of(s, p));
    reshape_and_cache(k_full[s].data(), v_full[s].data(), slots.data(), int64_t(slots.size()),
                      cache);
  }

  // This step: the new tokens of all sequences in one flat batch, with a padding token
  // (slot -1, junk K/V) after each sequence's tokens.
  std::vector<int32_t> slots, cu_seqlens{0}, seq_lens;
  std::vector<float> k_new, v_new;
  std::vector<int64_t> first_row;
  int64_t n_tokens = 0;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const SeqSpec& sp = c.seqs[s];
    for (int64_t j = 0; j < sp.q_len; ++j) {
      const int64_t p = sp.cached + j;
      slots.push_back(slot_of(s, p));
      k_new.insert(k_new.end(), k_full[s].begin() + p * row, k_full[s].begin() + (p + 1) * row);
      v_new.insert(v_new.end(), v_full[s].begin() + p * row, v_full[s].begin() + (p + 1) * row);
    }
    slots.push_back(-1);
    k_new.insert(k_new.end(), size_t(row), -kSentinel);
    v_new.insert(v_new.end(), size_t(row), -kSentinel);
    first_row.push_back(n_tokens);
    n_tokens += sp.q_len;
    cu_seqlens.push_back(int32_t(n_tokens));
    seq_lens.push_back(int32_t(sp.cached + sp.q_len));
  }
  reshape_and_cache(k_new.data(), v_new.data(), slots.data(), int64_t(slots.size()), cache);

  // Every slot of an owned position holds its K/V; every other slot is untouched.
  std::vector<char> owned(size_t(total_blocks * bs), 0);
  for (int64_t s = 0; s < n_seqs; ++s) {
    for (int64_t p = 0; p < seq_lens[s]; ++p) {
      const int32_t slot = slot_of(s, p);
      owned[size_t(slot)] = 1;
      ASSERT_TRUE(std::equal(k_cache.begin() + slot * row, k_cache.begin() + (slot + 1) * row,
                             k_full[s].begin() + p * row));
      ASSERT_TRUE(std::equal(v_cache.begin() + slot * row, v_cache.begin() + (slot + 1) * row,
                             v_full[s].begin() + p * row));
    }
  }
  for (int64_t slot = 0; slot < total_blocks * bs; ++slot) {
    if (owned[size_t(slot)]) continue;
    ASSERT_EQ(k_cache[size_t(slot * row)], kSentinel) << "slot " << slot << " was written";
    ASSERT_EQ(v_cache[size_t(slot * row)], kSentinel) << "slot " << slot << " was written";
  }

  const auto q = random_vector(n_tokens * num_heads * hd, uint32_t(rng()));
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> ref(size_t(n_tokens * num_heads * hd));
  for (int64_t s = 0; s < n_seqs; ++s) {
    attention_ref(q.data() + first_row[s] * num_heads * hd, k_full[s].data(), v_full[s].data(),
                  c.seqs[s].q_len, seq_lens[s], num_heads, c.num_kv_heads, hd, scale,
                  ref.data() + first_row[s] * num_heads * hd);
  }

  const AttentionBatch batch{cu_seqlens.data(), seq_lens.data(), block_tables.data(), n_seqs,
                             max_blocks};
  std::vector<float> out(size_t(n_tokens * num_heads * hd), std::nanf(""));
  const int saved_threads = omp_get_max_threads();
  if (c.threads > 0) omp_set_num_threads(c.threads);
  paged_attention(q.data(), num_heads, cache, batch, float(scale), out.data());
  omp_set_num_threads(saved_threads);
  EXPECT_TRUE(all_near(out, ref, 2e-6, 2e-5));

  // A second call reuses the warm buffers and must give the same bits.
  std::vector<float> again(out.size());
  if (c.threads > 0) omp_set_num_threads(c.threads);
  paged_attention(q.data(), num_heads, cache, batch, float(scale), again.data());
  omp_set_num_threads(saved_threads);
  EXPECT_EQ(again, out);
}

class PagedAttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(PagedAttentionTest, MatchesContiguousReference) { run_case(GetParam()); }

std::vector<AttnCase> make_cases() {
  std::vector<AttnCase> cases;
  // Prefill from scratch, prefill after a cached prefix, pure decode, and a mix.
  const std::vector<std::pair<std::string, std::vector<SeqSpec>>> batches = {
      {"prefill", {{0, 1}, {0, 17}, {0, 54}, {0, 97}}},
      {"prefix_prefill", {{16, 1}, {37, 17}, {1, 53}, {80, 17}}},
      {"decode", {{0, 1}, {16, 1}, {53, 1}, {96, 1}}},
      // q_len 3 and 4: a few rows per sequence (speculative decode) take the decode path.
      {"mixed", {{96, 1}, {0, 54}, {37, 17}, {0, 1}, {53, 1}, {1, 16}, {0, 3}, {20, 4}}},
  };
  for (const int64_t bs : {1, 16, 32}) {
    for (const int64_t group : {1, 3, 4}) {
      for (const auto& [name, seqs] : batches) {
        const int64_t hd = group == 3 ? 64 : (group == 4 ? 128 : 40);
        cases.push_back({name + "_bs" + std::to_string(bs) + "_g" + std::to_string(group) + "_d" +
                             std::to_string(hd),
                         bs, 2, group, hd, seqs, 0});
      }
    }
  }
  // One long sequence with few kv heads on many threads: the keys are split and merged.
  for (const int threads : {1, 2, 8}) {
    for (const int64_t hd : {64, 128, 24}) {
      cases.push_back({"split_decode_t" + std::to_string(threads) + "_d" + std::to_string(hd),
                       16,
                       1,
                       4,
                       hd,
                       {{1999, 1}},
                       threads});
      cases.push_back({"split_chunk_t" + std::to_string(threads) + "_d" + std::to_string(hd),
                       32,
                       1,
                       3,
                       hd,
                       {{1500, 5}},
                       threads});
    }
  }
  cases.push_back({"split_batch_t8", 16, 2, 4, 128, {{700, 1}, {0, 1}, {1030, 1}, {5, 3}}, 8});
  // A long prompt with block size 1: every key lookup crosses a block.
  cases.push_back({"long_prefill_bs1", 1, 2, 2, 64, {{0, 300}}, 0});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, PagedAttentionTest, ::testing::ValuesIn(make_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(PagedAttention, SingleKeyCopiesValue) {
  // One token of context: softmax over one key is 1, so the output is V whatever q is.
  const std::vector<float> k = {1.0f, 2.0f}, v = {3.0f, -4.0f};
  std::vector<float> k_cache(2), v_cache(2);
  const KvCacheView cache{k_cache.data(), v_cache.data(), 1, 1, 1, 2};
  const int32_t slot = 0;
  reshape_and_cache(k.data(), v.data(), &slot, 1, cache);
  const std::vector<float> q = {100.0f, -50.0f, 0.5f, 0.25f};  // two query heads
  const int32_t cu[2] = {0, 1}, lens[1] = {1}, table[1] = {0};
  std::vector<float> out(4);
  paged_attention(q.data(), 2, cache, {cu, lens, table, 1, 1}, 1.0f, out.data());
  EXPECT_EQ(out, (std::vector<float>{3.0f, -4.0f, 3.0f, -4.0f}));
}

TEST(PagedAttention, EmptyBatchIsANoOp) {
  float out = 7.0f;
  const KvCacheView cache{&out, &out, 1, 1, 1, 1};
  paged_attention(nullptr, 1, cache, AttentionBatch{}, 1.0f, &out);
  EXPECT_EQ(out, 7.0f);
}

TEST(PagedAttention, RejectsBadBatches) {
  std::vector<float> kc(64), vc(64), q(16), out(16);
  const KvCacheView cache{kc.data(), vc.data(), 4, 4, 2, 2};  // 4 blocks of 4 tokens
  const int32_t cu[2] = {0, 2};
  const int32_t table[2] = {1, 3};
  auto code_of = [&](int64_t heads, const AttentionBatch& b) {
    try {
      paged_attention(q.data(), heads, cache, b, 1.0f, out.data());
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kInternal;  // accepted
  };
  const int32_t ok_len[1] = {5};
  EXPECT_EQ(code_of(3, {cu, ok_len, table, 1, 2}), ErrorCode::kInvalidArgument);  // 3 % 2
  const int32_t short_len[1] = {1};  // 2 new tokens in a context of 1
  EXPECT_EQ(code_of(2, {cu, short_len, table, 1, 2}), ErrorCode::kInvalidArgument);
  const int32_t long_len[1] = {9};  // needs 3 blocks, the table holds 2
  EXPECT_EQ(code_of(2, {cu, long_len, table, 1, 2}), ErrorCode::kOutOfRange);
  const int32_t bad_table[2] = {1, 4};  // block 4 of 4
  EXPECT_EQ(code_of(2, {cu, ok_len, bad_table, 1, 2}), ErrorCode::kOutOfRange);
}

TEST(ReshapeAndCache, RejectsSlotsOutsideTheCache) {
  std::vector<float> kc(8, 0.0f), vc(8, 0.0f), k(2, 1.0f), v(2, 1.0f);
  const KvCacheView cache{kc.data(), vc.data(), 2, 2, 1, 2};  // 4 slots
  for (const int32_t slot : {4, -2}) {
    try {
      reshape_and_cache(k.data(), v.data(), &slot, 1, cache);
      FAIL() << "slot " << slot << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
    }
  }
  EXPECT_EQ(kc, std::vector<float>(8, 0.0f));
}

}  // namespace
}  // namespace atom::cpu

// engine/block_manager: the chained xxHash64 block hash, allocation, LRU free list, prefix
// caching (hits, refcounted sharing, collision guard) and growth (ATOM test_block_manager).
#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <set>
#include <vector>

#include "atom/core/error.h"
#include "atom/engine/block_manager.h"
#include "engine_test_util.h"

namespace atom {
namespace {

using test::iota_tokens;
using test::kBlockSize;
using test::kNumBlocks;
using test::make_seq;

// The reference: the bytes ATOM feeds xxHash64 (numpy int64 array after an optional u64 prefix),
// written out by hand.
uint64_t reference_hash(const std::vector<int32_t>& tokens, std::optional<uint64_t> prefix) {
  std::vector<unsigned char> bytes;
  auto put = [&bytes](uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes.push_back((unsigned char)((v >> (8 * i)) & 0xff));
  };
  if (prefix) put(*prefix);
  for (int32_t t : tokens) put(uint64_t(int64_t(t)));
  return XXH64(bytes.data(), bytes.size(), 0);
}

// Marks every token computed and registers the full blocks, as a finished prefill step would.
void compute_all(BlockManager& bm, Sequence& seq) {
  seq.num_computed_tokens = seq.num_tokens();
  bm.cache_full_blocks(seq);
}

// All blocks are either free (ref 0, once in the free list) or used.
void expect_consistent(const BlockManager& bm) {
  std::vector<int32_t> free_ids = bm.free_block_ids();
  std::set<int32_t> unique(free_ids.begin(), free_ids.end());
  EXPECT_EQ(unique.size(), free_ids.size()) << "a block is twice in the free list";
  EXPECT_EQ(int64_t(free_ids.size()), bm.num_free_blocks());
  for (int32_t id = 0; id < bm.num_blocks(); ++id) {
    EXPECT_EQ(bm.is_free(id), unique.contains(id));
    EXPECT_EQ(bm.is_free(id), bm.ref_count(id) == 0) << "block " << id;
  }
}

TEST(BlockHash, DeterministicAndMatchesXxh64ByHand) {
  const std::vector<int32_t> a = {1, 2, 3, 4};
  const std::vector<int32_t> b = {1, 2, 3, 5};
  const uint64_t ha = BlockManager::compute_hash(a, std::nullopt);
  EXPECT_EQ(ha, BlockManager::compute_hash(a, std::nullopt));
  EXPECT_EQ(ha, reference_hash(a, std::nullopt));
  EXPECT_NE(ha, BlockManager::compute_hash(b, std::nullopt));
  // Tokens are hashed as int64: a negative id sign-extends, so it differs from its u32 bits.
  const std::vector<int32_t> neg = {-1, 0, 7, 100000};
  EXPECT_EQ(BlockManager::compute_hash(neg, std::nullopt), reference_hash(neg, std::nullopt));
  // Not the same as hashing the raw int32 bytes.
  EXPECT_NE(ha, XXH64(a.data(), a.size() * sizeof(int32_t), 0));
}

TEST(BlockHash, PrefixChainsTheHash) {
  const std::vector<int32_t> first = {1, 2, 3, 4};
  const std::vector<int32_t> second = {5, 6, 7, 8};
  const uint64_t h0 = BlockManager::compute_hash(first, std::nullopt);
  const uint64_t h1 = BlockManager::compute_hash(second, h0);
  EXPECT_EQ(h1, reference_hash(second, h0));
  EXPECT_NE(h1, BlockManager::compute_hash(second, std::nullopt));
  EXPECT_NE(h1, BlockManager::compute_hash(second, h0 + 1));
  // The prefix enters as 8 little-endian bytes in front of the tokens.
  std::vector<unsigned char> bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back((unsigned char)(h0 >> (8 * i)));
  for (int32_t t : second)
    for (int i = 0; i < 8; ++i) bytes.push_back((unsigned char)(uint64_t(int64_t(t)) >> (8 * i)));
  EXPECT_EQ(h1, XXH64(bytes.data(), bytes.size(), 0));
}

TEST(BlockManager, CanAllocate) {
  BlockManager bm(kNumBlocks, kBlockSize, false);
  EXPECT_TRUE(bm.can_allocate(*make_seq(iota_tokens(4))));
  EXPECT_TRUE(bm.can_allocate(*make_seq(iota_tokens(5))));  // 2 blocks
  BlockManager one(1, kBlockSize, false);
  auto holder = make_seq(iota_tokens(4));
  one.allocate(*holder);
  EXPECT_FALSE(one.can_allocate(*make_seq(iota_tokens(1))));
  BlockManager two(2, kBlockSize, false);
  EXPECT_TRUE(two.can_allocate(*make_seq(iota_tokens(5))));
  EXPECT_FALSE(two.can_allocate(*make_seq(iota_tokens(9))));  // 3 blocks
}

TEST(BlockManager, AllocateFillsTheTable) {
  BlockManager bm(kNumBlocks, kBlockSize, false);
  auto a = make_seq(iota_tokens(4));
  bm.allocate(*a);
  EXPECT_EQ(a->block_table.size(), 1u);
  auto b = make_seq(iota_tokens(9));
  bm.allocate(*b);
  EXPECT_EQ(b->block_table.size(), 3u);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks - 4);
  EXPECT_EQ(a->num_cached_tokens, 0);
  EXPECT_EQ(b->num_computed_tokens, 0);
  // Fresh pool: blocks come from the head in id order, each with one owner.
  EXPECT_EQ(a->block_table, (std::vector<int32_t>{0}));
  EXPECT_EQ(b->block_table, (std::vector<int32_t>{1, 2, 3}));
  for (int32_t id : b->block_table) EXPECT_EQ(bm.ref_count(id), 1);
  EXPECT_DOUBLE_EQ(bm.usage(), 0.4);
  expect_consistent(bm);
}

TEST(BlockManager, DeallocateRestoresCapacity) {
  BlockManager bm(kNumBlocks, kBlockSize, false);
  std::vector<SequencePtr> seqs;
  for (int i = 0; i < kNumBlocks; ++i) {
    seqs.push_back(make_seq(iota_tokens(4)));
    ASSERT_TRUE(bm.can_allocate(*seqs.back()));
    bm.allocate(*seqs.back());
  }
  auto extra = make_seq(iota_tokens(4));
  EXPECT_FALSE(bm.can_allocate(*extra));
  EXPECT_EQ(bm.num_free_blocks(), 0);
  seqs[3]->num_cached_tokens = 4;  // cleared by deallocate
  bm.deallocate(*seqs[3]);
  EXPECT_TRUE(seqs[3]->block_table.empty());
  EXPECT_EQ(seqs[3]->num_cached_tokens, 0);
  EXPECT_TRUE(bm.can_allocate(*extra));
  for (auto& s : seqs) bm.deallocate(*s);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks);
  expect_consistent(bm);
}

TEST(PrefixCache, HitAfterFreeReusesTheBlock) {
  BlockManager bm(kNumBlocks, kBlockSize, true);
  auto a = make_seq({1, 3, 5, 7, 9});
  bm.allocate(*a);
  const int32_t first_block = a->block_table[0];
  compute_all(bm, *a);
  ASSERT_EQ(a->block_hashes.size(), 1u);  // the partial second block is not hashed
  EXPECT_EQ(a->block_hashes[0],
            BlockManager::compute_hash(std::vector<int32_t>{1, 3, 5, 7}, std::nullopt));
  EXPECT_EQ(bm.block_hash(first_block), a->block_hashes[0]);
  bm.deallocate(*a);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks);

  auto b = make_seq({1, 3, 5, 7, 11, 12});
  EXPECT_EQ(bm.peek_cached_tokens(*b), 4);
  bm.allocate(*b);
  EXPECT_EQ(b->num_cached_tokens, 4);
  EXPECT_EQ(b->num_computed_tokens, 4);
  EXPECT_EQ(b->block_table[0], first_block);
  ASSERT_EQ(b->block_hashes.size(), 1u);
  EXPECT_EQ(b->block_hashes[0], *bm.block_hash(first_block));

  auto c = make_seq({2, 3, 5, 7, 9});
  EXPECT_EQ(bm.peek_cached_tokens(*c), 0);
  bm.allocate(*c);
  EXPECT_EQ(c->num_cached_tokens, 0);
  expect_consistent(bm);
}

TEST(PrefixCache, OnlyComputedBlocksAreRegistered) {
  BlockManager bm(kNumBlocks, kBlockSize, true);
  auto a = make_seq(iota_tokens(9));
  bm.allocate(*a);
  bm.cache_full_blocks(*a);  // nothing computed yet
  EXPECT_TRUE(a->block_hashes.empty());
  EXPECT_EQ(bm.num_registered_hashes(), 0);
  a->num_computed_tokens = 6;  // a chunk that ends inside block 1
  bm.cache_full_blocks(*a);
  EXPECT_EQ(a->block_hashes.size(), 1u);
  a->num_computed_tokens = 9;
  bm.cache_full_blocks(*a);
  ASSERT_EQ(a->block_hashes.size(), 2u);
  EXPECT_EQ(a->block_hashes[1], BlockManager::compute_hash(a->block_tokens(1), a->block_hashes[0]));
  // An appended token (a placeholder until computed) fills block 2 only once it is computed.
  for (int32_t t : {50, 51, 52}) a->append_token(t);
  bm.may_append(*a);
  bm.cache_full_blocks(*a);
  EXPECT_EQ(a->block_hashes.size(), 2u);
  a->num_computed_tokens = 12;
  bm.cache_full_blocks(*a);
  ASSERT_EQ(a->block_hashes.size(), 3u);
  EXPECT_EQ(a->block_hashes[2],
            BlockManager::compute_hash(std::vector<int32_t>{18, 50, 51, 52}, a->block_hashes[1]));
  EXPECT_EQ(bm.num_registered_hashes(), 3);
}

TEST(PrefixCache, NeverTheWholeSequence) {
  BlockManager bm(kNumBlocks, kBlockSize, true);
  auto a = make_seq(iota_tokens(8));
  bm.allocate(*a);
  compute_all(bm, *a);
  EXPECT_EQ(a->block_hashes.size(), 2u);
  // Same 8 tokens: the last block must be computed again to get logits.
  auto same = make_seq(iota_tokens(8));
  EXPECT_EQ(bm.peek_cached_tokens(*same), 4);
  auto longer = make_seq(iota_tokens(9));
  EXPECT_EQ(bm.peek_cached_tokens(*longer), 8);
  bm.allocate(*same);
  EXPECT_EQ(same->num_cached_tokens, 4);
  EXPECT_EQ(same->block_table[0], a->block_table[0]);
  EXPECT_NE(same->block_table[1], a->block_table[1]);
}

TEST(PrefixCache, SharedBlockSurvivesOneOwnerWithoutDoubleFree) {
  BlockManager bm(kNumBlocks, kBlockSize, true);
  auto a = make_seq({1, 2, 3, 4, 5, 6});
  bm.allocate(*a);
  compute_all(bm, *a);
  auto b = make_seq({1, 2, 3, 4, 7});
  bm.allocate(*b);
  const int32_t shared = a->block_table[0];
  EXPECT_EQ(b->block_table[0], shared);
  EXPECT_EQ(bm.ref_count(shared), 2);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks - 3);
  bm.deallocate(*a);
  EXPECT_EQ(bm.ref_count(shared), 1);
  EXPECT_FALSE(bm.is_free(shared));
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks - 2);
  // b still hits through its own use: a third request shares it too.
  auto c = make_seq({1, 2, 3, 4, 8});
  EXPECT_EQ(bm.peek_cached_tokens(*c), 4);
  bm.deallocate(*b);
  EXPECT_EQ(bm.ref_count(shared), 0);
  EXPECT_TRUE(bm.is_free(shared));
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks);
  expect_consistent(bm);
  // Freeing an already-freed (empty) table is a no-op, not a double free.
  bm.deallocate(*b);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks);
  expect_consistent(bm);
}

TEST(PrefixCache, CanAllocateCountsHitsOnBlocksInUse) {
  BlockManager bm(3, kBlockSize, true);
  auto a = make_seq(iota_tokens(8));
  bm.allocate(*a);
  compute_all(bm, *a);
  EXPECT_EQ(bm.num_free_blocks(), 1);
  std::vector<int32_t> prompt = iota_tokens(4);
  for (int32_t t : {90, 91, 92, 93}) prompt.push_back(t);
  auto b = make_seq(prompt);  // 2 blocks, the first one in use by a
  EXPECT_TRUE(bm.can_allocate(*b));
  bm.allocate(*b);
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_EQ(b->num_cached_tokens, 4);

  BlockManager off(3, kBlockSize, false);
  auto a2 = make_seq(iota_tokens(8));
  off.allocate(*a2);
  compute_all(off, *a2);
  EXPECT_EQ(off.num_registered_hashes(), 0);  // no registration with caching off
  EXPECT_EQ(off.peek_cached_tokens(*make_seq(prompt)), 0);
  EXPECT_FALSE(off.can_allocate(*make_seq(prompt)));
}

TEST(PrefixCache, HitOnAFreeBlockTakesItOutOfTheFreeList) {
  BlockManager bm(2, kBlockSize, true);
  auto a = make_seq({1, 2, 3, 4, 5});
  bm.allocate(*a);
  compute_all(bm, *a);
  const int32_t cached = a->block_table[0];
  bm.deallocate(*a);
  auto b = make_seq({1, 2, 3, 4, 6, 7, 8, 9});
  EXPECT_TRUE(bm.can_allocate(*b));  // the hit block is free: it counts against the pool
  bm.allocate(*b);
  EXPECT_EQ(b->block_table[0], cached);
  EXPECT_EQ(b->num_cached_tokens, 4);
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_FALSE(bm.is_free(cached));
  expect_consistent(bm);
}

TEST(PrefixCache, LruEvictionOrder) {
  BlockManager bm(6, kBlockSize, true);
  auto a = make_seq({10, 11, 12, 13, 14});
  auto b = make_seq({20, 21, 22, 23, 24});
  auto c = make_seq({30, 31, 32, 33, 34});
  for (auto& s : {a, b, c}) {
    bm.allocate(*s);
    compute_all(bm, *s);
  }
  EXPECT_EQ(a->block_table, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b->block_table, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(c->block_table, (std::vector<int32_t>{4, 5}));
  // Freed in the order b, c, a, each table in reverse: the tail block goes first.
  bm.deallocate(*b);
  bm.deallocate(*c);
  bm.deallocate(*a);
  EXPECT_EQ(bm.free_block_ids(), (std::vector<int32_t>{3, 2, 5, 4, 1, 0}));
  // A 2-block miss takes the two least recently freed: b's cached block 2 is evicted.
  auto d = make_seq(iota_tokens(8, 100));
  bm.allocate(*d);
  EXPECT_EQ(d->block_table, (std::vector<int32_t>{3, 2}));
  EXPECT_FALSE(bm.block_hash(2).has_value());
  EXPECT_TRUE(bm.block_hash(0).has_value());
  EXPECT_EQ(bm.peek_cached_tokens(*make_seq({20, 21, 22, 23, 24})), 0);
  EXPECT_EQ(bm.peek_cached_tokens(*make_seq({10, 11, 12, 13, 14})), 4);
  EXPECT_EQ(bm.peek_cached_tokens(*make_seq({30, 31, 32, 33, 34})), 4);
  // Reviving c's cached block takes it out of the middle of the free list; the miss after it
  // takes the head.
  auto c2 = make_seq({30, 31, 32, 33, 99});
  bm.allocate(*c2);
  EXPECT_EQ(c2->block_table, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(bm.free_block_ids(), (std::vector<int32_t>{1, 0}));
  expect_consistent(bm);
}

uint64_t colliding_hash(std::span<const int32_t>, std::optional<uint64_t>) { return 42; }

TEST(PrefixCache, CollisionGuardComparesTokens) {
  BlockManager bm(kNumBlocks, kBlockSize, true);
  bm.set_hash_fn_for_testing(&colliding_hash);
  auto a = make_seq({1, 2, 3, 4, 5});
  bm.allocate(*a);
  compute_all(bm, *a);
  ASSERT_EQ(bm.block_hash(a->block_table[0]), 42u);
  // Same hash, different tokens: a miss, not a silent reuse of a's K/V.
  auto b = make_seq({9, 9, 9, 9, 5});
  EXPECT_EQ(bm.peek_cached_tokens(*b), 0);
  bm.allocate(*b);
  EXPECT_EQ(b->num_cached_tokens, 0);
  EXPECT_NE(b->block_table[0], a->block_table[0]);
  compute_all(bm, *b);  // registers 42 again: the first registration stays the one found
  EXPECT_EQ(bm.num_registered_hashes(), 1);
  auto c = make_seq({1, 2, 3, 4, 6});
  EXPECT_EQ(bm.peek_cached_tokens(*c), 4);
  bm.allocate(*c);
  EXPECT_EQ(c->block_table[0], a->block_table[0]);
  // Evicting b's block (same hash, not registered) leaves a's registration alone.
  bm.deallocate(*b);
  auto filler = make_seq(iota_tokens(4 * (bm.num_free_blocks())));
  bm.allocate(*filler);
  EXPECT_EQ(bm.num_registered_hashes(), 1);
  EXPECT_EQ(bm.peek_cached_tokens(*make_seq({1, 2, 3, 4, 7})), 4);
  expect_consistent(bm);
}

TEST(BlockManager, CanAppend) {
  BlockManager bm(2, kBlockSize, false);
  auto a = make_seq({1, 2, 3});
  bm.allocate(*a);
  a->append_token(4);
  EXPECT_TRUE(bm.can_append(*a));  // still inside block 0
  a->append_token(5);
  EXPECT_TRUE(bm.can_append(*a));  // needs block 1, one free
  auto b = make_seq({1});
  bm.allocate(*b);
  EXPECT_FALSE(bm.can_append(*a));  // pool empty
}

TEST(BlockManager, MayAppend) {
  BlockManager bm(kNumBlocks, kBlockSize, false);
  auto a = make_seq({1, 2, 3});
  bm.allocate(*a);
  a->append_token(4);
  bm.may_append(*a);
  EXPECT_EQ(a->block_table.size(), 1u);
  a->append_token(5);
  bm.may_append(*a);
  EXPECT_EQ(a->block_table.size(), 2u);
  EXPECT_EQ(bm.num_free_blocks(), kNumBlocks - 2);

  BlockManager bs1(kNumBlocks, 1, false);
  auto s = make_seq({1, 2}, test::params_with(4), 1);
  bs1.allocate(*s);
  s->append_token(3);
  bs1.may_append(*s);
  EXPECT_EQ(s->block_table.size(), 3u);

  BlockManager full(1, kBlockSize, false);
  auto f = make_seq({1, 2, 3, 4});
  full.allocate(*f);
  f->append_token(5);
  EXPECT_THROW(full.may_append(*f), Error);
}

TEST(BlockManager, RejectsBadSizes) {
  EXPECT_THROW(BlockManager(0, 4, false), Error);
  EXPECT_THROW(BlockManager(4, 0, false), Error);
  BlockManager bm(4, 4, false);
  EXPECT_THROW(bm.ref_count(4), Error);
}

}  // namespace
}  // namespace atom

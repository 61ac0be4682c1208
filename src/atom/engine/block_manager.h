// Paged KV-cache block pool with automatic prefix caching.
//
// Every full block of COMPUTED tokens is registered under a chained hash (the block's tokens and
// the hash of the block before it), so a later request whose prompt starts with the same tokens
// reuses those blocks instead of recomputing their K/V. A block whose last owner finishes goes to
// the tail of the free list still holding its hash and tokens; allocation takes the head, so the
// cached blocks are evicted least-recently-freed first.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "atom/engine/sequence.h"

namespace atom {

class BlockManager {
 public:
  using HashFn = uint64_t (*)(std::span<const int32_t> tokens, std::optional<uint64_t> prefix);

  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching);

  // ATOM's hash: xxHash64 seed 0 over [prefix hash as 8 bytes LE if any] + tokens as int64 LE.
  static uint64_t compute_hash(std::span<const int32_t> tokens, std::optional<uint64_t> prefix);

  // Leading prompt tokens a lookup would reuse now: full blocks whose chained hash is registered
  // AND whose stored tokens equal the block's (collision guard), stopping at the first miss, and
  // never the whole sequence (at least one token must be computed to produce logits).
  int64_t peek_cached_tokens(const Sequence& seq) const;
  // Enough free blocks for allocate(seq); cache hits on blocks already in use cost nothing.
  bool can_allocate(const Sequence& seq) const;
  // Blocks for all of seq.num_tokens(): hits are shared (ref++; a hit on a free block takes it
  // out of the free list), misses take the least-recently-freed block, evicting its old hash.
  // Sets num_cached_tokens and num_computed_tokens = num_cached_tokens, fills block_hashes of
  // the hit blocks.
  void allocate(Sequence& seq);
  // Reverse order, ref--; at 0 the block goes to the tail of the free list KEEPING its hash and
  // tokens (so a later request can hit it; LRU eviction). Clears the table, hashes, cached and
  // computed counts.
  void deallocate(Sequence& seq);
  bool can_append(const Sequence& seq) const;  // enough blocks to cover seq.num_tokens()
  void may_append(Sequence& seq);              // grow the table to cover seq.num_tokens()
  // Hash and register the blocks that are full of COMPUTED tokens (num_computed_tokens) and not
  // yet hashed: hashes are keyed on final tokens only, never placeholders. Call after a step.
  void cache_full_blocks(Sequence& seq);

  int64_t num_free_blocks() const { return int64_t(free_list_.size()); }
  int64_t num_blocks() const { return int64_t(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return enable_prefix_caching_; }
  double usage() const;  // used / total
  // Prefix-cache lookups, counted in tokens as vLLM counts them: each allocate() with prefix
  // caching on queries seq.num_tokens() tokens and hits num_cached_tokens of them (both 0 with
  // prefix caching off). Totals since construction.
  int64_t num_prefix_queries() const { return num_prefix_queries_; }
  int64_t num_prefix_hits() const { return num_prefix_hits_; }

  // Introspection (tests, metrics).
  int64_t ref_count(int32_t block_id) const;
  bool is_free(int32_t block_id) const;
  std::optional<uint64_t> block_hash(int32_t block_id) const;
  std::vector<int32_t> free_block_ids() const;  // head (next to be taken) first
  int64_t num_registered_hashes() const { return int64_t(hash_to_block_.size()); }
  // Tests only: replace the block hash (e.g. by one that collides) to exercise the guard.
  void set_hash_fn_for_testing(HashFn fn) { hash_fn_ = fn; }

 private:
  struct Block {
    int64_t ref_count = 0;
    std::optional<uint64_t> hash;  // set once the block is full of computed tokens
    std::vector<int32_t> tokens;   // [block_size] when hashed: the collision guard compares them
    std::list<int32_t>::iterator free_it;  // valid while in_free
    bool in_free = false;
  };

  // Physical ids of the leading blocks a lookup would hit now, with their chained hashes.
  void match_prefix(const Sequence& seq, std::vector<int32_t>& ids,
                    std::vector<uint64_t>& hashes) const;
  int32_t take_free_block();          // head of the free list, its old hash evicted; ref = 1
  void remove_from_free(int32_t id);  // O(1): a cache hit revives a free block
  void release(int32_t id);           // ref--, to the free tail at 0

  int64_t block_size_;
  bool enable_prefix_caching_;
  HashFn hash_fn_ = &BlockManager::compute_hash;
  std::vector<Block> blocks_;
  std::list<int32_t> free_list_;  // head: least recently freed
  std::unordered_map<uint64_t, int32_t> hash_to_block_;
  int64_t num_prefix_queries_ = 0;
  int64_t num_prefix_hits_ = 0;
};

}  // namespace atom

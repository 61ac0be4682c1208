#include "atom/engine/block_manager.h"

#include <xxhash.h>

#include <algorithm>

#include "atom/core/error.h"

namespace atom {

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), enable_prefix_caching_(enable_prefix_caching) {
  ATOM_CHECK(num_blocks > 0, kInvalidArgument, "the KV cache needs at least one block, got {}",
             num_blocks);
  ATOM_CHECK(block_size > 0, kInvalidArgument, "KV block size must be positive, got {}",
             block_size);
  blocks_.resize(size_t(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) {
    Block& b = blocks_[size_t(i)];
    b.free_it = free_list_.insert(free_list_.end(), int32_t(i));
    b.in_free = true;
  }
}

uint64_t BlockManager::compute_hash(std::span<const int32_t> tokens,
                                    std::optional<uint64_t> prefix) {
  // Bytes written explicitly little-endian so the digest does not depend on the host.
  std::vector<unsigned char> bytes;
  bytes.reserve((prefix ? 8 : 0) + tokens.size() * 8);
  auto put_u64 = [&bytes](uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes.push_back((unsigned char)(v >> (8 * i)));
  };
  if (prefix) put_u64(*prefix);
  for (int32_t t : tokens) put_u64(uint64_t(int64_t(t)));
  return XXH64(bytes.data(), bytes.size(), 0);
}

void BlockManager::match_prefix(const Sequence& seq, std::vector<int32_t>& ids,
                                std::vector<uint64_t>& hashes) const {
  ids.clear();
  hashes.clear();
  if (!enable_prefix_caching_) return;
  // At most (n - 1) / bs blocks: the last token is always computed, its logits are sampled.
  const int64_t max_hits = (seq.num_tokens() - 1) / block_size_;
  std::optional<uint64_t> prev;
  for (int64_t i = 0; i < max_hits; ++i) {
    std::span<const int32_t> toks = seq.block_tokens(i);
    const uint64_t h = hash_fn_(toks, prev);
    auto it = hash_to_block_.find(h);
    if (it == hash_to_block_.end()) break;
    const Block& b = blocks_[size_t(it->second)];
    if (!b.hash || *b.hash != h ||
        !std::equal(toks.begin(), toks.end(), b.tokens.begin(), b.tokens.end()))
      break;
    ids.push_back(it->second);
    hashes.push_back(h);
    prev = h;
  }
}

int64_t BlockManager::peek_cached_tokens(const Sequence& seq) const {
  std::vector<int32_t> ids;
  std::vector<uint64_t> hashes;
  match_prefix(seq, ids, hashes);
  return int64_t(ids.size()) * block_size_;
}

bool BlockManager::can_allocate(const Sequence& seq) const {
  std::vector<int32_t> ids;
  std::vector<uint64_t> hashes;
  match_prefix(seq, ids, hashes);
  int64_t hits_in_use = 0;
  for (int32_t id : ids) hits_in_use += blocks_[size_t(id)].ref_count > 0 ? 1 : 0;
  return num_free_blocks() >= seq.num_blocks() - hits_in_use;
}

void BlockManager::allocate(Sequence& seq) {
  ATOM_ASSERT(seq.block_table.empty());
  ATOM_ASSERT(seq.block_size() == block_size_);
  ATOM_CHECK(can_allocate(seq), kInternal, "allocate: not enough free KV blocks for sequence {}",
             seq.id());
  std::vector<int32_t> hit_ids;
  std::vector<uint64_t> hit_hashes;
  match_prefix(seq, hit_ids, hit_hashes);
  seq.block_hashes.clear();
  // Hits first: they leave the free list before any miss could evict them.
  for (size_t i = 0; i < hit_ids.size(); ++i) {
    Block& b = blocks_[size_t(hit_ids[i])];
    if (b.ref_count == 0) remove_from_free(hit_ids[i]);
    ++b.ref_count;
    seq.block_table.push_back(hit_ids[i]);
    seq.block_hashes.push_back(hit_hashes[i]);
  }
  while (int64_t(seq.block_table.size()) < seq.num_blocks())
    seq.block_table.push_back(take_free_block());
  seq.num_cached_tokens = int64_t(hit_ids.size()) * block_size_;
  seq.num_computed_tokens = seq.num_cached_tokens;
  if (enable_prefix_caching_) {
    num_prefix_queries_ += seq.num_tokens();
    num_prefix_hits_ += seq.num_cached_tokens;
  }
}

void BlockManager::deallocate(Sequence& seq) {
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) release(*it);
  seq.block_table.clear();
  seq.block_hashes.clear();
  seq.num_cached_tokens = 0;
  seq.num_computed_tokens = 0;
}

bool BlockManager::can_append(const Sequence& seq) const {
  const int64_t needed = seq.num_blocks() - int64_t(seq.block_table.size());
  return num_free_blocks() >= std::max<int64_t>(needed, 0);
}

void BlockManager::may_append(Sequence& seq) {
  ATOM_CHECK(can_append(seq), kInternal, "may_append: no free KV block for sequence {}", seq.id());
  while (int64_t(seq.block_table.size()) < seq.num_blocks())
    seq.block_table.push_back(take_free_block());
}

void BlockManager::cache_full_blocks(Sequence& seq) {
  if (!enable_prefix_caching_) return;
  const int64_t num_full =
      std::min<int64_t>(seq.num_computed_tokens / block_size_, int64_t(seq.block_table.size()));
  for (int64_t i = int64_t(seq.block_hashes.size()); i < num_full; ++i) {
    std::optional<uint64_t> prev;
    if (i > 0) prev = seq.block_hashes[size_t(i - 1)];
    std::span<const int32_t> toks = seq.block_tokens(i);
    const uint64_t h = hash_fn_(toks, prev);
    const int32_t id = seq.block_table[size_t(i)];
    Block& b = blocks_[size_t(id)];
    ATOM_ASSERT(!b.hash.has_value());
    b.hash = h;
    b.tokens.assign(toks.begin(), toks.end());
    // Two sequences that computed the same content in one step both reach here: the first
    // registered block stays the one lookups find; the other keeps its hash so its eviction
    // leaves the registered entry alone.
    hash_to_block_.emplace(h, id);
    seq.block_hashes.push_back(h);
  }
}

double BlockManager::usage() const {
  return double(num_blocks() - num_free_blocks()) / double(num_blocks());
}

int64_t BlockManager::ref_count(int32_t block_id) const {
  ATOM_CHECK(block_id >= 0 && block_id < num_blocks(), kOutOfRange, "no KV block {}", block_id);
  return blocks_[size_t(block_id)].ref_count;
}

bool BlockManager::is_free(int32_t block_id) const {
  ATOM_CHECK(block_id >= 0 && block_id < num_blocks(), kOutOfRange, "no KV block {}", block_id);
  return blocks_[size_t(block_id)].in_free;
}

std::optional<uint64_t> BlockManager::block_hash(int32_t block_id) const {
  ATOM_CHECK(block_id >= 0 && block_id < num_blocks(), kOutOfRange, "no KV block {}", block_id);
  return blocks_[size_t(block_id)].hash;
}

std::vector<int32_t> BlockManager::free_block_ids() const {
  return std::vector<int32_t>(free_list_.begin(), free_list_.end());
}

int32_t BlockManager::take_free_block() {
  ATOM_ASSERT(!free_list_.empty());
  const int32_t id = free_list_.front();
  free_list_.pop_front();
  Block& b = blocks_[size_t(id)];
  ATOM_ASSERT(b.in_free && b.ref_count == 0);
  b.in_free = false;
  if (b.hash) {
    auto it = hash_to_block_.find(*b.hash);
    if (it != hash_to_block_.end() && it->second == id) hash_to_block_.erase(it);
    b.hash.reset();
  }
  b.tokens.clear();
  b.ref_count = 1;
  return id;
}

void BlockManager::remove_from_free(int32_t id) {
  Block& b = blocks_[size_t(id)];
  ATOM_ASSERT(b.in_free);
  free_list_.erase(b.free_it);
  b.in_free = false;
}

void BlockManager::release(int32_t id) {
  Block& b = blocks_[size_t(id)];
  ATOM_ASSERT(b.ref_count > 0 && !b.in_free);
  if (--b.ref_count == 0) {
    b.free_it = free_list_.insert(free_list_.end(), id);
    b.in_free = true;
  }
}

}  // namespace atom

// Shared helpers of the engine tests: the MockConfig values of ATOM's tests (block size 4,
// 10 blocks, max_num_seqs 4, max_num_batched_tokens 64, eos 2) and a sequence factory.
#pragma once

#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "atom/engine/sequence.h"

namespace atom::test {

inline constexpr int64_t kBlockSize = 4;
inline constexpr int64_t kNumBlocks = 10;
inline constexpr int64_t kMaxNumSeqs = 4;
inline constexpr int64_t kMaxBatchedTokens = 64;
inline constexpr int32_t kEos = 2;

inline SamplingParams params_with(int64_t max_tokens, bool ignore_eos = false) {
  SamplingParams p;
  p.max_tokens = max_tokens;
  p.ignore_eos = ignore_eos;
  if (!ignore_eos) p.stop_token_ids = {kEos};  // callers leave EOS out under ignore_eos
  return p;
}

inline SequencePtr make_seq(std::vector<int32_t> prompt, SamplingParams params = params_with(16),
                            int64_t block_size = kBlockSize) {
  return std::make_shared<Sequence>(std::move(prompt), std::move(params), block_size);
}

// Prompt of n tokens start, start+1, ... (no EOS inside for start >= 3).
inline std::vector<int32_t> iota_tokens(int64_t n, int32_t start = 10) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), start);
  return t;
}

}  // namespace atom::test

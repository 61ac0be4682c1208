// Tensor-parallel layout of a decoder model ([H]): which heads, MLP columns and vocabulary rows
// each of `tp` ranks owns, and the slicing of dense row-major weights into a rank's shard.
//
// Megatron's split, as vLLM and ATOM do it:
//   - q heads: nh / tp per rank, contiguous (column-parallel QKV, row-parallel O);
//   - kv heads: nkv / tp per rank when nkv >= tp; when nkv < tp each rank holds one kv head, the
//     one its q heads use (replicated on tp / nkv ranks), so every rank's attention is local;
//   - MLP: intermediate / tp columns per rank (column-parallel gate_up, row-parallel down);
//   - vocabulary: padded up to a multiple of tp * kVocabAlign, vocab_padded / tp rows per rank
//     (vocab-parallel embedding and LM head); padded rows are zero and their logits are never
//     sampled, so no `vocab % tp` restriction.
// Shapes that cannot be split this way are refused with a clear error naming the numbers.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "atom/models/model.h"

namespace atom {

struct TpLayout {
  static constexpr int64_t kVocabAlign = 64;  // vLLM's padding unit per rank

  int64_t tp = 1, rank = 0;
  int64_t head_dim = 0;
  int64_t total_q_heads = 0, total_kv_heads = 0;  // the model's
  int64_t q_head_begin = 0, num_q_heads = 0;    // this rank's q heads
  int64_t kv_head_begin = 0, num_kv_heads = 0;  // this rank's kv heads (replicated if nkv < tp)
  int64_t inter_begin = 0, inter_size = 0;      // this rank's MLP columns
  int64_t vocab_padded = 0;                     // multiple of tp * kVocabAlign
  int64_t vocab_begin = 0, vocab_rows = 0;      // this rank's rows of the padded vocabulary
  int64_t vocab = 0;                            // the real vocabulary

  // Rows of the stacked [q | k | v] projection this rank takes, as (first row, count) pairs in
  // the full matrix, in the order the shard stacks them.
  std::vector<std::pair<int64_t, int64_t>> qkv_rows() const;
  // Rows of the stacked [gate | up] projection this rank takes (its gate rows, then its up rows).
  std::vector<std::pair<int64_t, int64_t>> gate_up_rows() const;
  // Columns of the O projection ([hidden, nh * head_dim]) and of down ([hidden, intermediate]).
  std::pair<int64_t, int64_t> o_cols() const;
  std::pair<int64_t, int64_t> down_cols() const;
  // The (global) kv head a global q head attends to under GQA.
  int64_t kv_head_of(int64_t q_head) const;
};

// The layout of `rank` of `tp` for `cfg`; kInvalidArgument (naming the numbers) when
// tp < 1, rank outside [0, tp), num_attention_heads % tp != 0, kv heads not splittable
// (nkv % tp != 0 with nkv >= tp, or tp % nkv != 0 with nkv < tp), or intermediate % tp != 0.
TpLayout make_tp_layout(const ModelConfig& cfg, int64_t tp, int64_t rank);

// Slicing of a dense row-major [rows, cols] matrix: the listed row ranges stacked in order, or
// the column range of every row. Element type T (float, uint16_t for bf16 bits).
template <typename T>
std::vector<T> slice_rows(std::span<const T> m, int64_t rows, int64_t cols,
                          const std::vector<std::pair<int64_t, int64_t>>& ranges);
template <typename T>
std::vector<T> slice_cols(std::span<const T> m, int64_t rows, int64_t cols,
                          std::pair<int64_t, int64_t> range);
// This rank's rows of a [vocab, hidden] embedding or LM head, zero rows past the real vocab:
// [vocab_rows, hidden].
template <typename T>
std::vector<T> vocab_shard(std::span<const T> m, int64_t hidden, const TpLayout& l);

}  // namespace atom

#include "atom/models/tp_layout.h"

#include <algorithm>
#include <cstring>

#include "atom/core/error.h"

namespace atom {

TpLayout make_tp_layout(const ModelConfig& cfg, int64_t tp, int64_t rank) {
  ATOM_CHECK(tp >= 1 && rank >= 0 && rank < tp, kInvalidArgument,
             "tensor parallelism: rank {} of {} ranks", rank, tp);
  const int64_t nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  const int64_t inter = cfg.intermediate_size, vocab = cfg.vocab_size;
  ATOM_CHECK(nh > 0 && nkv > 0 && nh % nkv == 0 && cfg.head_dim > 0 && inter > 0 && vocab > 0,
             kInvalidArgument, "tensor parallelism: bad model shape ({} q heads, {} kv heads)",
             nh, nkv);
  ATOM_CHECK(nh % tp == 0, kInvalidArgument,
             "--tensor-parallel-size {}: the model's {} attention heads do not split evenly "
             "over {} ranks",
             tp, nh, tp);
  ATOM_CHECK(nkv >= tp ? nkv % tp == 0 : tp % nkv == 0, kInvalidArgument,
             "--tensor-parallel-size {}: the model's {} key-value heads neither split evenly "
             "over {} ranks nor replicate evenly onto them",
             tp, nkv, tp);
  ATOM_CHECK(inter % tp == 0, kInvalidArgument,
             "--tensor-parallel-size {}: the MLP's {} intermediate columns do not split evenly "
             "over {} ranks",
             tp, inter, tp);
  TpLayout l;
  l.tp = tp;
  l.rank = rank;
  l.head_dim = cfg.head_dim;
  l.total_q_heads = nh;
  l.total_kv_heads = nkv;
  l.num_q_heads = nh / tp;
  l.q_head_begin = rank * l.num_q_heads;
  if (nkv >= tp) {
    l.num_kv_heads = nkv / tp;
    l.kv_head_begin = rank * l.num_kv_heads;
  } else {  // one kv head per rank, each on tp / nkv ranks: the one this rank's q heads use
    l.num_kv_heads = 1;
    l.kv_head_begin = rank * nkv / tp;
  }
  l.inter_size = inter / tp;
  l.inter_begin = rank * l.inter_size;
  const int64_t unit = tp * TpLayout::kVocabAlign;
  l.vocab = vocab;
  l.vocab_padded = (vocab + unit - 1) / unit * unit;
  l.vocab_rows = l.vocab_padded / tp;
  l.vocab_begin = rank * l.vocab_rows;
  return l;
}

int64_t TpLayout::kv_head_of(int64_t q_head) const {
  return q_head / (total_q_heads / total_kv_heads);
}

std::vector<std::pair<int64_t, int64_t>> TpLayout::qkv_rows() const {
  // The full matrix stacks all q heads, then all k heads, then all v heads.
  const int64_t d = head_dim;
  return {{q_head_begin * d, num_q_heads * d},
          {(total_q_heads + kv_head_begin) * d, num_kv_heads * d},
          {(total_q_heads + total_kv_heads + kv_head_begin) * d, num_kv_heads * d}};
}

std::vector<std::pair<int64_t, int64_t>> TpLayout::gate_up_rows() const {
  const int64_t inter = inter_size * tp;
  return {{inter_begin, inter_size}, {inter + inter_begin, inter_size}};
}

std::pair<int64_t, int64_t> TpLayout::o_cols() const {
  return {q_head_begin * head_dim, num_q_heads * head_dim};
}

std::pair<int64_t, int64_t> TpLayout::down_cols() const { return {inter_begin, inter_size}; }

template <typename T>
std::vector<T> slice_rows(std::span<const T> m, int64_t rows, int64_t cols,
                          const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  ATOM_CHECK(int64_t(m.size()) == rows * cols, kInvalidArgument,
             "slice_rows: {} elements for a [{}, {}] matrix", m.size(), rows, cols);
  int64_t n = 0;
  for (const auto& [first, count] : ranges) {
    ATOM_CHECK(first >= 0 && count >= 0 && first + count <= rows, kInvalidArgument,
               "slice_rows: rows [{}, {}) of {}", first, first + count, rows);
    n += count;
  }
  std::vector<T> out(size_t(n * cols));
  T* dst = out.data();
  for (const auto& [first, count] : ranges) {
    std::memcpy(dst, m.data() + first * cols, size_t(count * cols) * sizeof(T));
    dst += count * cols;
  }
  return out;
}

template <typename T>
std::vector<T> slice_cols(std::span<const T> m, int64_t rows, int64_t cols,
                          std::pair<int64_t, int64_t> range) {
  const auto [first, count] = range;
  ATOM_CHECK(int64_t(m.size()) == rows * cols, kInvalidArgument,
             "slice_cols: {} elements for a [{}, {}] matrix", m.size(), rows, cols);
  ATOM_CHECK(first >= 0 && count >= 0 && first + count <= cols, kInvalidArgument,
             "slice_cols: columns [{}, {}) of {}", first, first + count, cols);
  std::vector<T> out(size_t(rows * count));
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + r * count, m.data() + r * cols + first, size_t(count) * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> vocab_shard(std::span<const T> m, int64_t hidden, const TpLayout& l) {
  ATOM_CHECK(int64_t(m.size()) == l.vocab * hidden, kInvalidArgument,
             "vocab_shard: {} elements for a [{}, {}] table", m.size(), l.vocab, hidden);
  std::vector<T> out(size_t(l.vocab_rows * hidden), T{});  // padded rows stay zero
  const int64_t real = std::clamp<int64_t>(l.vocab - l.vocab_begin, 0, l.vocab_rows);
  if (real > 0)
    std::memcpy(out.data(), m.data() + l.vocab_begin * hidden, size_t(real * hidden) * sizeof(T));
  return out;
}

template std::vector<float> slice_rows(std::span<const float>, int64_t, int64_t,
                                       const std::vector<std::pair<int64_t, int64_t>>&);
template std::vector<uint16_t> slice_rows(std::span<const uint16_t>, int64_t, int64_t,
                                          const std::vector<std::pair<int64_t, int64_t>>&);
template std::vector<float> slice_cols(std::span<const float>, int64_t, int64_t,
                                       std::pair<int64_t, int64_t>);
template std::vector<uint16_t> slice_cols(std::span<const uint16_t>, int64_t, int64_t,
                                          std::pair<int64_t, int64_t>);
template std::vector<float> vocab_shard(std::span<const float>, int64_t, const TpLayout&);
template std::vector<uint16_t> vocab_shard(std::span<const uint16_t>, int64_t, const TpLayout&);

}  // namespace atom

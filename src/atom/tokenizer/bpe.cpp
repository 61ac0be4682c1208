#include "atom/tokenizer/bpe.h"

#include <queue>

#include "atom/core/error.h"
#include "atom/tokenizer/unicode.h"

namespace atom {

namespace {

// One symbol of the word being merged, linked to its live neighbours.
struct Symbol {
  int32_t id;      // token id (byte-level BPE only)
  uint32_t begin;  // byte range in the word
  uint32_t len;    // 0 once merged into its left neighbour
  int32_t prev;
  int32_t next;
};

}  // namespace

ByteLevelBpe::ByteLevelBpe(const Vocab& vocab, const std::vector<std::string>& merges,
                           bool ignore_merges)
    : vocab_(vocab), ignore_merges_(ignore_merges) {
  const auto& alphabet = unicode::byte_level_alphabet();
  for (int b = 0; b < 256; ++b) byte_token_[b] = vocab.index.find_or(alphabet.byte_to_utf8[b], -1);

  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& m = merges[rank];
    // The separator is the first space after the first character: tokens of the byte alphabet
    // never contain a space, but a left part may start with one in other vocabularies.
    const size_t sep = m.find(' ', 1);
    ATOM_CHECK(sep != std::string::npos && sep + 1 < m.size(), kCorrupt,
               "tokenizer.ggml.merges[{}] '{}' is not of the form 'left right'", rank, m);
    const std::string_view left(m.data(), sep);
    const std::string_view right(m.data() + sep + 1, m.size() - sep - 1);
    const auto left_id = vocab.index.find(left);
    const auto right_id = vocab.index.find(right);
    ATOM_CHECK(left_id && right_id, kCorrupt,
               "tokenizer.ggml.merges[{}] '{}' refers to '{}', which is not in the vocabulary",
               rank, m, left_id ? right : left);
    const std::string joined = std::string(left) + std::string(right);
    const auto result = vocab.index.find(joined);
    ATOM_CHECK(result.has_value(), kCorrupt,
               "tokenizer.ggml.merges[{}] '{}' produces '{}', which is not in the vocabulary", rank,
               m, joined);
    // A repeated pair keeps its first rank (real merge lists repeat none).
    merges_.try_emplace(key(*left_id, *right_id), Merge{static_cast<int32_t>(rank), *result});
  }
}

void ByteLevelBpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto id = vocab_.index.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  const auto& alphabet = unicode::byte_level_alphabet();
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    const unicode::Utf8Step step = unicode::utf8_next(word, pos);
    ATOM_ASSERT(step.valid);
    const int byte = alphabet.byte_of(step.cp);
    ATOM_ASSERT(byte >= 0);  // the pre-tokenizer mapped every byte into the alphabet
    // A byte without a token is dropped before merging, so its neighbours may merge across it
    // (HF BPE with no unk_token, as these vocabularies' tokenizer.json have; llama.cpp drops
    // it too).
    if (byte_token_[byte] >= 0) {
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({byte_token_[byte], static_cast<uint32_t>(pos), step.len, n - 1, n + 1});
    }
    pos += step.len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Candidate merges, best first: lowest rank, then leftmost (HF's order).
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto try_add = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const int32_t a = symbols[left].id, b = symbols[right].id;
    const auto it = merges_.find(key(a, b));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, a, b, it->second.result});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) try_add(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    // Stale when the left symbol was merged away or either side changed since the push.
    if (left.len == 0 || left.id != c.left_id || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != c.right_id) continue;
    left.id = c.result;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_add(left.prev);
    try_add(c.left);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

SentencePieceBpe::SentencePieceBpe(const Vocab& vocab, int32_t unk_id)
    : vocab_(vocab), unk_id_(unk_id) {
  for (int b = 0; b < 256; ++b) {
    byte_token_[b] = vocab.index.find_or(fmt::format("<0x{:02X}>", b), -1);
  }
}

void SentencePieceBpe::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    // Invalid bytes (the caller sanitizes, so none arrive) would become one-byte symbols.
    const uint32_t len = unicode::utf8_next(text, pos).len;
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({-1, static_cast<uint32_t>(pos), len, n - 1, n + 1});
    pos += len;
  }
  symbols.back().next = -1;

  // Candidate merges, best first: highest score, then leftmost (llama.cpp's SPM order).
  struct Candidate {
    float score;
    int32_t left;
    int32_t right;
    uint32_t len;  // bytes of left+right when pushed; a mismatch on pop means it is stale
    bool operator<(const Candidate& o) const {
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Candidate> queue;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t len = symbols[left].len + symbols[right].len;
    const auto id = vocab_.index.find(text.substr(symbols[left].begin, len));
    if (!id) return;
    queue.push({vocab_.scores[*id], left, right, len});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) try_add(i, i + 1);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    // Both alive means still adjacent (symbols only merge rightwards into their left
    // neighbour); the length check catches either side having grown since the push.
    if (left.len == 0 || right.len == 0 || left.len + right.len != c.len) continue;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_add(left.prev, c.left);
    try_add(c.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const std::string_view piece = text.substr(symbols[i].begin, symbols[i].len);
    if (const auto id = vocab_.index.find(piece)) {
      out.push_back(*id);
      continue;
    }
    // Byte fallback: a character with no piece of its own becomes its UTF-8 bytes; without
    // byte tokens for all of them it is one <unk> (or dropped when there is none).
    bool have_bytes = true;
    for (const char ch : piece)
      have_bytes = have_bytes && byte_token_[static_cast<uint8_t>(ch)] >= 0;
    if (have_bytes) {
      for (const char ch : piece) out.push_back(byte_token_[static_cast<uint8_t>(ch)]);
    } else if (unk_id_ >= 0) {
      out.push_back(unk_id_);
    }
  }
}

}  // namespace atom

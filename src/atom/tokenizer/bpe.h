// Byte-level BPE (GPT-2 family) and SentencePiece BPE (llama) merge loops. Both are
// O(n log n) per word: a heap of candidate pairs with lazy invalidation over a linked list of
// symbols.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "atom/tokenizer/vocab.h"

namespace atom {

class ByteLevelBpe {
 public:
  // merges: "left right" in the byte alphabet, rank = index. Throws kCorrupt when a merge is
  // malformed or names a token (or a result) absent from the vocabulary.
  ByteLevelBpe(const Vocab& vocab, const std::vector<std::string>& merges, bool ignore_merges);

  // word: one pre-tokenizer piece in the byte alphabet. Appends its token ids.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;  // token id of left+right
  };
  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  const Vocab& vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_token_{};  // token of each byte's alphabet character, or -1
  bool ignore_merges_ = false;
};

class SentencePieceBpe {
 public:
  SentencePieceBpe(const Vocab& vocab, int32_t unk_id);

  // text: already escaped (spaces as U+2581, prefix added). Appends its token ids.
  void encode(std::string_view text, std::vector<int32_t>& out) const;

 private:
  const Vocab& vocab_;
  std::array<int32_t, 256> byte_token_{};  // id of "<0xXX>", or -1
  int32_t unk_id_ = -1;
};

}  // namespace atom

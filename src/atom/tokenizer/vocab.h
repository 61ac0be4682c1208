// Internal to the tokenizer layer: the vocabulary as read from tokenizer.ggml.* keys.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace atom {

// Values of tokenizer.ggml.token_type (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Token text -> id, looked up with string_views (no temporary strings in the hot loops).
class TokenIndex {
 public:
  // Later duplicates of a text keep the first id.
  void add(const std::string& text, int32_t id) { map_.try_emplace(text, id); }
  std::optional<int32_t> find(std::string_view text) const {
    const auto it = map_.find(text);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  int32_t find_or(std::string_view text, int32_t def) const {
    const auto it = map_.find(text);
    return it == map_.end() ? def : it->second;
  }
  void reserve(size_t n) { map_.reserve(n); }

 private:
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> map_;
};

struct Vocab {
  std::vector<std::string> texts;  // [n_vocab] as stored (byte-level alphabet for BPE vocabs)
  std::vector<TokenType> types;    // [n_vocab]
  std::vector<float> scores;       // [n_vocab]; SentencePiece merge priorities, 0 for BPE
  TokenIndex index;

  int32_t size() const { return static_cast<int32_t>(texts.size()); }
};

}  // namespace atom

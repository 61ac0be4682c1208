// Pre-tokenizers of byte-level BPE vocabularies, chosen by tokenizer.ggml.pre. Each reproduces
// the HF tokenizers pipeline of the original tokenizer.json: a sequence of steps, each of which
// splits every current piece further (HF "Isolated" behaviour: matches and the gaps between them
// both become pieces; a regex sees only its piece, so lookaheads stop at the piece's end). The
// ByteLevel step maps the text into GPT-2's byte alphabet; steps after it (falcon's Digits and
// 3-digit Split) run on the mapped text, as in HF.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace atom {

class Pcre2Regex;

struct Span {
  uint32_t begin = 0;
  uint32_t end = 0;  // exclusive, byte offsets
};

class PreTokenizer {
 public:
  // Returns nullptr for a pre-tokenizer name atom does not know.
  static std::unique_ptr<PreTokenizer> create(std::string_view pre);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // text: well-formed UTF-8. mapped: the text in the byte-level alphabet; words: the pieces,
  // as byte ranges of mapped, in order and covering it.
  void split(std::string_view text, std::string& mapped, std::vector<Span>& words) const;

  // HF BPE "ignore_merges": a word that is itself a token is emitted whole (llama3).
  bool ignore_merges() const { return ignore_merges_; }
  // Names atom accepts, for error messages.
  static std::string supported_names();

 private:
  struct Step {
    bool byte_level = false;            // map to the byte alphabet after the optional split
    std::unique_ptr<Pcre2Regex> regex;  // null: ByteLevel without its regex
  };
  PreTokenizer() = default;
  void add_split(std::string_view pattern);
  void add_byte_level(std::string_view pattern);

  std::vector<Step> steps_;
  bool ignore_merges_ = false;
};

}  // namespace atom

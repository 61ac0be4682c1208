// Tokenizer built from a GGUF file's tokenizer.ggml.* metadata, matching HF tokenizers' ids:
//  - "gpt2": byte-level BPE (GPT-2 byte alphabet, merges by rank) behind the pre-tokenizer
//    named by tokenizer.ggml.pre (pre_tokenizer.h lists them);
//  - "llama": SentencePiece BPE (merges by score, spaces as U+2581, byte fallback <0xXX>).
// Special tokens (control, user-defined and unknown types) written in the text are matched as
// single tokens, leftmost-longest, before the rest goes through the model. Text that is not
// valid UTF-8 is tokenized as if each maximal invalid subpart were U+FFFD.
// Immutable after construction: encode/decode may run concurrently from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace atom {

class GgufFile;  // atom/io/gguf.h

class Tokenizer {
 public:
  enum class Kind { kByteLevelBpe, kSentencePiece };

  // Throws kUnsupported for an unknown tokenizer.ggml.model or .pre (naming the value),
  // kCorrupt for a malformed vocabulary (missing tokens, arrays of the wrong length, merges of
  // unknown tokens, special ids out of range).
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);
  // From a tokenizer.json (HF tokenizers format) and optionally its tokenizer_config.json
  // ("" for none), which supplies bos/eos names and the chat template. add_special_tokens
  // then applies the file's post_processor (e.g. Llama-3's BOS). hf_tokenizer.h lists the
  // components supported; others throw kUnsupported naming the type. kNotFound for a missing
  // file, kCorrupt for malformed JSON or an inconsistent vocabulary.
  static std::unique_ptr<Tokenizer> from_hf(const std::string& tokenizer_json_path,
                                            const std::string& tokenizer_config_json_path);
  // From an HF checkpoint folder: its tokenizer.json (required) and tokenizer_config.json (when
  // present).
  static std::unique_ptr<Tokenizer> from_hf_folder(const std::string& dir);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special_tokens: prepend BOS when the file says add_bos_token and append EOS when it
  // says add_eos_token (the defaults are llama.cpp's: BOS for SentencePiece and llama3).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Ids outside the vocabulary throw kOutOfRange. Invalid UTF-8 that byte tokens produce comes
  // out as U+FFFD. SentencePiece vocabularies with add_space_prefix drop one leading space of
  // the result (HF's Strip decoder), undoing the space that encode prepends.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The raw bytes this token stands for: the un-mapped bytes of a byte-level token, spaces for
  // U+2581 and the byte of <0xXX> in SentencePiece, the text itself for special tokens. Throws
  // kOutOfRange for an id outside the vocabulary.
  std::string token_bytes(int32_t id) const;
  // The token's text as stored in the vocabulary (byte alphabet for byte-level BPE).
  const std::string& token_text(int32_t id) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when absent
  int32_t eos_id() const;  // -1 when absent
  bool add_bos() const;
  bool add_eos() const;
  Kind kind() const;
  bool is_special(int32_t id) const;  // control and unknown tokens (what skip_special skips)
  std::optional<int32_t> token_to_id(std::string_view token_text) const;
  const std::string& chat_template() const;  // "" when the file has none
  // Ids that end generation: eos, eot (e.g. <|im_end|>), eom, plus the control tokens whose
  // text is a known end-of-turn marker (<|endoftext|>, <|eot_id|>, <|end|>, ...); no repeats.
  std::vector<int32_t> stop_ids() const;

 private:
  friend class IncrementalDetokenizer;
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  // Whether decode drops one leading space of its output.
  bool strips_leading_space() const;

  std::unique_ptr<Impl> impl_;
};

// Streaming detokenizer: feeds ids one at a time and returns only complete UTF-8 text, never
// half a character; holds back the bytes of an unfinished character (byte-fallback tokens such
// as <0xE2> or byte-level tokens that split one). The concatenation of all push() results and
// flush() equals tok.decode(all ids, skip_special_tokens). Ids past the tokenizer's vocabulary
// (a model's padded LM-head rows, which a model may sample) emit no text; negative ids throw.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int32_t id);  // text that became final with this token
  std::string flush();           // whatever is left at the end (invalid bytes as U+FFFD)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  bool at_start_ = true;     // no byte emitted yet: the leading-space rule still applies
  bool first_token_ = true;  // no token emitted yet (HF Metaspace decoder's first-token rule)
  std::string pending_;      // bytes of an unfinished character
};

}  // namespace atom

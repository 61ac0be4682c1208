// Internal to the tokenizer layer: a tokenizer.json (HF tokenizers format) pipeline behind
// Tokenizer::from_hf. Encoding follows HF's order: added tokens with normalized=false are cut
// out of the raw text; each stretch between them is normalized, then cut at the added tokens
// with normalized=true, pre-tokenized into pieces and run through the BPE model; the
// post-processor adds its template tokens when asked. Decoding is reduced at load time to
// what each token decodes to (Tokenizer's byte table), plus the two position-dependent rules
// real decoders have: Strip(' ', 1, 0) after Fuse (one leading space of the output) and the
// Metaspace decoder (no replacement characters in the first token).
//
// Supported components (others throw kUnsupported naming the type):
//   normalizers: NFC, Replace (String or Regex pattern), Prepend, Lowercase, Sequence;
//   pre_tokenizers: Split (Regex or String; Removed, Isolated, MergedWithPrevious,
//     MergedWithNext, Contiguous; invert), ByteLevel, Digits, Metaspace, Punctuation,
//     Whitespace, WhitespaceSplit, Sequence;
//   model: BPE (merges as "a b" or [a, b], byte_fallback, fuse_unk, unk_token, ignore_merges);
//   post_processor: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence;
//   decoder: ByteLevel, Metaspace, Replace (String), ByteFallback, Fuse, Strip, Sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "atom/tokenizer/vocab.h"

namespace atom {

class HfPipeline {
 public:
  struct Parts;  // hf_tokenizer.cpp
  explicit HfPipeline(std::unique_ptr<Parts> parts);
  ~HfPipeline();
  HfPipeline(const HfPipeline&) = delete;
  HfPipeline& operator=(const HfPipeline&) = delete;

  // text: well-formed UTF-8. add_special_tokens applies the post-processor's template.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;

 private:
  std::unique_ptr<Parts> parts_;
};

// Everything Tokenizer needs from a tokenizer.json (and its tokenizer_config.json).
struct HfTokenizerData {
  Vocab vocab;                           // model vocabulary plus added tokens; holes are ""
  std::vector<std::string> bytes;        // [n_vocab] what decode emits for each token
  std::vector<std::string> first_bytes;  // [n_vocab] for the first decoded token, or empty
  bool strip_leading_space = false;      // decode drops one leading space of its output
  bool byte_level = false;               // the decoder is ByteLevel (GPT-2 style vocabulary)
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_eos = false;  // what the post-processor adds
  std::string chat_template;
  std::unique_ptr<HfPipeline> pipeline;
};

// Throws kNotFound for a missing file, kCorrupt for malformed JSON or a vocabulary that does
// not hold together, kUnsupported for a component type atom does not implement.
HfTokenizerData load_hf_tokenizer(const std::string& tokenizer_json_path,
                                  const std::string& tokenizer_config_json_path);

// Unicode NFC of well-formed UTF-8 text (canonical decomposition, canonical ordering,
// canonical composition, Hangul by algorithm).
std::string nfc_normalize(std::string_view text);

}  // namespace atom

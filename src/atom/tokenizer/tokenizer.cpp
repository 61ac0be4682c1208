#include "atom/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>

#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/tokenizer/bpe.h"
#include "atom/tokenizer/hf_tokenizer.h"
#include "atom/tokenizer/pre_tokenizer.h"
#include "atom/tokenizer/unicode.h"
#include "atom/tokenizer/vocab.h"

namespace atom {

namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Texts of end-of-turn markers across families (llama.cpp keeps a similar list): control tokens
// with these texts stop generation besides eos/eot/eom.
constexpr std::array<std::string_view, 9> kEndOfTurnTexts = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
    "<|EOT|>",
    // DeepSeek's <｜end▁of▁sentence｜>, split where a hex escape would swallow the 'e'
    "<\xEF\xBD\x9C"
    "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"};

bool is_unicode_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

struct Tokenizer::Impl {
  Kind kind = Kind::kByteLevelBpe;
  Vocab vocab;
  std::vector<std::string> bytes;  // [n_vocab] what decode emits for each token
  std::unique_ptr<PreTokenizer> pre;
  std::unique_ptr<ByteLevelBpe> bpe;
  std::unique_ptr<SentencePieceBpe> spm;
  // from_hf only: the whole encode pipeline, and what the first decoded token emits where that
  // differs from bytes (HF Metaspace decoder; empty otherwise).
  std::unique_ptr<HfPipeline> hf;
  std::vector<std::string> first_bytes;

  // Special tokens matched in raw text, bucketed by first byte, longest first.
  std::array<std::vector<int32_t>, 256> specials_by_byte;
  std::vector<uint8_t> rstrip;  // [n_vocab] HF added-token rstrip: eat whitespace after it

  int32_t bos = -1, eos = -1, unk = -1, eot = -1, eom = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  std::string chat_template;

  // What token id emits in decode; first: no token was emitted before it.
  std::string_view decoded(int32_t id, bool first) const {
    return first && !first_bytes.empty() ? first_bytes[id] : bytes[id];
  }

  bool special(int32_t id) const {
    const TokenType t = vocab.types[id];
    return t == TokenType::kControl || t == TokenType::kUnknown;
  }
  void check_id(int32_t id) const {
    ATOM_CHECK(id >= 0 && id < vocab.size(), kOutOfRange,
               "token id {} is outside the vocabulary of {} tokens", id, vocab.size());
  }

  // Longest special token starting at text[pos], or -1.
  int32_t match_special(std::string_view text, size_t pos) const {
    for (const int32_t id : specials_by_byte[static_cast<unsigned char>(text[pos])]) {
      const std::string& t = vocab.texts[id];
      if (text.compare(pos, t.size(), t) == 0) return id;
    }
    return -1;
  }

  // One stretch of text between special tokens.
  void encode_text(std::string_view text, std::vector<int32_t>& out) const {
    if (kind == Kind::kByteLevelBpe) {
      std::string mapped;
      std::vector<Span> words;
      pre->split(text, mapped, words);
      for (const Span& w : words) {
        bpe->encode_word(std::string_view(mapped).substr(w.begin, w.end - w.begin), out);
      }
      return;
    }
    // SentencePiece: the prefix space goes before every stretch, i.e. at the start of the text
    // and after each special token (HF normalizes each stretch between added tokens alone).
    std::string escaped;
    escaped.reserve(text.size() + 16);
    if (add_space_prefix) escaped += kSpmSpace;
    for (const char c : text) {
      if (c == ' ')
        escaped += kSpmSpace;
      else
        escaped.push_back(c);
    }
    spm->encode(escaped, out);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  const std::string& path = file.path();

  ATOM_CHECK(file.has("tokenizer.ggml.model"), kNotFound,
             "{}: no tokenizer in this file (tokenizer.ggml.model is missing)", path);
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model == "gpt2") {
    m.kind = Kind::kByteLevelBpe;
  } else if (model == "llama") {
    m.kind = Kind::kSentencePiece;
  } else {
    throw_error(ErrorCode::kUnsupported,
                "{}: tokenizer.ggml.model '{}' is not supported (supported: gpt2, llama)", path,
                model);
  }
  const bool spm = m.kind == Kind::kSentencePiece;
  std::string pre_name;
  if (!spm) {
    pre_name = file.get_string_or("tokenizer.ggml.pre", "default");
    m.pre = PreTokenizer::create(pre_name);
    ATOM_CHECK(m.pre != nullptr, kUnsupported,
               "{}: tokenizer.ggml.pre '{}' is not supported (supported: {})", path, pre_name,
               PreTokenizer::supported_names());
  }

  // --- vocabulary ---
  ATOM_CHECK(file.has("tokenizer.ggml.tokens"), kCorrupt,
             "{}: tokenizer.ggml.tokens is missing (tokenizer.ggml.model is '{}')", path, model);
  Vocab& v = m.vocab;
  v.texts = file.get_string_array("tokenizer.ggml.tokens");
  ATOM_CHECK(!v.texts.empty(), kCorrupt, "{}: tokenizer.ggml.tokens is empty", path);
  ATOM_CHECK(v.texts.size() < static_cast<size_t>(INT32_MAX), kCorrupt,
             "{}: tokenizer.ggml.tokens has {} entries, too many for 32-bit ids", path,
             v.texts.size());
  const size_t n = v.texts.size();

  v.types.assign(n, TokenType::kNormal);
  if (file.has("tokenizer.ggml.token_type")) {
    const auto& types = file.get_int_array("tokenizer.ggml.token_type");
    ATOM_CHECK(types.size() == n, kCorrupt,
               "{}: tokenizer.ggml.token_type has {} entries for {} tokens", path, types.size(), n);
    for (size_t i = 0; i < n; ++i) {
      ATOM_CHECK(types[i] >= 0 && types[i] <= 6, kCorrupt,
                 "{}: tokenizer.ggml.token_type[{}] = {} is not a token type (0..6)", path, i,
                 types[i]);
      v.types[i] = static_cast<TokenType>(types[i]);
    }
  }
  v.scores.assign(n, 0.0f);
  if (file.has("tokenizer.ggml.scores")) {
    const auto& scores = file.get_float_array("tokenizer.ggml.scores");
    ATOM_CHECK(scores.size() == n, kCorrupt,
               "{}: tokenizer.ggml.scores has {} entries for {} tokens", path, scores.size(), n);
    for (size_t i = 0; i < n; ++i) v.scores[i] = static_cast<float>(scores[i]);
  } else {
    ATOM_CHECK(!spm, kCorrupt,
               "{}: tokenizer.ggml.scores is missing; a SentencePiece vocabulary merges by score",
               path);
  }
  v.index.reserve(n);
  for (size_t i = 0; i < n; ++i) v.index.add(v.texts[i], static_cast<int32_t>(i));

  // --- special ids and flags ---
  auto special_id = [&](std::string_view key) -> int32_t {
    const int64_t id = file.get_int_or(key, -1);
    ATOM_CHECK(id >= -1 && id < static_cast<int64_t>(n), kCorrupt,
               "{}: {} = {} is outside the vocabulary of {} tokens", path, key, id, n);
    return static_cast<int32_t>(id);
  };
  m.bos = special_id("tokenizer.ggml.bos_token_id");
  m.eos = special_id("tokenizer.ggml.eos_token_id");
  m.unk = special_id("tokenizer.ggml.unknown_token_id");
  m.eot = special_id("tokenizer.ggml.eot_token_id");
  m.eom = special_id("tokenizer.ggml.eom_token_id");
  const bool bos_by_default =
      spm || pre_name == "llama3" || pre_name == "llama-bpe" || pre_name == "llama-v3";
  m.add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", bos_by_default && m.bos >= 0);
  m.add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", false);
  m.add_space_prefix = spm && file.get_bool_or("tokenizer.ggml.add_space_prefix", true);
  ATOM_CHECK(!m.add_bos || m.bos >= 0, kCorrupt,
             "{}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id", path);
  ATOM_CHECK(!m.add_eos || m.eos >= 0, kCorrupt,
             "{}: tokenizer.ggml.add_eos_token is set but there is no eos_token_id", path);
  m.chat_template = file.get_string_or("tokenizer.chat_template", "");

  // --- models ---
  if (spm) {
    m.spm = std::make_unique<SentencePieceBpe>(v, m.unk);
  } else {
    ATOM_CHECK(file.has("tokenizer.ggml.merges"), kCorrupt,
               "{}: tokenizer.ggml.merges is missing; a byte-level BPE vocabulary needs it", path);
    m.bpe = std::make_unique<ByteLevelBpe>(v, file.get_string_array("tokenizer.ggml.merges"),
                                           m.pre->ignore_merges());
  }

  // --- decode table ---
  const auto& alphabet = unicode::byte_level_alphabet();
  m.bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = v.texts[i];
    std::string& out = m.bytes[i];
    switch (v.types[i]) {
      case TokenType::kByte: {
        const int b = unicode::parse_byte_token(text);
        if (b >= 0) {
          out.push_back(static_cast<char>(b));
        } else {
          out = text;
        }
        break;
      }
      case TokenType::kControl:
      case TokenType::kUnknown:
      case TokenType::kUserDefined:
        out = text;  // added tokens decode to their text as written
        break;
      default:
        if (spm) {
          for (size_t pos = 0; pos < text.size();) {
            if (text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0) {
              out.push_back(' ');
              pos += kSpmSpace.size();
            } else {
              out.push_back(text[pos++]);
            }
          }
        } else {
          // Byte alphabet back to bytes; a character outside it (not in real vocabularies)
          // stays as its UTF-8.
          for (size_t pos = 0; pos < text.size();) {
            const unicode::Utf8Step step = unicode::utf8_next(text, pos);
            const int b = step.valid ? alphabet.byte_of(step.cp) : -1;
            if (b >= 0) {
              out.push_back(static_cast<char>(b));
            } else {
              out.append(text, pos, step.len);
            }
            pos += step.len;
          }
        }
        break;
    }
  }

  // --- special tokens matched in text ---
  m.rstrip.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = v.types[i];
    const bool added =
        t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
    if (!added || v.texts[i].empty()) continue;
    m.specials_by_byte[static_cast<unsigned char>(v.texts[i][0])].push_back(
        static_cast<int32_t>(i));
  }
  for (auto& bucket : m.specials_by_byte) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [&](int32_t a, int32_t b) { return v.texts[a].size() > v.texts[b].size(); });
  }
  // Phi-3's tokenizer.json marks its added tokens rstrip (except <unk>, <s>, <|endoftext|>);
  // GGUF has no field for it, so recognise the family by name as llama.cpp does.
  const std::string name = to_lower(file.get_string_or("general.name", ""));
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (const auto& bucket : m.specials_by_byte) {
      for (const int32_t id : bucket) m.rstrip[id] = 1;
    }
    for (const std::string_view t : {"</s>"}) {
      if (const auto id = v.index.find(t)) m.rstrip[*id] = 1;
    }
    for (const std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (const auto id = v.index.find(t)) m.rstrip[*id] = 0;
    }
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::unique_ptr<Tokenizer> Tokenizer::from_hf_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path json = fs::path(dir) / "tokenizer.json";
  ATOM_CHECK(fs::is_regular_file(json), kNotFound,
             "{}: the checkpoint folder has no tokenizer.json (atom reads HF fast tokenizers)",
             dir);
  const fs::path config = fs::path(dir) / "tokenizer_config.json";
  return from_hf(json.string(), fs::is_regular_file(config) ? config.string() : std::string());
}

std::unique_ptr<Tokenizer> Tokenizer::from_hf(const std::string& tokenizer_json_path,
                                              const std::string& tokenizer_config_json_path) {
  HfTokenizerData d = load_hf_tokenizer(tokenizer_json_path, tokenizer_config_json_path);
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.kind = d.byte_level ? Kind::kByteLevelBpe : Kind::kSentencePiece;
  m.vocab = std::move(d.vocab);
  m.bytes = std::move(d.bytes);
  m.first_bytes = std::move(d.first_bytes);
  m.hf = std::move(d.pipeline);
  m.bos = d.bos;
  m.eos = d.eos;
  m.unk = d.unk;
  m.add_bos = d.add_bos;
  m.add_eos = d.add_eos;
  m.add_space_prefix = d.strip_leading_space;
  m.chat_template = std::move(d.chat_template);
  m.rstrip.assign(m.vocab.texts.size(), 0);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::string sanitized;
  std::string_view text = input;
  if (!unicode::utf8_is_valid(text)) {
    sanitized = unicode::utf8_lossy(text);
    text = sanitized;
  }
  if (m.hf) return m.hf->encode(text, add_special_tokens);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special_tokens && m.add_bos) out.push_back(m.bos);

  // Leftmost-longest special tokens split the text; the stretches between go to the model.
  size_t plain_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const int32_t id = m.match_special(text, pos);
    if (id < 0) {
      ++pos;
      continue;
    }
    if (pos > plain_begin) {
      m.encode_text(text.substr(plain_begin, pos - plain_begin), out);
    }
    out.push_back(id);
    pos += m.vocab.texts[id].size();
    if (m.rstrip[id]) {
      while (pos < text.size()) {
        const unicode::Utf8Step step = unicode::utf8_next(text, pos);
        if (!is_unicode_whitespace(step.cp)) break;
        pos += step.len;
      }
    }
    plain_begin = pos;
  }
  if (text.size() > plain_begin) {
    m.encode_text(text.substr(plain_begin), out);
  }
  if (add_special_tokens && m.add_eos) out.push_back(m.eos);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::string bytes;
  bool at_start = true;
  bool first = true;
  for (const int32_t id : ids) {
    m.check_id(id);
    if (skip_special_tokens && m.special(id)) continue;
    std::string_view b = m.decoded(id, first);
    first = false;
    if (at_start && !b.empty()) {
      at_start = false;
      if (strips_leading_space() && b[0] == ' ') b.remove_prefix(1);
    }
    bytes.append(b);
  }
  return unicode::utf8_lossy(bytes);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  impl_->check_id(id);
  return impl_->bytes[id];
}

const std::string& Tokenizer::token_text(int32_t id) const {
  impl_->check_id(id);
  return impl_->vocab.texts[id];
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab.size(); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
Tokenizer::Kind Tokenizer::kind() const { return impl_->kind; }
bool Tokenizer::strips_leading_space() const { return impl_->add_space_prefix; }

bool Tokenizer::is_special(int32_t id) const {
  impl_->check_id(id);
  return impl_->special(id);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token_text) const {
  return impl_->vocab.index.find(token_text);
}

const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

std::vector<int32_t> Tokenizer::stop_ids() const {
  const Impl& m = *impl_;
  std::vector<int32_t> ids;
  auto add = [&](int32_t id) {
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  add(m.eos);
  add(m.eot);
  add(m.eom);
  for (const std::string_view text : kEndOfTurnTexts) {
    const auto id = m.vocab.index.find(text);
    if (id && m.vocab.types[*id] == TokenType::kControl) add(*id);
  }
  return ids;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  const Tokenizer::Impl& m = *tok_.impl_;
  // A model's vocabulary is often padded past its tokenizer's (Qwen2.5: 152064 rows, 151665
  // tokens); an id in the padding has no text, as in HF's decode, rather than failing the request.
  if (id >= m.vocab.size()) return {};
  m.check_id(id);
  if (skip_special_ && m.special(id)) return {};
  std::string_view b = m.decoded(id, first_token_);
  first_token_ = false;
  if (at_start_ && !b.empty()) {
    at_start_ = false;
    if (tok_.strips_leading_space() && b[0] == ' ') b.remove_prefix(1);
  }
  pending_.append(b);
  // Everything up to an unfinished trailing character is final: lossy conversion decides each
  // position from the bytes up to its own end, so this matches decoding all bytes at once.
  const size_t keep = unicode::utf8_incomplete_tail(pending_);
  std::string out =
      unicode::utf8_lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out = unicode::utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace atom

#include "atom/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "atom/core/error.h"
#include "atom/tokenizer/unicode.h"

namespace atom {

// A compiled pattern (UTF + UCP, JIT when available). Immutable after construction, so one
// instance serves all threads; each split() call brings its own match data.
class Pcre2Regex {
 public:
  explicit Pcre2Regex(std::string_view pattern) : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw_error(ErrorCode::kInternal, "pre-tokenizer regex '{}' does not compile at {}: {}",
                  pattern_, err_offset, reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimization only: a build of PCRE2 without it still matches correctly.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Pcre2Regex() { pcre2_code_free(code_); }
  Pcre2Regex(const Pcre2Regex&) = delete;
  Pcre2Regex& operator=(const Pcre2Regex&) = delete;

  // Splits text[piece] into matches and the gaps between them (HF "Isolated"); the subject is
  // the piece alone. Appends to out.
  void split(std::string_view text, Span piece, pcre2_match_data* md,
             std::vector<Span>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + piece.begin);
    const size_t len = piece.end - piece.begin;
    size_t gap_begin = 0;  // start of the text not yet emitted
    size_t start = 0;
    while (start < len) {
      // The caller validated the whole text once; pieces start and end on character bounds.
      const int rc = pcre2_match(code_, subject, len, start, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        throw_error(ErrorCode::kInternal, "pre-tokenizer regex '{}' failed: {}", pattern_,
                    reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t m_begin = ov[0], m_end = ov[1];
      if (m_end == m_begin) {
        // None of the patterns matches empty, but never loop on one: step one character.
        start = m_begin +
                unicode::utf8_next(std::string_view(text.data() + piece.begin, len), m_begin).len;
        continue;
      }
      if (m_begin > gap_begin) out.push_back(sub(piece, gap_begin, m_begin));
      out.push_back(sub(piece, m_begin, m_end));
      gap_begin = m_end;
      start = m_end;
    }
    if (gap_begin < len) out.push_back(sub(piece, gap_begin, len));
  }

 private:
  static Span sub(Span piece, size_t b, size_t e) {
    return {piece.begin + static_cast<uint32_t>(b), piece.begin + static_cast<uint32_t>(e)};
  }

  std::string pattern_;
  pcre2_code* code_ = nullptr;
};

namespace {

// HF ByteLevel(use_regex=true), i.e. GPT-2's pattern, with HF's final "\s+" alternative (with
// Isolated splitting, dropping it as llama.cpp does yields the same pieces).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3's Split pattern (tiktoken cl100k style): case-insensitive contractions, up to three
// digits per piece, newlines kept with the preceding punctuation.
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: as Llama 3 but one digit per piece.
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// HF Digits(individual_digits): Rust's char::is_numeric is the N* categories.
constexpr std::string_view kDigitsIndividual = R"(\p{N})";
constexpr std::string_view kDigitsContiguous = R"(\p{N}+)";
// HF Punctuation(Contiguous): ASCII punctuation (which includes the symbols $+<=>^`|~) or a
// Unicode P* character, consecutive ones merged.
constexpr std::string_view kPunctuationContiguous = R"([\p{P}!-/:-@\[-`{-~]+)";

}  // namespace

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::add_split(std::string_view pattern) {
  Step step;
  step.regex = std::make_unique<Pcre2Regex>(pattern);
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_byte_level(std::string_view pattern) {
  Step step;
  step.byte_level = true;
  if (!pattern.empty()) step.regex = std::make_unique<Pcre2Regex>(pattern);
  steps_.push_back(std::move(step));
}

std::string PreTokenizer::supported_names() {
  return "default, gpt-2, starcoder, smollm, deepseek-coder, falcon, llama3, llama-bpe, "
         "llama-v3, qwen2";
}

std::unique_ptr<PreTokenizer> PreTokenizer::create(std::string_view pre) {
  std::unique_ptr<PreTokenizer> p(new PreTokenizer());
  if (pre == "default" || pre == "gpt-2") {
    // tokenizer.json: ByteLevel(add_prefix_space=false, use_regex=true)
    p->add_byte_level(kGpt2Pattern);
  } else if (pre == "starcoder" || pre == "smollm") {
    // Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]
    p->add_split(kDigitsIndividual);
    p->add_byte_level(kGpt2Pattern);
  } else if (pre == "deepseek-coder") {
    // Sequence[Split("[\r\n]"), Split("\s?\p{L}+"), Split("\s?\p{P}+"), Split(CJK ranges),
    //          Digits(individual_digits=true), ByteLevel(use_regex=false)]
    p->add_split(R"([\r\n])");
    p->add_split(R"(\s?\p{L}+)");
    p->add_split(R"(\s?\p{P}+)");
    p->add_split(R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)");
    p->add_split(kDigitsIndividual);
    p->add_byte_level("");
  } else if (pre == "falcon") {
    // Sequence[Punctuation(Contiguous), ByteLevel(use_regex=true),
    //          Digits(individual_digits=false), Split("[0-9][0-9][0-9]")]; the last two see
    // the byte-level text, where e.g. the second byte of "½" is the numeric character '½'.
    p->add_split(kPunctuationContiguous);
    p->add_byte_level(kGpt2Pattern);
    p->add_split(kDigitsContiguous);
    p->add_split(R"([0-9][0-9][0-9])");
  } else if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3") {
    // Sequence[Split(pattern), ByteLevel(use_regex=false)], BPE ignore_merges=true
    p->add_split(kLlama3Pattern);
    p->add_byte_level("");
    p->ignore_merges_ = true;
  } else if (pre == "qwen2") {
    // Sequence[Split(pattern), ByteLevel(use_regex=false)]. The NFC normalizer of Qwen2's
    // tokenizer.json is not applied: inputs that are not already NFC may split differently.
    p->add_split(kQwen2Pattern);
    p->add_byte_level("");
  } else {
    return nullptr;
  }
  return p;
}

void PreTokenizer::split(std::string_view text, std::string& mapped,
                         std::vector<Span>& words) const {
  ATOM_CHECK(text.size() < UINT32_MAX, kOutOfRange, "text of {} bytes is too long to tokenize",
             text.size());
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
  ATOM_CHECK(md != nullptr, kInternal, "out of memory creating regex match data");

  std::string current(text);
  std::vector<Span> pieces;
  if (!current.empty()) pieces.push_back({0, static_cast<uint32_t>(current.size())});
  std::vector<Span> next;
  bool is_mapped = false;

  const auto& alphabet = unicode::byte_level_alphabet();
  // Rewrites current into the byte alphabet and moves the piece bounds along.
  auto map_to_alphabet = [&]() {
    std::string out;
    out.reserve(current.size() * 2);
    std::vector<uint32_t> new_pos(current.size() + 1);
    for (size_t i = 0; i < current.size(); ++i) {
      new_pos[i] = static_cast<uint32_t>(out.size());
      out += alphabet.byte_to_utf8[static_cast<unsigned char>(current[i])];
    }
    new_pos[current.size()] = static_cast<uint32_t>(out.size());
    for (Span& s : pieces) s = {new_pos[s.begin], new_pos[s.end]};
    current = std::move(out);
    is_mapped = true;
  };

  for (const Step& step : steps_) {
    if (step.regex) {
      next.clear();
      next.reserve(pieces.size() * 2);
      for (const Span& piece : pieces) step.regex->split(current, piece, md.get(), next);
      pieces.swap(next);
    }
    if (step.byte_level) map_to_alphabet();
  }
  if (!is_mapped) map_to_alphabet();
  mapped = std::move(current);
  words = std::move(pieces);
}

}  // namespace atom

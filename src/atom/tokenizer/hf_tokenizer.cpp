#include "atom/tokenizer/hf_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <clocale>
#include <cwctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "atom/core/error.h"
#include "atom/tokenizer/unicode.h"

namespace atom {

namespace {

using Json = nlohmann::json;

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

bool is_unicode_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos);
  s = std::move(out);
}

// A compiled PCRE2 pattern (UTF + UCP; literal for HF's String patterns). Immutable after
// construction; each call brings its own match data, so one instance serves all threads.
class Regex {
 public:
  Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                          &err, &err_offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw_error(ErrorCode::kUnsupported, "tokenizer regex '{}' does not compile at {}: {}",
                  pattern_, err_offset, reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // an optimization only
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-empty, non-overlapping matches of s, left to right, as [begin, end) byte offsets
  // (empty matches are stepped over: they would only produce empty pieces, which HF drops).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    ATOM_CHECK(md != nullptr, kInternal, "out of memory creating regex match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t start = 0;
    while (start < s.size()) {
      const int rc =
          pcre2_match(code_, subject, s.size(), start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      ATOM_CHECK(rc >= 0, kInternal, "tokenizer regex '{}' failed with code {}", pattern_, rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (ov[1] == ov[0]) {
        start = ov[0] + unicode::utf8_next(s, ov[0]).len;
        continue;
      }
      out.emplace_back(ov[0], ov[1]);
      start = ov[1];
    }
    return out;
  }

 private:
  std::string pattern_;
  pcre2_code* code_ = nullptr;
};

// HF's \w (Unicode word character) for added tokens' single_word; a one-character match.
bool is_word_char(std::string_view ch) {
  static const Regex word(R"(^\w$)", false);
  return !word.find_all(ch).empty();
}

// --- normalizers ---

// Whether the last (at_end) or first character of s is a letter.
bool is_letter(std::string_view s, bool at_end) {
  static const Regex last(R"(\p{L}$)", false), first(R"(^\p{L})", false);
  return !(at_end ? last : first).find_all(s).empty();
}

// Unicode lowercase of one code point (simple mapping from the C library's UTF-8 locale);
// final sigma and the dotted capital I follow Rust's str::to_lowercase, which HF uses.
class Lowercaser {
 public:
  Lowercaser() {
    for (const char* name : {"C.UTF-8", "C.utf8", "en_US.UTF-8"}) {
      loc_ = newlocale(LC_CTYPE_MASK, name, static_cast<locale_t>(0));
      if (loc_ != static_cast<locale_t>(0)) break;
    }
  }
  ~Lowercaser() {
    if (loc_ != static_cast<locale_t>(0)) freelocale(loc_);
  }
  std::string apply(std::string_view s) const {
    std::string out;
    out.reserve(s.size());
    for (size_t pos = 0; pos < s.size();) {
      const unicode::Utf8Step step = unicode::utf8_next(s, pos);
      const uint32_t cp = step.cp;
      if (cp < 0x80) {
        out.push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
      } else if (cp == 0x130) {
        unicode::utf8_append(out, U'i');
        unicode::utf8_append(out, 0x307);
      } else if (cp == 0x3A3) {
        // Final sigma: after a letter and not before one.
        const size_t next = pos + step.len;
        const bool after_letter = pos > 0 && is_letter(s.substr(0, pos), true);
        const bool before_letter = next < s.size() && is_letter(s.substr(next), false);
        unicode::utf8_append(out, after_letter && !before_letter ? 0x3C2 : 0x3C3);
      } else if (loc_ != static_cast<locale_t>(0)) {
        unicode::utf8_append(out, static_cast<char32_t>(towlower_l(static_cast<wint_t>(cp), loc_)));
      } else {
        out.append(s.substr(pos, step.len));
      }
      pos += step.len;
    }
    return out;
  }

 private:
  locale_t loc_ = static_cast<locale_t>(0);
};

struct NormStep {
  enum class Type { kNfc, kReplace, kPrepend, kLowercase } type;
  std::string a;                 // Replace: the String pattern; Prepend: the prefix
  std::string b;                 // Replace: the content
  std::shared_ptr<Regex> regex;  // Replace with a Regex pattern
};

// --- pre-tokenizers ---

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& s) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  throw_error(ErrorCode::kUnsupported, "split behavior '{}' is not supported", s);
}

struct PreStep {
  enum class Type { kSplit, kByteLevel, kMetaspace } type;
  std::shared_ptr<Regex> regex;  // kSplit; kByteLevel with use_regex
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
  std::string replacement;        // kMetaspace
  enum class Prepend { kAlways, kFirst, kNever } prepend = Prepend::kAlways;
  bool split = true;  // kMetaspace
};

struct Piece {
  std::string text;
  bool at_start;  // begins at offset 0 of the original input (Metaspace prepend_scheme first)
};

// HF's NormalizedString::split: the pattern's matches and the gaps between them, combined
// per behavior. Returns [begin, end) ranges of the pieces to keep, empty ones dropped.
std::vector<std::pair<size_t, size_t>> split_ranges(std::string_view s, const Regex& re,
                                                    Behavior behavior, bool invert) {
  struct Seg {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    if (b > prev) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev < s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (Seg& g : segs) g.is_match = !g.is_match;

  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Seg& g : segs) out.emplace_back(g.begin, g.end);
      break;
    case Behavior::kRemoved:
      for (const Seg& g : segs)
        if (!g.is_match) out.emplace_back(g.begin, g.end);
      break;
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const Seg& g : segs) {
        if (g.is_match == prev_match && !out.empty()) {
          out.back().second = g.end;
        } else {
          out.emplace_back(g.begin, g.end);
        }
        prev_match = g.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Seg& g : segs) {
        if (g.is_match && !prev_match && !out.empty()) {
          out.back().second = g.end;
        } else {
          out.emplace_back(g.begin, g.end);
        }
        prev_match = g.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !prev_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        prev_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  std::erase_if(out, [](const auto& r) { return r.first == r.second; });
  return out;
}

// --- added tokens ---

struct AddedToken {
  int32_t id;
  std::string content;  // as matched: normalized content for normalized tokens
  bool special, lstrip, rstrip, normalized, single_word;
};

// Leftmost-longest matching of a set of added tokens (what HF's Aho-Corasick automaton does).
class AddedMatcher {
 public:
  void build(const std::vector<AddedToken>& all, bool normalized) {
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].normalized != normalized || all[i].content.empty()) continue;
      by_byte_[static_cast<uint8_t>(all[i].content[0])].push_back(static_cast<int32_t>(i));
      empty_ = false;
    }
    for (auto& bucket : by_byte_) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
        return all[a].content.size() > all[b].content.size();
      });
    }
  }
  bool empty() const { return empty_; }

  // Cuts text at the added tokens: on_token(index into all) for each match, on_text(begin,
  // end) for each stretch between them (never empty).
  template <typename OnToken, typename OnText>
  void split(std::string_view text, const std::vector<AddedToken>& all, OnToken on_token,
             OnText on_text) const {
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      int32_t hit = -1;
      for (const int32_t i : by_byte_[static_cast<uint8_t>(text[pos])]) {
        if (text.compare(pos, all[i].content.size(), all[i].content) == 0) {
          hit = i;
          break;
        }
      }
      if (hit < 0) {
        ++pos;
        continue;
      }
      const AddedToken& t = all[hit];
      size_t start = pos, stop = pos + t.content.size();
      pos = stop;  // the automaton goes on after the match, taken or not
      if (t.single_word) {
        const bool start_ok = start == 0 || !is_word_char(last_char(text.substr(0, start)));
        const bool stop_ok = stop == text.size() || !is_word_char(first_char(text.substr(stop)));
        if (!start_ok || !stop_ok) continue;
      }
      if (t.lstrip) {
        size_t s = start;
        while (s > 0) {
          const std::string_view c = last_char(text.substr(0, s));
          if (!is_unicode_whitespace(unicode::utf8_next(c, 0).cp)) break;
          s -= c.size();
        }
        start = std::max(s, start_offset);
      }
      if (t.rstrip) {
        while (stop < text.size()) {
          const unicode::Utf8Step c = unicode::utf8_next(text, stop);
          if (!is_unicode_whitespace(c.cp)) break;
          stop += c.len;
        }
        pos = stop;
      }
      if (start_offset < start) on_text(start_offset, start);
      on_token(hit);
      start_offset = stop;
    }
    if (start_offset < text.size()) on_text(start_offset, text.size());
  }

 private:
  static std::string_view first_char(std::string_view s) {
    return s.substr(0, unicode::utf8_next(s, 0).len);
  }
  static std::string_view last_char(std::string_view s) {
    size_t b = s.size() - 1;
    while (b > 0 && (static_cast<uint8_t>(s[b]) & 0xC0) == 0x80) --b;
    return s.substr(b);
  }

  std::array<std::vector<int32_t>, 256> by_byte_;
  bool empty_ = true;
};

// --- BPE model ---

struct BpeModel {
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  std::unordered_map<uint64_t, Merge> merges;
  int32_t unk = -1;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::array<int32_t, 256> byte_tokens{};  // id of "<0xXX>", or -1

  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::optional<int32_t> find(std::string_view s) const {
    const auto it = vocab.find(s);
    if (it == vocab.end()) return std::nullopt;
    return it->second;
  }

  // HF BPE::tokenize of one pre-tokenized piece.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      if (const auto id = find(word)) {
        out.push_back(*id);
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int32_t prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&](int32_t id) {
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    };
    // A character outside the vocabulary: its byte tokens, else an <unk> that is held back
    // (fused with following unknowns when fuse_unk) until a known character comes.
    bool pending_unk = false;
    for (size_t pos = 0; pos < word.size();) {
      const uint32_t len = unicode::utf8_next(word, pos).len;
      const std::string_view ch = word.substr(pos, len);
      pos += len;
      if (const auto id = find(ch)) {
        if (pending_unk) add(unk);
        pending_unk = false;
        add(*id);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (const char c : ch) all = all && byte_tokens[static_cast<uint8_t>(c)] >= 0;
        if (all) {
          for (const char c : ch) add(byte_tokens[static_cast<uint8_t>(c)]);
          continue;
        }
      }
      if (unk >= 0) {
        if (pending_unk && !fuse_unk) add(unk);
        pending_unk = true;
      }
    }
    if (pending_unk) add(unk);
    if (symbols.empty()) return;
    symbols.back().next = -1;

    // Lowest rank first, then leftmost (HF Word::merge_all).
    struct Candidate {
      int32_t rank, pos, result;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto try_add = [&](int32_t left) {
      if (left < 0 || symbols[left].next < 0) return;
      const auto it = merges.find(key(symbols[left].id, symbols[symbols[left].next].id));
      if (it != merges.end()) queue.push({it->second.rank, left, it->second.result});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) try_add(i);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& left = symbols[c.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      const auto it = merges.find(key(left.id, right.id));
      if (it == merges.end() || it->second.result != c.result) continue;  // stale
      left.id = c.result;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = c.pos;
      try_add(left.prev);
      try_add(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
  }
};

// --- loading helpers ---

const Json& member(const Json& j, const char* key, std::string_view where) {
  ATOM_CHECK(j.is_object() && j.contains(key), kCorrupt, "{}: '{}' is missing", where, key);
  return j.at(key);
}

std::string str_or(const Json& j, const char* key, std::string def) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return def;
  ATOM_CHECK(j.at(key).is_string(), kCorrupt, "tokenizer.json: '{}' is not a string", key);
  return j.at(key).get<std::string>();
}

bool bool_or(const Json& j, const char* key, bool def) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return def;
  ATOM_CHECK(j.at(key).is_boolean(), kCorrupt, "tokenizer.json: '{}' is not a boolean", key);
  return j.at(key).get<bool>();
}

// A {"String": s} or {"Regex": r} pattern.
std::shared_ptr<Regex> parse_pattern(const Json& p, std::string_view where) {
  ATOM_CHECK(p.is_object(), kCorrupt, "{}: pattern is not an object", where);
  if (p.contains("String")) return std::make_shared<Regex>(p.at("String").get<std::string>(), true);
  if (p.contains("Regex")) return std::make_shared<Regex>(p.at("Regex").get<std::string>(), false);
  throw_error(ErrorCode::kUnsupported, "{}: pattern {} is neither String nor Regex", where,
              p.dump());
}

std::string type_of(const Json& j, std::string_view where) {
  ATOM_CHECK(j.is_object() && j.contains("type") && j.at("type").is_string(), kCorrupt,
             "tokenizer.json: {} has no type", where);
  return j.at("type").get<std::string>();
}

void parse_normalizer(const Json& j, std::vector<NormStep>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "normalizer");
  if (type == "Sequence") {
    for (const Json& n : member(j, "normalizers", "Sequence normalizer")) parse_normalizer(n, out);
  } else if (type == "NFC") {
    out.push_back({NormStep::Type::kNfc, {}, {}, {}});
  } else if (type == "Lowercase") {
    out.push_back({NormStep::Type::kLowercase, {}, {}, {}});
  } else if (type == "Prepend") {
    out.push_back(
        {NormStep::Type::kPrepend, member(j, "prepend", "Prepend").get<std::string>(), {}, {}});
  } else if (type == "Replace") {
    const Json& p = member(j, "pattern", "Replace normalizer");
    NormStep s{
        NormStep::Type::kReplace, {}, member(j, "content", "Replace").get<std::string>(), {}};
    if (p.contains("String")) {
      s.a = p.at("String").get<std::string>();
    } else {
      s.regex = parse_pattern(p, "Replace normalizer");
    }
    out.push_back(std::move(s));
  } else {
    throw_error(ErrorCode::kUnsupported, "tokenizer.json: normalizer type '{}' is not supported",
                type);
  }
}

void parse_pre_tokenizer(const Json& j, std::vector<PreStep>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "pre_tokenizer");
  PreStep s;
  if (type == "Sequence") {
    for (const Json& p : member(j, "pretokenizers", "Sequence pre_tokenizer"))
      parse_pre_tokenizer(p, out);
    return;
  }
  if (type == "Split") {
    s.type = PreStep::Type::kSplit;
    s.regex = parse_pattern(member(j, "pattern", "Split"), "Split pre_tokenizer");
    s.behavior = parse_behavior(member(j, "behavior", "Split").get<std::string>());
    s.invert = bool_or(j, "invert", false);
  } else if (type == "ByteLevel") {
    s.type = PreStep::Type::kByteLevel;
    s.add_prefix_space = bool_or(j, "add_prefix_space", true);
    if (bool_or(j, "use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, false);
  } else if (type == "Digits") {
    // Rust's char::is_numeric is the N* categories; each digit is its own match.
    s.type = PreStep::Type::kSplit;
    s.regex = std::make_shared<Regex>(R"(\p{N})", false);
    s.behavior =
        bool_or(j, "individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous;
  } else if (type == "Punctuation") {
    // Rust's char::is_ascii_punctuation or a Unicode P* character, one per match.
    s.type = PreStep::Type::kSplit;
    s.regex = std::make_shared<Regex>(R"([\p{P}!-/:-@\[-`{-~])", false);
    s.behavior = parse_behavior(str_or(j, "behavior", "Isolated"));
  } else if (type == "Whitespace") {
    s.type = PreStep::Type::kSplit;
    s.regex = std::make_shared<Regex>(R"(\w+|[^\w\s]+)", false);
    s.behavior = Behavior::kRemoved;
    s.invert = true;
  } else if (type == "WhitespaceSplit") {
    s.type = PreStep::Type::kSplit;
    s.regex = std::make_shared<Regex>(R"(\s+)", false);
    s.behavior = Behavior::kRemoved;
  } else if (type == "Metaspace") {
    s.type = PreStep::Type::kMetaspace;
    s.replacement = member(j, "replacement", "Metaspace").get<std::string>();
    const std::string scheme = str_or(j, "prepend_scheme", "");
    if (scheme.empty()) {
      // Older files: add_prefix_space instead of prepend_scheme.
      s.prepend = bool_or(j, "add_prefix_space", true) ? PreStep::Prepend::kAlways
                                                       : PreStep::Prepend::kNever;
    } else if (scheme == "always") {
      s.prepend = PreStep::Prepend::kAlways;
    } else if (scheme == "first") {
      s.prepend = PreStep::Prepend::kFirst;
    } else if (scheme == "never") {
      s.prepend = PreStep::Prepend::kNever;
    } else {
      throw_error(ErrorCode::kUnsupported, "Metaspace prepend_scheme '{}' is not supported",
                  scheme);
    }
    s.split = bool_or(j, "split", true);
    s.regex = std::make_shared<Regex>(s.replacement, true);
  } else {
    throw_error(ErrorCode::kUnsupported, "tokenizer.json: pre_tokenizer type '{}' is not supported",
                type);
  }
  out.push_back(std::move(s));
}

// Prefix and suffix ids the post-processor puts around a single sequence.
void parse_post_processor(const Json& j, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "post_processor");
  if (type == "Sequence") {
    for (const Json& p : member(j, "processors", "Sequence post_processor")) {
      std::vector<int32_t> pre, suf;
      parse_post_processor(p, pre, suf);
      prefix.insert(prefix.begin(), pre.begin(), pre.end());
      suffix.insert(suffix.end(), suf.begin(), suf.end());
    }
  } else if (type == "ByteLevel") {
    // Only trims offsets.
  } else if (type == "TemplateProcessing") {
    const Json& specials = member(j, "special_tokens", "TemplateProcessing");
    bool seen_a = false;
    for (const Json& item : member(j, "single", "TemplateProcessing")) {
      if (item.contains("Sequence")) {
        const std::string id = item.at("Sequence").at("id").get<std::string>();
        ATOM_CHECK(id == "A" && !seen_a, kCorrupt,
                   "TemplateProcessing single template uses sequence '{}'", id);
        seen_a = true;
        continue;
      }
      ATOM_CHECK(item.contains("SpecialToken"), kCorrupt,
                 "TemplateProcessing item {} is neither Sequence nor SpecialToken", item.dump());
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      ATOM_CHECK(specials.contains(name), kCorrupt,
                 "TemplateProcessing uses '{}', which special_tokens does not define", name);
      for (const Json& id : specials.at(name).at("ids"))
        (seen_a ? suffix : prefix).push_back(id.get<int32_t>());
    }
    ATOM_CHECK(seen_a, kCorrupt, "TemplateProcessing single template has no $A");
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    prefix.push_back(member(j, "cls", type).at(1).get<int32_t>());
    suffix.push_back(member(j, "sep", type).at(1).get<int32_t>());
  } else {
    throw_error(ErrorCode::kUnsupported,
                "tokenizer.json: post_processor type '{}' is not supported", type);
  }
}

struct DecStep {
  enum class Type { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } type;
  std::string a, b;  // Replace: pattern, content; Strip: content; Metaspace: replacement
  int start = 0, stop = 0;
  bool prepend = true;  // Metaspace: prepend_scheme != never
};

void parse_decoder(const Json& j, std::vector<DecStep>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "decoder");
  DecStep s{};
  if (type == "Sequence") {
    for (const Json& d : member(j, "decoders", "Sequence decoder")) parse_decoder(d, out);
    return;
  }
  if (type == "ByteLevel") {
    s.type = DecStep::Type::kByteLevel;
  } else if (type == "ByteFallback") {
    s.type = DecStep::Type::kByteFallback;
  } else if (type == "Fuse") {
    s.type = DecStep::Type::kFuse;
  } else if (type == "Replace") {
    s.type = DecStep::Type::kReplace;
    const Json& p = member(j, "pattern", "Replace decoder");
    ATOM_CHECK(p.contains("String"), kUnsupported,
               "tokenizer.json: Replace decoder with a Regex pattern is not supported");
    s.a = p.at("String").get<std::string>();
    s.b = member(j, "content", "Replace decoder").get<std::string>();
  } else if (type == "Strip") {
    s.type = DecStep::Type::kStrip;
    s.a = member(j, "content", "Strip decoder").get<std::string>();
    s.start = member(j, "start", "Strip decoder").get<int>();
    s.stop = member(j, "stop", "Strip decoder").get<int>();
  } else if (type == "Metaspace") {
    s.type = DecStep::Type::kMetaspace;
    s.a = member(j, "replacement", "Metaspace decoder").get<std::string>();
    const std::string scheme = str_or(j, "prepend_scheme", "");
    s.prepend = scheme.empty() ? bool_or(j, "add_prefix_space", true) : scheme != "never";
  } else {
    throw_error(ErrorCode::kUnsupported, "tokenizer.json: decoder type '{}' is not supported",
                type);
  }
  out.push_back(std::move(s));
}

Json read_json(const std::string& path) {
  ATOM_CHECK(std::filesystem::exists(path), kNotFound, "{}: no such file", path);
  std::ifstream in(path, std::ios::binary);
  ATOM_CHECK(in.good(), kIo, "{}: cannot open", path);
  try {
    return Json::parse(in);
  } catch (const Json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{}: not valid JSON: {}", path, e.what());
  }
}

// tokenizer_config.json names tokens as a string or as {"content": ...}.
std::string config_token(const Json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return {};
  const Json& v = cfg.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return {};
}

}  // namespace

struct HfPipeline::Parts {
  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre;
  BpeModel model;
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, normalized_matcher;
  std::vector<int32_t> prefix, suffix;
  Lowercaser lowercaser;

  std::string normalize(std::string_view text) const {
    std::string s(text);
    for (const NormStep& n : normalizers) {
      switch (n.type) {
        case NormStep::Type::kNfc:
          s = nfc_normalize(s);
          break;
        case NormStep::Type::kLowercase:
          s = lowercaser.apply(s);
          break;
        case NormStep::Type::kPrepend:
          if (!s.empty()) s.insert(0, n.a);
          break;
        case NormStep::Type::kReplace:
          if (n.regex) {
            std::string out;
            size_t prev = 0;
            for (const auto& [b, e] : n.regex->find_all(s)) {
              out.append(s, prev, b - prev);
              out.append(n.b);
              prev = e;
            }
            out.append(s, prev);
            s = std::move(out);
          } else {
            replace_all(s, n.a, n.b);
          }
          break;
      }
    }
    return s;
  }

  std::vector<Piece> pre_tokenize(std::string_view text, bool at_start) const {
    std::vector<Piece> pieces{{std::string(text), at_start}};
    std::vector<Piece> next;
    const auto& alphabet = unicode::byte_level_alphabet();
    for (const PreStep& step : pre) {
      next.clear();
      for (Piece& p : pieces) {
        if (step.type == PreStep::Type::kByteLevel) {
          if (step.add_prefix_space && !starts_with(p.text, " ")) p.text = " " + p.text;
        } else if (step.type == PreStep::Type::kMetaspace) {
          replace_all(p.text, " ", step.replacement);
          const bool prepend = step.prepend == PreStep::Prepend::kAlways ||
                               (step.prepend == PreStep::Prepend::kFirst && p.at_start);
          if (prepend && !starts_with(p.text, step.replacement)) p.text.insert(0, step.replacement);
        }
        const bool split = step.regex && (step.type != PreStep::Type::kMetaspace || step.split);
        std::vector<std::pair<size_t, size_t>> ranges;
        if (split) {
          const Behavior b =
              step.type == PreStep::Type::kSplit
                  ? step.behavior
                  : (step.type == PreStep::Type::kByteLevel ? Behavior::kIsolated
                                                            : Behavior::kMergedWithNext);
          ranges = split_ranges(p.text, *step.regex, b, step.invert);
        } else if (!p.text.empty()) {
          ranges.emplace_back(0, p.text.size());
        }
        for (const auto& [b, e] : ranges) {
          std::string sub = p.text.substr(b, e - b);
          if (step.type == PreStep::Type::kByteLevel) {
            std::string mapped;
            mapped.reserve(sub.size() * 2);
            for (const char c : sub) mapped += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
            sub = std::move(mapped);
          }
          next.push_back({std::move(sub), p.at_start && b == 0});
        }
      }
      pieces.swap(next);
    }
    return pieces;
  }

  void encode_plain(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
    for (const Piece& p : pre_tokenize(text, at_start)) model.encode_word(p.text, out);
  }
};

HfPipeline::HfPipeline(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}
HfPipeline::~HfPipeline() = default;

std::vector<int32_t> HfPipeline::encode(std::string_view text, bool add_special_tokens) const {
  const Parts& m = *parts_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = m.prefix;
  m.raw_matcher.split(
      text, m.added, [&](int32_t i) { out.push_back(m.added[i].id); },
      [&](size_t begin, size_t end) {
        const std::string normalized = m.normalize(text.substr(begin, end - begin));
        if (m.normalized_matcher.empty()) {
          m.encode_plain(normalized, begin == 0, out);
          return;
        }
        m.normalized_matcher.split(
            normalized, m.added, [&](int32_t i) { out.push_back(m.added[i].id); },
            [&](size_t b, size_t e) {
              m.encode_plain(std::string_view(normalized).substr(b, e - b), begin == 0 && b == 0,
                             out);
            });
      });
  if (add_special_tokens) out.insert(out.end(), m.suffix.begin(), m.suffix.end());
  return out;
}

HfTokenizerData load_hf_tokenizer(const std::string& tokenizer_json_path,
                                  const std::string& tokenizer_config_json_path) {
  const std::string& path = tokenizer_json_path;
  const Json root = read_json(path);
  const Json cfg =
      tokenizer_config_json_path.empty() ? Json::object() : read_json(tokenizer_config_json_path);
  ATOM_CHECK(root.is_object(), kCorrupt, "{}: not a JSON object", path);
  auto parts = std::make_unique<HfPipeline::Parts>();
  HfPipeline::Parts& p = *parts;
  HfTokenizerData d;

  try {
    // --- model ---
    const Json& model = member(root, "model", path);
    const std::string model_type = str_or(model, "type", "BPE");
    ATOM_CHECK(model_type == "BPE", kUnsupported,
               "{}: model type '{}' is not supported (supported: BPE)", path, model_type);
    ATOM_CHECK(str_or(model, "continuing_subword_prefix", "").empty() &&
                   str_or(model, "end_of_word_suffix", "").empty(),
               kUnsupported,
               "{}: BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
    ATOM_CHECK(!model.contains("dropout") || model.at("dropout").is_null() ||
                   model.at("dropout").get<double>() == 0.0,
               kUnsupported, "{}: BPE dropout is not supported", path);
    BpeModel& bpe = p.model;
    bpe.byte_fallback = bool_or(model, "byte_fallback", false);
    bpe.fuse_unk = bool_or(model, "fuse_unk", false);
    bpe.ignore_merges = bool_or(model, "ignore_merges", false);
    int32_t max_id = -1;
    const Json& vocab = member(model, "vocab", "model");
    ATOM_CHECK(vocab.is_object(), kCorrupt, "{}: model.vocab is not an object", path);
    bpe.vocab.reserve(vocab.size());
    for (const auto& [text, id] : vocab.items()) {
      ATOM_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
                 kCorrupt, "{}: model.vocab['{}'] is not a valid id", path, text);
      bpe.vocab.emplace(text, id.get<int32_t>());
      max_id = std::max(max_id, id.get<int32_t>());
    }
    const std::string unk = str_or(model, "unk_token", "");
    if (!unk.empty()) {
      const auto id = bpe.find(unk);
      ATOM_CHECK(id.has_value(), kCorrupt, "{}: unk_token '{}' is not in the vocabulary", path,
                 unk);
      bpe.unk = *id;
    }
    for (int b = 0; b < 256; ++b)
      bpe.byte_tokens[b] =
          bpe.byte_fallback ? bpe.find(fmt::format("<0x{:02X}>", b)).value_or(-1) : -1;
    const Json& merges = member(model, "merges", "model");
    bpe.merges.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const Json& m = merges[rank];
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sep = s.find(' ');
        ATOM_CHECK(sep != std::string::npos && s.find(' ', sep + 1) == std::string::npos, kCorrupt,
                   "{}: merges[{}] '{}' is not of the form 'left right'", path, rank, s);
        left = s.substr(0, sep);
        right = s.substr(sep + 1);
      } else {
        ATOM_CHECK(m.is_array() && m.size() == 2, kCorrupt,
                   "{}: merges[{}] is neither 'a b' nor [a, b]", path, rank);
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      }
      const auto l = bpe.find(left), r = bpe.find(right), res = bpe.find(left + right);
      ATOM_CHECK(l && r && res, kCorrupt,
                 "{}: merges[{}] ('{}', '{}') uses or makes a token not in the vocabulary", path,
                 rank, left, right);
      bpe.merges.try_emplace(BpeModel::key(*l, *r),
                             BpeModel::Merge{static_cast<int32_t>(rank), *res});
    }

    // --- pipeline components ---
    parse_normalizer(root.value("normalizer", Json()), p.normalizers);
    parse_pre_tokenizer(root.value("pre_tokenizer", Json()), p.pre);
    parse_post_processor(root.value("post_processor", Json()), p.prefix, p.suffix);
    std::vector<DecStep> decoder;
    parse_decoder(root.value("decoder", Json()), decoder);

    // --- added tokens ---
    for (const Json& t : root.value("added_tokens", Json::array())) {
      AddedToken a;
      a.id = member(t, "id", "added token").get<int32_t>();
      a.content = member(t, "content", "added token").get<std::string>();
      a.special = bool_or(t, "special", false);
      a.lstrip = bool_or(t, "lstrip", false);
      a.rstrip = bool_or(t, "rstrip", false);
      a.normalized = bool_or(t, "normalized", !a.special);
      a.single_word = bool_or(t, "single_word", false);
      ATOM_CHECK(a.id >= 0 && a.id < INT32_MAX, kCorrupt, "{}: added token '{}' has id {}", path,
                 a.content, a.id);
      max_id = std::max(max_id, a.id);
      p.added.push_back(std::move(a));
    }
    ATOM_CHECK(max_id >= 0, kCorrupt, "{}: the vocabulary is empty", path);

    // --- vocabulary as Tokenizer sees it: added tokens override the model's texts ---
    const size_t n = static_cast<size_t>(max_id) + 1;
    Vocab& v = d.vocab;
    v.texts.assign(n, {});
    v.types.assign(n, TokenType::kUndefined);
    v.scores.assign(n, 0.0f);
    for (const auto& [text, id] : bpe.vocab) {
      v.texts[id] = text;
      v.types[id] =
          bpe.byte_fallback && unicode::parse_byte_token(text) >= 0 ? TokenType::kByte : TokenType::kNormal;
    }
    for (const AddedToken& a : p.added) {
      v.texts[a.id] = a.content;
      v.types[a.id] = a.special ? TokenType::kControl : TokenType::kUserDefined;
    }
    v.index.reserve(n);
    for (const AddedToken& a : p.added) v.index.add(a.content, a.id);
    for (size_t i = 0; i < n; ++i)
      if (v.types[i] != TokenType::kUndefined) v.index.add(v.texts[i], static_cast<int32_t>(i));
    d.unk = bpe.unk;

    // Normalized added tokens are matched in normalized text, so by their normalized content.
    for (AddedToken& a : p.added)
      if (a.normalized) a.content = p.normalize(a.content);
    p.raw_matcher.build(p.added, false);
    p.normalized_matcher.build(p.added, true);

    // --- decode tables ---
    const auto& alphabet = unicode::byte_level_alphabet();
    bool fused = false;
    bool first_differs = false;
    for (const DecStep& s : decoder) {
      if (s.type == DecStep::Type::kByteLevel) {
        d.byte_level = true;
        fused = true;
      } else if (s.type == DecStep::Type::kFuse) {
        fused = true;
      } else if (s.type == DecStep::Type::kStrip && fused) {
        ATOM_CHECK(s.stop == 0 && (s.start == 0 || (s.start == 1 && s.a == " ")), kUnsupported,
                   "{}: Strip decoder ('{}', {}, {}) after Fuse is not supported", path, s.a,
                   s.start, s.stop);
        d.strip_leading_space = s.start == 1;
      } else if (s.type == DecStep::Type::kMetaspace) {
        ATOM_CHECK(!fused, kUnsupported, "{}: Metaspace decoder after a fusing decoder", path);
        first_differs = s.prepend;
      } else if (fused && s.type != DecStep::Type::kStrip) {
        throw_error(ErrorCode::kUnsupported,
                    "{}: decoder steps after ByteLevel/Fuse are not supported", path);
      }
    }
    d.bytes.resize(n);
    if (first_differs) d.first_bytes.resize(n);
    for (size_t i = 0; i < n; ++i) {
      std::string s = v.texts[i];
      std::string first = s;
      for (const DecStep& st : decoder) {
        for (std::string* t : {&s, &first}) {
          switch (st.type) {
            case DecStep::Type::kByteLevel: {
              std::string out;
              bool all = true;
              for (size_t pos = 0; pos < t->size() && all;) {
                const unicode::Utf8Step step = unicode::utf8_next(*t, pos);
                const int b = step.valid ? alphabet.byte_of(step.cp) : -1;
                all = b >= 0;
                out.push_back(static_cast<char>(b));
                pos += step.len;
              }
              if (all) *t = std::move(out);  // else the token stays as its UTF-8 (HF)
              break;
            }
            case DecStep::Type::kReplace:
              replace_all(*t, st.a, st.b);
              break;
            case DecStep::Type::kByteFallback: {
              const int b = unicode::parse_byte_token(*t);
              if (b >= 0) *t = std::string(1, static_cast<char>(b));
              break;
            }
            case DecStep::Type::kFuse:
              break;
            case DecStep::Type::kStrip:
              if (fused) break;  // the whole-output strip is strip_leading_space
              for (int k = 0; k < st.start && starts_with(*t, st.a); ++k) t->erase(0, st.a.size());
              for (int k = 0; k < st.stop && t->size() >= st.a.size() &&
                              t->compare(t->size() - st.a.size(), st.a.size(), st.a) == 0;
                   ++k)
                t->resize(t->size() - st.a.size());
              break;
            case DecStep::Type::kMetaspace:
              if (t == &first && st.prepend) {
                replace_all(*t, st.a, "");
              } else {
                replace_all(*t, st.a, " ");
              }
              break;
          }
        }
      }
      d.bytes[i] = std::move(s);
      if (first_differs) d.first_bytes[i] = std::move(first);
    }

    // --- special ids, flags, template ---
    auto id_of = [&](const std::string& text) -> int32_t {
      if (text.empty()) return -1;
      return v.index.find_or(text, -1);
    };
    d.bos = id_of(config_token(cfg, "bos_token"));
    d.eos = id_of(config_token(cfg, "eos_token"));
    if (d.bos < 0 && !p.prefix.empty()) d.bos = p.prefix.front();
    if (d.eos < 0 && !p.suffix.empty()) d.eos = p.suffix.back();
    if (d.eos < 0) {
      // No config: the usual end-of-text tokens of the families.
      for (const char* t : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"}) {
        const int32_t id = id_of(t);
        if (id >= 0 && v.types[id] == TokenType::kControl) {
          d.eos = id;
          break;
        }
      }
    }
    d.add_bos = d.bos >= 0 && std::find(p.prefix.begin(), p.prefix.end(), d.bos) != p.prefix.end();
    d.add_eos = d.eos >= 0 && std::find(p.suffix.begin(), p.suffix.end(), d.eos) != p.suffix.end();
    for (const int32_t id : p.prefix)
      ATOM_CHECK(id >= 0 && static_cast<size_t>(id) < n, kCorrupt,
                 "{}: post_processor id {} is outside the vocabulary", path, id);
    for (const int32_t id : p.suffix)
      ATOM_CHECK(id >= 0 && static_cast<size_t>(id) < n, kCorrupt,
                 "{}: post_processor id {} is outside the vocabulary", path, id);
    if (cfg.is_object() && cfg.contains("chat_template")) {
      const Json& t = cfg.at("chat_template");
      if (t.is_string()) {
        d.chat_template = t.get<std::string>();
      } else if (t.is_array()) {
        // Named templates: [{"name": "default", "template": ...}, ...]
        for (const Json& e : t)
          if (e.value("name", "") == "default") d.chat_template = e.value("template", "");
      }
    }
  } catch (const Json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{}: unexpected JSON structure: {}", path, e.what());
  }
  d.pipeline = std::make_unique<HfPipeline>(std::move(parts));
  return d;
}

// --- NFC ---

namespace {

struct NfcCcc {
  uint32_t cp;
  uint8_t ccc;
};
struct NfcDecomp {
  uint32_t cp, first, second;
  bool composes;
};
#include "atom/tokenizer/nfc_data.inc"

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint8_t ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto it = std::lower_bound(std::begin(kNfcCcc), std::end(kNfcCcc), cp,
                                   [](const NfcCcc& e, uint32_t c) { return e.cp < c; });
  return it != std::end(kNfcCcc) && it->cp == cp ? it->ccc : 0;
}

const NfcDecomp* decomp_of(uint32_t cp) {
  const auto it = std::lower_bound(std::begin(kNfcDecomp), std::end(kNfcDecomp), cp,
                                   [](const NfcDecomp& e, uint32_t c) { return e.cp < c; });
  return it != std::end(kNfcDecomp) && it->cp == cp ? &*it : nullptr;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const NfcDecomp* d = decomp_of(cp);
  if (d == nullptr) {
    out.push_back(cp);
    return;
  }
  decompose(d->first, out);
  if (d->second != 0) decompose(d->second, out);
}

// (first, second) -> primary composite.
const std::unordered_map<uint64_t, uint32_t>& compositions() {
  static const std::unordered_map<uint64_t, uint32_t> map = [] {
    std::unordered_map<uint64_t, uint32_t> m;
    for (const NfcDecomp& d : kNfcDecomp)
      if (d.composes) m.emplace((static_cast<uint64_t>(d.first) << 32) | d.second, d.cp);
    return m;
  }();
  return map;
}

std::optional<uint32_t> compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& m = compositions();
  const auto it = m.find((static_cast<uint64_t>(a) << 32) | b);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

}  // namespace

std::string nfc_normalize(std::string_view text) {
  // Text below U+0300 has no combining marks, singletons or composing pairs: already NFC.
  bool simple = true;
  for (const char c : text) simple = simple && static_cast<uint8_t>(c) < 0xCC;
  if (simple) return std::string(text);

  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Utf8Step step = unicode::utf8_next(text, pos);
    decompose(step.valid ? step.cp : 0xFFFD, cps);
    pos += step.len;
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc_of(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc_of(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + static_cast<ptrdiff_t>(i),
                     cps.begin() + static_cast<ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless something between them
  // blocks it (a starter, or a mark of the same or higher class).
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  std::optional<size_t> starter;
  int last_ccc = -1;  // class of the last character appended after the starter, -1 if none
  for (const uint32_t cp : cps) {
    const int ccc = ccc_of(cp);
    if (starter && (last_ccc == -1 || (last_ccc != 0 && last_ccc < ccc))) {
      if (const auto c = compose(out[*starter], cp)) {
        out[*starter] = *c;
        continue;
      }
    }
    if (ccc == 0) {
      starter = out.size();
      last_ccc = -1;
    } else {
      last_ccc = ccc;
    }
    out.push_back(cp);
  }
  std::string s;
  s.reserve(text.size());
  for (const uint32_t cp : out) unicode::utf8_append(s, cp);
  return s;
}

}  // namespace atom

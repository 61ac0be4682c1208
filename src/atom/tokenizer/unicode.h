// UTF-8 helpers shared by the tokenizers: well-formedness per the Unicode standard (Table 3-7),
// lossy conversion with one U+FFFD per maximal invalid subpart (the policy of Python's
// errors="replace" and Rust's from_utf8_lossy, which HF decoders use), and the GPT-2
// byte <-> unicode alphabet of byte-level BPE.
#pragma once

#include "atom/core/utf8.h"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace atom::unicode {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// One step of UTF-8 decoding at some position.
struct Utf8Step {
  uint32_t len = 0;        // bytes consumed: a whole character, or the maximal invalid subpart
  bool valid = false;      // len bytes form one well-formed character
  bool truncated = false;  // !valid only because the input ended inside a well-formed prefix
  uint32_t cp = 0;         // the code point when valid
};

// Decodes the character starting at s[pos] (pos < s.size()).
Utf8Step utf8_next(std::string_view s, size_t pos);

// True when every byte of s belongs to a well-formed character.
bool utf8_is_valid(std::string_view s);

// s with every maximal invalid subpart replaced by U+FFFD.
std::string utf8_lossy(std::string_view s);

// Length of the longest suffix of s that is a well-formed but unfinished character (0..3):
// bytes a streaming decoder must hold back until more input arrives.
size_t utf8_incomplete_tail(std::string_view s);

using ::atom::utf8_append;  // core/utf8.h

// SentencePiece byte-fallback token text "<0x0A>" -> 0x0A; -1 when text is not of that form.
int parse_byte_token(std::string_view text);

// GPT-2's reversible byte -> printable code point map: bytes that are printable Latin-1
// (33..126, 161..172, 174..255) map to themselves, the other 68 to 256, 257, ... in byte order.
struct ByteLevelAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;  // byte_to_cp as UTF-8 (1 or 2 bytes)
  std::array<int16_t, 324> cp_to_byte{};      // -1 for code points outside the alphabet

  // The byte a code point stands for, or -1.
  int byte_of(uint32_t cp) const { return cp < cp_to_byte.size() ? cp_to_byte[cp] : -1; }
};

const ByteLevelAlphabet& byte_level_alphabet();

}  // namespace atom::unicode

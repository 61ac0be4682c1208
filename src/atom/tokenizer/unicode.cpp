#include "atom/tokenizer/unicode.h"

namespace atom::unicode {

namespace {

bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

}  // namespace

Utf8Step utf8_next(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t avail = s.size() - pos;
  const unsigned char c0 = p[0];
  Utf8Step step;
  if (c0 < 0x80) {
    return {1, true, false, c0};
  }
  // Expected length and the allowed range of the second byte (Table 3-7); later bytes are
  // always 80..BF.
  uint32_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  uint32_t cp = 0;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    need = 2;
    cp = c0 & 0x1F;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    need = 3;
    cp = c0 & 0x0F;
    if (c0 == 0xE0) lo = 0xA0;
    if (c0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    need = 4;
    cp = c0 & 0x07;
    if (c0 == 0xF0) lo = 0x90;
    if (c0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    step.len = 1;  // a stray continuation byte, C0/C1 or F5..FF: never valid
    return step;
  }
  uint32_t i = 1;
  for (; i < need; ++i) {
    if (i >= avail) {
      step.len = i;
      step.truncated = true;
      return step;
    }
    const unsigned char c = p[i];
    const bool ok = (i == 1) ? (c >= lo && c <= hi) : is_cont(c);
    if (!ok) {
      step.len = i;
      return step;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  return {need, true, false, cp};
}

bool utf8_is_valid(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Step step = utf8_next(s, pos);
    if (!step.valid) return false;
    pos += step.len;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Step step = utf8_next(s, pos);
    if (step.valid) {
      out.append(s.substr(pos, step.len));
    } else {
      out.append(kReplacementChar);
    }
    pos += step.len;
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
  // A well-formed prefix is at most 3 bytes, so only the last 3 lead positions can start one.
  const size_t first = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t pos = first; pos < s.size(); ++pos) {
    const auto c = static_cast<unsigned char>(s[pos]);
    if (is_cont(c)) continue;
    const Utf8Step step = utf8_next(s, pos);
    if (step.truncated && pos + step.len == s.size()) return step.len;
  }
  return 0;
}

namespace {

ByteLevelAlphabet make_alphabet() {
  ByteLevelAlphabet a;
  a.cp_to_byte.fill(-1);
  uint32_t next_extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? b : next_extra++;
    a.byte_to_cp[b] = cp;
    a.cp_to_byte[cp] = static_cast<int16_t>(b);
    utf8_append(a.byte_to_utf8[b], cp);
  }
  return a;
}

}  // namespace

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = make_alphabet();
  return alphabet;
}

int parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int v = 0;
  for (const char c : text.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

}  // namespace atom::unicode

#include "atom/chat/py_str.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

namespace atom::jinja::py {

namespace {

constexpr char32_t kReplacement = 0xFFFD;

// Decodes one code point at text[i], advancing i; invalid sequences yield U+FFFD for one byte.
char32_t next_cp(std::string_view text, size_t& i) {
  const auto b0 = static_cast<unsigned char>(text[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int extra = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    extra = 1, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    extra = 2, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    extra = 3, cp = b0 & 0x07, min = 0x10000;
  } else {
    ++i;
    return kReplacement;
  }
  if (i + extra >= text.size()) {
    ++i;
    return kReplacement;
  }
  for (int k = 1; k <= extra; ++k) {
    const auto b = static_cast<unsigned char>(text[i + k]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      return kReplacement;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++i;
    return kReplacement;
  }
  i += extra + 1;
  return cp;
}

bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

// Latin Extended-A (U+0100..U+017F) pairs upper/lower on adjacent code points; which of the pair
// is upper flips between sub-ranges.
bool latin_ext_a_even_upper(char32_t c) {
  return (c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177);
}
bool latin_ext_a_odd_upper(char32_t c) {
  return (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
}

bool is_cased(char32_t c) { return to_upper(c) != c || to_lower(c) != c || c == 0xDF; }

std::u32string chars_set(const std::optional<std::string>& chars) {
  return chars ? decode(*chars) : std::u32string();
}

void append_upper(std::string& out, char32_t c) {
  if (c == 0xDF) {  // German sharp s upper-cases to two letters, as in Python
    out += "SS";
    return;
  }
  utf8_append(out, to_upper(c));
}

}  // namespace

char32_t decode_next(std::string_view text, size_t& i) { return next_cp(text, i); }

std::u32string decode(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) out.push_back(next_cp(text, i));
  return out;
}

std::string encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) utf8_append(out, c);
  return out;
}

int64_t length(std::string_view text) {
  int64_t n = 0;
  size_t i = 0;
  while (i < text.size()) {
    next_cp(text, i);
    ++n;
  }
  return n;
}

bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

char32_t to_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  if (c == 0xB5) return 0x39C;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c == 0xFF) return 0x178;
  if (latin_ext_a_even_upper(c)) return (c & 1) ? c - 1 : c;
  if (latin_ext_a_odd_upper(c)) return (c & 1) ? c : c - 1;
  if (c == 0x131) return 'I';
  if (c == 0x17F) return 'S';
  if (c >= 0x3B1 && c <= 0x3CB && c != 0x3C2) return c - 32;
  if (c == 0x3C2) return 0x3A3;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

char32_t to_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (latin_ext_a_even_upper(c)) return (c & 1) ? c : c + 1;
  if (latin_ext_a_odd_upper(c)) return (c & 1) ? c + 1 : c;
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

bool is_cased_lower(char32_t c) { return to_upper(c) != c || c == 0xDF; }
bool is_cased_upper(char32_t c) { return to_lower(c) != c; }

bool is_alpha(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return is_cased(c) || (c >= 0x3040 && c <= 0x30FF) || (c >= 0x4E00 && c <= 0x9FFF) ||
         (c >= 0xAC00 && c <= 0xD7AF);
}

bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }

std::string upper(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) append_upper(out, next_cp(text, i));
  return out;
}

std::string lower(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) utf8_append(out, to_lower(next_cp(text, i)));
  return out;
}

std::string capitalize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  bool first = true;
  while (i < text.size()) {
    const char32_t c = next_cp(text, i);
    if (first) {
      append_upper(out, c);
    } else {
      utf8_append(out, to_lower(c));
    }
    first = false;
  }
  return out;
}

std::string title(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  bool previous_cased = false;
  while (i < text.size()) {
    const char32_t c = next_cp(text, i);
    if (previous_cased) {
      utf8_append(out, to_lower(c));
    } else {
      append_upper(out, c);
    }
    previous_cased = is_cased(c);
  }
  return out;
}

std::string swapcase(std::string_view text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const char32_t c = next_cp(text, i);
    if (is_cased_upper(c)) {
      utf8_append(out, to_lower(c));
    } else if (is_cased_lower(c)) {
      append_upper(out, c);
    } else {
      utf8_append(out, c);
    }
  }
  return out;
}

std::string strip(std::string_view text, const std::optional<std::string>& chars, bool left,
                  bool right) {
  const std::u32string set = chars_set(chars);
  const auto strippable = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : is_space(c);
  };
  const std::u32string cps = decode(text);
  size_t begin = 0;
  size_t end = cps.size();
  if (left) {
    while (begin < end && strippable(cps[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strippable(cps[end - 1])) --end;
  }
  return encode(std::u32string_view(cps).substr(begin, end - begin));
}

std::vector<std::string> split(std::string_view text, const std::optional<std::string>& sep,
                               int64_t maxsplit) {
  std::vector<std::string> parts;
  int64_t remaining = maxsplit < 0 ? std::numeric_limits<int64_t>::max() : maxsplit;
  if (sep) {
    size_t i = 0;
    while (remaining-- > 0) {
      const size_t pos = text.find(*sep, i);
      if (pos == std::string_view::npos) break;
      parts.emplace_back(text.substr(i, pos - i));
      i = pos + sep->size();
    }
    parts.emplace_back(text.substr(i));
    return parts;
  }
  const std::u32string s = decode(text);
  const size_t n = s.size();
  size_t i = 0;
  while (remaining-- > 0) {
    while (i < n && is_space(s[i])) ++i;
    if (i == n) break;
    const size_t j = i++;
    while (i < n && !is_space(s[i])) ++i;
    parts.push_back(encode(std::u32string_view(s).substr(j, i - j)));
  }
  if (i < n) {
    while (i < n && is_space(s[i])) ++i;
    if (i != n) parts.push_back(encode(std::u32string_view(s).substr(i)));
  }
  return parts;
}

std::vector<std::string> rsplit(std::string_view text, const std::optional<std::string>& sep,
                                int64_t maxsplit) {
  std::vector<std::string> parts;
  int64_t remaining = maxsplit < 0 ? std::numeric_limits<int64_t>::max() : maxsplit;
  if (sep) {
    size_t end = text.size();
    while (remaining-- > 0 && end >= sep->size()) {
      const size_t pos = text.rfind(*sep, end - sep->size());
      if (pos == std::string_view::npos) break;
      parts.emplace_back(text.substr(pos + sep->size(), end - pos - sep->size()));
      end = pos;
    }
    parts.emplace_back(text.substr(0, end));
  } else {
    const std::u32string s = decode(text);
    int64_t i = static_cast<int64_t>(s.size()) - 1;
    while (remaining-- > 0) {
      while (i >= 0 && is_space(s[i])) --i;
      if (i < 0) break;
      const int64_t j = i--;
      while (i >= 0 && !is_space(s[i])) --i;
      parts.push_back(encode(std::u32string_view(s).substr(i + 1, j - i)));
    }
    if (i >= 0) {
      while (i >= 0 && is_space(s[i])) --i;
      if (i >= 0) parts.push_back(encode(std::u32string_view(s).substr(0, i + 1)));
    }
  }
  return {parts.rbegin(), parts.rend()};
}

std::vector<std::string> splitlines(std::string_view text, bool keepends) {
  const std::u32string s = decode(text);
  std::vector<std::string> lines;
  size_t i = 0;
  while (i < s.size()) {
    const size_t j = i;
    while (i < s.size() && !is_line_break(s[i])) ++i;
    size_t eol = i;
    if (i < s.size()) {
      i += (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ? 2 : 1;
      if (keepends) eol = i;
    }
    lines.push_back(encode(std::u32string_view(s).substr(j, eol - j)));
  }
  return lines;
}

std::string replace(std::string_view text, std::string_view old, std::string_view repl,
                    int64_t count) {
  std::string out;
  int64_t remaining = count < 0 ? std::numeric_limits<int64_t>::max() : count;
  if (old.empty()) {
    size_t i = 0;
    while (i < text.size()) {
      if (remaining > 0) {
        out += repl;
        --remaining;
      }
      const size_t start = i;
      next_cp(text, i);
      out += text.substr(start, i - start);
    }
    if (remaining > 0) out += repl;
    return out;
  }
  size_t i = 0;
  while (remaining-- > 0) {
    const size_t pos = text.find(old, i);
    if (pos == std::string_view::npos) break;
    out += text.substr(i, pos - i);
    out += repl;
    i = pos + old.size();
  }
  out += text.substr(i);
  return out;
}

int64_t count(std::string_view text, std::string_view sub) {
  if (sub.empty()) return length(text) + 1;
  int64_t n = 0;
  size_t i = 0;
  while ((i = text.find(sub, i)) != std::string_view::npos) {
    ++n;
    i += sub.size();
  }
  return n;
}

int64_t find(std::string_view text, std::string_view sub, bool reverse) {
  const size_t pos = reverse ? text.rfind(sub) : text.find(sub);
  if (pos == std::string_view::npos) return -1;
  return length(text.substr(0, pos));
}

std::string float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits, the same digits Python's repr picks; only the layout differs.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  const std::string_view sci(buf, res.ptr - buf);
  const size_t e_pos = sci.find('e');
  std::string digits;
  bool negative = false;
  for (char c : sci.substr(0, e_pos)) {
    if (c == '-') {
      negative = true;
    } else if (c != '.') {
      digits.push_back(c);
    }
  }
  int exponent = 0;
  std::from_chars(sci.data() + e_pos + 1 + (sci[e_pos + 1] == '+' ? 1 : 0), sci.data() + sci.size(),
                  exponent);
  const int decpt = exponent + 1;  // digits[0] sits just before the decimal point at decpt == 1
  std::string out = negative ? "-" : "";
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  } else if (decpt <= 0) {
    out += "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= static_cast<int>(digits.size())) {
    out += digits + std::string(decpt - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return out;
}

std::string str_repr(std::string_view text) {
  const bool has_single = text.find('\'') != std::string_view::npos;
  const bool has_double = text.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  size_t i = 0;
  while (i < text.size()) {
    const char32_t c = next_cp(text, i);
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) {
      out += fmt::format("\\x{:02x}", static_cast<uint32_t>(c));
    } else if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
               (c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF ||
               (c >= 0xD800 && c <= 0xF8FF) || (c >= 0xFFF9 && c <= 0xFFFB)) {
      // Python escapes separators, format characters and private-use code points in repr.
      out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
    } else {
      utf8_append(out, c);
    }
  }
  out += quote;
  return out;
}

namespace {

int digit_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'z') return c - 'a' + 10;
  if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
  return 99;
}

std::string_view trim_space(std::string_view text) {
  size_t begin = 0;
  size_t end = text.size();
  for (size_t i = 0; i < text.size();) {
    if (!is_space(next_cp(text, i))) break;
    begin = i;
  }
  // end: just past the last non-space code point.
  for (size_t i = begin; i < text.size();) {
    if (!is_space(next_cp(text, i))) end = i;
  }
  return begin >= end ? std::string_view() : text.substr(begin, end - begin);
}

}  // namespace

std::optional<int64_t> parse_int(std::string_view text, int base) {
  std::string_view s = trim_space(text);
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  const auto has_prefix = [&](char p) {
    return s.size() >= 2 && s[0] == '0' && (s[1] == p || s[1] == p - 32);
  };
  bool prefixed = false;
  if (base == 0) {
    if (has_prefix('x')) {
      base = 16;
    } else if (has_prefix('o')) {
      base = 8;
    } else if (has_prefix('b')) {
      base = 2;
    } else {
      base = 10;
      // Base 0 rejects leading zeros in non-zero decimals, like Python literals.
      bool all_zero = true;
      for (char c : s) all_zero = all_zero && (c == '0' || c == '_');
      if (s.size() > 1 && s[0] == '0' && !all_zero) return std::nullopt;
    }
    prefixed = base != 10;
  } else if ((base == 16 && has_prefix('x')) || (base == 8 && has_prefix('o')) ||
             (base == 2 && has_prefix('b'))) {
    prefixed = true;
  }
  if (base < 2 || base > 36) return std::nullopt;
  if (prefixed) s.remove_prefix(2);
  if (s.empty()) return std::nullopt;
  // Underscores may separate digits (and follow a prefix), never lead, trail or double.
  if (s.back() == '_' || (s[0] == '_' && !prefixed)) return std::nullopt;
  uint64_t value = 0;
  char prev = prefixed ? '_' : 0;
  bool first = true;
  for (char c : s) {
    if (c == '_') {
      if (prev == '_' && !(first && prefixed)) return std::nullopt;
      prev = c;
      continue;
    }
    const int d = digit_value(c);
    if (d >= base) return std::nullopt;
    if (value > (std::numeric_limits<uint64_t>::max() - d) / base) return std::nullopt;
    value = value * base + d;
    prev = c;
    first = false;
  }
  if (first) return std::nullopt;
  const uint64_t limit =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + (negative ? 1 : 0);
  if (value > limit) return std::nullopt;
  return negative ? static_cast<int64_t>(0 - value) : static_cast<int64_t>(value);
}

std::optional<double> parse_float(std::string_view text) {
  std::string_view s = trim_space(text);
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  std::string lowered = lower(s);
  if (lowered == "inf" || lowered == "infinity") {
    return negative ? -std::numeric_limits<double>::infinity()
                    : std::numeric_limits<double>::infinity();
  }
  if (lowered == "nan") return std::numeric_limits<double>::quiet_NaN();
  // digitpart ("." digitpart?)? | "." digitpart, then an optional exponent; underscores only
  // between digits.
  std::string clean;
  size_t i = 0;
  const auto digit_part = [&]() {
    const size_t start = i;
    while (i < s.size()) {
      if (is_digit(static_cast<unsigned char>(s[i]))) {
        clean.push_back(s[i++]);
      } else if (s[i] == '_' && i > start && i + 1 < s.size() &&
                 is_digit(static_cast<unsigned char>(s[i + 1]))) {
        ++i;
      } else {
        break;
      }
    }
    return i > start;
  };
  const bool int_part = digit_part();
  bool frac_part = false;
  if (i < s.size() && s[i] == '.') {
    clean.push_back(s[i++]);
    frac_part = digit_part();
  }
  if (!int_part && !frac_part) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    clean.push_back(s[i++]);
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean.push_back(s[i++]);
    if (!digit_part()) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  double value = 0;
  const auto res = std::from_chars(clean.data(), clean.data() + clean.size(), value);
  if (res.ec == std::errc::result_out_of_range) {
    // from_chars reports overflow and underflow; Python gives inf or 0.0 there.
    const size_t e = clean.find_first_of("eE");
    const bool tiny = e != std::string::npos && clean[e + 1] == '-';
    value = tiny ? 0.0 : std::numeric_limits<double>::infinity();
  } else if (res.ec != std::errc()) {
    return std::nullopt;
  }
  return negative ? -value : value;
}

}  // namespace atom::jinja::py

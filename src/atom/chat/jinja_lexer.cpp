#include "atom/chat/jinja_lexer.h"

#include <fmt/format.h>

#include <charconv>

#include "atom/chat/py_str.h"
#include "atom/core/error.h"

namespace atom::jinja {

void syntax_error(int line, const std::string& message) {
  throw_error(ErrorCode::kUnsupported, "chat template: {} at line {}", message, line);
}

namespace {

bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// jinja2 normalizes every line ending to "\n" and drops one trailing newline before lexing.
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's unicode-escape decoding of a string literal's body.
std::string unescape(std::string_view raw, int line) {
  std::string out;
  out.reserve(raw.size());
  size_t i = 0;
  const auto read_hex = [&](size_t digits) -> char32_t {
    if (i + digits > raw.size()) syntax_error(line, "truncated escape in string literal");
    char32_t cp = 0;
    for (size_t k = 0; k < digits; ++k) {
      const int h = hex_value(raw[i + k]);
      if (h < 0) syntax_error(line, "truncated escape in string literal");
      cp = cp * 16 + static_cast<char32_t>(h);
    }
    i += digits;
    return cp;
  };
  while (i < raw.size()) {
    if (raw[i] != '\\' || i + 1 >= raw.size()) {
      out.push_back(raw[i++]);
      continue;
    }
    const char e = raw[i + 1];
    i += 2;
    switch (e) {
      case '\n':
        break;  // line continuation
      case '\\':
      case '\'':
      case '"':
        out.push_back(e);
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
        py::utf8_append(out, read_hex(2));
        break;
      case 'u': {
        const char32_t cp = read_hex(4);
        py::utf8_append(out, (cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : cp);
        break;
      }
      case 'U': {
        const char32_t cp = read_hex(8);
        if (cp > 0x10FFFF) syntax_error(line, "illegal Unicode character in string literal");
        py::utf8_append(out, (cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : cp);
        break;
      }
      case 'N':
        syntax_error(line, "unsupported \\N{...} escape in string literal");
      default:
        if (e >= '0' && e <= '7') {
          char32_t cp = e - '0';
          for (int k = 0; k < 2 && i < raw.size() && raw[i] >= '0' && raw[i] <= '7'; ++k) {
            cp = cp * 8 + (raw[i++] - '0');
          }
          py::utf8_append(out, cp);
        } else {
          // Python keeps unknown escapes as written.
          out.push_back('\\');
          i -= 1;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(normalize_newlines(source)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      if (!lex_root()) break;
    }
    Token eof;
    eof.type = Tok::kEof;
    eof.line = line_;
    out_.push_back(std::move(eof));
    return std::move(out_);
  }

 private:
  bool starts(size_t at, std::string_view s) const { return src_.compare(at, s.size(), s) == 0; }

  size_t space_at(size_t at) const {
    if (at >= src_.size()) return 0;
    size_t i = at;
    return py::is_space(py::decode_next(src_, i)) ? i - at : 0;
  }

  size_t skip_spaces(size_t at) const {
    while (const size_t n = space_at(at)) at += n;
    return at;
  }

  void advance_to(size_t end) {
    for (size_t i = pos_; i < end; ++i) line_ += src_[i] == '\n' ? 1 : 0;
    pos_ = end;
  }

  void emit(Tok type, std::string text, int line) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    t.line = line;
    out_.push_back(std::move(t));
  }

  // Text before a tag: `{%-` strips all trailing whitespace; otherwise lstrip_blocks removes the
  // indentation of a block or comment tag that starts its line.
  std::string control_text(std::string text, char sign, bool lstrip_eligible) const {
    if (sign == '-') {
      size_t end = 0;
      for (size_t i = 0; i < text.size();) {
        if (!py::is_space(py::decode_next(text, i))) end = i;
      }
      text.resize(end);
    } else if (sign != '+' && lstrip_eligible) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && l_pos < text.size()) {
        bool all_space = true;
        for (size_t i = l_pos; i < text.size() && all_space;) {
          all_space = py::is_space(py::decode_next(text, i));
        }
        if (all_space) text.resize(l_pos);
      }
    }
    return text;
  }

  // One step of the root state: text up to the next tag, then the tag. Returns false at the end.
  bool lex_root() {
    size_t p = pos_;
    while ((p = src_.find('{', p)) != std::string::npos) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) {
        break;
      }
      ++p;
    }
    if (p == std::string::npos) {
      emit(Tok::kData, src_.substr(pos_), line_);
      advance_to(src_.size());
      return false;
    }
    const char kind = src_[p + 1];
    size_t after = p + 2;
    char sign = 0;
    if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];

    size_t raw_end = 0;
    if (kind == '%') {
      const size_t q = skip_spaces(after);
      if (starts(q, "raw")) {
        const size_t r = skip_spaces(q + 3);
        if (starts(r, "-%}")) {
          raw_end = skip_spaces(r + 3);
        } else if (starts(r, "%}")) {
          raw_end = r + 2;
        }
      }
    }

    std::string text = control_text(src_.substr(pos_, p - pos_), sign, kind != '{');
    if (!text.empty()) emit(Tok::kData, std::move(text), line_);
    advance_to(p);
    const int tag_line = line_;

    if (kind == '#') {
      lex_comment(after, tag_line);
    } else if (raw_end != 0) {
      lex_raw(raw_end, tag_line);
    } else {
      emit(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", tag_line);
      advance_to(after);
      lex_tag(kind == '%', tag_line);
    }
    return true;
  }

  void lex_comment(size_t start, int tag_line) {
    // jinja2 only reports a missing end when text follows; a bare "{#" ending the template is
    // silently dropped.
    if (start >= src_.size()) {
      advance_to(src_.size());
      return;
    }
    for (size_t q = start; q < src_.size(); ++q) {
      size_t end = 0;
      if (starts(q, "+#}")) {
        end = q + 3;
      } else if (starts(q, "-#}")) {
        end = skip_spaces(q + 3);
      } else if (starts(q, "#}")) {
        end = q + 2 + (starts(q + 2, "\n") ? 1 : 0);
      } else {
        continue;
      }
      line_starting_ = src_[end - 1] == '\n';
      advance_to(end);
      return;
    }
    syntax_error(tag_line, "missing end of comment tag");
  }

  void lex_raw(size_t raw_end, int tag_line) {
    line_starting_ = src_[raw_end - 1] == '\n';
    advance_to(raw_end);
    if (pos_ >= src_.size()) return;  // like an unterminated comment, accepted when nothing follows
    for (size_t q = pos_; (q = src_.find("{%", q)) != std::string::npos; ++q) {
      size_t r = q + 2;
      const char sign = (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ? src_[r++] : 0;
      r = skip_spaces(r);
      if (!starts(r, "endraw")) continue;
      r = skip_spaces(r + 6);
      size_t end = 0;
      if (starts(r, "+%}")) {
        end = r + 3;
      } else if (starts(r, "-%}")) {
        end = skip_spaces(r + 3);
      } else if (starts(r, "%}")) {
        end = r + 2 + (starts(r + 2, "\n") ? 1 : 0);
      } else {
        continue;
      }
      std::string text = control_text(src_.substr(pos_, q - pos_), sign, true);
      if (!text.empty()) emit(Tok::kData, std::move(text), line_);
      line_starting_ = src_[end - 1] == '\n';
      advance_to(end);
      return;
    }
    syntax_error(tag_line, "missing end of raw directive");
  }

  // `(\d+_)*\d+`: digits with single underscores between them; returns the end or npos.
  size_t digits_at(size_t at) const {
    if (at >= src_.size() || !is_ascii_digit(src_[at])) return std::string::npos;
    size_t i = at;
    while (i < src_.size()) {
      if (is_ascii_digit(src_[i])) {
        ++i;
      } else if (src_[i] == '_' && i + 1 < src_.size() && is_ascii_digit(src_[i + 1])) {
        ++i;
      } else {
        break;
      }
    }
    return i;
  }

  size_t float_at(size_t at) const {
    if (at > 0 && src_[at - 1] == '.') return std::string::npos;
    const size_t int_end = digits_at(at);
    if (int_end == std::string::npos) return std::string::npos;
    size_t end = int_end;
    bool has_fraction = false;
    if (end < src_.size() && src_[end] == '.') {
      const size_t frac_end = digits_at(end + 1);
      if (frac_end != std::string::npos) {
        end = frac_end;
        has_fraction = true;
      }
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t e = end + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      const size_t exp_end = digits_at(e);
      if (exp_end != std::string::npos) return exp_end;
    }
    return has_fraction ? end : std::string::npos;
  }

  // jinja2's integer rule: 0b / 0o / 0x prefixed, [1-9](_?\d)*, or 0(_?0)*. Returns the end.
  size_t integer_at(size_t at, int& base) const {
    const auto run = [&](size_t i, auto valid) {
      // (_?[digit])+ after a prefix
      size_t end = std::string::npos;
      while (i < src_.size()) {
        size_t j = i + (src_[i] == '_' ? 1 : 0);
        if (j < src_.size() && valid(src_[j])) {
          end = i = j + 1;
        } else {
          break;
        }
      }
      return end;
    };
    if (src_[at] == '0' && at + 1 < src_.size()) {
      const char p = static_cast<char>(src_[at + 1] | 0x20);
      size_t end = std::string::npos;
      if (p == 'b') {
        base = 2, end = run(at + 2, [](char c) { return c == '0' || c == '1'; });
      } else if (p == 'o') {
        base = 8, end = run(at + 2, [](char c) { return c >= '0' && c <= '7'; });
      } else if (p == 'x') {
        base = 16, end = run(at + 2, [](char c) { return hex_value(c) >= 0; });
      }
      if (end != std::string::npos) return end;
    }
    base = 10;
    if (src_[at] >= '1' && src_[at] <= '9') {
      const size_t end = run(at + 1, is_ascii_digit);
      return end == std::string::npos ? at + 1 : end;
    }
    if (src_[at] == '0') {
      const size_t end = run(at + 1, [](char c) { return c == '0'; });
      return end == std::string::npos ? at + 1 : end;
    }
    return std::string::npos;
  }

  bool name_char(size_t at, bool first, size_t& len) const {
    const unsigned char c = static_cast<unsigned char>(src_[at]);
    if (c < 0x80) {
      len = 1;
      return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (!first && is_ascii_digit(static_cast<char>(c)));
    }
    size_t i = at;
    const char32_t cp = py::decode_next(src_, i);
    len = i - at;
    return !py::is_space(cp) && cp != 0xFFFD;
  }

  void lex_tag(bool block, int tag_line) {
    std::vector<char> balance;
    while (true) {
      if (pos_ >= src_.size()) {
        syntax_error(tag_line, block ? "unexpected end of template inside a '{%' tag"
                                     : "unexpected end of template inside a '{{' tag");
      }
      if (balance.empty()) {
        size_t end = 0;
        if (block) {
          if (starts(pos_, "+%}")) {
            end = pos_ + 3;
          } else if (starts(pos_, "-%}")) {
            end = skip_spaces(pos_ + 3);
          } else if (starts(pos_, "%}")) {
            end = pos_ + 2 + (starts(pos_ + 2, "\n") ? 1 : 0);
          }
        } else if (starts(pos_, "-}}")) {
          end = skip_spaces(pos_ + 3);
        } else if (starts(pos_, "}}")) {
          end = pos_ + 2;
        }
        if (end != 0) {
          emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", line_);
          line_starting_ = src_[end - 1] == '\n';
          advance_to(end);
          return;
        }
      }
      if (space_at(pos_) != 0) {
        advance_to(skip_spaces(pos_));
        continue;
      }
      if (lex_number() || lex_name() || lex_string()) continue;
      lex_operator(balance);
    }
  }

  bool lex_number() {
    if (!is_ascii_digit(src_[pos_])) return false;
    const size_t fend = float_at(pos_);
    if (fend != std::string::npos) {
      std::string clean;
      for (size_t i = pos_; i < fend; ++i) {
        if (src_[i] != '_') clean.push_back(src_[i]);
      }
      Token t;
      t.type = Tok::kFloat;
      t.line = line_;
      t.text = src_.substr(pos_, fend - pos_);
      std::from_chars(clean.data(), clean.data() + clean.size(), t.float_value);
      out_.push_back(std::move(t));
      advance_to(fend);
      return true;
    }
    int base = 10;
    const size_t iend = integer_at(pos_, base);
    if (iend == std::string::npos) return false;
    const std::string text = src_.substr(pos_, iend - pos_);
    const auto value = py::parse_int(text, 0);
    if (!value) syntax_error(line_, fmt::format("integer literal '{}' out of range", text));
    Token t;
    t.type = Tok::kInt;
    t.line = line_;
    t.text = text;
    t.int_value = *value;
    out_.push_back(std::move(t));
    advance_to(iend);
    return true;
  }

  bool lex_name() {
    size_t len = 0;
    if (!name_char(pos_, true, len)) return false;
    size_t end = pos_ + len;
    while (end < src_.size() && name_char(end, false, len)) end += len;
    emit(Tok::kName, src_.substr(pos_, end - pos_), line_);
    advance_to(end);
    return true;
  }

  bool lex_string() {
    const char quote = src_[pos_];
    if (quote != '\'' && quote != '"') return false;
    for (size_t i = pos_ + 1; i < src_.size(); ++i) {
      if (src_[i] == '\\') {
        ++i;
      } else if (src_[i] == quote) {
        emit(Tok::kString, unescape(std::string_view(src_).substr(pos_ + 1, i - pos_ - 1), line_),
             line_);
        advance_to(i + 1);
        return true;
      }
    }
    syntax_error(line_, "unterminated string literal");
  }

  void lex_operator(std::vector<char>& balance) {
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwo) {
      if (starts(pos_, op)) {
        emit(Tok::kOp, std::string(op), line_);
        advance_to(pos_ + 2);
        return;
      }
    }
    const char c = src_[pos_];
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
      size_t i = pos_;
      std::string ch;
      py::utf8_append(ch, py::decode_next(src_, i));
      syntax_error(line_, fmt::format("unexpected char '{}'", ch));
    }
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) syntax_error(line_, fmt::format("unexpected '{}'", c));
      if (balance.back() != c) {
        syntax_error(line_, fmt::format("unexpected '{}', expected '{}'", c, balance.back()));
      }
      balance.pop_back();
    }
    emit(Tok::kOp, std::string(1, c), line_);
    advance_to(pos_ + 1);
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace atom::jinja

// Tokenizer for the chat template engine: jinja2's lexer with the settings transformers uses
// (trim_blocks, lstrip_blocks, no keep_trailing_newline, default delimiters).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace atom::jinja {

enum class Tok : uint8_t {
  kData,        // template text, already whitespace-controlled
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // text holds the unescaped value
  kInt,
  kFloat,
  kOp,  // text holds the operator, e.g. "//" or "("
  kEof,
};

struct Token {
  Tok type = Tok::kEof;
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
};

// Throws atom::Error(kUnsupported) naming the line for malformed input.
std::vector<Token> tokenize(std::string_view source);

// "chat template: <message> at line <line>" as an atom::Error(kUnsupported).
[[noreturn]] void syntax_error(int line, const std::string& message);

}  // namespace atom::jinja

// UTF-8 encoding shared by the tokenizer and the chat-template interpreter.
#pragma once

#include <string>

namespace atom {

// Appends the UTF-8 encoding of code point cp (1 to 4 bytes) to out.
void utf8_append(std::string& out, char32_t cp);

}  // namespace atom

// Parser for the chat template engine: jinja2's grammar (expression precedence, tests, filters,
// tag syntax) over the tokens of jinja_lexer.h, producing the tree of jinja_ast.h.
#pragma once

#include <vector>

#include "atom/chat/jinja_ast.h"
#include "atom/chat/jinja_lexer.h"

namespace atom::jinja {

// Nesting of blocks, of parenthesised/bracketed expressions and height of an expression tree are
// all limited, so neither parsing nor rendering can recurse without bound.
inline constexpr int kMaxNestingDepth = 128;

// Throws atom::Error(kUnsupported) naming the construct and line for anything it cannot parse.
Body parse(const std::vector<Token>& tokens);

}  // namespace atom::jinja

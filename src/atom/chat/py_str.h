// Python str semantics over UTF-8 text, for the chat template engine. Jinja templates index,
// slice, measure, strip and split strings by code point with Python's rules, so these helpers
// decode to UTF-32 where positions matter and keep UTF-8 everywhere else.
#pragma once

#include "atom/core/utf8.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace atom::jinja::py {

// Invalid UTF-8 bytes decode to U+FFFD, one per byte.
std::u32string decode(std::string_view text);
// Decodes the code point at text[i] and advances i past it.
char32_t decode_next(std::string_view text, size_t& i);
std::string encode(std::u32string_view text);
using ::atom::utf8_append;  // core/utf8.h
// Number of code points.
int64_t length(std::string_view text);

// str.isspace(): the Unicode whitespace set Python strips and splits on.
bool is_space(char32_t cp);
// Simple case mapping: ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic. Characters outside
// those blocks are left as they are.
char32_t to_upper(char32_t cp);
char32_t to_lower(char32_t cp);
bool is_cased_lower(char32_t cp);
bool is_cased_upper(char32_t cp);
bool is_alpha(char32_t cp);
bool is_digit(char32_t cp);

std::string upper(std::string_view text);
std::string lower(std::string_view text);
std::string capitalize(std::string_view text);  // str.capitalize
std::string title(std::string_view text);       // str.title
std::string swapcase(std::string_view text);

// str.strip / lstrip / rstrip; chars == nullopt strips whitespace.
std::string strip(std::string_view text, const std::optional<std::string>& chars, bool left,
                  bool right);
// str.split / rsplit; sep == nullopt splits on whitespace runs; maxsplit < 0 is unlimited.
// An empty separator is the caller's error to report.
std::vector<std::string> split(std::string_view text, const std::optional<std::string>& sep,
                               int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view text, const std::optional<std::string>& sep,
                                int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view text, bool keepends);
// str.replace; count < 0 replaces all. An empty `old` inserts `repl` between code points.
std::string replace(std::string_view text, std::string_view old, std::string_view repl,
                    int64_t count);
int64_t count(std::string_view text, std::string_view sub);
// str.find in code points, -1 when absent.
int64_t find(std::string_view text, std::string_view sub, bool reverse);

// repr(float) and repr(str), as Python 3 prints them.
std::string float_repr(double value);
std::string str_repr(std::string_view text);

// int(text, base) and float(text); nullopt where Python raises ValueError.
std::optional<int64_t> parse_int(std::string_view text, int base);
std::optional<double> parse_float(std::string_view text);

}  // namespace atom::jinja::py

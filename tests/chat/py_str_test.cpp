// Python str semantics the engine relies on; expectations are what CPython 3.11 prints.
#include "atom/chat/py_str.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace atom::jinja::py {
namespace {

using Strings = std::vector<std::string>;
using namespace std::string_literals;

TEST(PyStr, FloatReprMatchesPython) {
  EXPECT_EQ(float_repr(0.1), "0.1");
  EXPECT_EQ(float_repr(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(float_repr(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(float_repr(1e16), "1e+16");
  EXPECT_EQ(float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(float_repr(123456789012345678.0), "1.2345678901234568e+17");
  EXPECT_EQ(float_repr(0.0001), "0.0001");
  EXPECT_EQ(float_repr(0.00001), "1e-05");
  EXPECT_EQ(float_repr(1.5e-7), "1.5e-07");
  EXPECT_EQ(float_repr(-2.5), "-2.5");
  EXPECT_EQ(float_repr(5e-324), "5e-324");
  EXPECT_EQ(float_repr(1.7976931348623157e308), "1.7976931348623157e+308");
  EXPECT_EQ(float_repr(100.0), "100.0");
  EXPECT_EQ(float_repr(9007199254740992.0), "9007199254740992.0");
  EXPECT_EQ(float_repr(1e22), "1e+22");
  EXPECT_EQ(float_repr(0.0), "0.0");
  EXPECT_EQ(float_repr(-0.0), "-0.0");
  EXPECT_EQ(float_repr(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(float_repr(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(float_repr(std::nan("")), "nan");
}

TEST(PyStr, StrReprMatchesPython) {
  EXPECT_EQ(str_repr("plain"), "'plain'");
  EXPECT_EQ(str_repr("it's"), "\"it's\"");
  EXPECT_EQ(str_repr("say \"hi\""), "'say \"hi\"'");
  EXPECT_EQ(str_repr("both ' \""), "'both \\' \"'");
  EXPECT_EQ(str_repr("tab\tnl\n"), "'tab\\tnl\\n'");
  EXPECT_EQ(str_repr("back\\slash"), "'back\\\\slash'");
  EXPECT_EQ(str_repr("\x00\x7f\u0085\u00a0é€😀"s), "'\\x00\\x7f\\x85\\xa0é€😀'");
  EXPECT_EQ(str_repr("\u200b\u2028\u3000\ufeff"), "'\\u200b\\u2028\\u3000\\ufeff'");
}

TEST(PyStr, ParseIntAndFloatLikePython) {
  EXPECT_EQ(parse_int(" -1_000 ", 10), -1000);
  EXPECT_EQ(parse_int("0x1f", 16), 31);
  EXPECT_EQ(parse_int("0x1f", 0), 31);
  EXPECT_EQ(parse_int("z", 36), 35);
  EXPECT_EQ(parse_int("1.5", 10), std::nullopt);
  EXPECT_EQ(parse_int("1__0", 10), std::nullopt);
  EXPECT_EQ(parse_int("", 10), std::nullopt);
  EXPECT_EQ(parse_int("99999999999999999999", 10), std::nullopt);
  EXPECT_EQ(parse_float("1_000.5"), 1000.5);
  EXPECT_EQ(parse_float(".5"), 0.5);
  EXPECT_EQ(parse_float("5."), 5.0);
  EXPECT_EQ(parse_float("1e5"), 100000.0);
  EXPECT_EQ(parse_float(" -inf "), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(*parse_float("nan")));
  for (const char* bad : {"1__0", "1e", "e5", "0x10", "1.5.2", "", " "}) {
    EXPECT_EQ(parse_float(bad), std::nullopt) << bad;
  }
}

TEST(PyStr, SplitLikePython) {
  EXPECT_EQ(split("a,b,,c", std::string(","), -1), (Strings{"a", "b", "", "c"}));
  EXPECT_EQ(split(" a  b ", std::nullopt, -1), (Strings{"a", "b"}));
  EXPECT_EQ(split("a b c", std::nullopt, 1), (Strings{"a", "b c"}));
  EXPECT_EQ(rsplit("a b c", std::nullopt, 1), (Strings{"a b", "c"}));
  EXPECT_EQ(rsplit("a,b,c", std::string(","), 1), (Strings{"a,b", "c"}));
  EXPECT_EQ(split("", std::string(","), -1), (Strings{""}));
  EXPECT_EQ(split("\u3000x\u00a0y", std::nullopt, -1), (Strings{"x", "y"}));
  EXPECT_EQ(splitlines("x\r\ny\rz\x0bw\n", false), (Strings{"x", "y", "z", "w"}));
  EXPECT_EQ(splitlines("x\r\ny", true), (Strings{"x\r\n", "y"}));
}

TEST(PyStr, StripAndCaseLikePython) {
  EXPECT_EQ(strip("\u3000\u00a0 x \u2029", std::nullopt, true, true), "x");
  EXPECT_EQ(strip("xxaxx", std::string("x"), true, false), "axx");
  EXPECT_EQ(lower("ÉCOLE ÀÉÎ ĀĂ"), "école àéî āă");
  EXPECT_EQ(upper("straße ÿ µ"), "STRASSE Ÿ Μ");
  EXPECT_EQ(title("hello wORLD 3rd"), "Hello World 3Rd");
  EXPECT_EQ(capitalize("hELLO World"), "Hello world");
}

TEST(PyStr, CodePointPositions) {
  EXPECT_EQ(length("日本語😀é"), 5);
  EXPECT_EQ(find("héllo wörld", "wö", false), 6);
  EXPECT_EQ(replace("abc", "", "-", -1), "-a-b-c-");
  EXPECT_EQ(replace("aaa", "a", "b", 2), "bba");
  EXPECT_EQ(count("abcabc", "bc"), 2);
  // Invalid UTF-8 decodes to U+FFFD per byte instead of failing.
  EXPECT_EQ(decode("a\xff"), (std::u32string{U'a', 0xFFFD}));
}

}  // namespace
}  // namespace atom::jinja::py

// Python's spellings of numbers, for output that must read as the reference's does: str(float)
// ("inf", "10.0", "0.1") and float(str) parsing ("inf", "1e3", " 2.5 ").
#pragma once

#include <string>
#include <string_view>

namespace atom::bench {

std::string py_float(double v);
// Parses like Python's float(): surrounding blanks allowed, "inf"/"infinity"/"nan" in any case.
// False when the text is not a number.
bool parse_py_float(std::string_view text, double* out);

}  // namespace atom::bench

#include "atom/bench/pyfmt.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

namespace atom::bench {

std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  // repr(float): the shortest round-trip digits, fixed notation for 1e-4 <= |v| < 1e16, and
  // always a fractional part.
  const double a = std::fabs(v);
  if (a != 0.0 && (a < 1e-4 || a >= 1e16)) return fmt::format("{}", v);  // 1e-05, 1e+16
  std::string s = fmt::format("{}", v);
  if (s.find('e') != std::string::npos) s = fmt::format("{:.1f}", v);
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

bool parse_py_float(std::string_view text, double* out) {
  const size_t b = text.find_first_not_of(" \t\n\r");
  if (b == std::string_view::npos) return false;
  const size_t e = text.find_last_not_of(" \t\n\r");
  const std::string s(text.substr(b, e - b + 1));
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return false;
  // strtod also takes hex floats, which Python's float() does not.
  if (s.find("0x") != std::string::npos || s.find("0X") != std::string::npos) return false;
  *out = v;
  return true;
}

}  // namespace atom::bench

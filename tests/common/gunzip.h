// Reads a gzip file (the profiler's *.pt.trace.json.gz) into a string: "" when it cannot be
// opened or read, which the callers' JSON parsing then reports.
#pragma once

#include <zlib.h>

#include <string>

namespace atom::test {

inline std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return {};
  std::string out;
  char buf[1 << 15];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, size_t(n));
  gzclose(f);
  return out;
}

}  // namespace atom::test

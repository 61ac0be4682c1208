// A tqdm-style progress bar on stderr: " 45%|####5     | 450/1000 [00:03<00:04, 130.21it/s]",
// redrawn at most ten times a second and once more when closed. Disabled, it prints nothing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace atom::bench {

class ProgressBar {
 public:
  ProgressBar(int64_t total, bool enabled, std::FILE* out = stderr);
  ~ProgressBar();
  void update(int64_t n = 1);
  void close();
  // The bar's text for n of total done after elapsed seconds (tested on its own).
  static std::string render(int64_t n, int64_t total, double elapsed_s);

 private:
  void draw();
  int64_t total_;
  int64_t n_ = 0;
  bool enabled_;
  bool closed_ = false;
  std::FILE* out_;
  double start_;
  double last_draw_ = -1.0;
};

}  // namespace atom::bench

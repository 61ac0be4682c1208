#include "atom/bench/progress.h"

#include <fmt/format.h>

#include <cmath>

#include "atom/bench/client.h"

namespace atom::bench {

namespace {

std::string clock_text(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = int64_t(s);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{:02}:{:02}", t / 60, t % 60);
}

}  // namespace

ProgressBar::ProgressBar(int64_t total, bool enabled, std::FILE* out)
    : total_(total), enabled_(enabled), out_(out), start_(now_seconds()) {
  if (enabled_) draw();
}

ProgressBar::~ProgressBar() { close(); }

void ProgressBar::update(int64_t n) {
  n_ += n;
  if (!enabled_) return;
  const double now = now_seconds();
  if (n_ >= total_ || now - last_draw_ >= 0.1) draw();
}

void ProgressBar::close() {
  if (!enabled_ || closed_) return;
  closed_ = true;
  draw();
  std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressBar::draw() {
  last_draw_ = now_seconds();
  std::fputs(("\r" + render(n_, total_, last_draw_ - start_)).c_str(), out_);
  std::fflush(out_);
}

std::string ProgressBar::render(int64_t n, int64_t total, double elapsed_s) {
  constexpr int kWidth = 10;
  const double frac = total > 0 ? std::min(1.0, double(n) / double(total)) : 0.0;
  const double cells = frac * kWidth;
  std::string bar(size_t(cells), '#');
  if (int(bar.size()) < kWidth) {
    const int tenth = int((cells - std::floor(cells)) * 10);
    if (tenth > 0) bar += char('0' + tenth);
    bar.resize(kWidth, ' ');
  }
  const double rate = elapsed_s > 0 ? double(n) / elapsed_s : 0.0;
  const double remaining = rate > 0 ? double(total - n) / rate : NAN;
  return fmt::format("{:3d}%|{}| {}/{} [{}<{}, {}]", int(frac * 100), bar, n, total,
                     clock_text(elapsed_s), clock_text(remaining),
                     rate > 0 ? fmt::format("{:.2f}it/s", rate) : std::string("?it/s"));
}

}  // namespace atom::bench

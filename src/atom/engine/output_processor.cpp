#include "atom/engine/output_processor.h"

#include <algorithm>

namespace atom {

RequestText::RequestText(const Tokenizer& tok, const SamplingParams& params)
    : detok_(tok, params.skip_special_tokens), params_(params) {}

bool RequestText::push(int32_t id, bool check_stop) {
  if (stopped_ || finished_) return stopped_;
  const size_t old_len = text_.size();
  text_ += detok_.push(id);
  if (!check_stop || params_.stop.empty() || text_.size() == old_len) return false;
  // Only the new text (plus the overlap a stop string could span) needs searching.
  size_t best = std::string::npos;
  const std::string* match = nullptr;
  for (const std::string& s : params_.stop) {
    const size_t from = old_len >= s.size() - 1 ? old_len - (s.size() - 1) : 0;
    const size_t at = text_.find(s, from);
    if (at != std::string::npos && at < best) {
      best = at;
      match = &s;
    }
  }
  if (best == std::string::npos) return false;
  matched_stop_ = *match;
  text_.resize(best);
  stopped_ = true;
  return true;
}

void RequestText::finish() {
  if (!stopped_ && !finished_) text_ += detok_.flush();
  finished_ = true;
}

size_t RequestText::holdback() const {
  size_t keep = 0;
  for (const std::string& s : params_.stop) {
    for (size_t n = std::min(s.size() - 1, text_.size() - emitted_); n > keep; --n) {
      if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

std::string RequestText::take_delta() {
  const size_t end = (finished_ || stopped_) ? text_.size() : text_.size() - holdback();
  if (end <= emitted_) return {};
  std::string delta = text_.substr(emitted_, end - emitted_);
  emitted_ = end;
  return delta;
}

}  // namespace atom

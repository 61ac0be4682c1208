// Per-request text state: incremental detokenization and stop strings matched on the text
// (OpenAI semantics: the stop string ends generation and is not part of the output). While a
// request runs, the text that could still turn out to be the start of a stop string is held
// back from streaming.
#pragma once

#include <cstdint>
#include <string>

#include "atom/runner/sampler.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom {

class RequestText {
 public:
  RequestText(const Tokenizer& tok, const SamplingParams& params);

  // Feeds one generated token. Returns true when a stop string now appears in the text; the
  // text is then cut just before it. `check_stop` is false while min_tokens is not reached.
  bool push(int32_t id, bool check_stop);
  // End of generation: flushes the detokenizer (unless a stop string already cut the text).
  void finish();
  // Text not yet returned by take_delta that is safe to emit (everything once finished).
  std::string take_delta();
  const std::string& text() const { return text_; }
  // The stop string that ended the text ("" when none did): OpenAI's stop_reason.
  const std::string& matched_stop() const { return matched_stop_; }

 private:
  size_t holdback() const;  // longest suffix of text_ that is a proper prefix of a stop string

  IncrementalDetokenizer detok_;
  const SamplingParams& params_;
  std::string text_;
  std::string matched_stop_;
  size_t emitted_ = 0;
  bool stopped_ = false;
  bool finished_ = false;
};

}  // namespace atom

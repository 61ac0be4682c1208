// Benchmark datasets (the reference's sample_*_requests): each yields (prompt, prompt_len,
// output_len) triples. prompt_len is what the dataset says the prompt costs (for random and
// burstgpt an estimate, not re-measured), and it is what the metrics sum as input tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "atom/bench/rng.h"
#include "atom/chat/chat_template.h"

namespace atom {
class Tokenizer;
}

namespace atom::bench {

struct SampleRequest {
  std::string prompt;
  int64_t prompt_len = 0;
  int64_t output_len = 0;
};

// Renders one user message with the model's chat template and add_generation_prompt, as
// tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
// tokenize=False) does.
class ChatFormatter {
 public:
  // Throws kNotFound when the tokenizer has no chat template.
  explicit ChatFormatter(const Tokenizer& tok);
  ChatFormatter(std::string template_source, std::string bos_token, std::string eos_token);
  std::string render_user(std::string_view content) const;

 private:
  ChatTemplate template_;
  std::string bos_token_;
  std::string eos_token_;
};

struct RandomDatasetOptions {
  int64_t input_len = 1024;
  int64_t output_len = 128;
  double range_ratio = 1.0;  // lengths uniform in [int(L*ratio), L]
  int64_t prefix_len = 0;
  bool use_chat_template = false;
};

// Token ids (offset_i + i + j) % vocab after a shared random prefix, decoded, re-encoded without
// special tokens, cut to prefix+len ids and decoded again. chat is required with
// use_chat_template (its overhead is subtracted from the length, then the prompt wrapped).
std::vector<SampleRequest> sample_random_requests(const RandomDatasetOptions& opts,
                                                  int64_t num_prompts, const Tokenizer& tok,
                                                  Rng& rng, const ChatFormatter* chat);

// ShareGPT JSON: a list of {"conversations": [{"value": ...}, ...]}; first two turns of the
// items with at least two, shuffled, pruned (prompt < 4 tokens, completion < 4 unless
// fixed_output_len, prompt > 1024, prompt + output > 2048). May return fewer than asked.
std::vector<SampleRequest> sample_sharegpt_requests(const std::string& path, int64_t num_requests,
                                                    const Tokenizer& tok, Rng& rng,
                                                    std::optional<int64_t> fixed_output_len);

// BurstGPT CSV (columns Model, Request tokens, Response tokens): GPT-4 rows with a non-zero
// response, num_requests sampled with a generator of their own seeded by `seed` (with
// replacement only when there are fewer rows); prompts are ids (i + j) % vocab decoded.
std::vector<SampleRequest> sample_burstgpt_requests(const std::string& path, int64_t num_requests,
                                                    uint64_t seed, const Tokenizer& tok);

struct SonnetOptions {
  int64_t input_len = 550;
  int64_t output_len = 150;
  int64_t prefix_len = 200;
};

// Poem lines behind a fixed instruction; the first ~prefix_len tokens are the same lines for
// every request, the rest drawn with replacement. prompt_len counts the chat-formatted prompt.
// raw_prompt (backend openai-chat) sends the unformatted text; otherwise the formatted one.
std::vector<SampleRequest> sample_sonnet_requests(const std::string& path, int64_t num_requests,
                                                  const SonnetOptions& opts, const Tokenizer& tok,
                                                  const ChatFormatter& chat, Rng& rng,
                                                  bool raw_prompt);

}  // namespace atom::bench

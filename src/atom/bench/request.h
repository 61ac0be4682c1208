// One benchmark request: what is sent (the OpenAI-style payload of the reference's
// backend_request_func), and how the streamed reply becomes a RequestOutput (TTFT, ITLs,
// latency, generated text, usage) exactly as the reference's SSE loop measures it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace atom::bench {

// vllm and openai share the streaming /v1/completions client; openai-chat streams
// /v1/chat/completions with content-part messages and max_completion_tokens.
enum class Backend { kVllm, kOpenai, kOpenaiChat };

// Throws kInvalidArgument for any other name, listing the supported ones.
Backend parse_backend(std::string_view name);
std::string_view backend_name(Backend b);

struct RequestInput {
  std::string prompt;
  std::string api_url;
  int64_t prompt_len = 0;
  int64_t output_len = 0;
  std::string model;
  std::optional<std::string> model_name;  // --served-model-name: sent instead of model
  int64_t best_of = 1;
  std::optional<int64_t> logprobs;
  bool ignore_eos = false;
};

struct RequestOutput {
  std::string generated_text;
  bool success = false;
  double latency = 0.0;                  // s, start to the last token chunk
  std::optional<int64_t> output_tokens;  // usage.completion_tokens when the server sent it
  double ttft = 0.0;                     // s
  std::vector<double> itl;               // s, one per token chunk after the first
  int64_t prompt_len = 0;
  std::string error;
};

// The JSON body, keys in the reference's order.
std::string build_payload(Backend backend, const RequestInput& in);
// Checks the URL suffix the reference asserts ("completions" or "profile"; "chat/completions").
void check_api_url(Backend backend, std::string_view api_url);

// Feeds the lines of a 200 response body, each with the time (s, same clock as start) it was
// read; the reference strips each line, skips blank ones, drops a "data: " prefix and skips
// "[DONE]". Completions: a chunk with non-empty "choices" is a token event (even with empty
// text): the first sets ttft, the others append an ITL; a chunk with only "usage" sets
// output_tokens; success needs one token event. Chat: every data chunk moves the latency clock,
// ttft is taken while it is still 0, and any 200 reply succeeds.
class StreamParser {
 public:
  StreamParser(Backend backend, double start, int64_t prompt_len);
  // False once the request failed (a malformed chunk): the caller stops reading.
  bool on_line(std::string_view line, double now);
  // The output of a completed 200 reply.
  RequestOutput finish();
  // The output of a failed request: an HTTP status other than 200 (error = reason phrase) or a
  // transport error.
  RequestOutput fail(std::string error);
  bool failed() const { return failed_; }

 private:
  Backend backend_;
  double start_;
  double most_recent_;
  bool first_chunk_received_ = false;
  bool failed_ = false;
  RequestOutput out_;
};

}  // namespace atom::bench

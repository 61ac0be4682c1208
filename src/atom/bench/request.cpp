#include "atom/bench/request.h"

#include <nlohmann/json.hpp>

#include "atom/core/error.h"

namespace atom::bench {

namespace {

using ojson = nlohmann::ordered_json;

// bytes.strip(): ASCII whitespace on both ends.
std::string_view strip(std::string_view s) {
  constexpr std::string_view kWs = " \t\n\r\x0b\x0c";
  const size_t b = s.find_first_not_of(kWs);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kWs) - b + 1);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Backend parse_backend(std::string_view name) {
  if (name == "vllm") return Backend::kVllm;
  if (name == "openai") return Backend::kOpenai;
  if (name == "openai-chat") return Backend::kOpenaiChat;
  throw_error(ErrorCode::kInvalidArgument,
              "--backend {}: not supported (atom bench serve speaks the OpenAI streaming API: "
              "vllm, openai, openai-chat)",
              name);
}

std::string_view backend_name(Backend b) {
  switch (b) {
    case Backend::kVllm: return "vllm";
    case Backend::kOpenai: return "openai";
    case Backend::kOpenaiChat: return "openai-chat";
  }
  return "?";
}

void check_api_url(Backend backend, std::string_view api_url) {
  if (backend == Backend::kOpenaiChat) {
    ATOM_CHECK(ends_with(api_url, "chat/completions"), kInvalidArgument,
               "OpenAI Chat Completions API URL must end with 'chat/completions' (got {})",
               api_url);
  } else {
    ATOM_CHECK(ends_with(api_url, "completions") || ends_with(api_url, "profile"),
               kInvalidArgument,
               "OpenAI Completions API URL must end with 'completions' or 'profile' (got {})",
               api_url);
  }
}

std::string build_payload(Backend backend, const RequestInput& in) {
  ojson p;
  p["model"] = in.model_name && !in.model_name->empty() ? *in.model_name : in.model;
  if (backend == Backend::kOpenaiChat) {
    p["messages"] = ojson::array({ojson{
        {"role", "user"},
        {"content", ojson::array({ojson{{"type", "text"}, {"text", in.prompt}}})}}});
    p["temperature"] = 0.0;
    p["max_completion_tokens"] = in.output_len;
  } else {
    p["prompt"] = in.prompt;
    p["temperature"] = 0.0;
    p["best_of"] = in.best_of;
    p["max_tokens"] = in.output_len;
    p["logprobs"] = in.logprobs ? ojson(*in.logprobs) : ojson(nullptr);
  }
  p["stream"] = true;
  p["stream_options"] = ojson{{"include_usage", true}};
  if (in.ignore_eos) p["ignore_eos"] = true;
  // Invalid UTF-8 (a random prompt cut mid-character) goes out as U+FFFD, as Python's json
  // module would have it after the tokenizer's decode.
  return p.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

StreamParser::StreamParser(Backend backend, double start, int64_t prompt_len)
    : backend_(backend), start_(start), most_recent_(start) {
  out_.prompt_len = prompt_len;
}

bool StreamParser::on_line(std::string_view raw, double now) {
  if (failed_) return false;
  std::string_view line = strip(raw);
  if (line.empty()) return true;
  if (line.substr(0, 6) == "data: ") line.remove_prefix(6);
  if (line == "[DONE]") return true;
  nlohmann::json data;
  try {
    data = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("invalid JSON in the stream: {} (line: {})", e.what(),
                     line.substr(0, 200)));
    return false;
  }
  if (!data.is_object()) {
    fail(fmt::format("stream chunk is not a JSON object: {}", line.substr(0, 200)));
    return false;
  }
  const auto choices = data.find("choices");
  const bool has_choices = choices != data.end() && !choices->is_null() &&
                           !(choices->is_array() && choices->empty());
  if (has_choices) {
    if (!choices->is_array() || !(*choices)[0].is_object()) {
      fail(fmt::format("stream chunk has malformed \"choices\": {}", line.substr(0, 200)));
      return false;
    }
    const nlohmann::json& c0 = (*choices)[0];
    const nlohmann::json* text = nullptr;
    if (backend_ == Backend::kOpenaiChat) {
      const auto delta = c0.find("delta");
      if (delta == c0.end() || !delta->is_object()) {
        fail(fmt::format("chat stream chunk has no \"delta\": {}", line.substr(0, 200)));
        return false;
      }
      const auto content = delta->find("content");
      if (content != delta->end()) text = &*content;
    } else {
      const auto t = c0.find("text");
      if (t != c0.end()) text = &*t;
    }
    const bool first = backend_ == Backend::kOpenaiChat ? out_.ttft == 0.0 : !first_chunk_received_;
    if (first) {
      first_chunk_received_ = true;
      out_.ttft = now - start_;
    } else {
      out_.itl.push_back(now - most_recent_);
    }
    most_recent_ = now;
    if (text != nullptr && text->is_string()) out_.generated_text += text->get<std::string>();
  } else {
    const auto usage = data.find("usage");
    if (usage != data.end() && usage->is_object() && !usage->empty()) {
      const auto ct = usage->find("completion_tokens");
      if (ct != usage->end() && ct->is_number_integer()) out_.output_tokens = ct->get<int64_t>();
    }
  }
  // The chat client moves its clock on every data chunk (usage included).
  if (backend_ == Backend::kOpenaiChat) most_recent_ = now;
  return true;
}

RequestOutput StreamParser::finish() {
  if (failed_) return out_;
  if (backend_ == Backend::kOpenaiChat || first_chunk_received_) {
    out_.success = true;
  } else {
    out_.success = false;
    out_.error =
        "Never received a valid chunk to calculate TTFT.This response will be marked as failed!";
  }
  out_.latency = most_recent_ - start_;
  return out_;
}

RequestOutput StreamParser::fail(std::string error) {
  failed_ = true;
  out_.success = false;
  out_.generated_text.clear();  // the reference assigns the text only on a clean finish
  out_.error = std::move(error);
  return out_;
}

}  // namespace atom::bench

// The OpenAI request schema, checked: JSON bodies of /v1/completions and /v1/chat/completions
// become GenerationRequests, and anything malformed, mistyped or out of range becomes an
// ApiError (HTTP 400 with an OpenAI-style body naming the field). Unknown fields are ignored,
// as OpenAI and vLLM do; known fields that would change the result and that atom does not
// implement (logprobs, tools, logit_bias, ...) are refused rather than silently ignored.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "atom/runner/sampler.h"

namespace atom::server {

// An error as OpenAI answers it: status, and {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::exception {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // "" -> null
  std::string code;   // "" -> null
  const char* what() const noexcept override { return message.c_str(); }
};

ApiError bad_request(std::string message, std::string param = {}, std::string code = {});
// `type` and `code` default from the status (401 invalid_api_key, 404 unknown_url, 5xx
// server_error, ...).
ApiError api_error(int status, std::string message);
std::string error_json(const ApiError& e);

// The request body as a JSON object; 400 for malformed JSON or another JSON type.
nlohmann::json parse_json_object(const std::string& body);

// One prompt of a completions request: text for the server to tokenize, or token ids.
struct PromptSpec {
  bool is_text = true;
  std::string text;
  std::vector<int32_t> ids;
};

struct GenerationRequest {
  bool chat = false;
  std::optional<std::string> model;
  std::vector<PromptSpec> prompts;           // completions: one or more
  nlohmann::ordered_json messages;           // chat: [{"role", "content": string, ...}]
  nlohmann::ordered_json template_kwargs;    // chat: chat_template_kwargs (object or null)
  bool add_generation_prompt = true;         // chat
  std::optional<bool> add_special_tokens;    // default: true for completions, false for chat
  SamplingParams params;                     // max_tokens: see below
  std::optional<int64_t> max_tokens;         // unset: 16 (completions) or the context (chat)
  int64_t n = 1;                             // choices per prompt
  bool stream = false;
  bool include_usage = false;                // stream_options.include_usage
  bool echo = false;                         // completions: the prompt precedes the text
};

GenerationRequest parse_completion_request(const nlohmann::json& body);
GenerationRequest parse_chat_request(const nlohmann::json& body);

constexpr int64_t kMaxChoices = 128;  // n per prompt, as vLLM's default limit

}  // namespace atom::server

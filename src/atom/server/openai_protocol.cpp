#include "atom/server/openai_protocol.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace atom::server {

using nlohmann::json;

ApiError bad_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

ApiError api_error(int status, std::string message) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  switch (status) {
    case 401: e.code = "invalid_api_key"; break;
    case 404: e.type = "not_found_error"; e.code = "unknown_url"; break;
    case 405: e.code = "method_not_allowed"; break;
    case 413: e.code = "request_too_large"; break;
    case 503: e.type = "server_error"; e.code = "server_overloaded"; break;
    default:
      if (status >= 500) e.type = "server_error";
  }
  return e;
}

std::string error_json(const ApiError& e) {
  nlohmann::ordered_json err;
  err["message"] = e.message;
  err["type"] = e.type;
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
  nlohmann::ordered_json body;
  body["error"] = std::move(err);
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse_json_object(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    // nlohmann's message starts with "[json.exception.parse_error.101] parse error at ...".
    std::string what = e.what();
    const size_t at = what.find("] ");
    throw bad_request("the request body is not valid JSON: " +
                      (at == std::string::npos ? what : what.substr(at + 2)));
  }
  if (!j.is_object())
    throw bad_request(fmt::format("the request body must be a JSON object, got {}",
                                  j.type_name()));
  return j;
}

namespace {

// Field readers: absent and null read as unset; a value of the wrong type is a 400 naming it.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void wrong_type(const char* name, const char* expected, const json& v) {
  throw bad_request(fmt::format("'{}' must be {}, got {} {}", name, expected, v.type_name(),
                                v.dump(-1, ' ', false, json::error_handler_t::replace)),
                    name);
}

std::optional<double> get_number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(name, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d)) wrong_type(name, "a finite number", *v);
  return d;
}

std::optional<int64_t> get_int(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      wrong_type(name, "an integer that fits 64 bits", *v);
    return int64_t(v->get<uint64_t>());
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {  // 16.0 is accepted as 16, as pydantic does
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
  }
  wrong_type(name, "an integer", *v);
}

std::optional<bool> get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(name, "a string", *v);
  return v->get<std::string>();
}

float in_range(double v, double lo, double hi, const char* name, const char* range) {
  if (v < lo || v > hi)
    throw bad_request(fmt::format("'{}' must be in {}, got {}", name, range, v), name);
  return float(v);
}

std::vector<int32_t> token_ids(const json& v, const char* name) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const json& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
        x.get<int64_t>() > std::numeric_limits<int32_t>::max())
      throw bad_request(fmt::format("'{}' must hold non-negative integer token ids, got {}", name,
                                    x.dump(-1, ' ', false, json::error_handler_t::replace)),
                        name);
    ids.push_back(x.get<int32_t>());
  }
  return ids;
}

// A feature atom does not implement must not be silently ignored when it changes the answer.
void refuse_unsupported(const json& body, bool chat) {
  const auto unsupported = [](const char* name, const std::string& why) {
    throw bad_request(fmt::format("'{}' is not supported by this server{}", name, why), name);
  };
  if (const json* v = field(body, "logprobs"); v && !(v->is_boolean() && !v->get<bool>()))
    unsupported("logprobs", "");
  if (const json* v = field(body, "top_logprobs"); v && !(v->is_number() && v->get<double>() == 0))
    unsupported("top_logprobs", "");
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    unsupported("logit_bias", "");
  if (const json* v = field(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty()))
    unsupported("suffix", "");
  if (const json* v = field(body, "response_format")) {
    const bool text = v->is_object() && v->contains("type") && (*v)["type"] == "text";
    if (!text) unsupported("response_format", " (only {\"type\": \"text\"})");
  }
  if (chat) {
    const json* tools = field(body, "tools");
    const json* choice = field(body, "tool_choice");
    const bool none = choice && choice->is_string() && choice->get<std::string>() == "none";
    if (tools && !(tools->is_array() && tools->empty()) && !none) unsupported("tools", "");
    if (field(body, "functions")) unsupported("functions", "");
  }
}

void parse_common(const json& body, GenerationRequest& r) {
  refuse_unsupported(body, r.chat);
  r.model = get_string(body, "model");
  SamplingParams& p = r.params;
  if (auto v = get_number(body, "temperature"))
    p.temperature = in_range(*v, 0.0, 2.0, "temperature", "[0, 2]");
  if (auto v = get_number(body, "top_p")) {
    if (*v <= 0.0 || *v > 1.0)
      throw bad_request(fmt::format("'top_p' must be in (0, 1], got {}", *v), "top_p");
    p.top_p = float(*v);
  }
  if (auto v = get_int(body, "top_k")) {
    if (*v < -1) throw bad_request(fmt::format("'top_k' must be -1, 0 (off) or positive, got {}", *v), "top_k");
    p.top_k = *v <= 0 ? -1 : int32_t(std::min<int64_t>(*v, std::numeric_limits<int32_t>::max()));
  }
  if (auto v = get_number(body, "min_p")) p.min_p = in_range(*v, 0.0, 1.0, "min_p", "[0, 1]");
  if (auto v = get_number(body, "presence_penalty"))
    p.presence_penalty = in_range(*v, -2.0, 2.0, "presence_penalty", "[-2, 2]");
  if (auto v = get_number(body, "frequency_penalty"))
    p.frequency_penalty = in_range(*v, -2.0, 2.0, "frequency_penalty", "[-2, 2]");
  if (auto v = get_number(body, "repetition_penalty")) {
    if (*v <= 0.0)
      throw bad_request(fmt::format("'repetition_penalty' must be positive, got {}", *v),
                        "repetition_penalty");
    p.repetition_penalty = float(*v);
  }
  if (auto v = get_int(body, "seed")) p.seed = uint64_t(*v);  // negative seeds wrap, as bits
  // max_completion_tokens is the newer name of max_tokens; either may be given.
  std::optional<int64_t> max_tokens = get_int(body, "max_tokens");
  if (auto v = get_int(body, "max_completion_tokens")) max_tokens = v;
  if (max_tokens && *max_tokens < 1) {
    throw bad_request(fmt::format("'max_tokens' must be at least 1, got {}", *max_tokens),
                      "max_tokens");
  }
  r.max_tokens = max_tokens;
  if (auto v = get_int(body, "min_tokens")) {
    if (*v < 0) throw bad_request(fmt::format("'min_tokens' must be non-negative, got {}", *v), "min_tokens");
    if (max_tokens && *v > *max_tokens)
      throw bad_request(fmt::format("'min_tokens' ({}) must not exceed max_tokens ({})", *v,
                                    *max_tokens),
                        "min_tokens");
    p.min_tokens = *v;
  }
  if (auto v = get_bool(body, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = get_bool(body, "skip_special_tokens")) p.skip_special_tokens = *v;
  if (const json* v = field(body, "stop")) {
    if (v->is_string()) {
      p.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const json& s : *v) {
        if (!s.is_string()) wrong_type("stop", "a string or a list of strings", *v);
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or a list of strings", *v);
    }
    for (const std::string& s : p.stop)
      if (s.empty()) throw bad_request("'stop' strings must not be empty", "stop");
  }
  if (const json* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) wrong_type("stop_token_ids", "a list of token ids", *v);
    p.stop_token_ids = token_ids(*v, "stop_token_ids");
  }
  if (auto v = get_int(body, "n")) {
    if (*v < 1 || *v > kMaxChoices)
      throw bad_request(fmt::format("'n' must be in [1, {}], got {}", kMaxChoices, *v), "n");
    r.n = *v;
  }
  if (auto v = get_int(body, "best_of"); v && *v != r.n)
    throw bad_request("'best_of' other than n is not supported by this server", "best_of");
  if (auto v = get_bool(body, "stream")) r.stream = *v;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
  }
  if (auto v = get_bool(body, "add_special_tokens")) r.add_special_tokens = v;
}

// A message's content: a string, or OpenAI content parts of type text (joined with newlines,
// as vLLM does); null only for an assistant turn (one that made tool calls).
std::string message_content(const json& content, size_t i) {
  if (content.is_string()) return content.get<std::string>();
  const std::string name = fmt::format("messages[{}].content", i);
  if (!content.is_array())
    throw bad_request(fmt::format("'{}' must be a string or a list of content parts, got {}",
                                  name, content.type_name()),
                      name);
  std::string text;
  for (size_t k = 0; k < content.size(); ++k) {
    const json& part = content[k];
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      throw bad_request(fmt::format("'{}[{}]' must be an object with a 'type'", name, k), name);
    const std::string type = part["type"].get<std::string>();
    if (type != "text")
      throw bad_request(fmt::format("'{}[{}]': content parts of type '{}' are not supported "
                                    "(text only)",
                                    name, k, type),
                        name);
    if (!part.contains("text") || !part["text"].is_string())
      throw bad_request(fmt::format("'{}[{}].text' must be a string", name, k), name);
    if (!text.empty()) text += '\n';
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

GenerationRequest parse_completion_request(const json& body) {
  GenerationRequest r;
  r.chat = false;
  parse_common(body, r);
  if (auto v = get_bool(body, "echo")) r.echo = *v;
  const json* prompt = field(body, "prompt");
  if (!prompt) throw bad_request("'prompt' is required", "prompt");
  const auto text_prompt = [](const json& s) {
    PromptSpec p;
    p.text = s.get<std::string>();
    return p;
  };
  const auto id_prompt = [](const json& a) {
    PromptSpec p;
    p.is_text = false;
    p.ids = token_ids(a, "prompt");
    return p;
  };
  if (prompt->is_string()) {
    r.prompts.push_back(text_prompt(*prompt));
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number()) {
    r.prompts.push_back(id_prompt(*prompt));
  } else if (prompt->is_array() && !prompt->empty()) {
    for (const json& p : *prompt) {
      if (p.is_string()) {
        r.prompts.push_back(text_prompt(p));
      } else if (p.is_array()) {
        r.prompts.push_back(id_prompt(p));
      } else {
        wrong_type("prompt", "a string, a list of strings, or token ids", *prompt);
      }
    }
  } else {
    throw bad_request(prompt->is_array()
                          ? std::string("'prompt' must not be an empty list")
                          : fmt::format("'prompt' must be a string, a list of strings, or token "
                                        "ids, got {}",
                                        prompt->type_name()),
                      "prompt");
  }
  for (const PromptSpec& p : r.prompts)
    if (p.is_text ? p.text.empty() : p.ids.empty())
      throw bad_request("'prompt' must not be empty", "prompt");
  return r;
}

GenerationRequest parse_chat_request(const json& body) {
  GenerationRequest r;
  r.chat = true;
  parse_common(body, r);
  const json* messages = field(body, "messages");
  if (!messages) throw bad_request("'messages' is required", "messages");
  if (!messages->is_array()) wrong_type("messages", "a list of messages", *messages);
  if (messages->empty()) throw bad_request("'messages' must not be empty", "messages");
  r.messages = nlohmann::ordered_json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string name = fmt::format("messages[{}]", i);
    if (!m.is_object())
      throw bad_request(fmt::format("'{}' must be an object, got {}", name, m.type_name()), name);
    if (!m.contains("role") || !m["role"].is_string())
      throw bad_request(fmt::format("'{}.role' must be a string", name), name + ".role");
    nlohmann::ordered_json msg;
    msg["role"] = m["role"];
    const json* content = field(m, "content");
    if (content) {
      msg["content"] = message_content(*content, i);
    } else if (m["role"] == "assistant") {
      msg["content"] = nullptr;
    } else {
      throw bad_request(fmt::format("'{}.content' is required", name), name + ".content");
    }
    if (const json* n = field(m, "name"); n && n->is_string()) msg["name"] = *n;
    r.messages.push_back(std::move(msg));
  }
  if (auto v = get_bool(body, "add_generation_prompt")) r.add_generation_prompt = *v;
  if (const json* kw = field(body, "chat_template_kwargs")) {
    if (!kw->is_object()) wrong_type("chat_template_kwargs", "an object", *kw);
    r.template_kwargs = nlohmann::ordered_json::parse(kw->dump());
  }
  return r;
}

}  // namespace atom::server

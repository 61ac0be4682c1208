// The OpenAI request schema: every field's type and range checks, and what a valid body becomes.
#include <gtest/gtest.h>

#include "atom/server/openai_protocol.h"

namespace atom::server {
namespace {

using nlohmann::json;

// The 400 a body gets, as (param, message); fails the test when the body parses.
std::pair<std::string, std::string> completion_error(const json& body) {
  try {
    parse_completion_request(body);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.type, "invalid_request_error");
    return {e.param, e.message};
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return {};
}

std::pair<std::string, std::string> chat_error(const json& body) {
  try {
    parse_chat_request(body);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    return {e.param, e.message};
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return {};
}

TEST(OpenAiProtocol, CompletionDefaultsAndFields) {
  GenerationRequest r = parse_completion_request(json{{"prompt", "hi"}});
  EXPECT_FALSE(r.chat);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_TRUE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].text, "hi");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FLOAT_EQ(r.params.temperature, 1.0f);

  r = parse_completion_request(json::parse(R"({
      "model": "m", "prompt": "x", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": 0, "min_p": 0.1, "seed": -1, "stop": "END", "stop_token_ids": [5, 6], "n": 3,
      "stream": true, "stream_options": {"include_usage": true}, "presence_penalty": 1.5,
      "frequency_penalty": -0.5, "repetition_penalty": 1.2, "ignore_eos": true, "min_tokens": 2,
      "echo": true, "skip_special_tokens": false, "user": "ignored", "logprobs": null})"));
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.top_p, 0.9f);
  EXPECT_EQ(r.params.top_k, -1);  // 0 means off, as in vLLM
  EXPECT_FLOAT_EQ(r.params.min_p, 0.1f);
  EXPECT_EQ(r.params.seed, std::numeric_limits<uint64_t>::max());  // -1 as 64 bits
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FLOAT_EQ(r.params.presence_penalty, 1.5f);
  EXPECT_FLOAT_EQ(r.params.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.params.repetition_penalty, 1.2f);
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_EQ(r.params.min_tokens, 2);
  EXPECT_TRUE(r.echo);
  EXPECT_FALSE(r.params.skip_special_tokens);
}

TEST(OpenAiProtocol, PromptShapes) {
  GenerationRequest r = parse_completion_request(json{{"prompt", {1, 2, 3}}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));

  r = parse_completion_request(json{{"prompt", {"a", "b"}}});
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].text, "b");

  r = parse_completion_request(json{{"prompt", {{1, 2}, {3}}}});
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].ids, std::vector<int32_t>{3});

  EXPECT_EQ(completion_error(json::object()).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", nullptr}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", ""}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", json::array()}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", 5}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", {1, -2}}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", {"a", 3.5}}}).first, "prompt");
  EXPECT_EQ(completion_error(json{{"prompt", {json::array()}}}).first, "prompt");
}

TEST(OpenAiProtocol, TypeAndRangeErrorsNameTheField) {
  const auto err = [](const char* field, json value) {
    json body{{"prompt", "x"}};
    body[field] = std::move(value);
    return completion_error(body);
  };
  EXPECT_EQ(err("temperature", "hot").first, "temperature");
  EXPECT_NE(err("temperature", "hot").second.find("must be a number"), std::string::npos);
  EXPECT_EQ(err("temperature", -0.1).first, "temperature");
  EXPECT_EQ(err("temperature", 2.5).first, "temperature");
  EXPECT_EQ(err("top_p", 0).first, "top_p");
  EXPECT_EQ(err("top_p", 1.5).first, "top_p");
  EXPECT_EQ(err("top_k", -2).first, "top_k");
  EXPECT_EQ(err("top_k", 1.5).first, "top_k");
  EXPECT_EQ(err("min_p", 2).first, "min_p");
  EXPECT_EQ(err("max_tokens", 0).first, "max_tokens");
  EXPECT_EQ(err("max_tokens", -5).first, "max_tokens");
  EXPECT_EQ(err("max_tokens", "10").first, "max_tokens");
  EXPECT_EQ(err("max_completion_tokens", 0).first, "max_tokens");
  EXPECT_EQ(err("n", 0).first, "n");
  EXPECT_EQ(err("n", kMaxChoices + 1).first, "n");
  EXPECT_EQ(err("presence_penalty", 3).first, "presence_penalty");
  EXPECT_EQ(err("frequency_penalty", -3).first, "frequency_penalty");
  EXPECT_EQ(err("repetition_penalty", 0).first, "repetition_penalty");
  EXPECT_EQ(err("stop", 5).first, "stop");
  EXPECT_EQ(err("stop", json::array({"a", 1})).first, "stop");
  EXPECT_EQ(err("stop", "").first, "stop");
  EXPECT_EQ(err("stop_token_ids", "x").first, "stop_token_ids");
  EXPECT_EQ(err("stream", "yes").first, "stream");
  EXPECT_EQ(err("stream_options", 1).first, "stream_options");
  EXPECT_EQ(err("seed", "s").first, "seed");
  EXPECT_EQ(err("min_tokens", -1).first, "min_tokens");
  EXPECT_EQ(err("model", 3).first, "model");
  // Refused rather than silently ignored.
  EXPECT_EQ(err("logprobs", 2).first, "logprobs");
  EXPECT_EQ(err("logit_bias", json{{"5", 10}}).first, "logit_bias");
  EXPECT_EQ(err("best_of", 3).first, "best_of");
  EXPECT_EQ(err("suffix", "s").first, "suffix");
  EXPECT_EQ(err("response_format", json{{"type", "json_object"}}).first, "response_format");
  // min_tokens above max_tokens.
  EXPECT_EQ(completion_error(json{{"prompt", "x"}, {"max_tokens", 2}, {"min_tokens", 3}}).first,
            "min_tokens");
  // Integral floats are integers (pydantic's lax mode); 16.0 -> 16.
  EXPECT_EQ(parse_completion_request(json{{"prompt", "x"}, {"max_tokens", 16.0}}).max_tokens, 16);
  // max_completion_tokens wins over max_tokens.
  EXPECT_EQ(parse_completion_request(
                json{{"prompt", "x"}, {"max_tokens", 4}, {"max_completion_tokens", 9}})
                .max_tokens,
            9);
}

TEST(OpenAiProtocol, ChatMessages) {
  GenerationRequest r = parse_chat_request(json::parse(R"({"messages": [
      {"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null},
      {"role": "user", "content": "c", "name": "bob"}],
      "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": false})"));
  EXPECT_TRUE(r.chat);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0]["content"], "be brief");
  EXPECT_EQ(r.messages[1]["content"], "a\nb");  // text parts joined, as vLLM does
  EXPECT_TRUE(r.messages[2]["content"].is_null());
  EXPECT_EQ(r.messages[3]["name"], "bob");
  EXPECT_EQ(r.template_kwargs["enable_thinking"], false);
  EXPECT_FALSE(r.add_generation_prompt);

  EXPECT_EQ(chat_error(json::object()).first, "messages");
  EXPECT_EQ(chat_error(json{{"messages", "hi"}}).first, "messages");
  EXPECT_EQ(chat_error(json{{"messages", json::array()}}).first, "messages");
  EXPECT_EQ(chat_error(json{{"messages", {1}}}).first, "messages[0]");
  EXPECT_EQ(chat_error(json::parse(R"({"messages": [{"content": "x"}]})")).first,
            "messages[0].role");
  EXPECT_EQ(chat_error(json::parse(R"({"messages": [{"role": "user"}]})")).first,
            "messages[0].content");
  EXPECT_EQ(chat_error(json::parse(R"({"messages": [{"role": "user", "content": 5}]})")).first,
            "messages[0].content");
  const auto image = chat_error(json::parse(
      R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})"));
  EXPECT_EQ(image.first, "messages[0].content");
  EXPECT_NE(image.second.find("image_url"), std::string::npos);
  EXPECT_EQ(chat_error(json::parse(R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}]})")).first,
            "tools");
  // tools with tool_choice "none" change nothing: accepted.
  EXPECT_NO_THROW(parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"})")));
}

TEST(OpenAiProtocol, JsonBodyAndErrorShape) {
  EXPECT_THROW(parse_json_object("{bad"), ApiError);
  EXPECT_THROW(parse_json_object("[1, 2]"), ApiError);
  EXPECT_THROW(parse_json_object(""), ApiError);
  EXPECT_EQ(parse_json_object(R"({"a": 1})")["a"], 1);

  const json e = json::parse(error_json(bad_request("bad thing", "temperature")));
  ASSERT_TRUE(e.contains("error"));
  EXPECT_EQ(e["error"]["message"], "bad thing");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "temperature");
  EXPECT_TRUE(e["error"]["code"].is_null());
  const json u = json::parse(error_json(api_error(401, "no key")));
  EXPECT_EQ(u["error"]["code"], "invalid_api_key");
  EXPECT_TRUE(u["error"]["param"].is_null());
  EXPECT_EQ(api_error(503, "busy").type, "server_error");
  EXPECT_EQ(api_error(404, "where").code, "unknown_url");
}

}  // namespace
}  // namespace atom::server

// The SSE loop of the reference, fed lines with known timestamps: exact TTFT/ITL/latency.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "atom/bench/request.h"
#include "atom/core/error.h"
#include "fake_server.h"

namespace atom::bench {
namespace {

using testing::chat_chunk;
using testing::completion_chunk;
using testing::usage_chunk;

std::string line_of(const std::string& sse) { return sse.substr(0, sse.find('\n')); }

TEST(StreamParser, CompletionsTimesEveryChoicesChunkIncludingEmptyText) {
  StreamParser p(Backend::kVllm, 10.0, 7);
  EXPECT_TRUE(p.on_line(line_of(completion_chunk("Hello")), 10.25));
  EXPECT_TRUE(p.on_line("", 10.26));  // blank separator lines are skipped
  EXPECT_TRUE(p.on_line(line_of(completion_chunk(" world")), 10.35));
  EXPECT_TRUE(p.on_line(line_of(completion_chunk("")), 10.375));  // ATOM's trailing stop chunk
  EXPECT_TRUE(p.on_line(line_of(usage_chunk(3)), 10.5));          // does not move the clock
  EXPECT_TRUE(p.on_line("data: [DONE]", 10.6));
  const RequestOutput o = p.finish();
  EXPECT_TRUE(o.success);
  EXPECT_EQ(o.generated_text, "Hello world");
  EXPECT_NEAR(o.ttft, 0.25, 1e-12);
  ASSERT_EQ(o.itl.size(), 2u);
  EXPECT_NEAR(o.itl[0], 0.10, 1e-12);
  EXPECT_NEAR(o.itl[1], 0.025, 1e-12);
  EXPECT_NEAR(o.latency, 0.375, 1e-12);
  ASSERT_TRUE(o.output_tokens.has_value());
  EXPECT_EQ(*o.output_tokens, 3);
  EXPECT_EQ(o.prompt_len, 7);
  EXPECT_EQ(o.error, "");
}

TEST(StreamParser, LinesAreStrippedAndPrefixIsOptional) {
  StreamParser p(Backend::kOpenai, 0.0, 1);
  const std::string raw = "  " + line_of(completion_chunk("a")) + " \r";
  EXPECT_TRUE(p.on_line(raw, 1.0));
  // Without the "data: " prefix the JSON is still parsed, as removeprefix leaves it alone.
  EXPECT_TRUE(p.on_line(line_of(completion_chunk("b")).substr(6), 1.5));
  const RequestOutput o = p.finish();
  EXPECT_TRUE(o.success);
  EXPECT_EQ(o.generated_text, "ab");
  EXPECT_FALSE(o.output_tokens.has_value());  // no usage: the metrics re-tokenize the text
  EXPECT_NEAR(o.latency, 1.5, 1e-12);
}

TEST(StreamParser, CompletionsWithoutTokenChunkFail) {
  StreamParser p(Backend::kVllm, 0.0, 1);
  EXPECT_TRUE(p.on_line(line_of(usage_chunk(0)), 1.0));
  EXPECT_TRUE(p.on_line("data: {\"choices\": []}", 1.0));  // empty choices is no token
  const RequestOutput o = p.finish();
  EXPECT_FALSE(o.success);
  EXPECT_NE(o.error.find("Never received a valid chunk"), std::string::npos);
}

TEST(StreamParser, MalformedChunkFailsTheRequest) {
  StreamParser p(Backend::kVllm, 0.0, 1);
  EXPECT_TRUE(p.on_line(line_of(completion_chunk("x")), 0.5));
  EXPECT_FALSE(p.on_line("data: {not json", 0.6));
  EXPECT_FALSE(p.on_line(line_of(completion_chunk("y")), 0.7));  // reading stopped
  const RequestOutput o = p.finish();
  EXPECT_FALSE(o.success);
  EXPECT_NE(o.error.find("invalid JSON"), std::string::npos);
  EXPECT_EQ(o.generated_text, "");
}

TEST(StreamParser, ChatMovesTheClockOnEveryChunkAndAlwaysSucceeds) {
  StreamParser p(Backend::kOpenaiChat, 0.0, 1);
  EXPECT_TRUE(p.on_line(line_of(chat_chunk(nlohmann::json::object())), 0.2));  // empty delta
  EXPECT_TRUE(p.on_line(line_of(chat_chunk({{"content", "Hi"}})), 0.3));
  EXPECT_TRUE(p.on_line(line_of(usage_chunk(2)), 0.45));
  const RequestOutput o = p.finish();
  EXPECT_TRUE(o.success);
  EXPECT_EQ(o.generated_text, "Hi");
  EXPECT_NEAR(o.ttft, 0.2, 1e-12);
  ASSERT_EQ(o.itl.size(), 1u);
  EXPECT_NEAR(o.itl[0], 0.1, 1e-12);
  EXPECT_NEAR(o.latency, 0.45, 1e-12);  // the usage chunk counts for chat
  EXPECT_EQ(o.output_tokens.value_or(-1), 2);

  StreamParser empty(Backend::kOpenaiChat, 0.0, 1);
  EXPECT_TRUE(empty.finish().success);
}

TEST(Payload, CompletionsFieldsInOrder) {
  RequestInput in;
  in.prompt = "hi";
  in.model = "m";
  in.model_name = "served";
  in.output_len = 12;
  in.ignore_eos = true;
  EXPECT_EQ(build_payload(Backend::kVllm, in),
            "{\"model\":\"served\",\"prompt\":\"hi\",\"temperature\":0.0,\"best_of\":1,"
            "\"max_tokens\":12,\"logprobs\":null,\"stream\":true,\"stream_options\":{"
            "\"include_usage\":true},\"ignore_eos\":true}");
  in.model_name.reset();
  in.ignore_eos = false;
  in.logprobs = 2;
  EXPECT_EQ(build_payload(Backend::kOpenaiChat, in),
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
            "\"text\":\"hi\"}]}],\"temperature\":0.0,\"max_completion_tokens\":12,\"stream\":"
            "true,\"stream_options\":{\"include_usage\":true}}");
}

TEST(Payload, UrlAndBackendChecks) {
  EXPECT_NO_THROW(check_api_url(Backend::kVllm, "http://h:1/v1/completions"));
  EXPECT_NO_THROW(check_api_url(Backend::kVllm, "http://h:1/start_profile"));
  EXPECT_THROW(check_api_url(Backend::kVllm, "http://h:1/generate"), Error);
  EXPECT_THROW(check_api_url(Backend::kOpenaiChat, "http://h:1/v1/completions"), Error);
  EXPECT_EQ(parse_backend("openai-chat"), Backend::kOpenaiChat);
  try {
    parse_backend("tgi");
    FAIL() << "tgi accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vllm, openai, openai-chat"), std::string::npos);
  }
}

}  // namespace
}  // namespace atom::bench

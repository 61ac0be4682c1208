// The libcurl client against a scripted SSE server: measured TTFT/ITL/latency match the
// scripted delays, the concurrency cap and arrival times hold, headers, failures.
#include <gtest/gtest.h>

#include "atom/bench/client.h"
#include "atom/bench/metrics.h"
#include "atom/core/envs.h"
#include "fake_server.h"

namespace atom::bench {
namespace {

using testing::FakeServer;
using testing::Recorded;
using testing::Script;

// Timer tolerance: the server sleeps at least the scripted time; scheduling on a loaded
// two-core machine adds a few ms, rarely more.
constexpr double kSlackS = 0.025;

RequestInput input_for(const FakeServer& s, const std::string& path = "/v1/completions") {
  RequestInput in;
  in.prompt = "hello";
  in.api_url = s.base_url() + path;
  in.prompt_len = 3;
  in.output_len = 5;
  in.model = "test-model";
  return in;
}

TEST(Client, MeasuresTheScriptedTimings) {
  FakeServer server([](const Recorded&, int64_t) { return testing::atom_like_stream(60, 30, 5); });
  StreamingClient client(Backend::kVllm, std::nullopt);
  const std::vector<RequestInput> inputs(4, input_for(server));
  size_t done = 0;
  const auto outs = client.run(inputs, {0, 0, 0, 0}, 0, [&](size_t) { ++done; });
  EXPECT_EQ(done, 4u);
  std::vector<SampleRequest> samples(4, SampleRequest{"hello", 3, 5});
  for (const RequestOutput& o : outs) {
    ASSERT_TRUE(o.success) << o.error;
    EXPECT_EQ(o.generated_text, "t0tttt");
    EXPECT_EQ(o.output_tokens.value_or(-1), 5);
    EXPECT_GE(o.ttft, 0.060);
    EXPECT_LT(o.ttft, 0.060 + kSlackS);
    ASSERT_EQ(o.itl.size(), 5u);  // 4 token gaps + the trailing empty stop chunk
    // A late chunk shortens the gap after it, so single gaps get the slack both ways; the
    // server cannot send early, so together the four gaps last at least 4 x 30 ms.
    double gaps = 0.0;
    for (int k = 0; k < 4; ++k) {
      EXPECT_GE(o.itl[k], 0.030 - kSlackS);
      EXPECT_LT(o.itl[k], 0.030 + kSlackS);
      gaps += o.itl[k];
    }
    EXPECT_GE(gaps, 0.120 - 0.002);
    EXPECT_LT(o.itl[4], 0.010);
    EXPECT_GE(o.latency, 0.180);
    EXPECT_LT(o.latency, 0.180 + 2 * kSlackS);
    EXPECT_EQ(o.prompt_len, 3);
  }
  const MetricsResult m =
      calculate_metrics(samples, outs, 1.0, [](const std::string&) { return 0; }, {99}, {});
  EXPECT_NEAR(m.metrics.tpot.mean, 30.0, 1e3 * kSlackS / 2);  // (latency - ttft) / 4 in ms
  EXPECT_NEAR(m.metrics.ttft.mean, 60.0, 1e3 * kSlackS);
  EXPECT_EQ(m.metrics.total_output, 20);
  EXPECT_EQ(server.max_in_flight(), 4);  // rate inf: all four at once
}

TEST(Client, ConcurrencyCapAndArrivalTimes) {
  FakeServer server([](const Recorded&, int64_t) { return testing::atom_like_stream(50, 25, 3); });
  StreamingClient client(Backend::kOpenai, std::nullopt);
  const std::vector<RequestInput> inputs(6, input_for(server));
  const double t0 = now_seconds();
  const auto outs = client.run(inputs, std::vector<double>(6, 0.0), 2);
  const double wall = now_seconds() - t0;
  for (const auto& o : outs) EXPECT_TRUE(o.success) << o.error;
  EXPECT_EQ(server.max_in_flight(), 2);
  EXPECT_GE(wall, 3 * 0.100);  // three waves of two 100 ms streams

  FakeServer paced([](const Recorded&, int64_t) { return testing::atom_like_stream(5, 5, 2); });
  const std::vector<RequestInput> three(3, input_for(paced));
  const auto outs2 = client.run(three, {0.0, 0.15, 0.30}, 0);
  for (const auto& o : outs2) EXPECT_TRUE(o.success) << o.error;
  const auto recs = paced.requests();
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_NEAR(recs[1].arrival_s - recs[0].arrival_s, 0.15, kSlackS);
  EXPECT_NEAR(recs[2].arrival_s - recs[0].arrival_s, 0.30, kSlackS);
}

TEST(Client, SendsThePayloadAndTheBearerHeader) {
  FakeServer server([](const Recorded&, int64_t) { return testing::atom_like_stream(1, 1, 2); });
  RequestInput in = input_for(server);
  in.model_name = "served-name";
  in.ignore_eos = true;
  in.prompt = std::string(5000, 'x');  // over 1 KiB: no Expect: 100-continue stall
  envs::set("OPENAI_API_KEY", "sk-test");
  StreamingClient with_key(Backend::kVllm, envs::OPENAI_API_KEY());
  envs::unset("OPENAI_API_KEY");
  const double t0 = now_seconds();
  EXPECT_TRUE(with_key.run_one(in).success);
  EXPECT_LT(now_seconds() - t0, 0.5);
  StreamingClient without(Backend::kVllm, envs::OPENAI_API_KEY());
  EXPECT_TRUE(without.run_one(input_for(server)).success);
  const auto recs = server.requests();
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].authorization, "Bearer sk-test");
  EXPECT_EQ(recs[1].authorization, "Bearer None");
  EXPECT_EQ(recs[0].content_type, "application/json");
  EXPECT_EQ(recs[0].body["model"], "served-name");
  EXPECT_EQ(recs[0].body["prompt"].get<std::string>().size(), 5000u);
  EXPECT_EQ(recs[0].body["max_tokens"], 5);
  EXPECT_EQ(recs[0].body["stream"], true);
  EXPECT_EQ(recs[0].body["stream_options"]["include_usage"], true);
  EXPECT_EQ(recs[0].body["ignore_eos"], true);
  EXPECT_EQ(recs[1].body["model"], "test-model");
  EXPECT_FALSE(recs[1].body.contains("ignore_eos"));
}

TEST(Client, FailuresAreCountedNotThrown) {
  FakeServer server([](const Recorded& r, int64_t) {
    Script s;
    if (r.body["prompt"] == "fail") {
      s.status = 500;
    } else if (r.body["prompt"] == "garbage") {
      s.events.push_back({1, testing::completion_chunk("a") + "data: {oops\n\n"});
    } else {
      s = testing::atom_like_stream(1, 1, 2);
    }
    return s;
  });
  StreamingClient client(Backend::kVllm, std::nullopt);
  std::vector<RequestInput> inputs(3, input_for(server));
  inputs[0].prompt = "fail";
  inputs[1].prompt = "garbage";
  const auto outs = client.run(inputs, {0, 0, 0}, 0);
  EXPECT_FALSE(outs[0].success);
  EXPECT_EQ(outs[0].error, "Internal Server Error");
  EXPECT_EQ(outs[0].ttft, 0.0);
  EXPECT_FALSE(outs[1].success);
  EXPECT_NE(outs[1].error.find("invalid JSON"), std::string::npos);
  EXPECT_TRUE(outs[2].success) << outs[2].error;

  // Nothing listening: every request fails with curl's reason.
  RequestInput down = input_for(server);
  down.api_url = "http://127.0.0.1:" + std::to_string(testing::closed_port()) + "/v1/completions";
  const auto outs2 = client.run({down, down}, {0, 0}, 0);
  for (const auto& o : outs2) {
    EXPECT_FALSE(o.success);
    EXPECT_NE(o.error.find("Couldn't connect to server"), std::string::npos) << o.error;
  }
  EXPECT_FALSE(client.post_ok(down));
  EXPECT_TRUE(client.post_ok(input_for(server, "/start_profile")));
}

}  // namespace
}  // namespace atom::bench

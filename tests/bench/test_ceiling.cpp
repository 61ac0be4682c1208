// The client's own ceiling: requests/s against the scripted server with no delays (server and
// client share the machine, so this is a lower bound). docs/bench_serve.md quotes its output.
#include <gtest/gtest.h>

#include <cstdio>

#include "atom/bench/client.h"
#include "fake_server.h"

namespace atom::bench {
namespace {

TEST(Ceiling, ZeroDelayServer) {
  constexpr int kTokens = 16;
  testing::FakeServer server(
      [](const testing::Recorded&, int64_t) { return testing::atom_like_stream(0, 0, kTokens); });
  StreamingClient client(Backend::kVllm, std::nullopt);
  RequestInput in;
  in.prompt = "hello";
  in.api_url = server.base_url() + "/v1/completions";
  in.output_len = kTokens;
  in.model = "m";
  for (const int64_t conc : {16, 64}) {
    const size_t n = 3000;
    const std::vector<RequestInput> inputs(n, in);
    const double t0 = now_seconds();
    const auto outs = client.run(inputs, std::vector<double>(n, 0.0), conc);
    const double dur = now_seconds() - t0;
    size_t ok = 0;
    for (const auto& o : outs) ok += o.success ? 1 : 0;
    EXPECT_EQ(ok, n);
    std::printf("ceiling: %zu requests x %d token chunks, max concurrency %lld: %.0f req/s, "
                "%.0f chunks/s\n",
                n, kTokens + 1, static_cast<long long>(conc), double(n) / dur,
                double(n * (kTokens + 1)) / dur);
    EXPECT_GT(double(n) / dur, 100.0);  // far below what it does; catches a pathology
  }
}

}  // namespace
}  // namespace atom::bench

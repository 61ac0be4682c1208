// calculate_metrics, the console report and the result keys against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "atom/bench/metrics.h"
#include "atom/bench/progress.h"
#include "atom/bench/pyfmt.h"
#include "atom/bench/serve.h"
#include "atom/core/error.h"

namespace atom::bench {
namespace {

TEST(Stats, NumpyPercentileMeanStd) {
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 99), 3.97);  // np.percentile, linear
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);   // unsorted input
  EXPECT_DOUBLE_EQ(percentile({5, 1, 3}, 50), 3.0);
  EXPECT_DOUBLE_EQ(percentile({7}, 99.9), 7.0);
  EXPECT_DOUBLE_EQ(percentile({1, 2}, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile({1, 2}, 100), 2.0);
  EXPECT_DOUBLE_EQ(percentile({}, 99), 0.0);  // `values or 0`
  EXPECT_DOUBLE_EQ(mean({1, 2, 3, 4}), 2.5);
  EXPECT_DOUBLE_EQ(stddev({1, 2, 3, 4}), std::sqrt(1.25));  // ddof=0
  EXPECT_DOUBLE_EQ(mean({}), 0.0);
  EXPECT_DOUBLE_EQ(stddev({}), 0.0);
  EXPECT_THROW(percentile({1.0}, 101), Error);
}

struct Fixture {
  std::vector<SampleRequest> inputs{{"a", 10, 4}, {"b", 20, 4}, {"c", 30, 4}};
  std::vector<RequestOutput> outputs;
  Fixture() {
    RequestOutput o0;
    o0.success = true;
    o0.ttft = 0.1;
    o0.latency = 0.5;
    o0.output_tokens = 5;
    o0.itl = {0.1, 0.1, 0.1, 0.1};
    o0.prompt_len = 10;
    o0.generated_text = "xyz";
    RequestOutput o1;  // failed
    o1.prompt_len = 20;
    o1.error = "Internal Server Error";
    RequestOutput o2;
    o2.success = true;
    o2.ttft = 0.2;
    o2.latency = 0.2;
    o2.generated_text = "abc";  // no usage: counted by the tokenizer (1 token here)
    o2.prompt_len = 30;
    outputs = {o0, o1, o2};
  }
  MetricsResult run(const GoodputConfig& g, std::vector<double> ps = {99}) const {
    return calculate_metrics(
        inputs, outputs, 2.0, [](const std::string& t) { return int64_t(t.size() / 3); }, ps, g);
  }
};

TEST(CalculateMetrics, HandComputed) {
  const Fixture f;
  const MetricsResult r = f.run({}, {50, 99});
  const BenchmarkMetrics& m = r.metrics;
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.total_input, 40);  // failed requests' prompts are not counted
  EXPECT_EQ(m.total_output, 6);
  EXPECT_EQ(r.actual_output_lens, (std::vector<int64_t>{5, 0, 1}));
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 3.0);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 23.0);
  EXPECT_DOUBLE_EQ(m.request_goodput, 0.0);
  EXPECT_NEAR(m.ttft.mean, 150, 1e-9);
  EXPECT_NEAR(m.ttft.median, 150, 1e-9);
  EXPECT_NEAR(m.ttft.std, 50, 1e-9);
  ASSERT_EQ(m.ttft.percentiles.size(), 2u);
  EXPECT_EQ(m.ttft.percentiles[1].first, 99);
  EXPECT_NEAR(m.ttft.percentiles[1].second, 199, 1e-9);
  // TPOT only for the reply with more than one token: (0.5 - 0.1) / 4.
  EXPECT_NEAR(m.tpot.mean, 100, 1e-9);
  EXPECT_NEAR(m.tpot.std, 0, 1e-9);
  EXPECT_NEAR(m.itl.mean, 100, 1e-9);
  EXPECT_NEAR(m.e2el.mean, 350, 1e-9);
  EXPECT_NEAR(m.e2el.percentiles[0].second, 350, 1e-9);
}

TEST(CalculateMetrics, GoodputNeedsEverySlo) {
  const Fixture f;
  EXPECT_DOUBLE_EQ(f.run({{"ttft", 150}}).metrics.request_goodput, 0.5);
  EXPECT_DOUBLE_EQ(f.run({{"ttft", 150}, {"e2el", 400}}).metrics.request_goodput, 0.0);
  // A one-token reply has TPOT 0 for goodput, so it meets any TPOT SLO.
  EXPECT_DOUBLE_EQ(f.run({{"tpot", 50}}).metrics.request_goodput, 0.5);
  EXPECT_DOUBLE_EQ(f.run({{"tpot", 100}, {"e2el", 500}}).metrics.request_goodput, 1.0);
}

TEST(Goodput, ParsesAndRejectsLikeTheReference) {
  const GoodputConfig g = parse_goodput({"ttft:100", "e2el:2.5e3"});
  EXPECT_DOUBLE_EQ(g.at("ttft"), 100);
  EXPECT_DOUBLE_EQ(g.at("e2el"), 2500);
  const auto message = [](std::vector<std::string> v) {
    try {
      parse_goodput(v);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"ttft=100"}).find("Invalid format found"), std::string::npos);
  EXPECT_NE(message({"ttft:fast"}).find("Invalid format found"), std::string::npos);
  EXPECT_NE(message({"itl:5"}).find("Invalid metric name found, itl: 5.0."), std::string::npos);
  EXPECT_NE(message({"tpot:-1"}).find("Invalid value found, tpot: -1.0."), std::string::npos);
}

TEST(Report, ConsoleLayoutAndResultKeys) {
  const Fixture f;
  const MetricsResult r = f.run({{"ttft", 150}}, {99, 99.9});
  std::ostringstream out;
  const nlohmann::ordered_json j =
      report_metrics(r, f.outputs, 2.0, true, {"ttft", "tpot", "itl", "e2el"}, out);
  const std::string text = out.str();
  const std::string expected_head =
      "============ Serving Benchmark Result ============\n"
      "Successful requests:                     2         \n"
      "Benchmark duration (s):                  2.00      \n"
      "Total input tokens:                      40        \n"
      "Total generated tokens:                  6         \n"
      "Request throughput (req/s):              1.00      \n"
      "Request goodput (req/s):                 0.50      \n"
      "Output token throughput (tok/s):         3.00      \n"
      "Total Token throughput (tok/s):          23.00     \n"
      "---------------Time to First Token----------------\n"
      "Mean TTFT (ms):                          150.00    \n"
      "Median TTFT (ms):                        150.00    \n"
      "P99 TTFT (ms):                           199.00    \n"
      "P99.9 TTFT (ms):                         199.90    \n"
      "-----Time per Output Token (excl. 1st token)------\n";
  EXPECT_EQ(text.substr(0, expected_head.size()), expected_head);
  EXPECT_NE(text.find("----------------End-to-end Latency----------------\n"),
            std::string::npos);
  EXPECT_EQ(text.substr(text.size() - 51), std::string(50, '=') + "\n");

  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  std::vector<std::string> expected = {
      "duration", "completed", "total_input_tokens", "total_output_tokens",
      "request_throughput", "request_goodput:", "output_throughput", "total_token_throughput",
      "input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"};
  for (const char* m : {"ttft", "tpot", "itl", "e2el"})
    for (const char* s : {"mean_{}_ms", "median_{}_ms", "std_{}_ms", "p99_{}_ms", "p99.9_{}_ms"})
      expected.push_back(fmt::format(fmt::runtime(s), m));
  EXPECT_EQ(keys, expected);
  EXPECT_DOUBLE_EQ(j["request_goodput:"].get<double>(), 0.5);
  EXPECT_EQ(j["input_lens"], nlohmann::json({10, 20, 30}));
  EXPECT_EQ(j["output_lens"], nlohmann::json({5, 0, 1}));
  EXPECT_EQ(j["errors"][1], "Internal Server Error");
  EXPECT_EQ(j["itls"][0].size(), 4u);
  EXPECT_EQ(j["generated_texts"][2], "abc");

  // Without --goodput: no goodput line, and the key is null.
  std::ostringstream out2;
  const auto j2 = report_metrics(f.run({}), f.outputs, 2.0, false, {"ttft"}, out2);
  EXPECT_EQ(out2.str().find("goodput"), std::string::npos);
  EXPECT_TRUE(j2["request_goodput:"].is_null());
  EXPECT_FALSE(j2.contains("mean_tpot_ms"));
}

TEST(PyFormat, FloatsAndParsing) {
  EXPECT_EQ(py_float(INFINITY), "inf");
  EXPECT_EQ(py_float(10.0), "10.0");
  EXPECT_EQ(py_float(0.1), "0.1");
  EXPECT_EQ(py_float(2.5), "2.5");
  EXPECT_EQ(py_float(1e-05), "1e-05");
  EXPECT_EQ(percentile_word(99), "99");
  EXPECT_EQ(percentile_word(99.9), "99.9");
  double v = 0;
  EXPECT_TRUE(parse_py_float("inf", &v));
  EXPECT_TRUE(std::isinf(v));
  EXPECT_TRUE(parse_py_float(" 1e3 ", &v));
  EXPECT_DOUBLE_EQ(v, 1000);
  EXPECT_FALSE(parse_py_float("fast", &v));
  EXPECT_FALSE(parse_py_float("0x10", &v));
}

TEST(Progress, RendersLikeTqdm) {
  EXPECT_EQ(ProgressBar::render(45, 100, 3.0), " 45%|####5     | 45/100 [00:03<00:03, 15.00it/s]");
  EXPECT_EQ(ProgressBar::render(0, 10, 0.0), "  0%|          | 0/10 [00:00<?, ?it/s]");
  EXPECT_EQ(ProgressBar::render(10, 10, 65.0), "100%|##########| 10/10 [01:05<00:00, 0.15it/s]");
}

TEST(Arrivals, GammaStatisticsWithAFixedSeed) {
  const auto stats = [](double rate, double burstiness, uint64_t seed) {
    Rng rng(seed);
    const std::vector<double> t = arrival_offsets(40001, rate, burstiness, rng);
    std::vector<double> gaps;
    for (size_t i = 1; i < t.size(); ++i) gaps.push_back(t[i] - t[i - 1]);
    EXPECT_EQ(t[0], 0.0);
    for (double g : gaps) EXPECT_GE(g, 0.0);
    const double m = mean(gaps), s = stddev(gaps);
    return std::pair<double, double>(m, s * s);
  };
  // Poisson at rate 10: exponential gaps, mean 0.1 s, variance 0.01.
  auto [m1, v1] = stats(10, 1.0, 0);
  EXPECT_NEAR(m1, 0.1, 0.1 * 0.03);
  EXPECT_NEAR(v1, 0.01, 0.01 * 0.06);
  // Bursty (shape 0.5): same mean, variance 1/(rate^2 * burstiness) = 0.02.
  auto [m2, v2] = stats(10, 0.5, 1);
  EXPECT_NEAR(m2, 0.1, 0.1 * 0.03);
  EXPECT_NEAR(v2, 0.02, 0.02 * 0.08);
  // Regular (shape 4): variance 0.0025.
  auto [m3, v3] = stats(10, 4.0, 2);
  EXPECT_NEAR(m3, 0.1, 0.1 * 0.03);
  EXPECT_NEAR(v3, 0.0025, 0.0025 * 0.06);
  // The seed fixes the draws; rate inf sends everything at once.
  Rng a(7), b(7), c(8);
  EXPECT_EQ(arrival_offsets(50, 3, 1, a), arrival_offsets(50, 3, 1, b));
  EXPECT_NE(arrival_offsets(50, 3, 1, a), arrival_offsets(50, 3, 1, c));
  EXPECT_EQ(arrival_offsets(5, INFINITY, 1, a), std::vector<double>(5, 0.0));
}

TEST(ResultFiles, PytorchNameAndArgsRepr) {
  EXPECT_EQ(pytorch_file_name("out/vllm-infqps-m-1.json"), "out/vllm-infqps-m-1.pytorch.json");
  EXPECT_EQ(pytorch_file_name("a.b/result"), "a.b/result.pytorch.json");
  EXPECT_EQ(pytorch_file_name(".hidden"), ".hidden.pytorch.json");
  EXPECT_EQ(pytorch_file_name("r.10.0qps.json"), "r.10.0qps.pytorch.json");
  BenchArgs a;
  a.model = "org/m";
  a.metadata = std::vector<std::string>{"tp=1"};
  const std::string repr = args_repr(a);
  EXPECT_EQ(repr.rfind("Namespace(backend='vllm', base_url=None, host='127.0.0.1', port=8000, "
                       "endpoint='/v1/completions', dataset=None, dataset_name='sharegpt', ",
                       0),
            0u)
      << repr;
  EXPECT_NE(repr.find("request_rate=inf, burstiness=1.0, seed=0"), std::string::npos);
  EXPECT_NE(repr.find("metadata=['tp=1']"), std::string::npos);
  EXPECT_NE(repr.find("lora_modules=None)"), std::string::npos);
}

}  // namespace
}  // namespace atom::bench

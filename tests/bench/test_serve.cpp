// run_bench_serve end to end against the scripted server: the report, the result JSON's exact
// keys and values recomputed from its own per-request lists, the PyTorch-format file, failures
// and bad flags; and the CLI's flags.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <sstream>

#include "atom/apps/commands.h"
#include "atom/bench/metrics.h"
#include "atom/bench/serve.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "bench_test_util.h"
#include "fake_server.h"

namespace atom::bench {
namespace {

using testing::FakeServer;
using testing::Recorded;
using testing::Script;

nlohmann::ordered_json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::ordered_json::parse(in);
}

// Each reply has as many tokens as the request's max_tokens.
Script reply_for(const Recorded& r) {
  return testing::atom_like_stream(40, 20, r.body.value("max_tokens", 1));
}

BenchArgs random_args(const FakeServer& server) {
  BenchArgs a;
  a.model = "org/test-model";
  a.tokenizer = testing::gpt2_vocab_path();
  a.port = server.port();
  a.dataset_name = "random";
  a.random_input_len = 16;
  a.random_output_len = 4;
  a.num_prompts = 8;
  a.disable_tqdm = true;
  return a;
}

std::string error_of(const BenchArgs& a) {
  std::ostringstream out;
  try {
    run_bench_serve(a, out);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// The tokenizer may come from an HF checkpoint folder or a tokenizer.json file too.
TEST(Serve, HfTokenizerFolderAndJson) {
  const std::string folder = std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny";
  for (const std::string& tokenizer : {folder, folder + "/tokenizer.json"}) {
    FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
    BenchArgs a = random_args(server);
    a.tokenizer = tokenizer;
    std::ostringstream out;
    const ServeResult sr = run_bench_serve(a, out);
    EXPECT_EQ(sr.failed, 0) << tokenizer;
    EXPECT_NE(out.str().find("Successful requests:                     8 "), std::string::npos)
        << tokenizer << "\n" << out.str();
  }
}

// VLLM_USE_MODELSCOPE=1 asks for a ModelScope download of a non-local tokenizer: atom bench
// serve downloads nothing, so it says so (kUnsupported naming the variable) instead of the
// plain "not a local path"; a local tokenizer is unaffected.
TEST(Serve, ModelScopeVariableOnlyChangesNonLocalTokenizers) {
  FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
  BenchArgs a = random_args(server);
  a.tokenizer = "org/not-a-local-path";
  envs::unset("VLLM_USE_MODELSCOPE");
  const std::string plain = error_of(a);
  EXPECT_NE(plain.find("not a local path"), std::string::npos) << plain;
  EXPECT_EQ(plain.find("VLLM_USE_MODELSCOPE"), std::string::npos) << plain;
  envs::set("VLLM_USE_MODELSCOPE", "True");
  const std::string modelscope = error_of(a);
  EXPECT_NE(modelscope.find("VLLM_USE_MODELSCOPE"), std::string::npos) << modelscope;
  a.tokenizer = std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny";
  std::ostringstream out;
  EXPECT_EQ(run_bench_serve(a, out).failed, 0);
  envs::unset("VLLM_USE_MODELSCOPE");
}

TEST(Serve, ResultJsonAndPytorchFile) {
  ATOM_REQUIRE_GPT2(tok);
  FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
  testing::TempDir dir;
  BenchArgs a = random_args(server);
  a.save_result = true;
  a.result_dir = dir.path();
  a.result_filename = "r.json";
  a.metadata = std::vector<std::string>{"tp=1", " note = x "};
  a.goodput = std::vector<std::string>{"ttft:1000", "e2el:5000"};
  a.percentile_metrics = "ttft,tpot,itl,e2el";
  a.metric_percentiles = "50,99";
  a.ignore_eos = true;
  envs::set("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", "1");
  std::ostringstream out;
  const ServeResult sr = run_bench_serve(a, out);
  envs::unset("SAVE_TO_PYTORCH_BENCHMARK_FORMAT");
  const std::string text = out.str();
  EXPECT_EQ(text.rfind("Namespace(backend='vllm'", 0), 0u);
  for (const char* line :
       {"Starting initial single prompt test run...\n",
        "Initial test run completed. Starting main benchmark run...\n",
        "Traffic request rate: inf\n", "Burstiness factor: 1.0 (Poisson process)\n",
        "Maximum request concurrency: None\n", "Successful requests:                     8 ",
        "Request goodput (req/s):", "P50 E2EL (ms):"})
    EXPECT_NE(text.find(line), std::string::npos) << line;
  EXPECT_EQ(sr.failed, 0);
  EXPECT_EQ(sr.result_file, dir.path() + "/r.json");
  EXPECT_EQ(server.requests().size(), 9u);  // the test request, then 8
  for (const auto& r : server.requests()) {
    EXPECT_EQ(r.body["model"], "org/test-model");
    EXPECT_EQ(r.body["ignore_eos"], true);
  }

  const auto j = read_json(sr.result_file);
  EXPECT_EQ(j, sr.result);
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  std::vector<std::string> expected = {
      "date", "backend", "model_id", "tokenizer_id", "best_of", "num_prompts", "tp", "note",
      "request_rate", "burstiness", "max_concurrency", "duration", "completed",
      "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput:",
      "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
      "itls", "generated_texts", "errors"};
  for (const char* m : {"ttft", "tpot", "itl", "e2el"})
    for (const char* s : {"mean_{}_ms", "median_{}_ms", "std_{}_ms", "p50_{}_ms", "p99_{}_ms"})
      expected.push_back(fmt::format(fmt::runtime(s), m));
  EXPECT_EQ(keys, expected);
  EXPECT_EQ(j["backend"], "vllm");
  EXPECT_EQ(j["model_id"], "org/test-model");
  EXPECT_EQ(j["tokenizer_id"], testing::gpt2_vocab_path());
  EXPECT_EQ(j["tp"], "1");
  EXPECT_EQ(j["note"], "x");
  EXPECT_EQ(j["request_rate"], "inf");
  EXPECT_TRUE(j["max_concurrency"].is_null());
  EXPECT_EQ(j["completed"], 8);
  EXPECT_EQ(j["total_input_tokens"], 8 * 16);
  EXPECT_EQ(j["total_output_tokens"], 8 * 4);
  EXPECT_EQ(j["output_lens"], nlohmann::json(std::vector<int>(8, 4)));

  // Every aggregate equals the hand computation over the file's own per-request lists.
  const double dur = j["duration"].get<double>();
  std::vector<double> ttfts, itls, tpots, e2els;
  for (size_t i = 0; i < 8; ++i) {
    const double ttft = j["ttfts"][i].get<double>();
    ttfts.push_back(ttft);
    double sum = 0;
    for (const auto& x : j["itls"][i]) {
      itls.push_back(x.get<double>());
      sum += x.get<double>();
    }
    // latency = ttft + the ITLs (the last token chunk closes both)
    e2els.push_back(ttft + sum);
    tpots.push_back(sum / 3);
    EXPECT_GE(ttft, 0.040);
    EXPECT_LT(ttft, 0.040 + 0.040);
    EXPECT_EQ(j["itls"][i].size(), 4u);  // 3 token gaps + the trailing stop chunk
    EXPECT_EQ(j["errors"][i], "");
  }
  EXPECT_NEAR(j["request_throughput"].get<double>(), 8 / dur, 1e-9);
  EXPECT_NEAR(j["request_goodput:"].get<double>(), 8 / dur, 1e-9);
  EXPECT_NEAR(j["output_throughput"].get<double>(), 32 / dur, 1e-9);
  EXPECT_NEAR(j["total_token_throughput"].get<double>(), (128 + 32) / dur, 1e-9);
  EXPECT_NEAR(j["mean_ttft_ms"].get<double>(), mean(ttfts) * 1000, 1e-9);
  EXPECT_NEAR(j["std_ttft_ms"].get<double>(), stddev(ttfts) * 1000, 1e-9);
  EXPECT_NEAR(j["p99_ttft_ms"].get<double>(), percentile(ttfts, 99) * 1000, 1e-9);
  EXPECT_NEAR(j["median_itl_ms"].get<double>(), percentile(itls, 50) * 1000, 1e-9);
  EXPECT_NEAR(j["mean_tpot_ms"].get<double>(), mean(tpots) * 1000, 1e-6);
  EXPECT_NEAR(j["p50_e2el_ms"].get<double>(), percentile(e2els, 50) * 1000, 1e-6);
  // And the scripted timings: TTFT 40 ms, ITL 20 ms, so TPOT (3 gaps of 20 + ~0) / 3 = 20.
  EXPECT_NEAR(j["mean_tpot_ms"].get<double>(), 20.0, 10.0);
  EXPECT_NEAR(j["mean_e2el_ms"].get<double>(), 100.0, 30.0);

  const auto pt = read_json(dir.path() + "/r.pytorch.json");
  ASSERT_TRUE(pt.is_array());
  ASSERT_EQ(pt.size(), 12u);
  const std::vector<std::string> names = {
      "median_ttft_ms", "mean_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
      "mean_tpot_ms",   "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms",
      "median_itl_ms",  "mean_itl_ms",  "std_itl_ms",  "p99_itl_ms"};
  for (size_t k = 0; k < 12; ++k) {
    const auto& rec = pt[k];
    EXPECT_EQ(rec["benchmark"]["name"], "vLLM benchmark");
    EXPECT_EQ(rec["benchmark"]["extra_info"]["args"]["request_rate"], "inf");
    EXPECT_EQ(rec["benchmark"]["extra_info"]["args"]["dataset_name"], "random");
    EXPECT_EQ(rec["model"]["name"], "org/test-model");
    EXPECT_EQ(rec["metric"]["name"], names[k]);
    EXPECT_EQ(rec["metric"]["benchmark_values"], nlohmann::json::array({j[names[k]]}));
    const auto& extra = rec["metric"]["extra_info"];
    for (const char* gone : {"ttfts", "itls", "generated_texts", "errors", "mean_ttft_ms"})
      EXPECT_FALSE(extra.contains(gone)) << gone;
    for (const char* kept : {"duration", "input_lens", "output_lens", "p50_ttft_ms", "tp"})
      EXPECT_TRUE(extra.contains(kept)) << kept;
  }
}

TEST(Serve, DefaultFileNameAndCap) {
  ATOM_REQUIRE_GPT2(tok);
  FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
  testing::TempDir dir;
  BenchArgs a = random_args(server);
  a.save_result = true;
  a.result_dir = dir.path();
  a.max_concurrency = 3;
  a.request_rate = 200;
  std::ostringstream out;
  const ServeResult sr = run_bench_serve(a, out);
  const std::string name = sr.result_file.substr(dir.path().size() + 1);
  EXPECT_EQ(name.rfind("vllm-200.0qps-concurrency3-test-model-", 0), 0u) << name;
  EXPECT_EQ(name.size(), std::string("vllm-200.0qps-concurrency3-test-model-").size() + 20);
  EXPECT_LE(server.max_in_flight(), 3);
  EXPECT_EQ(sr.result["max_concurrency"], 3);
  EXPECT_EQ(sr.result["request_rate"], 200.0);
  EXPECT_NE(out.str().find("Maximum request concurrency: 3\n"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/" +
                                       name.substr(0, name.size() - 5) + ".pytorch.json"));
}

TEST(Serve, FailedRequestsAreCountedAndReported) {
  ATOM_REQUIRE_GPT2(tok);
  // The test request (number 0) passes; then every other request gets a 500.
  FakeServer server([](const Recorded& r, int64_t n) {
    if (n > 0 && n % 2 == 0) return Script{500, {}};
    return reply_for(r);
  });
  BenchArgs a = random_args(server);
  std::ostringstream out;
  const ServeResult sr = run_bench_serve(a, out);
  EXPECT_EQ(sr.failed, 4);
  EXPECT_EQ(sr.result["completed"], 4);
  EXPECT_EQ(sr.result["total_input_tokens"], 4 * 16);
  int errors = 0;
  for (const auto& e : sr.result["errors"]) errors += e == "Internal Server Error" ? 1 : 0;
  EXPECT_EQ(errors, 4);
  EXPECT_NE(out.str().find("Successful requests:                     4 "), std::string::npos);
}

TEST(Serve, ServerDownAbortsWithAClearMessage) {
  ATOM_REQUIRE_GPT2(tok);
  BenchArgs a;
  a.model = "m";
  a.tokenizer = testing::gpt2_vocab_path();
  a.dataset_name = "random";
  a.random_input_len = 8;
  a.num_prompts = 2;
  a.port = testing::closed_port();
  const std::string msg = error_of(a);
  EXPECT_NE(msg.find("Initial test run failed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Couldn't connect to server"), std::string::npos) << msg;
}

TEST(Serve, BadFlagsAreRejected) {
  ATOM_REQUIRE_GPT2(tok);
  FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
  const auto with = [&](auto edit) {
    BenchArgs a = random_args(server);
    edit(a);
    return error_of(a);
  };
  EXPECT_NE(with([](BenchArgs& a) { a.dataset_name = "hf"; }).find("Hugging Face Hub"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.dataset_name = "alpaca"; }).find("Unknown dataset"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.backend = "tgi"; }).find("not supported"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.percentile_metrics = "ttft,foo"; }).find("'foo'"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.metric_percentiles = "99,101"; }).find("101"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.goodput = std::vector<std::string>{"itl:3"}; })
                .find("Invalid metric name"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.request_rate = 0; }).find("--request-rate"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.burstiness = 0; }).find("positive burstiness"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.endpoint = "/generate"; }).find("must end with"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.metadata = std::vector<std::string>{"x"}; })
                .find("KEY=VALUE"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.tokenizer = "tok/tokenizer.json"; }).find(".gguf"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.dataset_name = "sharegpt"; }).find("--dataset-path"),
            std::string::npos);
  EXPECT_NE(with([](BenchArgs& a) { a.dataset_name = "sonnet"; }).find("chat template"),
            std::string::npos);
  // The PyTorch format needs p99 of ttft/tpot/itl; the main result is written first.
  testing::TempDir dir;
  envs::set("SAVE_TO_PYTORCH_BENCHMARK_FORMAT", "1");
  const std::string pt = with([&](BenchArgs& a) {
    a.save_result = true;
    a.result_dir = dir.path();
    a.result_filename = "r.json";
    a.metric_percentiles = "50";
  });
  envs::unset("SAVE_TO_PYTORCH_BENCHMARK_FORMAT");
  EXPECT_NE(pt.find("SAVE_TO_PYTORCH_BENCHMARK_FORMAT needs p99_ttft_ms"), std::string::npos)
      << pt;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/r.pytorch.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/r.json"));
}

TEST(Cli, FlagsParseAndRun) {
  ATOM_REQUIRE_GPT2(tok);
  FakeServer server([](const Recorded& r, int64_t) { return reply_for(r); });
  testing::TempDir dir;
  {
    CLI::App app;
    const apps::Command run = apps::add_bench_serve(app);
    const std::string port = std::to_string(server.port());
    std::vector<std::string> argv = {
        "--model", "m", "--tokenizer", testing::gpt2_vocab_path(), "--dataset-name", "random",
        "--random-input-len", "8", "--random-output-len", "3", "--num-prompts", "4",
        "--base-url", "http://127.0.0.1:" + port, "--request-rate", "1e3", "--burstiness", "2",
        "--disable-tqdm", "--save-result", "--result-dir", dir.path(), "--result-filename",
        "cli.json", "--metadata", "a=1", "b=2", "--goodput", "ttft:500", "--served-model-name",
        "served", "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "90"};
    std::reverse(argv.begin(), argv.end());  // CLI11 takes them in reverse
    app.parse(argv);
    ::testing::internal::CaptureStdout();
    EXPECT_EQ(run(), 0);
    const std::string text = ::testing::internal::GetCapturedStdout();
    EXPECT_NE(text.find("Traffic request rate: 1000.0\n"), std::string::npos) << text;
    EXPECT_NE(text.find("Burstiness factor: 2.0 (Gamma distribution)\n"), std::string::npos);
    EXPECT_NE(text.find("P90 E2EL (ms):"), std::string::npos);
  }
  const auto j = read_json(dir.path() + "/cli.json");
  EXPECT_EQ(j["a"], "1");
  EXPECT_EQ(j["b"], "2");
  EXPECT_EQ(j["request_rate"], 1000.0);
  EXPECT_EQ(j["burstiness"], 2.0);
  EXPECT_EQ(j["completed"], 4);
  EXPECT_TRUE(j.contains("p90_e2el_ms"));
  EXPECT_FALSE(j.contains("mean_tpot_ms"));
  EXPECT_TRUE(j["request_goodput:"].is_number());
  EXPECT_EQ(server.requests().back().body["model"], "served");

  // Defaults and required flags.
  CLI::App app2;
  apps::add_bench_serve(app2);
  EXPECT_THROW(app2.parse(std::vector<std::string>{}), CLI::RequiredError);
  for (const auto& [flag, value] :
       std::vector<std::pair<std::string, std::string>>{{"--backend", "vllm"},
                                                        {"--host", "127.0.0.1"},
                                                        {"--port", "8000"},
                                                        {"--endpoint", "/v1/completions"},
                                                        {"--dataset-name", "sharegpt"},
                                                        {"--num-prompts", "1000"},
                                                        {"--request-rate", "inf"},
                                                        {"--burstiness", "1"},
                                                        {"--seed", "0"},
                                                        {"--percentile-metrics", "ttft,tpot,itl"},
                                                        {"--metric-percentiles", "99"},
                                                        {"--random-input-len", "1024"},
                                                        {"--random-output-len", "128"},
                                                        {"--random-range-ratio", "1"},
                                                        {"--random-prefix-len", "0"},
                                                        {"--sonnet-input-len", "550"},
                                                        {"--sonnet-output-len", "150"},
                                                        {"--sonnet-prefix-len", "200"},
                                                        {"--best-of", "1"},
                                                        {"--tokenizer-mode", "auto"}}) {
    const CLI::Option* o = app2.get_option(flag);
    ASSERT_NE(o, nullptr) << flag;
    EXPECT_EQ(o->get_default_str(), value) << flag;
  }
  for (const char* flag :
       {"--base-url", "--dataset", "--dataset-path", "--max-concurrency", "--tokenizer",
        "--use-beam-search", "--logprobs", "--trust-remote-code", "--disable-tqdm", "--profile",
        "--save-result", "--metadata", "--result-dir", "--result-filename", "--ignore-eos",
        "--goodput", "--sharegpt-output-len", "--use-chat-template", "--hf-subset", "--hf-split",
        "--hf-output-len", "--served-model-name", "--lora-modules"})
    EXPECT_NE(app2.get_option_no_throw(flag), nullptr) << flag;

  CLI::App app3;
  const apps::Command run3 = apps::add_bench_serve(app3);
  app3.parse(std::vector<std::string>{"fast", "--request-rate", "m", "--model"});
  EXPECT_THROW(run3(), Error);
}

}  // namespace
}  // namespace atom::bench

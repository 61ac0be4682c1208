// Engine statistics: the histogram (vLLM's buckets, "le" placement, snapshots under concurrent
// writers), the Prometheus text writer, the counters LLMEngine and EngineCore keep on a fake model
// (tokens, finish reasons, TTFT / inter-token / latency observations, prefix-cache queries and
// hits, preemptions, with and without deferred output) and ATOM's log lines (scheduled prefill
// batch, request arrived / finished).
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <atomic>
#include <future>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/engine/stats.h"
#include "atom/tokenizer/tokenizer.h"
#include "common/fake_model.h"
#include "engine_test_util.h"

namespace atom {
namespace {

using test::iota_tokens;

// --- Histogram ---------------------------------------------------------------------------------

TEST(Histogram, CountsEachValueInTheFirstBucketWhoseBoundIsNotBelowIt) {
  Histogram h({1.0, 2.0, 5.0});
  for (double v : {0.5, 1.0, 1.5, 2.0, 4.0, 5.0, 6.0, 1e9}) h.observe(v);
  const Histogram::Snapshot s = h.snapshot();
  ASSERT_EQ(s.upper_bounds, (std::vector<double>{1.0, 2.0, 5.0}));
  // le=1: 0.5, 1.0; le=2: + 1.5, 2.0; le=5: + 4.0, 5.0; +Inf: + 6.0, 1e9.
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 4, 6, 8}));
  EXPECT_EQ(s.count, 8u);
  EXPECT_DOUBLE_EQ(s.sum, 0.5 + 1.0 + 1.5 + 2.0 + 4.0 + 5.0 + 6.0 + 1e9);
}

TEST(Histogram, IgnoresNanAndTakesInfinityInTheLastBucket) {
  Histogram h({1.0});
  h.observe(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(h.snapshot().count, 0u);
  h.observe(-3.0);
  h.observe(std::numeric_limits<double>::infinity());
  const Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{1, 2}));
}

TEST(Histogram, NoBoundsMeansOnlyTheInfBucket) {
  Histogram h({});
  h.observe(3.0);
  h.observe(4.0);
  const Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2}));
  EXPECT_DOUBLE_EQ(s.sum, 7.0);
}

TEST(Histogram, RejectsBoundsThatDoNotIncrease) {
  EXPECT_THROW(Histogram({1.0, 1.0}), Error);
  EXPECT_THROW(Histogram({2.0, 1.0}), Error);
  EXPECT_THROW(Histogram({1.0, std::numeric_limits<double>::infinity()}), Error);
  EXPECT_THROW(Histogram({std::numeric_limits<double>::quiet_NaN()}), Error);
}

// The engine thread observes while HTTP threads scrape: every snapshot is internally consistent
// (cumulative counts never decrease and end at count), and nothing is lost.
TEST(Histogram, SnapshotsStayConsistentUnderConcurrentWriters) {
  Histogram h({0.25, 0.5, 0.75});
  constexpr int kThreads = 4, kPerThread = 50000;
  std::atomic<bool> done{false};
  std::atomic<int64_t> bad{0}, snapshots{0};
  // The reader runs at least once even if a loaded machine schedules it after the writers end.
  std::thread reader([&] {
    uint64_t last_count = 0;
    do {
      const Histogram::Snapshot s = h.snapshot();
      for (size_t i = 1; i < s.cumulative.size(); ++i)
        if (s.cumulative[i] < s.cumulative[i - 1]) ++bad;
      if (s.cumulative.back() != s.count || s.count < last_count) ++bad;
      last_count = s.count;
      ++snapshots;
    } while (!done.load());
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&h, t] {
      for (int i = 0; i < kPerThread; ++i) h.observe(double((i + t) % 4) * 0.25 + 0.1);
    });
  }
  for (std::thread& w : writers) w.join();
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(snapshots.load(), 0);
  const Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.count, uint64_t(kThreads) * kPerThread);
  // Values 0.1, 0.35, 0.6, 0.85 in equal numbers: a quarter in each bucket.
  EXPECT_EQ(s.cumulative,
            (std::vector<uint64_t>{s.count / 4, s.count / 2, 3 * s.count / 4, s.count}));
  EXPECT_NEAR(s.sum, double(s.count) * (0.1 + 0.35 + 0.6 + 0.85) / 4, 1e-6 * double(s.count));
}

TEST(Buckets, VllmBounds) {
  ASSERT_EQ(ttft_buckets().size(), 22u);
  EXPECT_EQ(ttft_buckets().front(), 0.001);
  EXPECT_EQ(ttft_buckets().back(), 2560.0);
  ASSERT_EQ(inter_token_buckets().size(), 19u);
  EXPECT_EQ(inter_token_buckets().front(), 0.01);
  EXPECT_EQ(inter_token_buckets().back(), 80.0);
  ASSERT_EQ(request_latency_buckets().size(), 21u);
  EXPECT_EQ(request_latency_buckets().front(), 0.3);
  EXPECT_EQ(request_latency_buckets().back(), 7680.0);
  for (auto b : {ttft_buckets(), inter_token_buckets(), request_latency_buckets()})
    EXPECT_NO_THROW(Histogram(std::vector<double>(b.begin(), b.end())));
}

TEST(Buckets, OneTwoFiveUpToTheMaximum) {
  EXPECT_EQ(buckets_1_2_5(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  EXPECT_EQ(buckets_1_2_5(8192),
            (std::vector<double>{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}));
  EXPECT_EQ(buckets_1_2_5(1), (std::vector<double>{1}));
  EXPECT_TRUE(buckets_1_2_5(0).empty());
}

// --- Prometheus text ---------------------------------------------------------------------------

TEST(PrometheusWriter, GaugeCounterAndLabelledCounter) {
  PrometheusWriter w({{"model_name", "m"}});
  w.gauge("atom:g", "A gauge.", 0.25);
  w.counter("atom:c_total", "A counter.", 42);
  const std::pair<std::string_view, double> reasons[] = {{"stop", 3}, {"length", 0}};
  w.labelled_counter("atom:r_total", "By reason.", "finished_reason", reasons);
  EXPECT_EQ(w.text(),
            "# HELP atom:g A gauge.\n# TYPE atom:g gauge\natom:g{model_name=\"m\"} 0.25\n"
            "# HELP atom:c_total A counter.\n# TYPE atom:c_total counter\n"
            "atom:c_total{model_name=\"m\"} 42\n"
            "# HELP atom:r_total By reason.\n# TYPE atom:r_total counter\n"
            "atom:r_total{model_name=\"m\",finished_reason=\"stop\"} 3\n"
            "atom:r_total{model_name=\"m\",finished_reason=\"length\"} 0\n");
}

TEST(PrometheusWriter, Histogram) {
  Histogram h({0.5, 1.0});
  h.observe(0.25);
  h.observe(0.75);
  h.observe(3.0);
  PrometheusWriter w({{"model_name", "m"}});
  w.histogram("atom:h_seconds", "A histogram.", h.snapshot());
  EXPECT_EQ(w.text(),
            "# HELP atom:h_seconds A histogram.\n# TYPE atom:h_seconds histogram\n"
            "atom:h_seconds_bucket{model_name=\"m\",le=\"0.5\"} 1\n"
            "atom:h_seconds_bucket{model_name=\"m\",le=\"1.0\"} 2\n"
            "atom:h_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 3\n"
            "atom:h_seconds_sum{model_name=\"m\"} 4\n"
            "atom:h_seconds_count{model_name=\"m\"} 3\n");
}

TEST(PrometheusWriter, NoLabelsAndEscapedLabelValues) {
  PrometheusWriter none({});
  none.gauge("x", "X.", 1);
  EXPECT_EQ(none.text(), "# HELP x X.\n# TYPE x gauge\nx 1\n");
  PrometheusWriter w({{"model_name", "a\"b\\c\nd"}});
  w.gauge("x", "X.", 1);
  EXPECT_NE(w.text().find("x{model_name=\"a\\\"b\\\\c\\nd\"} 1\n"), std::string::npos) << w.text();
}

TEST(PrometheusWriter, Values) {
  EXPECT_EQ(PrometheusWriter::format_value(0), "0");
  EXPECT_EQ(PrometheusWriter::format_value(123456789), "123456789");
  EXPECT_EQ(PrometheusWriter::format_value(-2), "-2");
  EXPECT_EQ(PrometheusWriter::format_value(0.1), "0.1");
  EXPECT_EQ(PrometheusWriter::format_value(1e-05), "1e-05");
  EXPECT_EQ(PrometheusWriter::format_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(PrometheusWriter::format_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(PrometheusWriter::format_value(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(PrometheusWriter::format_bound(1), "1.0");
  EXPECT_EQ(PrometheusWriter::format_bound(2560), "2560.0");
  EXPECT_EQ(PrometheusWriter::format_bound(0.001), "0.001");
}

TEST(FinishReasons, Mapping) {
  EXPECT_EQ(finish_reason_of("stop"), FinishReason::kStop);
  EXPECT_EQ(finish_reason_of("length"), FinishReason::kLength);
  EXPECT_EQ(finish_reason_of("abort"), FinishReason::kAbort);
  EXPECT_EQ(kFinishReasonNames[size_t(FinishReason::kLength)], "length");
}

// --- Counters of a running engine --------------------------------------------------------------


SamplingParams greedy(int64_t max_tokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = max_tokens;
  return p;
}

// Captures the "atom" logger's output for one test.
class LogCapture {
 public:
  explicit LogCapture(logging::Level level = logging::Level::kInfo) {
    logging::set_level(level);
    logging::set_sink(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_, true));
  }
  ~LogCapture() {
    logging::set_sink(nullptr);
    logging::set_level(logging::Level::kInfo);
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

class EngineStatsTest : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    tok_ = Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny")
               .release();
  }
  static void TearDownTestSuite() { delete tok_; }
  static EngineConfig config(int64_t num_blocks, bool prefix_caching = false) {
    EngineConfig c;
    c.async_output = GetParam();
    c.block_size = 4;
    c.num_kv_blocks = num_blocks;
    c.enable_prefix_caching = prefix_caching;
    c.scheduler.max_model_len = 64;
    return c;
  }
  static Tokenizer* tok_;
};
Tokenizer* EngineStatsTest::tok_ = nullptr;

int64_t value(const std::atomic<int64_t>& c) { return c.load(); }

TEST_P(EngineStatsTest, TokensFinishReasonsAndObservationsMatchTheOutputs) {
  FakeModel model(tok_->vocab_size(), /*constant_logits=*/true);
  LLMEngine engine(model, *tok_, config(64));
  const EngineStats& st = engine.stats();
  SamplingParams stop = greedy(10);
  stop.stop_token_ids = {FakeModel::kConstantToken};
  stop.min_tokens = 3;  // stops at its 4th token, which counts as generated
  const std::vector<std::vector<int32_t>> prompts = {iota_tokens(5, 20), iota_tokens(9, 40),
                                                     iota_tokens(3, 60)};
  const std::vector<SamplingParams> params = {greedy(6), stop, greedy(1)};
  const std::vector<RequestOutput> outs = engine.generate(prompts, params);
  ASSERT_EQ(outs[0].finish_reason, "length");
  ASSERT_EQ(outs[1].finish_reason, "stop");
  ASSERT_EQ(outs[1].output_ids.size(), 4u);
  ASSERT_EQ(outs[2].output_ids.size(), 1u);

  EXPECT_EQ(value(st.prompt_tokens), 5 + 9 + 3);
  EXPECT_EQ(value(st.generation_tokens), 6 + 4 + 1);
  EXPECT_EQ(value(st.request_success[size_t(FinishReason::kStop)]), 1);
  EXPECT_EQ(value(st.request_success[size_t(FinishReason::kLength)]), 2);
  EXPECT_EQ(value(st.request_success[size_t(FinishReason::kAbort)]), 0);
  EXPECT_EQ(st.time_to_first_token.snapshot().count, 3u);
  EXPECT_EQ(st.inter_token_latency.snapshot().count, uint64_t((6 - 1) + (4 - 1) + (1 - 1)));
  EXPECT_EQ(st.e2e_request_latency.snapshot().count, 3u);
  EXPECT_EQ(st.request_queue_time.snapshot().count, 3u);
  const Histogram::Snapshot prompt_hist = st.request_prompt_tokens.snapshot();
  EXPECT_EQ(prompt_hist.count, 3u);
  EXPECT_DOUBLE_EQ(prompt_hist.sum, 17.0);
  // Buckets 1, 2, 5, 10, 20, 50 (max_model_len 64): 3 and 5 in le=5, 9 in le=10.
  EXPECT_EQ(prompt_hist.upper_bounds, (std::vector<double>{1, 2, 5, 10, 20, 50}));
  EXPECT_EQ(prompt_hist.cumulative, (std::vector<uint64_t>{0, 0, 2, 3, 3, 3, 3}));
  EXPECT_DOUBLE_EQ(st.request_generation_tokens.snapshot().sum, 11.0);
  // Latencies are consistent with each other: the sum of e2e latencies bounds the TTFTs.
  EXPECT_GE(st.e2e_request_latency.snapshot().sum, st.time_to_first_token.snapshot().sum);
  EXPECT_GT(st.e2e_request_latency.snapshot().sum, 0.0);
  // No prefix caching: no queries.
  EXPECT_EQ(value(st.prefix_cache_queries), 0);
  EXPECT_EQ(value(st.prefix_cache_hits), 0);
  EXPECT_EQ(value(st.num_preemptions), 0);
}

TEST_P(EngineStatsTest, AbortsCountAsAbortAndKeepTheirTokens) {
  FakeModel model(tok_->vocab_size(), /*constant_logits=*/true);
  LLMEngine engine(model, *tok_, config(64));
  const EngineStats& st = engine.stats();
  const int64_t running = engine.add_request(iota_tokens(4, 20), greedy(50));
  int64_t delivered = 0;
  while (delivered < 3) {
    for (const RequestOutput& o : engine.step()) delivered += int64_t(o.new_token_ids.size());
  }
  // One aborted while running, one before it was ever scheduled.
  const int64_t waiting = engine.add_request(iota_tokens(4, 30), greedy(50));
  ASSERT_TRUE(engine.abort(running));
  ASSERT_TRUE(engine.abort(waiting));
  int64_t out_tokens = -1;
  while (engine.has_unfinished()) {
    for (const RequestOutput& o : engine.step()) {
      if (o.request_id == running && o.finished) out_tokens = int64_t(o.output_ids.size());
    }
  }
  ASSERT_GE(out_tokens, 3);
  EXPECT_EQ(value(st.request_success[size_t(FinishReason::kAbort)]), 2);
  EXPECT_EQ(value(st.generation_tokens), out_tokens);
  EXPECT_EQ(value(st.prompt_tokens), 4);  // the waiting one never produced a token
  EXPECT_EQ(st.time_to_first_token.snapshot().count, 1u);
  EXPECT_EQ(st.e2e_request_latency.snapshot().count, 2u);
  EXPECT_EQ(st.request_queue_time.snapshot().count, 1u);  // never scheduled: not observed
  EXPECT_DOUBLE_EQ(st.request_generation_tokens.snapshot().sum, double(out_tokens));
}

// Queries and hits in tokens, as vLLM counts them: the second request reuses the two full
// blocks (8 tokens) of the first one's prompt.
TEST_P(EngineStatsTest, PrefixCacheQueriesAndHits) {
  FakeModel model(tok_->vocab_size(), /*constant_logits=*/true);
  LLMEngine engine(model, *tok_, config(64, /*prefix_caching=*/true));
  const EngineStats& st = engine.stats();
  std::vector<int32_t> first = iota_tokens(10, 20);
  engine.generate({first}, {greedy(2)});
  EXPECT_EQ(value(st.prefix_cache_queries), 10);
  EXPECT_EQ(value(st.prefix_cache_hits), 0);
  std::vector<int32_t> second = iota_tokens(8, 20);  // the same first 8 tokens
  second.push_back(99);
  second.push_back(98);
  second.push_back(97);
  const RequestOutput o = engine.generate({second}, {greedy(2)})[0];
  EXPECT_EQ(o.num_cached_tokens, 8);
  EXPECT_EQ(value(st.prefix_cache_queries), 10 + 11);
  EXPECT_EQ(value(st.prefix_cache_hits), 8);
  EXPECT_EQ(value(st.prompt_tokens), 10 + 11);  // cached prompt tokens still count as prompt
}

// A pool too small for three sequences at once forces preemptions; the counter follows the
// scheduler's, and tokens are still counted once each (recomputation is not generation).
TEST_P(EngineStatsTest, PreemptionsAreCountedAndRecomputeAddsNoTokens) {
  FakeModel model(tok_->vocab_size(), /*constant_logits=*/true);
  EngineConfig c = config(16);
  LLMEngine engine(model, *tok_, c);
  const EngineStats& st = engine.stats();
  const std::vector<std::vector<int32_t>> prompts = {iota_tokens(8, 20), iota_tokens(8, 30),
                                                     iota_tokens(8, 40)};
  const std::vector<RequestOutput> outs = engine.generate(prompts, {greedy(30)});
  int64_t generated = 0;
  for (const RequestOutput& o : outs) generated += int64_t(o.output_ids.size());
  ASSERT_EQ(generated, 90);
  EXPECT_GT(engine.scheduler().num_preemptions(), 0);
  EXPECT_EQ(value(st.num_preemptions), engine.scheduler().num_preemptions());
  EXPECT_EQ(value(st.generation_tokens), 90);
  EXPECT_EQ(value(st.prompt_tokens), 24);
  EXPECT_EQ(st.time_to_first_token.snapshot().count, 3u);
  EXPECT_EQ(value(st.request_success[size_t(FinishReason::kLength)]), 3);
}

TEST_P(EngineStatsTest, ScheduledPrefillBatchLine) {
  FakeModel model(tok_->vocab_size(), /*constant_logits=*/true);
  LLMEngine engine(model, *tok_, config(64));
  const int64_t a = engine.add_request(iota_tokens(5, 20), greedy(3));
  const int64_t b = engine.add_request(iota_tokens(7, 40), greedy(3));
  std::string info;
  {
    LogCapture log;
    while (engine.has_unfinished()) engine.step();
    info = log.text();
  }
  EXPECT_NE(
      info.find(fmt::format(
          "[atom] Scheduled prefill batch: 2 reqs, 12 token_nums: [5, 7], req_ids: ({}, {})\n", a,
          b)),
      std::string::npos)
      << info;
  // Exactly one prefill line; decode steps log at DEBUG only.
  EXPECT_EQ(info.find("Scheduled prefill batch", info.find("Scheduled prefill batch") + 1),
            std::string::npos)
      << info;
  EXPECT_EQ(info.find("Scheduled decode batch"), std::string::npos) << info;

  const int64_t c = engine.add_request(iota_tokens(4, 60), greedy(2));
  std::string debug;
  {
    LogCapture log(logging::Level::kDebug);
    while (engine.has_unfinished()) engine.step();
    debug = log.text();
  }
  EXPECT_NE(debug.find(fmt::format(
                "Scheduled prefill batch: 1 reqs, 4 token_nums: [4], req_ids: ({},)\n", c)),
            std::string::npos)
      << debug;
  EXPECT_NE(debug.find(fmt::format("Scheduled decode batch: 1 reqs, req_ids: ({},)\n", c)),
            std::string::npos)
      << debug;
}

INSTANTIATE_TEST_SUITE_P(SyncAndAsync, EngineStatsTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Async" : "Sync";
                         });

// EngineCore: the request lines and statistics read from another thread while it serves.
TEST(EngineCoreStats, RequestLinesAndLiveCounters) {
  std::unique_ptr<Tokenizer> tok =
      Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny");
  FakeModel model(tok->vocab_size(), /*constant_logits=*/true);
  EngineConfig c;
  c.block_size = 4;
  c.num_kv_blocks = 64;
  c.scheduler.max_model_len = 64;
  LogCapture log;
  EngineCore core(std::make_unique<LLMEngine>(model, *tok, c));
  const EngineStats& st = core.stats();
  std::atomic<bool> done{false};
  std::atomic<int64_t> went_back{0};
  std::thread scraper([&] {
    int64_t last = 0;
    while (!done.load()) {
      const int64_t now = st.generation_tokens.load();
      if (now < last) ++went_back;
      last = now;
      (void)st.e2e_request_latency.snapshot();
    }
  });
  std::vector<std::promise<RequestOutput>> done_outputs(4);
  std::vector<int64_t> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(core.add_request(iota_tokens(6, 20 + 10 * i), greedy(8),
                                   [&done_outputs, i](const RequestOutput& o) {
                                     if (o.finished) done_outputs[size_t(i)].set_value(o);
                                   }));
  }
  for (auto& p : done_outputs) EXPECT_EQ(p.get_future().get().output_ids.size(), 8u);
  done = true;
  scraper.join();
  EXPECT_EQ(went_back.load(), 0);
  EXPECT_EQ(st.generation_tokens.load(), 32);
  EXPECT_EQ(st.prompt_tokens.load(), 24);
  EXPECT_EQ(st.request_success[size_t(FinishReason::kLength)].load(), 4);
  core.shutdown();
  const std::string text = log.text();
  for (int64_t id : ids) {
    EXPECT_NE(text.find(fmt::format("[atom] Request {} arrived, input tokens: 6, pending "
                                    "requests: ",
                                    id)),
              std::string::npos)
        << text;
    const std::regex finished(fmt::format(
        R"(\[atom\] Request {} finished with reason max_tokens\. Input tokens: 6, output tokens: 8, )"
        R"(latency: \d+\.\d\ds, TTFT: \d+\.\d\d\ds, TPOT: \d+\.\d\d\ds\n)",
        id));
    EXPECT_TRUE(std::regex_search(text, finished)) << text;
    // The arrival precedes the finish.
    EXPECT_LT(text.find(fmt::format("Request {} arrived", id)),
              text.find(fmt::format("Request {} finished", id)));
  }
  EXPECT_NE(text.find(", max_tokens: 8\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace atom

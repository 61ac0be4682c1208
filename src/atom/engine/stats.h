// Engine statistics for GET /metrics, under vLLM's metric names (with an "atom:" prefix), and
// ATOM's per-step log line.
//
// Threading: one writer (the engine thread, inside LLMEngine::step and abort) and any number of
// readers (HTTP threads scraping /metrics). Every field is an atomic, so recording is a few
// relaxed atomic adds with no lock and no allocation, and a scrape never blocks the engine. A
// scrape taken while a step records may see one histogram's _sum a single observation ahead of
// or behind its buckets; the buckets and _count of one histogram are always consistent, since
// _count is the sum of the buckets read.
//
// What is counted, as vLLM v1 counts it:
//   prompt_tokens_total       a request's prompt length, once, when its first token is sampled
//   generation_tokens_total   every sampled token delivered to a live request (a token computed
//                             for a request that had already finished is not)
//   prefix_cache_queries/hits tokens looked up / found in the prefix cache at each admission
//                             (re-admissions after a preemption included); 0 without
//                             --enable-prefix-caching
//   num_preemptions_total     running requests sent back to waiting to free KV blocks
//   request_success_total     finished requests by finish reason (stop, length, abort)
//   time_to_first_token       arrival -> first sampled token, once per request
//   inter_token_latency       time between two consecutive tokens of a request, per token
//   e2e_request_latency       arrival -> finish; queue_time: arrival -> first scheduled
//   request_prompt_tokens / request_generation_tokens: per finished request
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace atom {

struct SchedulerOutput;

// vLLM's bucket upper bounds (the +Inf bucket is implicit).
std::span<const double> ttft_buckets();             // time_to_first_token_seconds
std::span<const double> inter_token_buckets();      // time_per_output_token / inter_token_latency
std::span<const double> request_latency_buckets();  // e2e_request_latency, request_queue_time
// 1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's build_1_2_5_buckets): token-count histograms.
std::vector<double> buckets_1_2_5(int64_t max_value);

// A Prometheus histogram with fixed upper bounds; observe() is lock-free and allocation-free.
class Histogram {
 public:
  // `upper_bounds`: finite and strictly increasing (kInvalidArgument otherwise); may be empty
  // (then only the +Inf bucket).
  explicit Histogram(std::vector<double> upper_bounds);

  // Counts v in the first bucket whose bound is >= v (Prometheus' "le"); NaN is ignored.
  void observe(double v);

  struct Snapshot {
    std::vector<double> upper_bounds;  // [B]
    std::vector<uint64_t> cumulative;  // [B + 1]: observations <= each bound, then +Inf (= count)
    uint64_t count = 0;
    double sum = 0.0;
  };
  Snapshot snapshot() const;
  std::span<const double> upper_bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // [B + 1], per bucket (not cumulative)
  std::atomic<double> sum_{0.0};
};

// The OpenAI finish reasons, the label values of request_success_total.
enum class FinishReason { kStop, kLength, kAbort };
inline constexpr std::array<std::string_view, 3> kFinishReasonNames = {"stop", "length", "abort"};
// "stop" / "length" / anything else (an abort, a rejected request) -> kAbort.
FinishReason finish_reason_of(std::string_view openai_reason);

struct EngineStats {
  // max_model_len bounds the token-count histograms' buckets, as in vLLM.
  explicit EngineStats(int64_t max_model_len);
  EngineStats(const EngineStats&) = delete;
  EngineStats& operator=(const EngineStats&) = delete;

  // Counters (monotonic).
  std::atomic<int64_t> prompt_tokens{0};
  std::atomic<int64_t> generation_tokens{0};
  std::atomic<int64_t> num_preemptions{0};
  std::atomic<int64_t> prefix_cache_queries{0};
  std::atomic<int64_t> prefix_cache_hits{0};
  std::array<std::atomic<int64_t>, 3> request_success{};  // by FinishReason

  // Histograms.
  Histogram time_to_first_token;
  Histogram inter_token_latency;  // exposed as time_per_output_token and inter_token_latency
  Histogram e2e_request_latency;
  Histogram request_queue_time;
  Histogram request_prompt_tokens;
  Histogram request_generation_tokens;

  // Recording, on the engine thread. A request's first token counts its prompt, one generated
  // token and its TTFT; each later token one generated token and its inter-token latency; its
  // finish the rest. Times are seconds; `queue_seconds` < 0: never scheduled (not observed).
  void record_first_token(int64_t num_prompt_tokens, double ttft_seconds);
  void record_next_token(double since_previous_seconds);
  void record_finished(std::string_view openai_reason, int64_t num_prompt_tokens,
                       int64_t num_generation_tokens, double e2e_seconds, double queue_seconds);
};

// Writes the Prometheus text exposition format (version 0.0.4): a HELP and a TYPE line per
// family, then its samples, each labelled with `labels` (e.g. model_name="m"; label values are
// escaped here).
class PrometheusWriter {
 public:
  // Label pairs every sample carries, in order.
  explicit PrometheusWriter(
      std::initializer_list<std::pair<std::string_view, std::string_view>> labels);

  void gauge(std::string_view name, std::string_view help, double value);
  void counter(std::string_view name, std::string_view help, double value);
  // One family, one sample per value of `label` (e.g. finished_reason="stop").
  void labelled_counter(std::string_view name, std::string_view help, std::string_view label,
                        std::span<const std::pair<std::string_view, double>> values);
  void histogram(std::string_view name, std::string_view help, const Histogram::Snapshot& h);

  const std::string& text() const { return out_; }

  // Prometheus' rendering of a value: integers as "3" (bucket bounds as "3.0", as Python's
  // client writes them), "+Inf", "-Inf", "NaN", else the shortest exact decimal.
  static std::string format_value(double v);
  static std::string format_bound(double v);
  // Escapes \, " and newline in a label value.
  static std::string escape_label_value(std::string_view v);

 private:
  void header(std::string_view name, std::string_view help, std::string_view type);
  // "{a="x",b="y"}" with an optional extra pair at the end.
  std::string label_set(std::string_view extra_name = {}, std::string_view extra_value = {}) const;

  std::string base_labels_;  // `a="x",b="y"`, already escaped
  std::string out_;
};

// ATOM's INFO line for a step that computes prompt tokens:
//   Scheduled prefill batch: 2 reqs, 156 token_nums: [78, 78], req_ids: (0, 1)
// and a DEBUG line for decode-only steps. Formats nothing when the level is off.
void log_scheduled_batch(const SchedulerOutput& out);

}  // namespace atom

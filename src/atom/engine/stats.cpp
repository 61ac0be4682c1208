#include "atom/engine/stats.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/engine/scheduler.h"

namespace atom {

namespace {

// vllm/v1/metrics/loggers.py (PrometheusStatLogger).
constexpr std::array<double, 22> kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
constexpr std::array<double, 19> kInterTokenBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                       0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                       7.5,  10.0,  20.0, 40.0,  80.0};
constexpr std::array<double, 21> kRequestLatencyBuckets = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

void bump(std::atomic<int64_t>& counter, int64_t n) {
  counter.fetch_add(n, std::memory_order_relaxed);
}

}  // namespace

std::span<const double> ttft_buckets() { return kTtftBuckets; }
std::span<const double> inter_token_buckets() { return kInterTokenBuckets; }
std::span<const double> request_latency_buckets() { return kRequestLatencyBuckets; }

std::vector<double> buckets_1_2_5(int64_t max_value) {
  std::vector<double> out;
  for (int64_t scale = 1; scale <= max_value; scale *= 10) {
    for (int64_t m : {1, 2, 5}) {
      if (m * scale > max_value) return out;
      out.push_back(double(m * scale));
    }
    if (scale > INT64_MAX / 10) break;
  }
  return out;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    ATOM_CHECK(std::isfinite(bounds_[i]), kInvalidArgument,
               "histogram bucket bound {} is not finite ({})", i, bounds_[i]);
    ATOM_CHECK(i == 0 || bounds_[i - 1] < bounds_[i], kInvalidArgument,
               "histogram bucket bounds must increase: {} then {}", bounds_[i - 1], bounds_[i]);
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  if (std::isnan(v)) return;
  // The first bound >= v: v == bound lands in that bound's bucket ("le").
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = bounds_;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

FinishReason finish_reason_of(std::string_view openai_reason) {
  if (openai_reason == "stop") return FinishReason::kStop;
  if (openai_reason == "length") return FinishReason::kLength;
  return FinishReason::kAbort;
}

EngineStats::EngineStats(int64_t max_model_len)
    : time_to_first_token({kTtftBuckets.begin(), kTtftBuckets.end()}),
      inter_token_latency({kInterTokenBuckets.begin(), kInterTokenBuckets.end()}),
      e2e_request_latency({kRequestLatencyBuckets.begin(), kRequestLatencyBuckets.end()}),
      request_queue_time({kRequestLatencyBuckets.begin(), kRequestLatencyBuckets.end()}),
      request_prompt_tokens(buckets_1_2_5(max_model_len)),
      request_generation_tokens(buckets_1_2_5(max_model_len)) {}

void EngineStats::record_first_token(int64_t num_prompt_tokens, double ttft_seconds) {
  bump(prompt_tokens, num_prompt_tokens);
  bump(generation_tokens, 1);
  time_to_first_token.observe(ttft_seconds);
}

void EngineStats::record_next_token(double since_previous_seconds) {
  bump(generation_tokens, 1);
  inter_token_latency.observe(since_previous_seconds);
}

void EngineStats::record_finished(std::string_view openai_reason, int64_t num_prompt_tokens,
                                  int64_t num_generation_tokens, double e2e_seconds,
                                  double queue_seconds) {
  bump(request_success[size_t(finish_reason_of(openai_reason))], 1);
  e2e_request_latency.observe(e2e_seconds);
  if (queue_seconds >= 0) request_queue_time.observe(queue_seconds);
  request_prompt_tokens.observe(double(num_prompt_tokens));
  request_generation_tokens.observe(double(num_generation_tokens));
}

// --- Prometheus text --------------------------------------------------------------------------

PrometheusWriter::PrometheusWriter(
    std::initializer_list<std::pair<std::string_view, std::string_view>> labels) {
  for (const auto& [name, value] : labels) {
    if (!base_labels_.empty()) base_labels_ += ',';
    base_labels_ += fmt::format("{}=\"{}\"", name, escape_label_value(value));
  }
}

std::string PrometheusWriter::escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string PrometheusWriter::format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Exact integers (every counter, most gauges) without a decimal point or exponent.
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", int64_t(v));
  return fmt::format("{}", v);
}

std::string PrometheusWriter::format_bound(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{:.1f}", v);
  return fmt::format("{}", v);
}

std::string PrometheusWriter::label_set(std::string_view extra_name,
                                        std::string_view extra_value) const {
  std::string s = "{" + base_labels_;
  if (!extra_name.empty()) {
    if (!base_labels_.empty()) s += ',';
    s += fmt::format("{}=\"{}\"", extra_name, escape_label_value(extra_value));
  }
  s += '}';
  return s == "{}" ? std::string() : s;
}

void PrometheusWriter::header(std::string_view name, std::string_view help, std::string_view type) {
  fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void PrometheusWriter::gauge(std::string_view name, std::string_view help, double value) {
  header(name, help, "gauge");
  fmt::format_to(std::back_inserter(out_), "{}{} {}\n", name, label_set(), format_value(value));
}

void PrometheusWriter::counter(std::string_view name, std::string_view help, double value) {
  header(name, help, "counter");
  fmt::format_to(std::back_inserter(out_), "{}{} {}\n", name, label_set(), format_value(value));
}

void PrometheusWriter::labelled_counter(
    std::string_view name, std::string_view help, std::string_view label,
    std::span<const std::pair<std::string_view, double>> values) {
  header(name, help, "counter");
  for (const auto& [label_value, value] : values) {
    fmt::format_to(std::back_inserter(out_), "{}{} {}\n", name, label_set(label, label_value),
                   format_value(value));
  }
}

void PrometheusWriter::histogram(std::string_view name, std::string_view help,
                                 const Histogram::Snapshot& h) {
  header(name, help, "histogram");
  auto out = std::back_inserter(out_);
  for (size_t i = 0; i < h.cumulative.size(); ++i) {
    const std::string le = i < h.upper_bounds.size() ? format_bound(h.upper_bounds[i]) : "+Inf";
    fmt::format_to(out, "{}_bucket{} {}\n", name, label_set("le", le), h.cumulative[i]);
  }
  fmt::format_to(out, "{}_sum{} {}\n", name, label_set(), format_value(h.sum));
  fmt::format_to(out, "{}_count{} {}\n", name, label_set(), h.count);
}

// --- ATOM's schedule log line ------------------------------------------------------------------

void log_scheduled_batch(const SchedulerOutput& out) {
  const bool info = logging::enabled(logging::Level::kInfo);
  const bool debug = logging::enabled(logging::Level::kDebug);
  if (!info || out.seqs.empty()) return;
  // A prefill entry computes prompt tokens (or recomputes a preempted sequence): more than one
  // token, or a sequence with no output yet. The rest are decodes (one token each).
  const auto is_prefill = [](const ScheduledSeq& s) {
    return s.num_new_tokens > 1 || s.seq->num_output_tokens() == 0;
  };
  std::vector<int64_t> tokens, ids, decode_ids;
  int64_t total = 0;
  for (const ScheduledSeq& s : out.seqs) {
    if (is_prefill(s)) {
      tokens.push_back(s.num_new_tokens);
      ids.push_back(s.seq->id());
      total += s.num_new_tokens;
    } else if (debug) {
      decode_ids.push_back(s.seq->id());
    }
  }
  // Python's tuple: "(7,)" for one element.
  const auto tuple = [](const std::vector<int64_t>& v) {
    return v.size() == 1 ? fmt::format("({},)", v[0]) : fmt::format("({})", fmt::join(v, ", "));
  };
  if (!tokens.empty()) {
    ATOM_LOG_INFO("Scheduled prefill batch: {} reqs, {} token_nums: [{}], req_ids: {}",
                  tokens.size(), total, fmt::join(tokens, ", "), tuple(ids));
  }
  if (!decode_ids.empty()) {
    ATOM_LOG_DEBUG("Scheduled decode batch: {} reqs, req_ids: {}", decode_ids.size(),
                   tuple(decode_ids));
  }
}

}  // namespace atom

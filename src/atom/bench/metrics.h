// calculate_metrics of the reference: per-request TTFT/TPOT/ITL/E2EL pooled into
// mean/median/std (numpy, ddof=0) and percentiles (numpy's linear interpolation), throughputs
// over the benchmark duration, goodput against SLOs; plus the console report and the result
// dictionary in the reference's layout and key order.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "atom/bench/dataset.h"
#include "atom/bench/request.h"

namespace atom::bench {

// numpy.percentile(values, p) with the default linear method; 0 for an empty list (the
// reference's `values or 0`). p in [0, 100].
double percentile(std::vector<double> values, double p);
double mean(const std::vector<double>& values);
double stddev(const std::vector<double>& values);  // population (ddof=0)

struct MetricStats {  // all in ms
  double mean = 0, median = 0, std = 0;
  std::vector<std::pair<double, double>> percentiles;  // (p, value)
};

struct BenchmarkMetrics {
  int64_t completed = 0;
  int64_t total_input = 0;
  int64_t total_output = 0;
  double request_throughput = 0;
  double request_goodput = 0;
  double output_throughput = 0;
  double total_token_throughput = 0;
  MetricStats ttft, tpot, itl, e2el;
};

// SLOs in ms by metric name ("ttft", "tpot", "e2el"); a request is good when it meets all.
using GoodputConfig = std::map<std::string, double>;
// Parses the --goodput KEY:VALUE pairs with the reference's checks and messages.
GoodputConfig parse_goodput(const std::vector<std::string>& pairs);

// count_tokens re-tokenizes a generated text when the server sent no usage.
struct MetricsResult {
  BenchmarkMetrics metrics;
  std::vector<int64_t> actual_output_lens;  // 0 for failed requests
};
MetricsResult calculate_metrics(const std::vector<SampleRequest>& inputs,
                                const std::vector<RequestOutput>& outputs, double duration_s,
                                const std::function<int64_t(const std::string&)>& count_tokens,
                                const std::vector<double>& selected_percentiles,
                                const GoodputConfig& goodput);

// "99" for 99.0, "99.9" for 99.9 (the percentile's name in keys and labels).
std::string percentile_word(double p);

// Prints the " Serving Benchmark Result " block to out and returns the benchmark's part of the
// result JSON: duration ... errors, then mean/median/std/p<P> per selected metric.
nlohmann::ordered_json report_metrics(const MetricsResult& m,
                                      const std::vector<RequestOutput>& outputs,
                                      double duration_s, bool has_goodput,
                                      const std::vector<std::string>& selected_metrics,
                                      std::ostream& out);

}  // namespace atom::bench

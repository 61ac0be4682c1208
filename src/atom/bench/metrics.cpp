#include "atom/bench/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "atom/bench/pyfmt.h"
#include "atom/core/error.h"

namespace atom::bench {

namespace {

// str.format's '^': the odd fill character goes to the right (fmt puts it on the left).
std::string py_center(std::string_view s, char fill, size_t width) {
  if (s.size() >= width) return std::string(s);
  const size_t pad = width - s.size();
  return std::string(pad / 2, fill) + std::string(s) + std::string(pad - pad / 2, fill);
}

}  // namespace

double percentile(std::vector<double> values, double p) {
  ATOM_CHECK(p >= 0.0 && p <= 100.0, kInvalidArgument, "percentile {} is outside [0, 100]", p);
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double h = double(values.size() - 1) * p / 100.0;
  const size_t lo = size_t(std::floor(h));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - double(lo)) * (values[hi] - values[lo]);
}

double mean(const std::vector<double>& values) {
  if (values.empty()) return 0.0;
  double s = 0;
  for (double v : values) s += v;
  return s / double(values.size());
}

double stddev(const std::vector<double>& values) {
  if (values.empty()) return 0.0;
  const double m = mean(values);
  double s = 0;
  for (double v : values) s += (v - m) * (v - m);
  return std::sqrt(s / double(values.size()));
}

GoodputConfig parse_goodput(const std::vector<std::string>& pairs) {
  GoodputConfig cfg;
  for (const std::string& pair : pairs) {
    const size_t colon = pair.find(':');
    bool ok = colon != std::string::npos && pair.find(':', colon + 1) == std::string::npos;
    double v = 0;
    if (ok) ok = parse_py_float(pair.substr(colon + 1), &v);
    ATOM_CHECK(ok, kInvalidArgument,
               "Invalid format found for service level objectives. Specify service level "
               "objectives for goodput as \"KEY:VALUE\" pairs, where the key is a metric name, "
               "and the value is a number in milliseconds. (got '{}')",
               pair);
    cfg[pair.substr(0, colon)] = v;
  }
  for (const auto& [name, v] : cfg) {
    ATOM_CHECK(name == "ttft" || name == "tpot" || name == "e2el", kInvalidArgument,
               "Invalid metric name found, {}: {}. The service level objective name should be "
               "one of ['ttft', 'tpot', 'e2el']. ",
               name, py_float(v));
    ATOM_CHECK(v >= 0, kInvalidArgument,
               "Invalid value found, {}: {}. The service level objective value should be "
               "non-negative.",
               name, py_float(v));
  }
  return cfg;
}

MetricsResult calculate_metrics(const std::vector<SampleRequest>& inputs,
                                const std::vector<RequestOutput>& outputs, double duration_s,
                                const std::function<int64_t(const std::string&)>& count_tokens,
                                const std::vector<double>& selected_percentiles,
                                const GoodputConfig& goodput) {
  ATOM_ASSERT(inputs.size() == outputs.size());
  MetricsResult r;
  BenchmarkMetrics& m = r.metrics;
  std::vector<double> itls, tpots, all_tpots, ttfts, e2els;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const RequestOutput& o = outputs[i];
    if (!o.success) {
      r.actual_output_lens.push_back(0);
      continue;
    }
    // Servers may bundle several tokens in one chunk, so without usage the text is counted.
    const int64_t output_len = o.output_tokens ? *o.output_tokens : count_tokens(o.generated_text);
    r.actual_output_lens.push_back(output_len);
    m.total_input += inputs[i].prompt_len;
    double tpot = 0;  // a one-token reply counts as TPOT 0 for goodput
    if (output_len > 1) {
      tpot = (o.latency - o.ttft) / double(output_len - 1);
      tpots.push_back(tpot);
    }
    all_tpots.push_back(tpot);
    itls.insert(itls.end(), o.itl.begin(), o.itl.end());
    ttfts.push_back(o.ttft);
    e2els.push_back(o.latency);
    ++m.completed;
  }
  int64_t good = 0;
  if (!goodput.empty()) {
    for (size_t k = 0; k < ttfts.size(); ++k) {
      bool ok = true;
      const auto meets = [&](const char* name, double value_s) {
        const auto it = goodput.find(name);
        if (it != goodput.end() && !(it->second / 1000.0 >= value_s)) ok = false;
      };
      meets("ttft", ttfts[k]);
      meets("tpot", all_tpots[k]);
      meets("e2el", e2els[k]);
      good += ok ? 1 : 0;
    }
  }
  for (int64_t len : r.actual_output_lens) m.total_output += len;
  m.request_throughput = double(m.completed) / duration_s;
  m.request_goodput = double(good) / duration_s;
  m.output_throughput = double(m.total_output) / duration_s;
  m.total_token_throughput = double(m.total_input + m.total_output) / duration_s;
  const auto stats = [&](const std::vector<double>& v) {
    MetricStats s;
    s.mean = mean(v) * 1000;
    s.std = stddev(v) * 1000;
    s.median = percentile(v, 50) * 1000;
    for (double p : selected_percentiles) s.percentiles.emplace_back(p, percentile(v, p) * 1000);
    return s;
  };
  m.ttft = stats(ttfts);
  m.tpot = stats(tpots);
  m.itl = stats(itls);
  m.e2el = stats(e2els);
  return r;
}

std::string percentile_word(double p) {
  if (std::floor(p) == p && std::fabs(p) < 1e15) return fmt::format("{}", int64_t(p));
  return py_float(p);
}

nlohmann::ordered_json report_metrics(const MetricsResult& mr,
                                      const std::vector<RequestOutput>& outputs,
                                      double duration_s, bool has_goodput,
                                      const std::vector<std::string>& selected_metrics,
                                      std::ostream& out) {
  const BenchmarkMetrics& m = mr.metrics;
  const auto line_f = [&](std::string_view label, double v) {
    out << fmt::format("{:<40} {:<10.2f}\n", label, v);
  };
  const auto line_i = [&](std::string_view label, int64_t v) {
    out << fmt::format("{:<40} {:<10}\n", label, v);
  };
  out << py_center(" Serving Benchmark Result ", '=', 50) << "\n";
  line_i("Successful requests:", m.completed);
  line_f("Benchmark duration (s):", duration_s);
  line_i("Total input tokens:", m.total_input);
  line_i("Total generated tokens:", m.total_output);
  line_f("Request throughput (req/s):", m.request_throughput);
  if (has_goodput) line_f("Request goodput (req/s):", m.request_goodput);
  line_f("Output token throughput (tok/s):", m.output_throughput);
  line_f("Total Token throughput (tok/s):", m.total_token_throughput);

  using ojson = nlohmann::ordered_json;
  ojson result;
  result["duration"] = duration_s;
  result["completed"] = m.completed;
  result["total_input_tokens"] = m.total_input;
  result["total_output_tokens"] = m.total_output;
  result["request_throughput"] = m.request_throughput;
  // The key's trailing colon is the reference's typo, kept: result readers look it up as is.
  result["request_goodput:"] = has_goodput ? ojson(m.request_goodput) : ojson(nullptr);
  result["output_throughput"] = m.output_throughput;
  result["total_token_throughput"] = m.total_token_throughput;
  ojson input_lens = ojson::array(), ttfts = ojson::array(), itls = ojson::array(),
        texts = ojson::array(), errors = ojson::array();
  for (const RequestOutput& o : outputs) {
    input_lens.push_back(o.prompt_len);
    ttfts.push_back(o.ttft);
    itls.push_back(o.itl);
    texts.push_back(o.generated_text);
    errors.push_back(o.error);
  }
  result["input_lens"] = std::move(input_lens);
  result["output_lens"] = mr.actual_output_lens;
  result["ttfts"] = std::move(ttfts);
  result["itls"] = std::move(itls);
  result["generated_texts"] = std::move(texts);
  result["errors"] = std::move(errors);

  const auto one = [&](const char* attr, const char* name, const char* header,
                       const MetricStats& s) {
    if (std::find(selected_metrics.begin(), selected_metrics.end(), attr) ==
        selected_metrics.end())
      return;
    out << py_center(header, '-', 50) << "\n";
    line_f(fmt::format("Mean {} (ms):", name), s.mean);
    line_f(fmt::format("Median {} (ms):", name), s.median);
    result[fmt::format("mean_{}_ms", attr)] = s.mean;
    result[fmt::format("median_{}_ms", attr)] = s.median;
    result[fmt::format("std_{}_ms", attr)] = s.std;
    for (const auto& [p, v] : s.percentiles) {
      const std::string w = percentile_word(p);
      line_f(fmt::format("P{} {} (ms):", w, name), v);
      result[fmt::format("p{}_{}_ms", w, attr)] = v;
    }
  };
  one("ttft", "TTFT", "Time to First Token", m.ttft);
  one("tpot", "TPOT", "Time per Output Token (excl. 1st token)", m.tpot);
  one("itl", "ITL", "Inter-token Latency", m.itl);
  one("e2el", "E2EL", "End-to-end Latency", m.e2el);
  out << std::string(50, '=') << "\n";
  return result;
}

}  // namespace atom::bench

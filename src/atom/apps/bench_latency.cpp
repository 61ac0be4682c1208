// `atom bench latency`: vLLM's benchmark_latency. One batch of `--batch-size` random prompts of
// `--input-len` tokens, each generating exactly `--output-len` tokens (ignore_eos), run to
// completion `--num-iters` times after `--num-iters-warmup` untimed runs. Reports the
// end-to-end latency (mean and percentiles, as vLLM prints them) and splits each iteration at
// the batch's first token: the prefill (time to the last request's first token) and the decode
// rate (tokens per second per sequence over the remaining output_len - 1 steps).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "atom/apps/commands.h"
#include "atom/apps/engine_args.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom::apps {

namespace {

// numpy.percentile's default (linear interpolation) over sorted values.
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double pos = q / 100.0 * double(sorted.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - double(lo));
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / double(v.size());
}

}  // namespace

Command add_bench_latency(CLI::App& app) {
  struct Opts {
    EngineArgs engine;
    int64_t batch_size = 8, input_len = 32, output_len = 128;
    int64_t num_iters_warmup = 10, num_iters = 30;
    uint64_t seed = 0;
    std::string output_json;
    bool profile = false;
  };
  auto o = std::make_shared<Opts>();
  o->engine.add_to(app);
  app.add_option("--batch-size", o->batch_size, "Sequences in the batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--input-len", o->input_len, "Prompt tokens per sequence")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--output-len", o->output_len, "Generated tokens per sequence")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--num-iters-warmup", o->num_iters_warmup, "Untimed runs first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--num-iters", o->num_iters, "Timed runs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Random seed of the prompts");
  app.add_option("--output-json", o->output_json, "Write the figures to this JSON file");
  app.add_flag("--profile", o->profile,
               "After the timed runs, record one more run into a trace under "
               "--torch-profiler-dir (or ATOM_TORCH_PROFILER_DIR), as vLLM's --profile does");
  return [o]() {
    set_threads(o->engine.threads);
    LoadedModel m = load_model(o->engine.model);
    EngineConfig cfg = o->engine.engine_config();
    const int64_t need = o->input_len + o->output_len;
    if (cfg.scheduler.max_model_len == 0)
      cfg.scheduler.max_model_len = std::min(m.model->config().max_position_embeddings, need);
    ATOM_CHECK(need <= cfg.scheduler.max_model_len, kInvalidArgument,
               "--input-len {} + --output-len {} exceed --max-model-len {}", o->input_len,
               o->output_len, cfg.scheduler.max_model_len);
    ATOM_CHECK(!o->profile || !cfg.torch_profiler_dir.empty(), kInvalidArgument,
               "--profile needs --torch-profiler-dir or ATOM_TORCH_PROFILER_DIR");
    LLMEngine engine(*m.model, *m.tokenizer, cfg);

    // Token ids uniform in [0, 10000) (clamped to the vocabulary), greedy: the figures do not
    // depend on the sampler's branch.
    std::mt19937_64 rng(o->seed);
    std::uniform_int_distribution<int64_t> token(
        0, std::min<int64_t>(10000, m.model->config().vocab_size) - 1);
    // New prompts for every run, so a prefix cache (--enable-prefix-caching) cannot turn the
    // prefill of later iterations into cache hits.
    std::vector<std::vector<int32_t>> prompts(size_t(o->batch_size));
    auto draw_prompts = [&] {
      for (auto& p : prompts) {
        p.resize(size_t(o->input_len));
        for (int32_t& t : p) t = int32_t(token(rng));
      }
    };
    if (o->batch_size > cfg.scheduler.max_num_seqs)
      ATOM_LOG_WARN("--batch-size {} > --max-num-seqs {}: the batch runs in waves, so the "
                       "prefill figure includes queueing",
                       o->batch_size, cfg.scheduler.max_num_seqs);
    SamplingParams sp;
    sp.temperature = 0.0f;
    sp.ignore_eos = true;
    sp.max_tokens = o->output_len;
    const std::vector<SamplingParams> params(prompts.size(), sp);

    struct Iter {
      double latency, prefill;  // seconds: whole batch; until its last first token
    };
    auto run_once = [&]() {
      draw_prompts();
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<RequestOutput> outs = engine.generate(prompts, params);
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double first = 0;
      for (const RequestOutput& r : outs) {
        ATOM_CHECK(int64_t(r.output_ids.size()) == o->output_len, kInternal,
                   "a request generated {} tokens instead of {}", r.output_ids.size(),
                   o->output_len);
        first = std::max(first, r.ttft_seconds);
      }
      return Iter{s, first};
    };
    for (int64_t i = 0; i < o->num_iters_warmup; ++i) (void)run_once();
    std::vector<double> latencies, prefills, decode_rates;
    for (int64_t i = 0; i < o->num_iters; ++i) {
      const Iter it = run_once();
      latencies.push_back(it.latency);
      prefills.push_back(it.prefill);
      if (o->output_len > 1 && it.latency > it.prefill)
        decode_rates.push_back(double(o->output_len - 1) / (it.latency - it.prefill));
    }
    if (o->profile) {
      engine.start_profile();
      (void)run_once();
      std::printf("Profiled one run: %s\n", engine.stop_profile().c_str());
    }
    std::vector<double> sorted = latencies;
    std::sort(sorted.begin(), sorted.end());
    std::printf("Avg latency: %.6f seconds\n", mean(latencies));
    nlohmann::json percentiles = nlohmann::json::object();
    for (const int q : {10, 25, 50, 75, 90, 99}) {
      const double v = percentile(sorted, q);
      std::printf("%d%% percentile latency: %.6f seconds\n", q, v);
      percentiles[std::to_string(q)] = v;
    }
    std::sort(prefills.begin(), prefills.end());
    std::sort(decode_rates.begin(), decode_rates.end());
    const double prefill_median = percentile(prefills, 50);
    std::printf("Median prefill (batch of %lld x %lld tokens): %.6f seconds\n",
                (long long)o->batch_size, (long long)o->input_len, prefill_median);
    const double decode_median = percentile(decode_rates, 50);
    if (!decode_rates.empty())
      std::printf("Median decode: %.2f tokens/s per sequence (%.3f ms per step)\n",
                  decode_median, 1000.0 / decode_median);
    if (!o->output_json.empty()) {
      // vLLM's keys, plus the prefill/decode split.
      const nlohmann::json j = {{"avg_latency", mean(latencies)},
                                {"latencies", latencies},
                                {"percentiles", percentiles},
                                {"batch_size", o->batch_size},
                                {"input_len", o->input_len},
                                {"output_len", o->output_len},
                                {"median_prefill_seconds", prefill_median},
                                {"median_decode_tokens_per_s", decode_median}};
      std::ofstream f(o->output_json);
      ATOM_CHECK(f.good(), kInvalidArgument, "cannot write {}", o->output_json);
      f << j.dump(2) << "\n";
    }
    return 0;
  };
}

}  // namespace atom::apps

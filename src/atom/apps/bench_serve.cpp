// `atom bench serve`: the flags of benchmark_serving.py, same names and defaults
// (bench/serve.h runs it).
#include <iostream>
#include <limits>

#include "atom/apps/commands.h"
#include "atom/bench/pyfmt.h"
#include "atom/bench/serve.h"
#include "atom/core/error.h"

namespace atom::apps {

namespace {

// The flags as parsed; optional ones are copied into BenchArgs only when given.
struct BenchFlags {
  bench::BenchArgs a;
  std::string base_url, dataset, dataset_path, tokenizer, result_dir, result_filename;
  std::string served_model_name, hf_subset, hf_split, request_rate = "inf";
  int64_t max_concurrency = 0, logprobs = 0, sharegpt_output_len = 0, hf_output_len = 0;
  std::vector<std::string> metadata, goodput, lora_modules;
};

}  // namespace

Command add_bench_serve(CLI::App& app) {
  auto f = std::make_shared<BenchFlags>();
  bench::BenchArgs& a = f->a;
  app.description("Benchmark the online serving throughput (benchmark_serving.py's flags)");
  app.add_option("--backend", a.backend,
                 "vllm, openai (streaming /v1/completions) or openai-chat")
      ->capture_default_str();
  auto* base_url = app.add_option("--base-url", f->base_url,
                                  "Server or API base url if not using http host and port.");
  app.add_option("--host", a.host)->capture_default_str();
  app.add_option("--port", a.port)->capture_default_str();
  app.add_option("--endpoint", a.endpoint, "API endpoint.")->capture_default_str();
  auto* dataset = app.add_option("--dataset", f->dataset,
                                 "Path to the ShareGPT dataset, will be deprecated in the next "
                                 "release.");
  app.add_option("--dataset-name", a.dataset_name,
                 "Name of the dataset to benchmark on: sharegpt, burstgpt, sonnet, random (hf "
                 "needs the network and is refused)")
      ->capture_default_str();
  auto* dataset_path = app.add_option("--dataset-path", f->dataset_path,
                                      "Path to the sharegpt/sonnet/burstgpt dataset.");
  auto* max_conc = app.add_option("--max-concurrency", f->max_concurrency,
                                  "Maximum number of concurrent requests.");
  app.add_option("--model", a.model, "Name of the model (sent in each request).")->required();
  auto* tokenizer = app.add_option(
      "--tokenizer", f->tokenizer,
      "Tokenizer: a .gguf file or a directory holding one (default: --model when it is a "
      "local path, else the default model's)");
  app.add_option("--best-of", a.best_of, "Generates `best_of` sequences per prompt and returns "
                 "the best one.")
      ->capture_default_str();
  app.add_flag("--use-beam-search", a.use_beam_search);
  app.add_option("--num-prompts", a.num_prompts, "Number of prompts to process.")
      ->capture_default_str();
  auto* logprobs = app.add_option("--logprobs", f->logprobs,
                                  "Number of logprobs-per-token to compute & return as part of "
                                  "the request.");
  app.add_option("--request-rate", f->request_rate,
                 "Number of requests per second. If this is inf, then all the requests are sent "
                 "at time 0. Otherwise, we use Poisson process or gamma distribution to "
                 "synthesize the request arrival times.")
      ->capture_default_str();
  app.add_option("--burstiness", a.burstiness,
                 "Burstiness factor of the request generation (1 = Poisson process; < 1 more "
                 "bursty, > 1 more uniform). Only takes effect when request_rate is not inf.")
      ->capture_default_str();
  app.add_option("--seed", a.seed)->capture_default_str();
  app.add_flag("--trust-remote-code", a.trust_remote_code, "Accepted for compatibility.");
  app.add_flag("--disable-tqdm", a.disable_tqdm, "Specify to disable tqdm progress bar.");
  app.add_flag("--profile", a.profile,
               "POST /start_profile before and /stop_profile after the run.");
  app.add_flag("--save-result", a.save_result, "Specify to save benchmark results to a json file");
  auto* metadata = app.add_option("--metadata", f->metadata,
                                  "Key-value pairs (e.g, --metadata version=0.3.3 tp=1) for "
                                  "metadata of this run to be saved in the result JSON file.")
                       ->expected(0, -1);
  auto* result_dir = app.add_option("--result-dir", f->result_dir,
                                    "Specify directory to save benchmark json results.");
  auto* result_filename = app.add_option(
      "--result-filename", f->result_filename,
      "Specify the filename to save benchmark json results (default "
      "{backend}-{request_rate}qps[-concurrency{N}]-{model basename}-{YYYYmmdd-HHMMSS}.json).");
  app.add_flag("--ignore-eos", a.ignore_eos,
               "Set ignore_eos flag when sending the benchmark request.");
  app.add_option("--percentile-metrics", a.percentile_metrics,
                 "Comma-separated list of selected metrics to report percentiles: ttft, tpot, "
                 "itl, e2el.")
      ->capture_default_str();
  app.add_option("--metric-percentiles", a.metric_percentiles,
                 "Comma-separated list of percentiles for selected metrics, e.g. \"25,50,75\".")
      ->capture_default_str();
  auto* goodput = app.add_option("--goodput", f->goodput,
                                 "Service level objectives for goodput as \"KEY:VALUE\" pairs "
                                 "(ms), KEY one of ttft, tpot, e2el.")
                      ->expected(1, -1);
  app.add_option("--sonnet-input-len", a.sonnet_input_len)->capture_default_str();
  app.add_option("--sonnet-output-len", a.sonnet_output_len)->capture_default_str();
  app.add_option("--sonnet-prefix-len", a.sonnet_prefix_len)->capture_default_str();
  auto* sharegpt_out = app.add_option("--sharegpt-output-len", f->sharegpt_output_len,
                                      "Output length for each request. Overrides the output "
                                      "length from the ShareGPT dataset.");
  app.add_option("--random-input-len", a.random_input_len)->capture_default_str();
  app.add_option("--random-output-len", a.random_output_len)->capture_default_str();
  app.add_option("--random-range-ratio", a.random_range_ratio,
                 "Lengths are drawn uniformly from [int(L*ratio), L].")
      ->capture_default_str();
  app.add_option("--random-prefix-len", a.random_prefix_len)->capture_default_str();
  app.add_flag("--use-chat-template", a.use_chat_template,
               "Use chat template to format the prompt.");
  auto* hf_subset = app.add_option("--hf-subset", f->hf_subset);
  auto* hf_split = app.add_option("--hf-split", f->hf_split);
  auto* hf_output_len = app.add_option("--hf-output-len", f->hf_output_len);
  app.add_option("--tokenizer-mode", a.tokenizer_mode, "auto or slow (both atom's tokenizer)")
      ->capture_default_str();
  auto* served = app.add_option("--served-model-name", f->served_model_name,
                                "The model name used in the API (default: --model).");
  auto* lora = app.add_option("--lora-modules", f->lora_modules,
                              "LoRA module names; each request picks one at random.")
                   ->expected(1, -1);

  return [=]() {
    bench::BenchArgs args = f->a;
    const auto set = [](CLI::Option* o, auto& dst, const auto& src) {
      if (o->count() > 0) dst = src;
    };
    set(base_url, args.base_url, f->base_url);
    set(dataset, args.dataset, f->dataset);
    set(dataset_path, args.dataset_path, f->dataset_path);
    set(max_conc, args.max_concurrency, f->max_concurrency);
    set(tokenizer, args.tokenizer, f->tokenizer);
    set(logprobs, args.logprobs, f->logprobs);
    set(metadata, args.metadata, f->metadata);
    set(result_dir, args.result_dir, f->result_dir);
    set(result_filename, args.result_filename, f->result_filename);
    set(goodput, args.goodput, f->goodput);
    set(sharegpt_out, args.sharegpt_output_len, f->sharegpt_output_len);
    set(hf_subset, args.hf_subset, f->hf_subset);
    set(hf_split, args.hf_split, f->hf_split);
    set(hf_output_len, args.hf_output_len, f->hf_output_len);
    set(served, args.served_model_name, f->served_model_name);
    set(lora, args.lora_modules, f->lora_modules);
    ATOM_CHECK(bench::parse_py_float(f->request_rate, &args.request_rate), kInvalidArgument,
               "--request-rate: '{}' is not a number", f->request_rate);
    const bench::ServeResult r = bench::run_bench_serve(args, std::cout);
    // Failed requests are part of the report, not an error of the tool (as in the reference).
    (void)r;
    return 0;
  };
}

}  // namespace atom::apps

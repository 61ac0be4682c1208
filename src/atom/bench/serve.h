// `atom bench serve`: the serving benchmark of benchmark_serving.py (vLLM/ATOM lineage), flag
// for flag. BenchArgs holds the flags under the reference's argparse names and defaults;
// run_bench_serve is the reference's main(): sample the dataset, send one test request, run the
// timed benchmark, print the report and save the result JSON (and the PyTorch-format file).
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "atom/bench/dataset.h"
#include "atom/bench/rng.h"

namespace atom::bench {

struct BenchArgs {
  std::string backend = "vllm";
  std::optional<std::string> base_url;
  std::string host = "127.0.0.1";
  int64_t port = 8000;
  std::string endpoint = "/v1/completions";
  std::optional<std::string> dataset;  // deprecated ShareGPT path
  std::string dataset_name = "sharegpt";
  std::optional<std::string> dataset_path;
  std::optional<int64_t> max_concurrency;
  std::string model;
  std::optional<std::string> tokenizer;
  int64_t best_of = 1;
  bool use_beam_search = false;
  int64_t num_prompts = 1000;
  std::optional<int64_t> logprobs;
  double request_rate = std::numeric_limits<double>::infinity();
  double burstiness = 1.0;
  int64_t seed = 0;
  bool trust_remote_code = false;
  bool disable_tqdm = false;
  bool profile = false;
  bool save_result = false;
  std::optional<std::vector<std::string>> metadata;
  std::optional<std::string> result_dir;
  std::optional<std::string> result_filename;
  bool ignore_eos = false;
  std::string percentile_metrics = "ttft,tpot,itl";
  std::string metric_percentiles = "99";
  std::optional<std::vector<std::string>> goodput;
  int64_t sonnet_input_len = 550;
  int64_t sonnet_output_len = 150;
  int64_t sonnet_prefix_len = 200;
  std::optional<int64_t> sharegpt_output_len;
  int64_t random_input_len = 1024;
  int64_t random_output_len = 128;
  double random_range_ratio = 1.0;
  int64_t random_prefix_len = 0;
  bool use_chat_template = false;
  std::optional<std::string> hf_subset;
  std::optional<std::string> hf_split;
  std::optional<int64_t> hf_output_len;
  std::string tokenizer_mode = "auto";
  std::optional<std::string> served_model_name;
  std::optional<std::vector<std::string>> lora_modules;
};

// vars(args): every flag under its argparse name, in the reference's order.
nlohmann::ordered_json args_to_json(const BenchArgs& args);
// print(args): "Namespace(backend='vllm', base_url=None, ...)".
std::string args_repr(const BenchArgs& args);

// Send times (s from the start) of n requests: 0 for all at rate inf, else cumulative gaps
// drawn from gamma(shape=burstiness, scale=1/(rate*burstiness)), Poisson at burstiness 1.
std::vector<double> arrival_offsets(size_t n, double request_rate, double burstiness, Rng& rng);

// os.path.splitext(name)[0] + ".pytorch.json".
std::string pytorch_file_name(const std::string& result_file);
// The PyTorch OSS benchmark records: one per metric of median/mean/std/p99 of ttft, tpot and
// itl. Throws kInvalidArgument naming the missing key when the run did not select them.
nlohmann::ordered_json pytorch_records(const nlohmann::ordered_json& args_json,
                                       const std::string& model,
                                       const nlohmann::ordered_json& result);

struct ServeResult {
  nlohmann::ordered_json result;  // what --save-result writes
  std::string result_file;        // "" unless saved
  int64_t failed = 0;             // requests of the timed run that failed
};

// Prints as the reference does to out (progress bar and warnings on stderr). Bad flags, a
// dataset that cannot be read and a failed initial test request throw atom::Error.
ServeResult run_bench_serve(const BenchArgs& args, std::ostream& out);

}  // namespace atom::bench

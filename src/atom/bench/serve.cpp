#include "atom/bench/serve.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "atom/bench/client.h"
#include "atom/bench/metrics.h"
#include "atom/bench/progress.h"
#include "atom/bench/pyfmt.h"
#include "atom/bench/request.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::bench {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

template <typename T>
ojson opt(const std::optional<T>& v) {
  return v ? ojson(*v) : ojson(nullptr);
}

std::string py_str_repr(const std::string& s) {
  // repr(str) for the common case: single quotes unless the text holds one and no double.
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (const char c : s) {
    if (c == '\\' || c == q) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += c;
    }
  }
  return out + q;
}

std::string py_repr(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "None";
    case ojson::value_t::boolean: return v.get<bool>() ? "True" : "False";
    case ojson::value_t::string: return py_str_repr(v.get<std::string>());
    case ojson::value_t::number_float: return py_float(v.get<double>());
    case ojson::value_t::array: {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + py_repr(v[i]);
      return s + "]";
    }
    default: return v.dump();
  }
}

// JSON has no infinity: the reference's json.dump writes the non-standard `Infinity`; atom
// writes the string "inf", as the result's own request_rate field does.
ojson finite_json(ojson v) {
  if (v.is_number_float() && !std::isfinite(v.get<double>())) return py_float(v.get<double>());
  if (v.is_structured())
    for (auto& x : v) x = finite_json(std::move(x));
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out(1);
  for (const char c : s) {
    if (c == sep) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r\x0b\x0c");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n\r\x0b\x0c") - b + 1);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

struct LoadedTokenizer {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
};

// The model's tokenizer: --tokenizer (a .gguf file or a folder holding one, an HF checkpoint
// folder, or a tokenizer.json file), else --model when it names a local path, else the default
// model's. Nothing is downloaded.
LoadedTokenizer load_tokenizer(const BenchArgs& args) {
  const auto is_local = [](const std::string& p) {
    std::error_code ec;
    return fs::exists(envs::expand_user(p), ec);
  };
  std::string source = args.tokenizer ? *args.tokenizer : args.model;
  if (args.tokenizer || is_local(args.model)) {
    ATOM_CHECK(is_local(source) || !envs::VLLM_USE_MODELSCOPE(), kUnsupported,
               "tokenizer {} is not a local path and VLLM_USE_MODELSCOPE asks for a ModelScope "
               "download; atom bench serve does not download: pass --tokenizer with a local "
               "path",
               source);
    ATOM_CHECK(is_local(source), kNotFound,
               "tokenizer {} is not a local path; atom bench serve does not download: pass "
               "--tokenizer with a .gguf file, an HF checkpoint folder or a tokenizer.json",
               source);
  } else {
    ATOM_CHECK(!envs::VLLM_USE_MODELSCOPE(), kUnsupported,
               "--model {} is not a local path and VLLM_USE_MODELSCOPE asks for a ModelScope "
               "download of its tokenizer; atom bench serve does not download: pass --tokenizer "
               "with a local path",
               args.model);
    source = default_model_path();
    std::cerr << fmt::format(
        "note: --model {} is not a local path; counting tokens with the default model's "
        "tokenizer ({}); pass --tokenizer to choose another\n",
        args.model, source);
  }
  LoadedTokenizer t;
  const fs::path local = envs::expand_user(source);
  std::error_code ec;
  if (ends_with(source, ".json") && fs::is_regular_file(local, ec)) {  // a tokenizer.json
    const fs::path config = local.parent_path() / "tokenizer_config.json";
    t.tok = Tokenizer::from_hf(local.string(),
                               fs::is_regular_file(config, ec) ? config.string() : std::string());
    return t;
  }
  const ModelLocation loc = locate_model(source);
  if (loc.format == ModelFormat::kHfFolder) {
    t.tok = Tokenizer::from_hf_folder(loc.path);
  } else {
    t.file = GgufFile::open(loc.path, !envs::ATOM_DISABLE_MMAP());
    t.tok = Tokenizer::from_gguf(*t.file);
  }
  return t;
}

std::vector<std::string> parse_metric_names(const std::string& s) {
  std::vector<std::string> names = split(s, ',');
  for (const std::string& n : names)
    ATOM_CHECK(n == "ttft" || n == "tpot" || n == "itl" || n == "e2el", kInvalidArgument,
               "--percentile-metrics: unknown metric '{}' (allowed: ttft, tpot, itl, e2el)", n);
  return names;
}

std::vector<double> parse_percentiles(const std::string& s) {
  std::vector<double> ps;
  for (const std::string& item : split(s, ',')) {
    double p = 0;
    ATOM_CHECK(parse_py_float(item, &p), kInvalidArgument,
               "--metric-percentiles: '{}' is not a number", item);
    ATOM_CHECK(p >= 0 && p <= 100, kInvalidArgument,
               "--metric-percentiles: {} is outside [0, 100]", item);
    ps.push_back(p);
  }
  return ps;
}

std::vector<std::pair<std::string, std::string>> parse_metadata(const BenchArgs& args) {
  std::vector<std::pair<std::string, std::string>> kv;
  if (!args.metadata) return kv;
  for (const std::string& item : *args.metadata) {
    ATOM_CHECK(item.find('=') != std::string::npos, kInvalidArgument,
               "Invalid metadata format. Please use KEY=VALUE format. (got '{}')", item);
    // item.split("=")[0], [1]: a value holding '=' keeps only its first part, as in the
    // reference.
    const std::vector<std::string> parts = split(item, '=');
    kv.emplace_back(trim(parts[0]), trim(parts[1]));
  }
  return kv;
}

void validate(const BenchArgs& args) {
  ATOM_CHECK(!args.model.empty(), kInvalidArgument, "--model is required");
  ATOM_CHECK(args.tokenizer_mode == "auto" || args.tokenizer_mode == "slow", kUnsupported,
             "--tokenizer-mode {}: atom bench serve has one tokenizer (atom's own, from GGUF); "
             "use auto",
             args.tokenizer_mode);
  ATOM_CHECK(args.num_prompts >= 1, kInvalidArgument, "--num-prompts must be at least 1, got {}",
             args.num_prompts);
  ATOM_CHECK(args.request_rate > 0, kInvalidArgument, "--request-rate must be positive, got {}",
             py_float(args.request_rate));
  ATOM_CHECK(args.burstiness > 0 && std::isfinite(args.burstiness), kInvalidArgument,
             "A positive burstiness factor is expected, but given {}.", py_float(args.burstiness));
  ATOM_CHECK(!args.max_concurrency || *args.max_concurrency >= 1, kInvalidArgument,
             "--max-concurrency must be at least 1, got {}", args.max_concurrency.value_or(0));
  ATOM_CHECK(args.best_of >= 1, kInvalidArgument, "--best-of must be at least 1");
  ATOM_CHECK(args.port > 0 && args.port < 65536, kInvalidArgument, "--port {} is not a TCP port",
             args.port);
}

std::string local_date() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  return buf;
}

std::string basename_of(const std::string& model) {
  const size_t slash = model.rfind('/');
  return slash == std::string::npos ? model : model.substr(slash + 1);
}

}  // namespace

ojson args_to_json(const BenchArgs& a) {
  ojson j;
  j["backend"] = a.backend;
  j["base_url"] = opt(a.base_url);
  j["host"] = a.host;
  j["port"] = a.port;
  j["endpoint"] = a.endpoint;
  j["dataset"] = opt(a.dataset);
  j["dataset_name"] = a.dataset_name;
  j["dataset_path"] = opt(a.dataset_path);
  j["max_concurrency"] = opt(a.max_concurrency);
  j["model"] = a.model;
  j["tokenizer"] = opt(a.tokenizer);
  j["best_of"] = a.best_of;
  j["use_beam_search"] = a.use_beam_search;
  j["num_prompts"] = a.num_prompts;
  j["logprobs"] = opt(a.logprobs);
  j["request_rate"] = a.request_rate;
  j["burstiness"] = a.burstiness;
  j["seed"] = a.seed;
  j["trust_remote_code"] = a.trust_remote_code;
  j["disable_tqdm"] = a.disable_tqdm;
  j["profile"] = a.profile;
  j["save_result"] = a.save_result;
  j["metadata"] = opt(a.metadata);
  j["result_dir"] = opt(a.result_dir);
  j["result_filename"] = opt(a.result_filename);
  j["ignore_eos"] = a.ignore_eos;
  j["percentile_metrics"] = a.percentile_metrics;
  j["metric_percentiles"] = a.metric_percentiles;
  j["goodput"] = opt(a.goodput);
  j["sonnet_input_len"] = a.sonnet_input_len;
  j["sonnet_output_len"] = a.sonnet_output_len;
  j["sonnet_prefix_len"] = a.sonnet_prefix_len;
  j["sharegpt_output_len"] = opt(a.sharegpt_output_len);
  j["random_input_len"] = a.random_input_len;
  j["random_output_len"] = a.random_output_len;
  j["random_range_ratio"] = a.random_range_ratio;
  j["random_prefix_len"] = a.random_prefix_len;
  j["use_chat_template"] = a.use_chat_template;
  j["hf_subset"] = opt(a.hf_subset);
  j["hf_split"] = opt(a.hf_split);
  j["hf_output_len"] = opt(a.hf_output_len);
  j["tokenizer_mode"] = a.tokenizer_mode;
  j["served_model_name"] = opt(a.served_model_name);
  j["lora_modules"] = opt(a.lora_modules);
  return j;
}

std::string args_repr(const BenchArgs& args) {
  std::string s = "Namespace(";
  bool first = true;
  const ojson j = args_to_json(args);
  for (const auto& [k, v] : j.items()) {
    s += (first ? "" : ", ") + k + "=" + py_repr(v);
    first = false;
  }
  return s + ")";
}

std::vector<double> arrival_offsets(size_t n, double request_rate, double burstiness, Rng& rng) {
  std::vector<double> t(n, 0.0);
  if (std::isinf(request_rate)) return t;
  const double theta = 1.0 / (request_rate * burstiness);
  for (size_t i = 1; i < n; ++i) t[i] = t[i - 1] + rng.gamma(burstiness, theta);
  return t;
}

std::string pytorch_file_name(const std::string& result_file) {
  const size_t slash = result_file.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  size_t stem_start = base;  // leading dots of the name are not an extension
  while (stem_start < result_file.size() && result_file[stem_start] == '.') ++stem_start;
  const size_t dot = result_file.rfind('.');
  const bool has_ext = dot != std::string::npos && dot > stem_start;
  return (has_ext ? result_file.substr(0, dot) : result_file) + ".pytorch.json";
}

ojson pytorch_records(const ojson& args_json, const std::string& model, const ojson& result) {
  static const char* const kMetrics[] = {
      "median_ttft_ms", "mean_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
      "mean_tpot_ms",   "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms",
      "median_itl_ms",  "mean_itl_ms",  "std_itl_ms",  "p99_itl_ms"};
  static const char* const kIgnored[] = {"ttfts", "itls", "generated_texts", "errors"};
  for (const char* k : kMetrics)
    ATOM_CHECK(result.contains(k), kInvalidArgument,
               "SAVE_TO_PYTORCH_BENCHMARK_FORMAT needs {} in the result: run with ttft, tpot "
               "and itl in --percentile-metrics and 99 in --metric-percentiles",
               k);
  ojson extra;
  for (const auto& [k, v] : result.items()) {
    bool skip = false;
    for (const char* m : kMetrics) skip = skip || k == m;
    for (const char* m : kIgnored) skip = skip || k == m;
    if (!skip) extra[k] = v;
  }
  ojson records = ojson::array();
  for (const char* k : kMetrics) {
    ojson rec;
    rec["benchmark"] = {{"name", "vLLM benchmark"}, {"extra_info", {{"args", args_json}}}};
    rec["model"] = {{"name", model}};
    rec["metric"] = {{"name", k},
                     {"benchmark_values", ojson::array({result[k]})},
                     {"extra_info", extra}};
    records.push_back(std::move(rec));
  }
  return finite_json(std::move(records));
}

ServeResult run_bench_serve(const BenchArgs& args, std::ostream& out) {
  validate(args);
  const Backend backend = parse_backend(args.backend);
  const std::vector<std::string> selected_metrics = parse_metric_names(args.percentile_metrics);
  const std::vector<double> selected_percentiles = parse_percentiles(args.metric_percentiles);
  const GoodputConfig goodput = args.goodput ? parse_goodput(*args.goodput) : GoodputConfig{};
  const auto metadata = parse_metadata(args);
  ATOM_CHECK(args.dataset_name != "hf", kUnsupported,
             "--dataset-name hf streams a dataset from the Hugging Face Hub, and atom bench serve "
             "does not download; save the conversations as ShareGPT JSON and use --dataset-name "
             "sharegpt --dataset-path FILE");
  ATOM_CHECK(args.dataset_name == "sharegpt" || args.dataset_name == "burstgpt" ||
                 args.dataset_name == "sonnet" || args.dataset_name == "random",
             kInvalidArgument,
             "Unknown dataset: {} (choose from sharegpt, burstgpt, sonnet, random, hf)",
             args.dataset_name);

  out << args_repr(args) << "\n";
  const std::string base_url =
      args.base_url ? *args.base_url : fmt::format("http://{}:{}", args.host, args.port);
  const std::string api_url = base_url + args.endpoint;
  check_api_url(backend, api_url);
  const std::string tokenizer_id = args.tokenizer ? *args.tokenizer : args.model;
  const LoadedTokenizer lt = load_tokenizer(args);
  const Tokenizer& tok = *lt.tok;
  Rng rng(uint64_t(args.seed));

  std::vector<SampleRequest> requests;
  if (args.dataset) {
    std::cerr << "warning: The '--dataset' argument will be deprecated in the next release. "
                 "Please use '--dataset-name' and '--dataset-path' in the future runs.\n";
    requests = sample_sharegpt_requests(*args.dataset, args.num_prompts, tok, rng,
                                        args.sharegpt_output_len);
  } else if (args.dataset_name == "sharegpt") {
    requests = sample_sharegpt_requests(args.dataset_path.value_or(""), args.num_prompts, tok,
                                        rng, args.sharegpt_output_len);
  } else if (args.dataset_name == "burstgpt") {
    requests = sample_burstgpt_requests(args.dataset_path.value_or(""), args.num_prompts,
                                        uint64_t(args.seed), tok);
  } else if (args.dataset_name == "sonnet") {
    ATOM_CHECK(!tok.chat_template().empty(), kNotFound,
               "Tokenizer/model must have chat template for sonnet dataset.");
    const ChatFormatter chat(tok);
    requests = sample_sonnet_requests(
        args.dataset_path.value_or(""), args.num_prompts,
        {args.sonnet_input_len, args.sonnet_output_len, args.sonnet_prefix_len}, tok, chat, rng,
        backend == Backend::kOpenaiChat);
  } else {
    std::unique_ptr<ChatFormatter> chat;
    if (args.use_chat_template) chat = std::make_unique<ChatFormatter>(tok);
    requests = sample_random_requests({args.random_input_len, args.random_output_len,
                                       args.random_range_ratio, args.random_prefix_len,
                                       args.use_chat_template},
                                      args.num_prompts, tok, rng, chat.get());
  }
  ATOM_CHECK(!requests.empty(), kInvalidArgument,
             "the {} dataset gave no requests (every sample was filtered out)",
             args.dataset ? "sharegpt" : args.dataset_name);

  // --- benchmark() ---
  StreamingClient client(backend, envs::OPENAI_API_KEY());
  const auto make_input = [&](const SampleRequest& r, const std::string& url) {
    RequestInput in;
    in.prompt = r.prompt;
    in.api_url = url;
    in.prompt_len = r.prompt_len;
    in.output_len = r.output_len;
    in.model = args.model;
    in.model_name = args.served_model_name;
    in.best_of = args.best_of;
    in.logprobs = args.logprobs;
    in.ignore_eos = args.ignore_eos;
    return in;
  };
  out << "Starting initial single prompt test run...\n" << std::flush;
  const RequestOutput test = client.run_one(make_input(requests[0], api_url));
  ATOM_CHECK(test.success, kIo,
             "Initial test run failed - Please make sure benchmark arguments are correctly "
             "specified. Error: {} (POST {})",
             test.error, api_url);
  out << "Initial test run completed. Starting main benchmark run...\n";

  std::vector<RequestInput> inputs;
  for (const SampleRequest& r : requests) inputs.push_back(make_input(r, api_url));
  if (args.lora_modules && !args.lora_modules->empty()) {
    for (RequestInput& in : inputs) {  // random.choice per request
      const auto& mods = *args.lora_modules;
      const std::string& m = mods[size_t(rng.uniform() * double(mods.size()))];
      in.model = m;
      in.model_name = m;
    }
  }
  if (args.profile) {
    out << "Starting profiler...\n" << std::flush;
    if (client.post_ok(make_input(requests[0], base_url + "/start_profile")))
      out << "Profiler started\n";
  }
  out << "Traffic request rate: " << py_float(args.request_rate) << "\n";
  out << "Burstiness factor: " << py_float(args.burstiness) << " ("
      << (args.burstiness == 1.0 ? "Poisson process" : "Gamma distribution") << ")\n";
  out << "Maximum request concurrency: "
      << (args.max_concurrency ? std::to_string(*args.max_concurrency) : "None") << "\n"
      << std::flush;

  const std::vector<double> offsets =
      arrival_offsets(inputs.size(), args.request_rate, args.burstiness, rng);
  ProgressBar pbar(int64_t(inputs.size()), !args.disable_tqdm);
  const double start = now_seconds();
  const std::vector<RequestOutput> outputs = client.run(
      inputs, offsets, args.max_concurrency.value_or(0), [&](size_t) { pbar.update(); });
  if (args.profile) {
    out << "Stopping profiler...\n" << std::flush;
    if (client.post_ok(make_input(requests[0], base_url + "/stop_profile")))
      out << "Profiler stopped\n";
  }
  pbar.close();
  const double duration = now_seconds() - start;

  const MetricsResult mr = calculate_metrics(
      requests, outputs, duration,
      [&](const std::string& text) { return int64_t(tok.encode(text, false).size()); },
      selected_percentiles, goodput);
  ServeResult sr;
  sr.failed = int64_t(outputs.size()) - mr.metrics.completed;
  if (mr.metrics.completed == 0)
    std::cerr << "warning: All requests failed. This is likely due to a misconfiguration on the "
                 "benchmark arguments.\n";
  if (sr.failed > 0) {
    for (const RequestOutput& o : outputs) {
      if (o.success) continue;
      std::cerr << fmt::format("warning: {} of {} requests failed; the first error: {}\n",
                               sr.failed, outputs.size(), o.error.empty() ? "(none given)" : o.error);
      break;
    }
  }
  const ojson bench =
      report_metrics(mr, outputs, duration, !goodput.empty(), selected_metrics, out);
  out << std::flush;

  // --- main(): the result file ---
  const std::string date = local_date();
  ojson& r = sr.result;
  r["date"] = date;
  r["backend"] = args.backend;
  r["model_id"] = args.model;
  r["tokenizer_id"] = tokenizer_id;
  r["best_of"] = args.best_of;
  r["num_prompts"] = args.num_prompts;
  for (const auto& [k, v] : metadata) r[k] = v;
  r["request_rate"] = std::isinf(args.request_rate) ? ojson("inf") : ojson(args.request_rate);
  r["burstiness"] = args.burstiness;
  r["max_concurrency"] = opt(args.max_concurrency);
  for (const auto& [k, v] : bench.items()) r[k] = v;

  if (args.save_result) {
    std::string file_name = fmt::format(
        "{}-{}qps{}-{}-{}.json", args.backend, py_float(args.request_rate),
        args.max_concurrency ? fmt::format("-concurrency{}", *args.max_concurrency) : "",
        basename_of(args.model), date);
    if (args.result_filename) file_name = *args.result_filename;
    if (args.result_dir) {
      std::error_code ec;
      fs::create_directories(*args.result_dir, ec);
      file_name = (fs::path(*args.result_dir) / file_name).string();
    }
    {
      std::ofstream f(file_name, std::ios::binary);
      ATOM_CHECK(f.good(), kIo, "cannot write the result file {}", file_name);
      f << r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      ATOM_CHECK(f.good(), kIo, "writing the result file {} failed", file_name);
    }
    sr.result_file = file_name;
    if (envs::SAVE_TO_PYTORCH_BENCHMARK_FORMAT()) {
      const ojson records = pytorch_records(args_to_json(args), args.model, r);
      const std::string pt = pytorch_file_name(file_name);
      std::ofstream f(pt, std::ios::binary);
      ATOM_CHECK(f.good(), kIo, "cannot write {}", pt);
      f << records.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  return sr;
}

}  // namespace atom::bench

#include "atom/apps/engine_args.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <string_view>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/io/hf_config.h"
#include "atom/io/model_path.h"
#ifdef ATOM_HAVE_CUDA
#include "atom/runner/cuda/cuda_model_runner.h"
#endif

namespace atom::apps {

void EngineArgs::add_to(CLI::App& app) {
  app.add_option("--model", model.path,
                 "GGUF file, folder with one, or Hugging Face checkpoint folder (default: "
                 "SmolLM2-135M-Instruct)");
  app.add_option("--load-format,--load_format", model.load_format,
                 "auto: read the weights; dummy: random weights of the right shapes, reading no "
                 "weight file (HF folders)")
      ->check(CLI::IsMember({"auto", "dummy"}));
  app.add_flag("--load-dummy,--load_dummy", model.load_dummy, "Same as --load-format dummy");
  app.add_option("--max-model-len,--max_model_len", max_model_len,
                 "Context length (default: the model's)");
  app.add_option("--block-size,--block_size", block_size, "KV cache block size in tokens")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-num-seqs,--max_num_seqs", max_num_seqs, "Sequences per step")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-num-batched-tokens,--max_num_batched_tokens", max_num_batched_tokens,
                 "Token budget per step (longer prompts are prefilled in chunks)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--enable-prefix-caching,--enable_prefix_caching", enable_prefix_caching,
               "Reuse the KV cache of shared prompt prefixes");
  app.add_flag("--no-chunked-prefill", no_chunked_prefill,
               "ATOM's policy: whole prompts in prefill-only steps, decodes in other steps");
  app.add_flag("--enforce-eager,--enforce_eager", enforce_eager,
               "No CUDA graphs (also ATOM_ENFORCE_EAGER=1; the CPU backend always runs eagerly)");
  app.add_option("--cudagraph-capture-sizes,--cudagraph_capture_sizes", cudagraph_capture_sizes,
                 "Decode batch sizes captured as CUDA graphs, e.g. \"[1,2,4,8]\" (default: "
                 "[1,2,4,8,16,32,48,64,128,256]; sizes above --max-num-seqs are dropped)")
      ->check([](const std::string& v) {
        try {
          (void)parse_capture_sizes(v);
          return std::string();
        } catch (const std::exception& e) {
          return std::string(e.what());
        }
      });
  app.add_option("--cpu-kv-cache-space", cpu_kv_cache_space, "KV cache size on the CPU, GiB")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads (default: ATOM_NUM_THREADS, else all)");
  app.add_option("--async-output,--async_output", async_output,
                 "Deferred output, 1 or 0: the backend runs step N while the host postprocesses "
                 "N-1 and schedules N+1 (default: 1 on cuda, 0 on cpu)");
  app.add_option("--device", device,
                 "Backend: cuda or cpu (default: cuda when built with CUDA and a GPU is visible)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--gpu-memory-utilization,--gpu_memory_utilization", gpu_memory_utilization,
                 "Fraction of the GPU's memory for weights, activations and the KV cache")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  app.add_option("--num-gpu-blocks-override,--num_gpu_blocks_override", num_gpu_blocks_override,
                 "KV blocks of the GPU pool, instead of what --gpu-memory-utilization leaves "
                 "(vLLM's flag; for tests and for sharing a GPU)")
      ->check(CLI::PositiveNumber);
  app.add_option("--torch-profiler-dir,--torch_profiler_dir", torch_profiler_dir,
                 "Directory for Chrome traces (gzip JSON, per rank) recorded between "
                 "/start_profile and /stop_profile (default: ATOM_TORCH_PROFILER_DIR; unset: "
                 "profiling off)");
  // Parallelism: each flag beats its ATOM_DP_* variable, which beats the default. Tensor
  // parallelism is not implemented yet, and only `atom serve` runs data-parallel replicas:
  // anything else is refused once parsing is complete.
  app.add_option("--tensor-parallel-size", parallel.tensor_parallel_size,
                 "-tp N: GPUs one engine is split over, 1..8 (default 1; only 1 is implemented)");
  app.add_option("--data-parallel-size", parallel.data_parallel_size,
                 "-dp N: engine replicas, each in its own process behind one front end (atom "
                 "serve only; default: ATOM_DP_SIZE, else 1)");
  app.add_option("--data-parallel-rank", parallel.data_parallel_rank,
                 "This replica's rank among all, 0..dp-1 (default: ATOM_DP_RANK, else 0)");
  app.add_option("--data-parallel-rank-local", parallel.data_parallel_rank_local,
                 "This replica's rank on this node, its device offset (default: "
                 "ATOM_DP_RANK_LOCAL, else 0)");
  app.add_option("--data-parallel-master-ip", parallel.master_ip,
                 "Address where the data-parallel replicas meet (default: ATOM_DP_MASTER_IP, else "
                 "127.0.0.1)");
  app.add_option("--data-parallel-master-port", parallel.master_port,
                 "Port where the data-parallel replicas meet (default: ATOM_DP_MASTER_PORT, else "
                 "29500)");
  app.add_flag("--enable-expert-parallel", parallel.enable_expert_parallel,
               "Shard the experts of MoE layers over the tp*dp ranks (no effect on one rank or "
               "a dense model)");
  app.add_flag("--enable-dp-attention", parallel.enable_dp_attention,
               "Make every GPU a replica: dp := tp*dp, tp := 1 (no effect with -tp 1)");
  // Before any model is loaded: a bad value, or a multi-GPU request, ends the command at once.
  app.add_option("--scheduler-delay-factor,--scheduler_delay_factor", scheduler_delay_factor,
                 "While requests run, admit new prompts only once the oldest waiting one has "
                 "waited longer than this factor times the last prompt step (0: at once)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--kv_cache_dtype,--kv-cache-dtype", kv_cache_dtype,
                 "KV cache element type: bf16, or fp8 (float8 e4m3, scales 1.0; device cuda)")
      ->check(CLI::IsMember({"bf16", "fp8"}))
      ->capture_default_str();
  app.add_option("--level", level,
                 "ATOM's torch.compile level 0-3; accepted and ignored (atom compiles nothing at "
                 "run time; CUDA graphs follow --enforce-eager at every level, as in ATOM)")
      ->check(CLI::Range(0, 3))
      ->capture_default_str();
  app.add_option("--method", method, "Speculative decoding method (mtp): not implemented yet")
      ->check(CLI::IsMember({"mtp"}));
  app.add_option("--num-speculative-tokens,--num_speculative_tokens", num_speculative_tokens,
                 "Draft tokens per step with --method (1-4, as ATOM)")
      ->check(CLI::Range(1, 4))
      ->capture_default_str();
  app.parse_complete_callback([this] {
    const ParallelConfig pc = parallel_config();
    // What only the CUDA backend does, refused on the CPU before any model is looked for.
    const std::string dev = device.empty() ? default_device() : device;
    ATOM_CHECK(dev != "cpu" || pc.tensor_parallel_size == 1, kUnsupported,
               "--tensor-parallel-size {}: tensor parallelism runs on device 'cuda' only",
               pc.tensor_parallel_size);
    ATOM_CHECK(dev != "cpu" || kv_cache_dtype == "bf16", kUnsupported,
               "--kv_cache_dtype {}: an fp8 KV cache runs on device 'cuda' only", kv_cache_dtype);
    // Refused at start-up, before any model is looked for, with the reason.
    ATOM_CHECK(method.empty(), kUnsupported,
               "--method {}: speculative decoding is not implemented yet; drop --method",
               method);
  });
}

std::vector<std::string> cli_args(int argc, const char* const* argv) {
  static constexpr std::string_view kShort[][2] = {{"-tp", "--tensor-parallel-size"},
                                                   {"-dp", "--data-parallel-size"}};
  std::vector<std::string> args;
  bool literal = false;  // after "--": positional text, left alone
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") literal = true;
    for (const auto& [short_name, long_name] : kShort) {
      if (literal || !a.starts_with(short_name)) continue;
      const std::string_view rest = std::string_view(a).substr(short_name.size());
      const bool digits = !rest.empty() && std::all_of(rest.begin(), rest.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c)) != 0;
      });
      if (rest.empty())
        a = std::string(long_name);  // "-tp N"
      else if (rest.front() == '=')
        a = std::string(long_name) + std::string(rest);  // "-tp=N"
      else if (digits)
        a = std::string(long_name) + "=" + std::string(rest);  // "-tpN", as argparse takes it
      break;
    }
    args.push_back(std::move(a));
  }
  std::reverse(args.begin(), args.end());
  return args;
}

std::string default_device() {
#ifdef ATOM_HAVE_CUDA
  if (cuda_device_count() > 0) return "cuda";
#endif
  return "cpu";
}

EngineConfig EngineArgs::engine_config() const {
  EngineConfig c;
  c.scheduler.max_num_seqs = max_num_seqs;
  c.scheduler.max_num_batched_tokens = max_num_batched_tokens;
  c.scheduler.max_model_len = max_model_len;
  c.scheduler.chunked_prefill = !no_chunked_prefill;
  c.scheduler.delay_factor = scheduler_delay_factor;
  c.block_size = block_size;
  c.kv_cache_bytes = size_t(cpu_kv_cache_space * double(size_t(1) << 30));
  c.enable_prefix_caching = enable_prefix_caching;
  c.device = device.empty() ? default_device() : device;
  c.async_output = async_output.value_or(c.device == "cuda");
  c.gpu_memory_utilization = gpu_memory_utilization;
  if (c.device == "cuda") c.num_kv_blocks = num_gpu_blocks_override;
  // Unlike ATOM's CLI, which always passes None, the variable is the flag's fallback.
  c.torch_profiler_dir = !torch_profiler_dir.empty()
                             ? torch_profiler_dir
                             : envs::ATOM_TORCH_PROFILER_DIR().value_or(std::string());
  // As ATOM: the flag also sets ATOM_ENFORCE_EAGER for everything this process starts; the
  // variable alone (=1) turns graphs off too (make_runner reads it).
  c.enforce_eager = enforce_eager;
  c.kv_cache_dtype = kv_cache_dtype;
  if (enforce_eager) envs::set("ATOM_ENFORCE_EAGER", "1");
  if (!cudagraph_capture_sizes.empty())
    c.cudagraph_capture_sizes = parse_capture_sizes(cudagraph_capture_sizes);
  c.parallel = parallel_config();
  for (const std::string& note : ineffective_parallel_flags(c.parallel)) ATOM_LOG_WARN("{}", note);
  return c;
}

ParallelConfig EngineArgs::parallel_config() const {
  return allow_data_parallel ? require_single_engine(parallel) : require_single_rank(parallel);
}

std::vector<int64_t> parse_capture_sizes(const std::string& text) {
  std::string_view v(text);
  auto trim = [](std::string_view x) {
    while (!x.empty() && std::isspace(static_cast<unsigned char>(x.front()))) x.remove_prefix(1);
    while (!x.empty() && std::isspace(static_cast<unsigned char>(x.back()))) x.remove_suffix(1);
    return x;
  };
  v = trim(v);
  if (v.size() >= 2 && v.front() == '[' && v.back() == ']') v = trim(v.substr(1, v.size() - 2));
  std::vector<int64_t> sizes;
  if (v.empty()) return sizes;
  while (true) {
    const size_t comma = v.find(',');
    const std::string_view item = trim(v.substr(0, comma));
    int64_t n = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
    ATOM_CHECK(!item.empty() && ec == std::errc() && ptr == item.data() + item.size() && n > 0,
               kInvalidArgument,
               "--cudagraph-capture-sizes: \"{}\" is not a list of positive integers like "
               "[1,2,4,8] (at \"{}\")",
               text, item);
    sizes.push_back(n);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return sizes;
}

LoadFormat ModelSource::format() const {
  return load_dummy ? LoadFormat::kDummy : parse_load_format(load_format);
}

namespace {

namespace fs = std::filesystem;

LoadedModel load_gguf(const std::string& path, LoadFormat format) {
  ATOM_CHECK(format == LoadFormat::kAuto, kUnsupported,
             "{}: --load-format dummy needs a Hugging Face checkpoint folder, not a GGUF file",
             path);
  LoadedModel m;
  m.gguf = GgufFile::open(path, !envs::ATOM_DISABLE_MMAP());
  m.tokenizer = Tokenizer::from_gguf(*m.gguf);
  m.model = load_model_from_gguf(*m.gguf);
  m.stop_ids = m.tokenizer->stop_ids();
  return m;
}

LoadedModel load_hf(const std::string& dir, LoadFormat format) {
  const ModelConfig config = load_hf_config(dir);
  check_model_architecture(config);  // before reading tokenizer or weights
  LoadedModel m;
  m.tokenizer = Tokenizer::from_hf_folder(dir);
  if (format == LoadFormat::kDummy) {
    m.model = load_model_from_hf(dir, config, LoadFormat::kDummy);
  } else {
    m.checkpoint = SafetensorsCheckpoint::open(dir, !envs::ATOM_DISABLE_MMAP());
    m.model = load_model_from_hf(*m.checkpoint, config);
  }
  m.stop_ids = m.tokenizer->stop_ids();
  if (const std::optional<GenerationConfig> gen = load_generation_config(dir)) {
    for (const int64_t id : gen->eos_token_ids) {
      ATOM_CHECK(id >= 0 && id < config.vocab_size, kCorrupt,
                 "{}/generation_config.json: eos_token_id {} is outside the vocabulary ({})", dir,
                 id, config.vocab_size);
      if (std::find(m.stop_ids.begin(), m.stop_ids.end(), int32_t(id)) == m.stop_ids.end())
        m.stop_ids.push_back(int32_t(id));
    }
  }
  return m;
}

}  // namespace

LoadedTokenizer load_tokenizer(const std::string& model) {
  const ModelLocation loc = locate_model(model);
  LoadedTokenizer t;
  if (loc.format == ModelFormat::kHfFolder) {
    t.tokenizer = Tokenizer::from_hf_folder(loc.path);
  } else {
    t.gguf = GgufFile::open(loc.path, !envs::ATOM_DISABLE_MMAP());
    t.tokenizer = Tokenizer::from_gguf(*t.gguf);
  }
  return t;
}

LoadedModel load_model(const ModelSource& source) {
  const ModelLocation loc = locate_model(source.path);
  return loc.format == ModelFormat::kHfFolder ? load_hf(loc.path, source.format())
                                              : load_gguf(loc.path, source.format());
}

LoadedModel load_model(const std::string& model, LoadFormat format) {
  return load_model(ModelSource{model, format == LoadFormat::kDummy ? "dummy" : "auto"});
}

void set_threads(int64_t flag) {
  const int64_t n = flag > 0 ? flag : envs::ATOM_NUM_THREADS();
  if (n > 0) omp_set_num_threads(int(n));
}

}  // namespace atom::apps

// `atom bench throughput`: nano-vllm's offline benchmark. Random prompts of random lengths, all
// submitted at once with ignore_eos, run to completion; reports requests/s and tokens/s.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <random>

#include "atom/apps/commands.h"
#include "atom/apps/engine_args.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom::apps {

namespace {
std::pair<int64_t, int64_t> parse_range(const std::string& s, const char* flag) {
  // "MIN,MAX" with two integers and nothing else.
  int64_t lo = 0, hi = 0;
  char tail = 0;
  const bool ok = std::sscanf(s.c_str(), "%" SCNd64 ",%" SCNd64 "%c", &lo, &hi, &tail) == 2;
  ATOM_CHECK(ok, kInvalidArgument, "{} expects MIN,MAX, got '{}'", flag, s);
  ATOM_CHECK(lo >= 1 && lo <= hi, kInvalidArgument, "{} needs 1 <= MIN <= MAX, got '{}'", flag,
             s);
  return {lo, hi};
}
}  // namespace

Command add_bench_throughput(CLI::App& app) {
  struct Opts {
    EngineArgs engine;
    int64_t num_seqs = 256;
    std::string input_range = "100,1024", output_range = "100,1024";
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  o->engine.add_to(app);
  app.add_option("--num-seqs", o->num_seqs, "Number of sequences")->check(CLI::PositiveNumber);
  app.add_option("--input-len-range", o->input_range, "Prompt lengths MIN,MAX (uniform)");
  app.add_option("--output-len-range", o->output_range, "Output lengths MIN,MAX (uniform)");
  app.add_option("--seed", o->seed, "Random seed");
  return [o]() {
    const auto [in_lo, in_hi] = parse_range(o->input_range, "--input-len-range");
    const auto [out_lo, out_hi] = parse_range(o->output_range, "--output-len-range");
    set_threads(o->engine.threads);
    LoadedModel m = load_model(o->engine.model);
    EngineConfig cfg = o->engine.engine_config();
    if (cfg.scheduler.max_model_len == 0)  // room for the longest request
      cfg.scheduler.max_model_len = std::min(m.model->config().max_position_embeddings,
                                             in_hi + out_hi);
    LLMEngine engine(*m.model, *m.tokenizer, cfg);

    // Token ids uniform in [0, 10000) as nano-vllm draws them (clamped to the vocabulary).
    std::mt19937_64 rng(o->seed);
    const int64_t id_hi = std::min<int64_t>(10000, m.model->config().vocab_size) - 1;
    std::uniform_int_distribution<int64_t> in_len(in_lo, in_hi), out_len(out_lo, out_hi),
        token(0, id_hi);
    std::vector<std::vector<int32_t>> prompts;
    std::vector<SamplingParams> params;
    int64_t total_out = 0, total_in = 0;
    for (int64_t i = 0; i < o->num_seqs; ++i) {
      std::vector<int32_t> p(size_t(in_len(rng)));
      for (int32_t& t : p) t = int32_t(token(rng));
      SamplingParams sp;
      sp.temperature = 0.6f;
      sp.ignore_eos = true;
      sp.max_tokens = out_len(rng);
      sp.seed = o->seed + uint64_t(i);
      total_in += int64_t(p.size());
      total_out += sp.max_tokens;
      prompts.push_back(std::move(p));
      params.push_back(sp);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<RequestOutput> outs = engine.generate(prompts, params, /*progress=*/true);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t produced = 0;
    for (const RequestOutput& r : outs) produced += int64_t(r.output_ids.size());
    ATOM_CHECK(produced == total_out, kInternal, "expected {} output tokens, got {}", total_out,
               produced);
    std::printf("requests: %lld, prompt tokens: %lld, output tokens: %lld, time: %.2f s\n",
                (long long)outs.size(), (long long)total_in, (long long)produced, s);
    std::printf("throughput: %.2f requests/s, %.1f output tokens/s, %.1f total tokens/s\n",
                double(outs.size()) / s, double(produced) / s, double(total_in + produced) / s);
    return 0;
  };
}

}  // namespace atom::apps

// atom against Hugging Face transformers on the same weights, in the same run: random-weight HF
// checkpoints (tiny Llama, tiny Qwen3, a Llama-3.1-8B-shaped model) that scripts/hf_reference.py
// makes on the GPU host, with what transformers computes for a few prompts of token ids. atom
// loads each checkpoint with its own loader (config.json + safetensors) and runs the prompts on
// CudaModelRunner:
//   * prefill logits (and the logits of the last greedy step, the decode path at the longest
//     context) within a bf16 tolerance of transformers';
//   * 32 greedy tokens: each step's input is transformers' token (teacher forcing, so every step
//     is compared even after a difference) and atom's sampled id must be transformers' unless
//     the two tokens' logits are within the near-tie threshold, in transformers' logits or in
//     atom's; each such step is printed ("near-tie at step s: gap g");
//   * tiny models: the CPU ModelRunner's greedy tokens equal the CUDA runner's (same near-tie
//     rule) and its prefill logits are within tolerance of transformers'.
// The data directory (ATOM_HF_PARITY_DIR, a CMake cache path) is written by the ctest fixture
// hf_parity_reference; missing data fails the test with the command that makes it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "atom/backends/cuda/nccl_comm.h"
#include "atom/core/error.h"
#include "atom/io/hf_config.h"
#include "atom/backends/cpu/quants.h"
#include "atom/models/decoder.h"
#include "atom/models/model.h"
#include "atom/runner/cuda/cuda_model_runner.h"
#include "atom/runner/model_runner.h"
#include "atom/runner/sampler.h"
#include "cuda/cuda_test_util.h"
#include "cuda/tiny_decoder.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using cuda::test::cpu_last_logits;
using nlohmann::json;

// What the reference holds for one greedy step (hf_reference.py writes it).
struct RefStep {
  int32_t token = 0;  // transformers' argmax
  double gap = 0;     // its top1 - top2 logit
  double rms = 0;     // RMS of the step's logits row
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_logits;
};

struct RefPrompt {
  std::vector<int32_t> prompt;
  std::vector<RefStep> steps;
  std::vector<float> prefill;  // [vocab] logits of the last prompt position
  std::vector<float> exact;       // [vocab] the same from the model cast to f32
  std::vector<float> last_exact;  // [vocab] the last step's, likewise
  std::vector<float> last;     // [vocab] logits of the last step
};

struct Reference {
  std::string dir;
  json meta;
  int64_t vocab = 0;
  std::vector<RefPrompt> prompts;
};

std::string fixture_hint() {
  return fmt::format("make it with `python3 scripts/hf_reference.py {}` on a GPU host (ctest "
                     "runs that as the fixture hf_parity_reference of `ctest -L gpu`)",
                     ATOM_HF_PARITY_DIR);
}

std::vector<float> read_f32(const fs::path& path, int64_t n) {
  ATOM_CHECK(fs::exists(path), kNotFound, "HF parity data missing: {}; {}", path.string(),
             fixture_hint());
  ATOM_CHECK(fs::file_size(path) == size_t(n) * sizeof(float), kCorrupt,
             "{}: {} bytes, expected {} f32 logits", path.string(), fs::file_size(path), n);
  std::vector<float> v(static_cast<size_t>(n));
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * sizeof(float)));
  ATOM_CHECK(bool(in), kIo, "{}: read failed", path.string());
  return v;
}

// Throws atom::Error naming the missing or malformed file.
Reference load_reference(const std::string& name) {
  Reference r;
  r.dir = std::string(ATOM_HF_PARITY_DIR) + "/" + name;
  const fs::path path = fs::path(r.dir) / "reference.json";
  ATOM_CHECK(fs::exists(path), kNotFound, "HF parity data missing: {}; {}", path.string(),
             fixture_hint());
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  r.meta = json::parse(ss.str());
  r.vocab = r.meta.at("config").at("vocab_size").get<int64_t>();
  const int64_t new_tokens = r.meta.at("new_tokens").get<int64_t>();
  for (const json& p : r.meta.at("prompts")) {
    RefPrompt& rp = r.prompts.emplace_back();
    rp.prompt = p.at("prompt").get<std::vector<int32_t>>();
    const auto tokens = p.at("tokens").get<std::vector<int32_t>>();
    ATOM_CHECK(!rp.prompt.empty() && int64_t(tokens.size()) == new_tokens, kCorrupt,
               "{}: a prompt of {} tokens with {} greedy tokens", path.string(),
               rp.prompt.size(), tokens.size());
    for (size_t s = 0; s < tokens.size(); ++s) {
      RefStep& st = rp.steps.emplace_back();
      st.token = tokens[s];
      st.gap = p.at("gaps").at(s).get<double>();
      st.rms = p.at("rms").at(s).get<double>();
      st.topk_ids = p.at("topk_ids").at(s).get<std::vector<int32_t>>();
      st.topk_logits = p.at("topk_logits").at(s).get<std::vector<float>>();
      ATOM_CHECK(!st.topk_ids.empty() && st.topk_ids[0] == st.token &&
                     st.topk_ids.size() == st.topk_logits.size(),
                 kCorrupt, "{}: step {} top-k does not start with the greedy token",
                 path.string(), s);
    }
    rp.prefill = read_f32(fs::path(r.dir) / p.at("prefill_logits").get<std::string>(), r.vocab);
    rp.last = read_f32(fs::path(r.dir) / p.at("last_logits").get<std::string>(), r.vocab);
    rp.exact =
        read_f32(fs::path(r.dir) / p.at("prefill_f32_logits").get<std::string>(), r.vocab);
    rp.last_exact =
        read_f32(fs::path(r.dir) / p.at("last_f32_logits").get<std::string>(), r.vocab);
  }
  ATOM_CHECK(!r.prompts.empty(), kCorrupt, "{}: no prompts", path.string());
  return r;
}

// Tolerances, in units of the row's RMS (logits are ~N(0, RMS^2) with log-normal row scales).
// Yardstick: n, transformers' own bf16 error, max |bf16 - f32| / RMS over the prefill rows and
// the last greedy steps' rows, the f32 logits coming from the same model cast to f32 (exact
// arithmetic on the same weights);
// hf_reference.py measures it in the same run. Every bf16 rounding is 2^-9 relative, a logit is
// a dot product collecting thousands of them, and the rows with the largest norms collect the
// most: n is ~0.1-0.2 for these random models, ten times the mean error. atom on CUDA runs in
// bf16 too but rounds at other places (f32 inside its fused kernels) and reduces in another
// order, so it is held to:
//   |atom - exact| <= 2n (no more than twice transformers' own error), hence by the triangle
//   inequality |atom - transformers| <= 3n, both checked on the prefill rows and on the last
//   greedy step (the decode path at the longest context).
// A wrong position, mask, head, norm weight or rope frequency moves logits by about their RMS.
// n is floored at 1% so an unusually accurate reference cannot make the test flaky.
//
// Near-tie threshold: when two sides' logits are within e1 and e2 of exact, two tokens can
// swap order between them only if their logits are within 2 (e1 + e2) in either side's row:
// 6n for transformers (n) against atom's CUDA runner (2n), 2 (2n + kCpuTol) for the CPU runner
// against the CUDA runner. n is a maximum over the whole row, though, and a logit's error is
// the LM-head row's dot product with the error of the final hidden state, so it scales with
// that row's norm: the rows with the largest norms set n (the reference scales head rows
// log-normally, ~9x between the median and the largest of 128k rows). A token's share of the
// bound is therefore n x |w_t| / max |w|, and a differing greedy token (a, b) is accepted only
// when its gap is within the threshold x max(|w_a|, |w_b|) / max |w|, and reported.
constexpr double kMinBf16Error = 0.01;
// The CPU runner computes in f32 on the bf16 weights: against the f32 reference only the
// summation order differs (measured < 1e-4 x RMS on the tiny models); 0.2% leaves room for
// other SIMD widths and still catches any real mistake.
constexpr double kCpuTol = 0.002;

struct ModelCase {
  const char* name;
  bool run_cpu;  // the CPU runner as well (tiny models; the 8B would take minutes per token)
};

constexpr ModelCase kModels[] = {
    {"llama-tiny", true},
    {"qwen3-tiny", true},
    {"llama-8b", false},
};

constexpr int64_t kBlockSize = 16;
constexpr int64_t kMaxModelLen = 256;  // longest context here: 128 + 31 tokens
constexpr int64_t kBlocksPerSeq = kMaxModelLen / kBlockSize;
// Three sequences live at once: prefill logits, the greedy run, a recomputation at a difference.
enum Role : int32_t { kPrefillSeq = 0, kGreedySeq = 1, kScratchSeq = 2, kNumRoles = 3 };

// The blocks of one role, interleaved with the others' and in descending order, so a block table
// that is not the identity is exercised.
std::vector<int32_t> block_table(Role role) {
  std::vector<int32_t> t;
  for (int64_t j = 0; j < kBlocksPerSeq; ++j)
    t.push_back(int32_t(role + kNumRoles * (kBlocksPerSeq - 1 - j)));
  return t;
}

double row_rms(const std::vector<float>& row) {
  return cuda::test::row_rms(row.data(), int64_t(row.size()));
}

// max |got - want| over the row, in units of want's RMS; `where` gets its index.
double worst_rel_error(const std::vector<float>& got, const std::vector<float>& want,
                       int64_t* where) {
  EXPECT_EQ(got.size(), want.size());
  const double rms = row_rms(want);
  EXPECT_GT(rms, 0.1) << "degenerate reference logits";
  double worst = 0;
  for (size_t v = 0; v < std::min(got.size(), want.size()); ++v) {
    const double e = std::isfinite(got[v]) ? std::abs(double(got[v]) - want[v]) / rms : INFINITY;
    if (e > worst || (std::isinf(e) && !std::isinf(worst))) {
      worst = e;
      *where = int64_t(v);
    }
  }
  return worst;
}

// A logits row as far as it is known: a full row, or the reference's top-k.
struct LogitView {
  std::vector<float> row;        // full row, or empty
  const RefStep* ref = nullptr;  // top-k only
  double rms = 0;

  static LogitView full(std::vector<float> r) {
    LogitView v;
    v.rms = row_rms(r);
    v.row = std::move(r);
    return v;
  }
  static LogitView top_k(const RefStep& s) {
    LogitView v;
    v.ref = &s;
    v.rms = s.rms;
    return v;
  }
  std::optional<double> score(int32_t t) const {
    if (ref == nullptr) {
      if (t < 0 || size_t(t) >= row.size()) return std::nullopt;
      return row[size_t(t)];
    }
    for (size_t i = 0; i < ref->topk_ids.size(); ++i)
      if (ref->topk_ids[i] == t) return ref->topk_logits[i];
    return std::nullopt;  // below the top-k: far from the top
  }
};

struct TokenTally {
  int64_t equal = 0;       // steps with the same token
  int64_t total = 0;       // steps compared
  int64_t free_run = 0;    // steps equal before each prompt's first difference (what a
                           // free-running greedy comparison would match)
  int64_t near_ties = 0;   // differences accepted as near-ties
  std::vector<std::string> notes;
};

// Compares `got` with `want` step by step. At a difference, `want_view(s)` and `got_view(s)` give
// both sides' logits at that step (computed only then); the difference passes when the two
// tokens' logits are within near_tie x RMS in either view, and fails the test otherwise.
void compare_tokens(const std::string& label, size_t prompt_index,
                    const std::vector<int32_t>& want, const std::vector<int32_t>& got,
                    const std::function<double(int32_t, int32_t)>& near_tie,
                    const std::function<LogitView(size_t)>& want_view,
                    const std::function<LogitView(size_t)>& got_view, TokenTally& tally) {
  ASSERT_EQ(got.size(), want.size()) << label;
  bool diverged = false;
  for (size_t s = 0; s < want.size(); ++s) {
    ++tally.total;
    if (got[s] == want[s]) {
      ++tally.equal;
      if (!diverged) ++tally.free_run;
      continue;
    }
    diverged = true;
    std::optional<double> best_gap;
    double threshold = 0;
    std::string seen;
    const std::pair<const char*, LogitView> views[] = {{"want", want_view(s)},
                                                       {"got", got_view(s)}};
    for (const auto& [side, view] : views) {
      const std::optional<double> a = view.score(want[s]), b = view.score(got[s]);
      const double thr = near_tie(want[s], got[s]) * view.rms;
      if (a && b) {
        const double gap = std::abs(*a - *b);
        seen += fmt::format(" {} logits: {:.4f} vs {:.4f} (gap {:.4f}, threshold {:.4f});", side,
                            *a, *b, gap, thr);
        if (gap <= thr && (!best_gap || gap < *best_gap)) {
          best_gap = gap;
          threshold = thr;
        }
      } else {
        seen += fmt::format(" {} logits: token {} not in its top-k;", side, a ? got[s] : want[s]);
      }
    }
    if (best_gap) {
      ++tally.near_ties;
      tally.notes.push_back(fmt::format("{} prompt {}: near-tie at step {}: gap {:.4f} "
                                        "(threshold {:.4f}), token {} instead of {}",
                                        label, prompt_index, s, *best_gap, threshold, got[s],
                                        want[s]));
      std::printf("[hf parity] %s\n", tally.notes.back().c_str());
    } else {
      ADD_FAILURE() << label << " prompt " << prompt_index << " step " << s << ": token "
                    << got[s] << " instead of " << want[s] << " without a near-tie:" << seen;
    }
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One sequence through `runner`: the prompt's prefill, then decode steps whose inputs are the
// reference's tokens; the id the runner sampled at every step. With `last_logits` (the CUDA
// runner only), the last step runs through forward_logits instead and its row is kept there.
std::vector<int32_t> teacher_forced(Runner& runner, int64_t seq_id, const RefPrompt& p,
                                    const SamplingParams& greedy,
                                    std::vector<float>* last_logits) {
  const std::vector<int32_t> table = block_table(kGreedySeq);
  std::vector<int32_t> ctx = p.prompt, out;
  const int64_t n_prompt = int64_t(p.prompt.size());
  for (size_t s = 0; s < p.steps.size(); ++s) {
    const int64_t len = int64_t(ctx.size()), start = s == 0 ? 0 : len - 1;
    const StepSeq q{seq_id, ctx, n_prompt, start, len - start, table, true, &greedy};
    const std::span<const StepSeq> step(&q, 1);
    if (last_logits != nullptr && s + 1 == p.steps.size()) {
      auto* cuda = dynamic_cast<CudaModelRunner*>(&runner);
      ATOM_ASSERT(cuda != nullptr);
      *last_logits = cuda->forward_logits(step);
      out.push_back(argmax(last_logits->data(), int64_t(last_logits->size())));
    } else {
      const std::vector<int32_t> ids = runner.execute(step);
      EXPECT_EQ(ids.size(), 1u);
      out.push_back(ids.empty() ? -1 : ids[0]);
    }
    ctx.push_back(p.steps[s].token);
  }
  runner.release(seq_id);
  return out;
}

// The context of greedy step s: the prompt and the reference's first s tokens.
std::vector<int32_t> context_at(const RefPrompt& p, size_t s) {
  std::vector<int32_t> ctx = p.prompt;
  for (size_t i = 0; i < s; ++i) ctx.push_back(p.steps[i].token);
  return ctx;
}

// One checkpoint as atom loads it, with what the tolerances need.
struct Loaded {
  Reference ref;
  ModelConfig cfg;
  std::unique_ptr<Model> model;
  std::vector<double> head_share;  // |w_t| of every LM-head row over the largest
  double n = 0;                    // the yardstick (see kMinBf16Error)
  double load_s = 0;               // config + safetensors
};

// Loads `name`'s reference and checkpoint into `m`; the config atom reads back must be the one
// transformers ran. Failures are gtest failures (fatal ones end the caller: check
// HasFatalFailure()).
void load_checked(const std::string& name, Loaded& m) {
  try {
    m.ref = load_reference(name);
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  const Reference& ref = m.ref;
  const auto t_load = std::chrono::steady_clock::now();
  m.cfg = load_hf_config(ref.dir);
  const ModelConfig& cfg = m.cfg;
  const json& want = ref.meta.at("config");
  EXPECT_EQ(cfg.architecture, want.at("architecture").get<std::string>());
  EXPECT_EQ(cfg.vocab_size, want.at("vocab_size").get<int64_t>());
  EXPECT_EQ(cfg.hidden_size, want.at("hidden_size").get<int64_t>());
  EXPECT_EQ(cfg.intermediate_size, want.at("intermediate_size").get<int64_t>());
  EXPECT_EQ(cfg.num_hidden_layers, want.at("num_hidden_layers").get<int64_t>());
  EXPECT_EQ(cfg.num_attention_heads, want.at("num_attention_heads").get<int64_t>());
  EXPECT_EQ(cfg.num_key_value_heads, want.at("num_key_value_heads").get<int64_t>());
  EXPECT_EQ(cfg.head_dim, want.at("head_dim").get<int64_t>());
  EXPECT_EQ(cfg.max_position_embeddings, want.at("max_position_embeddings").get<int64_t>());
  EXPECT_EQ(cfg.tie_word_embeddings, want.at("tie_word_embeddings").get<bool>());
  EXPECT_DOUBLE_EQ(cfg.rope_theta, want.at("rope_theta").get<double>());
  EXPECT_DOUBLE_EQ(cfg.rms_norm_eps, want.at("rms_norm_eps").get<double>());
  if (want.contains("rope_scaling")) {
    const json& rs = want.at("rope_scaling");
    EXPECT_EQ(cfg.rope_scaling.type, rs.at("rope_type").get<std::string>());
    EXPECT_DOUBLE_EQ(cfg.rope_scaling.factor, rs.at("factor").get<double>());
    EXPECT_DOUBLE_EQ(cfg.rope_scaling.low_freq_factor, rs.at("low_freq_factor").get<double>());
    EXPECT_DOUBLE_EQ(cfg.rope_scaling.high_freq_factor, rs.at("high_freq_factor").get<double>());
    EXPECT_EQ(cfg.rope_scaling.original_max_position_embeddings,
              rs.at("original_max_position_embeddings").get<int64_t>());
  } else {
    EXPECT_EQ(cfg.rope_scaling.type, "default");
  }
  ASSERT_EQ(cfg.vocab_size, ref.vocab);

  m.model = load_model_from_hf(ref.dir, cfg, LoadFormat::kAuto);
  m.load_s = seconds_since(t_load);
  m.head_share.assign(size_t(cfg.vocab_size), 0.0);
  const DecoderParts parts = decoder_parts(*m.model);
  ASSERT_NE(parts.weights, nullptr);
  const cpu::QMatrix& w = parts.weights->lm_head;
  std::vector<float> row(size_t(w.cols));
  double max_norm = 0;
  for (int64_t r = 0; r < w.rows; ++r) {
    cpu::dequantize_row(w.type, w.row(r), row.data(), w.cols);
    double ss = 0;
    for (float x : row) ss += double(x) * x;
    m.head_share[size_t(r)] = std::sqrt(ss);
    max_norm = std::max(max_norm, m.head_share[size_t(r)]);
  }
  ASSERT_GT(max_norm, 0.0);
  for (double& x : m.head_share) x /= max_norm;
  m.n = std::max(ref.meta.at("bf16_error").get<double>(), kMinBf16Error);
}

// A near-tie threshold for a pair of tokens: `bound` x the larger of their head-row shares.
std::function<double(int32_t, int32_t)> scaled(const std::vector<double>& head_share,
                                               double bound) {
  return [&head_share, bound](int32_t a, int32_t b) {
    const auto share = [&](int32_t t) {
      return t >= 0 && size_t(t) < head_share.size() ? head_share[size_t(t)] : 1.0;
    };
    return bound * std::max(share(a), share(b));
  };
}

// The CUDA runner's configuration for these tests: three roles' blocks, contexts up to 256.
CudaRunnerConfig parity_config() {
  CudaRunnerConfig rc;
  rc.num_blocks = kNumRoles * kBlocksPerSeq;
  rc.block_size = kBlockSize;
  rc.max_num_batched_tokens = kMaxModelLen;
  rc.max_num_seqs = 4;
  rc.max_model_len = kMaxModelLen;
  return rc;
}

// A CUDA runner's logits of a context's last position, each on a fresh sequence, and fresh
// sequence ids for teacher_forced().
class GpuLogits {
 public:
  GpuLogits(CudaModelRunner& runner, const SamplingParams& greedy)
      : runner_(runner), greedy_(greedy) {}
  std::vector<float> operator()(const std::vector<int32_t>& ctx, Role role) {
    const std::vector<int32_t> table = block_table(role);
    const int64_t id = next_id_++, n = int64_t(ctx.size());
    const StepSeq q{id, ctx, n, 0, n, table, true, &greedy_};
    std::vector<float> logits = runner_.forward_logits(std::span<const StepSeq>(&q, 1));
    runner_.release(id);
    return logits;
  }
  int64_t fresh_id() { return next_id_++; }

 private:
  CudaModelRunner& runner_;
  const SamplingParams& greedy_;
  int64_t next_id_ = 1;
};

// Worst relative error over the prompts, and where.
struct Worst {
  double value = 0;
  std::string at;
  void add(double e, size_t prompt, int64_t logit) {
    if (e < value) return;
    value = e;
    at = fmt::format("prompt {} logit {}", prompt, logit);
  }
};

SamplingParams greedy_params() {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.ignore_eos = true;
  return greedy;
}

// gtest's name of a model case: "llama_8b".
std::string case_name(const ::testing::TestParamInfo<ModelCase>& info) {
  std::string n = info.param.name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class HfParity : public ::testing::TestWithParam<ModelCase> {};

TEST_P(HfParity, MatchesTransformers) {
  const ModelCase mc = GetParam();
  if (!cuda::test::gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  Loaded m;
  load_checked(mc.name, m);
  if (HasFatalFailure()) return;
  const Reference& ref = m.ref;
  const std::vector<double>& head_share = m.head_share;
  const std::string label = mc.name;
  std::vector<std::string> report;
  const double load_s = m.load_s;

  const auto t_upload = std::chrono::steady_clock::now();
  CudaModelRunner gpu(*m.model, parity_config());
  const double upload_s = seconds_since(t_upload);
  const SamplingParams greedy = greedy_params();
  GpuLogits gpu_logits(gpu, greedy);

  // The yardstick n (see kMinBf16Error) and what follows from it.
  const double n = m.n;
  const double tol_exact = 2 * n, tol_hf = 3 * n, near_tie = 6 * n;
  const auto t_run = std::chrono::steady_clock::now();
  Worst vs_exact, vs_hf, last_vs_exact, last_vs_hf;
  TokenTally hf_tally;
  std::vector<std::vector<int32_t>> gpu_tokens;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    const RefPrompt& p = ref.prompts[i];
    int64_t where = 0;
    const std::vector<float> prefill = gpu_logits(p.prompt, kPrefillSeq);
    vs_exact.add(worst_rel_error(prefill, p.exact, &where), i, where);
    vs_hf.add(worst_rel_error(prefill, p.prefill, &where), i, where);
    std::vector<float> last;
    gpu_tokens.push_back(teacher_forced(gpu, gpu_logits.fresh_id(), p, greedy, &last));
    last_vs_exact.add(worst_rel_error(last, p.last_exact, &where), i, where);
    last_vs_hf.add(worst_rel_error(last, p.last, &where), i, where);
    std::vector<int32_t> want;
    for (const RefStep& s : p.steps) want.push_back(s.token);
    compare_tokens(
        label + " cuda vs transformers", i, want, gpu_tokens.back(), scaled(head_share, near_tie),
        [&](size_t s) { return LogitView::top_k(p.steps[s]); },
        [&](size_t s) { return LogitView::full(gpu_logits(context_at(p, s), kScratchSeq)); },
        hf_tally);
  }
  const double run_s = seconds_since(t_run);
  EXPECT_LE(vs_exact.value, tol_exact) << "prefill logits against f32 at " << vs_exact.at;
  EXPECT_LE(vs_hf.value, tol_hf) << "prefill logits against transformers at " << vs_hf.at;
  EXPECT_LE(last_vs_exact.value, tol_exact) << "last-step logits against f32 at "
                                           << last_vs_exact.at;
  EXPECT_LE(last_vs_hf.value, tol_hf) << "last-step logits against transformers at "
                                      << last_vs_hf.at;
  report.push_back(fmt::format(
      "[hf parity {}] cuda prefill logits: worst |atom - f32| = {:.4f} x RMS (tol 2n = {:.4f}; "
      "transformers bf16 itself: n = {:.4f}), worst |atom - transformers| = {:.4f} (tol 3n = "
      "{:.4f}) at {}; last decode step: {:.4f} against f32, {:.4f} against transformers at {}",
      label, vs_exact.value, tol_exact, ref.meta.at("bf16_error").get<double>(), vs_hf.value,
      tol_hf, vs_hf.at, last_vs_exact.value, last_vs_hf.value, last_vs_hf.at));
  report.push_back(fmt::format(
      "[hf parity {}] cuda greedy tokens equal to transformers' {} of {} (teacher-forced), {} "
      "before each prompt's first difference; near-ties {} (threshold 6n = {:.3f} x RMS x the tokens' head-row share)",
      label, hf_tally.equal, hf_tally.total, hf_tally.free_run, hf_tally.near_ties, near_tie));
  for (const std::string& note : hf_tally.notes) report.push_back("  " + note);
  report.push_back(fmt::format(
      "[hf parity {}] reference median top1-top2 gap {:.3f} (logit RMS {:.2f}); atom load {:.1f} "
      "s (config + safetensors), CUDA runner start {:.1f} s, {} prompts x {} steps {:.1f} s; "
      "transformers build {:.1f} s, save {:.1f} s, reference {:.1f} s ({})",
      label, ref.meta.at("median_gap").get<double>(), ref.meta.at("logit_rms").get<double>(),
      load_s, upload_s, ref.prompts.size(), ref.prompts[0].steps.size(), run_s,
      ref.meta.at("timings_s").at("build").get<double>(),
      ref.meta.at("timings_s").at("save").get<double>(),
      ref.meta.at("timings_s").at("reference").get<double>(),
      ref.meta.at("gpu").get<std::string>()));
  // Most steps must match outright: near-ties are the exception.
  EXPECT_GE(hf_tally.equal, hf_tally.total * 3 / 4) << "too many near-ties to trust";

  if (mc.run_cpu) {
    // The CPU runner on the same checkpoint: prefill logits against the f32 reference, greedy
    // tokens (same teacher-forced inputs) against the CUDA runner's.
    ModelRunner cpu(*m.model, kNumRoles * kBlocksPerSeq, kBlockSize);
    Worst cpu_exact;
    TokenTally cpu_tally;
    const double cpu_near_tie = 2 * (tol_exact + kCpuTol);
    for (size_t i = 0; i < ref.prompts.size(); ++i) {
      const RefPrompt& p = ref.prompts[i];
      int64_t where = 0;
      cpu_exact.add(worst_rel_error(cpu_last_logits(*m.model, p.prompt), p.exact, &where), i,
                    where);
      const std::vector<int32_t> got = teacher_forced(cpu, int64_t(1000 + i), p, greedy, nullptr);
      compare_tokens(
          label + " cpu vs cuda", i, gpu_tokens[i], got, scaled(head_share, cpu_near_tie),
          [&](size_t s) { return LogitView::full(gpu_logits(context_at(p, s), kScratchSeq)); },
          [&](size_t s) { return LogitView::full(cpu_last_logits(*m.model, context_at(p, s))); },
          cpu_tally);
    }
    EXPECT_LE(cpu_exact.value, kCpuTol) << "CPU prefill logits against f32 at " << cpu_exact.at;
    report.push_back(fmt::format(
        "[hf parity {}] cpu prefill logits: worst |atom cpu - f32| = {:.5f} x RMS (tol {:.3f}); "
        "greedy tokens equal to cuda's {} of {}, near-ties {} (threshold {:.3f} x RMS x head-row "
        "share)",
        label, cpu_exact.value, kCpuTol, cpu_tally.equal, cpu_tally.total, cpu_tally.near_ties,
        cpu_near_tie));
    for (const std::string& note : cpu_tally.notes) report.push_back("  " + note);
  }

  // Printed, and kept beside the data for scripts/gpu-check.sh (ctest keeps passing output
  // quiet).
  std::ofstream out(fs::path(ref.dir) / "parity.txt", std::ios::trunc);
  for (const std::string& line : report) {
    std::printf("%s\n", line.c_str());
    out << line << "\n";
  }
  if (HasFailure()) out << "[hf parity " << label << "] FAILED\n";
}

INSTANTIATE_TEST_SUITE_P(Models, HfParity, ::testing::ValuesIn(kModels), case_name);

// Tensor parallelism on the same checkpoints: -tp 2 and -tp 4 (as many ranks as GPUs are
// visible), each with and without the fused all-reduce + RMSNorm
// (ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION) and eagerly and from CUDA graphs, against one GPU on
// the same teacher-forced inputs:
//   * prefill and last-step logits within 2n of the f32 reference, as one GPU is held to;
//   * every greedy token equal to one GPU's, unless the two tokens' logits are within
//     2 (2n + 2n) = 8n (x the head-row share) in either runner's row: a near-tie, reported;
//   * graphs actually replayed (or, eagerly, none did).
// A wrong shard, a missing or doubled all-reduce or a misplaced vocabulary column moves logits
// by about their RMS, far beyond 2n.
class HfParityTp : public ::testing::TestWithParam<ModelCase> {};

TEST_P(HfParityTp, MatchesOneGpu) {
  const ModelCase mc = GetParam();
  const int visible = cuda_device_count();
  if (visible < 2) GTEST_SKIP() << "needs 2 GPUs, " << visible << " visible";
  if (!cuda::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
  Loaded m;
  load_checked(mc.name, m);
  if (HasFatalFailure()) return;
  const Reference& ref = m.ref;
  const SamplingParams greedy = greedy_params();
  const double tol_exact = 2 * m.n, near_tie = 8 * m.n;
  std::vector<std::string> report;

  // One GPU, from graphs: the tokens every layout must give.
  CudaModelRunner one(*m.model, parity_config());
  GpuLogits one_logits(one, greedy);
  std::vector<std::vector<int32_t>> want;
  for (const RefPrompt& p : ref.prompts)
    want.push_back(teacher_forced(one, one_logits.fresh_id(), p, greedy, nullptr));

  for (const int64_t tp : {int64_t(2), int64_t(4)}) {
    if (tp > visible) {
      report.push_back(fmt::format("[hf parity tp {}] -tp {} not run: {} GPUs visible", mc.name,
                                   tp, visible));
      continue;
    }
    for (const bool fuse : {true, false}) {
      for (const bool eager : {false, true}) {
        const std::string label = fmt::format("{} -tp {} {} {}", mc.name, tp,
                                              fuse ? "fused" : "unfused",
                                              eager ? "eager" : "graphs");
        SCOPED_TRACE(label);
        CudaRunnerConfig rc = parity_config();
        rc.tp_size = tp;
        rc.allreduce_rms_norm_fusion = fuse;
        rc.enforce_eager = eager;
        const auto t_start = std::chrono::steady_clock::now();
        CudaModelRunner r(*m.model, rc);
        const double start_s = seconds_since(t_start);
        ASSERT_EQ(r.tp_size(), tp);
        GpuLogits logits(r, greedy);
        Worst prefill, last;
        TokenTally tally;
        for (size_t i = 0; i < ref.prompts.size(); ++i) {
          const RefPrompt& p = ref.prompts[i];
          int64_t where = 0;
          prefill.add(worst_rel_error(logits(p.prompt, kPrefillSeq), p.exact, &where), i, where);
          std::vector<float> last_row;
          const std::vector<int32_t> got =
              teacher_forced(r, logits.fresh_id(), p, greedy, &last_row);
          last.add(worst_rel_error(last_row, p.last_exact, &where), i, where);
          compare_tokens(
              label + " vs -tp 1", i, want[i], got, scaled(m.head_share, near_tie),
              [&](size_t s) { return LogitView::full(one_logits(context_at(p, s), kScratchSeq)); },
              [&](size_t s) { return LogitView::full(logits(context_at(p, s), kScratchSeq)); },
              tally);
        }
        EXPECT_LE(prefill.value, tol_exact) << "prefill logits against f32 at " << prefill.at;
        EXPECT_LE(last.value, tol_exact) << "last-step logits against f32 at " << last.at;
        EXPECT_GE(tally.equal, tally.total * 3 / 4) << "too many near-ties to trust";
        if (eager) {
          EXPECT_EQ(r.num_graph_steps(), 0);
        } else {
          EXPECT_GT(r.num_graph_steps(), 0) << "no step replayed a graph";
        }
        report.push_back(fmt::format(
            "[hf parity tp] {}: greedy tokens equal to -tp 1's {} of {} (teacher-forced), near-ties "
            "{} (threshold 8n = {:.3f}); worst |atom - f32| prefill {:.4f}, last step {:.4f} x RMS "
            "(tol 2n = {:.4f}); runner start {:.1f} s, graph steps {}",
            label, tally.equal, tally.total, tally.near_ties, near_tie, prefill.value, last.value,
            tol_exact, start_s, r.num_graph_steps()));
        for (const std::string& note : tally.notes) report.push_back("  " + note);
      }
    }
  }
  std::ofstream out(fs::path(ref.dir) / "parity_tp.txt", std::ios::trunc);
  for (const std::string& line : report) {
    std::printf("%s\n", line.c_str());
    out << line << "\n";
  }
  if (HasFailure()) out << "[hf parity tp " << mc.name << "] FAILED\n";
}

INSTANTIATE_TEST_SUITE_P(Models, HfParityTp, ::testing::ValuesIn(kModels), case_name);

}  // namespace
}  // namespace atom

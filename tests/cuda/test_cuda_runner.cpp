// CudaModelRunner against the CPU runner on tiny random-weight Llama and Qwen3 models (bf16
// weights, so both backends see the same numbers): logits of prefill and decode steps, greedy
// tokens through LLMEngine (chunked prefill, a prefix-cache hit, deferred output), and
// submit/collect against execute, sampled and penalised requests included; CUDA graph replay
// against eager steps; GPU sampling against the CPU engine; the KV pool's memory budget.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "atom/core/dtype.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/engine/llm_engine.h"
#include "atom/models/decoder.h"
#include "atom/runner/cuda/cuda_model_runner.h"
#include "atom/runner/model_runner.h"
#include "atom/tokenizer/tokenizer.h"
#include "cuda_test_util.h"
#include "tiny_decoder.h"

namespace atom {
namespace {

using cuda::test::cpu_last_logits;
using cuda::test::gpu_visible;
using cuda::test::make_tiny;
using cuda::test::random_tokens;
using cuda::test::row_rms;
using cuda::test::top2_gap;

// The tolerance on a logit, per row: bf16 activations round to 2^-9 relative at each of the
// ~10 roundings per layer (norm outputs, GEMM outputs, q/k after RoPE, attention output,
// SiLU product, residual adds), and the errors of a 256-wide dot product add up like a random
// walk, so after 2 layers and the LM head a logit is off by ~1% of the row's RMS; 6% leaves
// room for the worst of thousands of logits while a wrong mask, position or head would be off
// by the size of the logits themselves.
constexpr double kRelTol = 0.06;

class CudaRunner : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
    model_ = make_tiny(GetParam());
  }
  CudaRunnerConfig runner_config(int64_t num_blocks) const {
    CudaRunnerConfig rc;
    rc.num_blocks = num_blocks;
    rc.block_size = 16;
    rc.max_num_batched_tokens = 512;
    rc.max_num_seqs = 16;
    rc.max_model_len = 512;
    return rc;
  }
  std::unique_ptr<Model> model_;
};

// Three sequences prefilled together (lengths across block boundaries, scattered block tables),
// then decode steps fed with the CPU's greedy tokens: every logit of every step within tolerance.
TEST_P(CudaRunner, LogitsOfPrefillAndDecodeMatchTheCpu) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 48, bs = 16;
  ModelRunner cpu_runner(*model_, kBlocks, bs);
  KvCache kv(model_->config().num_hidden_layers, kBlocks, bs, model_->config().num_key_value_heads,
             model_->config().head_dim);
  CudaModelRunner gpu(*model_, runner_config(kBlocks));
  const std::vector<size_t> lens = {37, 5, 70};
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> tables;
  for (size_t i = 0; i < lens.size(); ++i) {
    tokens.push_back(random_tokens(lens[i], vocab, 10 + i));
    std::vector<int32_t> t;
    for (int32_t j = 0; j < 12; ++j) t.push_back(int32_t(i) + 3 * (11 - j));  // scattered
    tables.push_back(t);
  }
  double worst = 0;  // max |gpu - cpu| / rms(cpu row)
  int64_t rows = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < lens.size(); ++i) {
      const int64_t n = int64_t(tokens[i].size());
      const int64_t start = step == 0 ? 0 : n - 1;
      seqs.push_back(
          StepSeq{int64_t(i), tokens[i], int64_t(lens[i]), start, n - start, tables[i], true});
    }
    std::vector<float> ref;
    model_->forward(cpu_runner.plan(seqs), kv, ref);
    const std::vector<float> got = gpu.forward_logits(seqs);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < lens.size(); ++i) {
      const float* r = ref.data() + i * size_t(vocab);
      const float* g = got.data() + i * size_t(vocab);
      const double rms = row_rms(r, vocab);
      ASSERT_GT(rms, 0.1) << "degenerate logits";
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_TRUE(std::isfinite(g[v])) << "step " << step << " seq " << i << " logit " << v;
        worst = std::max(worst, std::abs(double(g[v]) - r[v]) / rms);
      }
      ++rows;
      tokens[i].push_back(argmax(r, vocab));
    }
  }
  std::printf("[cuda runner %s] %lld logit rows, worst |gpu - cpu| = %.4f x row RMS (tol %.2f)\n",
              GetParam() ? "qwen3" : "llama", (long long)rows, worst, kRelTol);
  EXPECT_LE(worst, kRelTol);
}

// The same steps through submit/collect with in-flight placeholders give execute's ids, for
// greedy (GPU argmax) and seeded, penalised (GPU sampler) requests in one batch.
TEST_P(CudaRunner, SubmitCollectEqualsExecute) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 32;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  SamplingParams sampled;
  sampled.temperature = 0.8f;
  sampled.seed = 7;
  sampled.repetition_penalty = 1.3f;
  sampled.presence_penalty = 0.5f;
  const std::vector<const SamplingParams*> params = {&greedy, &sampled, &greedy};
  const std::vector<size_t> lens = {20, 9, 33};
  std::vector<std::vector<int32_t>> tables(lens.size());
  for (size_t i = 0; i < lens.size(); ++i)
    for (int32_t j = 0; j < 4; ++j) tables[i].push_back(int32_t(i * 4) + j);
  constexpr int kSteps = 12;

  // Reference: execute, one step at a time.
  std::vector<std::vector<int32_t>> ref;
  {
    CudaModelRunner gpu(*model_, runner_config(kBlocks));
    for (size_t i = 0; i < lens.size(); ++i) ref.push_back(random_tokens(lens[i], vocab, 50 + i));
    for (int step = 0; step < kSteps; ++step) {
      std::vector<StepSeq> seqs;
      for (size_t i = 0; i < lens.size(); ++i) {
        const int64_t n = int64_t(ref[i].size()), start = step == 0 ? 0 : n - 1;
        seqs.push_back(StepSeq{int64_t(i), ref[i], int64_t(lens[i]), start, n - start, tables[i],
                               true, params[i]});
      }
      const std::vector<int32_t> ids = gpu.execute(seqs);
      ASSERT_EQ(ids.size(), lens.size());
      for (size_t i = 0; i < lens.size(); ++i) ref[i].push_back(ids[i]);
    }
  }
  // Deferred: step N+1 is submitted before N is collected, its input a placeholder (-1).
  CudaModelRunner gpu(*model_, runner_config(kBlocks));
  std::vector<std::vector<int32_t>> host;
  for (size_t i = 0; i < lens.size(); ++i) host.push_back(random_tokens(lens[i], vocab, 50 + i));
  auto submit = [&](int step) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < lens.size(); ++i) {
      const int64_t n = int64_t(host[i].size()), start = step == 0 ? 0 : n - 1;
      seqs.push_back(StepSeq{int64_t(i), host[i], int64_t(lens[i]), start, n - start, tables[i],
                             true, params[i], step > 0});
    }
    gpu.submit(seqs);
    for (size_t i = 0; i < lens.size(); ++i) host[i].push_back(-1);  // placeholder
  };
  auto collect = [&](int step) {
    const std::vector<int32_t> ids = gpu.collect();
    ASSERT_EQ(ids.size(), lens.size());
    for (size_t i = 0; i < lens.size(); ++i) host[i][lens[i] + size_t(step)] = ids[i];
  };
  submit(0);
  for (int step = 1; step < kSteps; ++step) {
    submit(step);
    EXPECT_EQ(gpu.num_in_flight(), 2);
    collect(step - 1);
  }
  collect(kSteps - 1);
  EXPECT_EQ(gpu.num_in_flight(), 0);
  for (size_t i = 0; i < lens.size(); ++i) EXPECT_EQ(host[i], ref[i]) << "sequence " << i;
  // A placeholder for a sequence no step sampled is an error, not a garbage input.
  std::vector<int32_t> fresh = {1, 2, -1};
  const std::vector<int32_t> table = {30};
  const StepSeq bad{99, fresh, 2, 2, 1, table, true, &greedy, true};
  EXPECT_THROW(gpu.submit(std::span<const StepSeq>(&bad, 1)), Error);
}

// Greedy outputs of a batch through LLMEngine (chunked prefill with a small token budget, a
// prefix-cache hit in a second batch, sync and deferred output) equal the CPU engine's token for
// token, unless the CPU's own logits show a near-tie at the first difference.
TEST_P(CudaRunner, GreedyEngineOutputsMatchTheCpuEngine) {
  const auto tok =
      Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny");
  const int64_t vocab = model_->config().vocab_size;
  const std::vector<size_t> lens = {10, 50, 100, 7, 33};
  std::vector<std::vector<int32_t>> first, second;
  for (size_t i = 0; i < lens.size(); ++i) first.push_back(random_tokens(lens[i], vocab, 70 + i));
  // Second batch: prompts that extend first-batch prompts (two full blocks cached) and a new one.
  second.push_back(first[2]);
  second.back().resize(40);
  for (int32_t t : random_tokens(9, vocab, 90)) second.back().push_back(t);
  second.push_back(first[1]);
  second.back().push_back(3);
  second.push_back(random_tokens(21, vocab, 91));
  SamplingParams p;
  p.temperature = 0.0f;
  p.ignore_eos = true;
  p.max_tokens = 24;

  auto run = [&](const std::string& device, bool async) {
    EngineConfig c;
    c.device = device;
    c.async_output = async;
    c.num_kv_blocks = 96;
    c.block_size = 16;
    c.enable_prefix_caching = true;
    c.scheduler.max_model_len = 256;
    c.scheduler.max_num_batched_tokens = 64;  // prompts of 100 prefill in chunks
    c.scheduler.max_num_seqs = 8;
    LLMEngine engine(*model_, *tok, c);
    std::vector<RequestOutput> out = engine.generate(first, {p});
    const std::vector<RequestOutput> more = engine.generate(second, {p});
    out.insert(out.end(), more.begin(), more.end());
    return out;
  };
  const std::vector<RequestOutput> cpu = run("cpu", false);
  std::vector<std::vector<int32_t>> prompts = first;
  prompts.insert(prompts.end(), second.begin(), second.end());
  for (const bool async : {false, true}) {
    const std::vector<RequestOutput> gpu = run("cuda", async);
    ASSERT_EQ(gpu.size(), cpu.size());
    int64_t matched = 0, total = 0, near_ties = 0, cached = 0;
    for (size_t r = 0; r < cpu.size(); ++r) {
      ASSERT_EQ(gpu[r].output_ids.size(), size_t(p.max_tokens));
      cached += gpu[r].num_cached_tokens;
      total += p.max_tokens;
      size_t k = 0;
      while (k < cpu[r].output_ids.size() && gpu[r].output_ids[k] == cpu[r].output_ids[k]) ++k;
      matched += int64_t(k);
      if (k == cpu[r].output_ids.size()) continue;
      // First difference: accepted only if the CPU's top two logits there are within tolerance.
      std::vector<int32_t> ctx = prompts[r];
      ctx.insert(ctx.end(), cpu[r].output_ids.begin(), cpu[r].output_ids.begin() + ptrdiff_t(k));
      const std::vector<float> logits = cpu_last_logits(*model_, ctx);
      const double gap = top2_gap(logits.data(), vocab);
      const double tol = 2 * kRelTol * row_rms(logits.data(), vocab);
      EXPECT_LT(gap, tol) << "request " << r << " differs at token " << k
                          << " without a near-tie (top-2 gap " << gap << ")";
      ++near_ties;
    }
    std::printf(
        "[cuda runner %s, %s output] greedy tokens equal to the CPU engine's: %lld of %lld "
        "(%lld requests stopped at a near-tie); prefix-cache hit: %lld tokens\n",
        GetParam() ? "qwen3" : "llama", async ? "deferred" : "sync", (long long)matched,
        (long long)total, (long long)near_ties, (long long)cached);
    EXPECT_GE(cached, 32) << "the second batch should reuse cached prefix blocks";
    EXPECT_GE(matched, total / 2) << "most tokens must match before any near-tie";
  }
}

// Decode steps replayed from CUDA graphs (batches padded up to a captured size) give the eager
// runner's logits; prefills, mixed steps and batches above the largest size run eagerly.
TEST_P(CudaRunner, GraphReplayEqualsEager) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 96;
  CudaRunnerConfig eager_cfg = runner_config(kBlocks);
  eager_cfg.enforce_eager = true;
  CudaRunnerConfig graph_cfg = runner_config(kBlocks);
  graph_cfg.cudagraph_capture_sizes = {1, 2, 4, 8, 64};  // 64 > max_num_seqs: dropped
  CudaModelRunner eager(*model_, eager_cfg);
  CudaModelRunner graphs(*model_, graph_cfg);
  EXPECT_TRUE(eager.graph_sizes().empty());
  EXPECT_EQ(graphs.graph_sizes(), (std::vector<int64_t>{1, 2, 4, 8}));

  // 12 sequences over scattered blocks; each step decodes the first `batch` of them.
  const size_t kSeqs = 12;
  std::vector<std::vector<int32_t>> tokens, tables;
  for (size_t i = 0; i < kSeqs; ++i) {
    tokens.push_back(random_tokens(3 + 9 * i, vocab, 300 + i));
    std::vector<int32_t> t;
    for (int32_t j = 0; j < 8; ++j) t.push_back(int32_t(kSeqs * size_t(j) + i));
    tables.push_back(t);
  }
  auto step_seqs = [&](size_t batch, bool prefill) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < batch; ++i) {
      const int64_t n = int64_t(tokens[i].size()), start = prefill ? 0 : n - 1;
      seqs.push_back(StepSeq{int64_t(i), tokens[i], n, start, n - start, tables[i], true});
    }
    return seqs;
  };
  // Prefill everything (eager on both; two steps, within max_num_batched_tokens), then decode
  // batches of several sizes.
  for (CudaModelRunner* r : {&eager, &graphs}) {
    const std::vector<StepSeq> all = step_seqs(kSeqs, true);
    (void)r->forward_logits(std::span(all).first(8));
    (void)r->forward_logits(std::span(all).subspan(8));
  }
  EXPECT_EQ(graphs.num_graph_steps(), 0);
  double worst = 0;
  int64_t expected_graph_steps = 0;
  for (const size_t batch : {size_t(1), size_t(3), size_t(8), size_t(5), size_t(12), size_t(2)}) {
    const std::vector<StepSeq> seqs = step_seqs(batch, false);
    const std::vector<float> want = eager.forward_logits(seqs);
    const std::vector<float> got = graphs.forward_logits(seqs);
    ASSERT_EQ(got.size(), want.size());
    if (batch <= 8) ++expected_graph_steps;
    EXPECT_EQ(graphs.num_graph_steps(), expected_graph_steps) << "batch " << batch;
    for (size_t i = 0; i < batch; ++i) {
      const float* w = want.data() + i * size_t(vocab);
      const float* g = got.data() + i * size_t(vocab);
      const double rms = row_rms(w, vocab);
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_TRUE(std::isfinite(g[v])) << "batch " << batch << " row " << i;
        worst = std::max(worst, std::abs(double(g[v]) - w[v]) / rms);
      }
      // Both runners wrote the same KV for this token: feed the same next token to both.
      tokens[i].push_back(argmax(w, vocab));
    }
  }
  // A mixed step (one prefill, one decode) never replays a graph.
  tokens.push_back(random_tokens(20, vocab, 400));
  tables.push_back({int32_t(kBlocks - 1), int32_t(kBlocks - 2)});
  std::vector<StepSeq> mixed = step_seqs(1, false);
  mixed.push_back(StepSeq{int64_t(kSeqs), tokens.back(), 20, 0, 20, tables.back(), true});
  const std::vector<float> want = eager.forward_logits(mixed);
  const std::vector<float> got = graphs.forward_logits(mixed);
  EXPECT_EQ(graphs.num_graph_steps(), expected_graph_steps);
  for (size_t k = 0; k < got.size(); ++k)
    worst = std::max(worst, std::abs(double(got[k]) - want[k]) /
                                row_rms(want.data() + (k / size_t(vocab)) * size_t(vocab), vocab));
  // The graphs' attention splits the keys for max_model_len rather than the batch's longest
  // context, so the sums run in another order: bf16 rounding of the attention output, nothing
  // more (a wrong row, position or padded row would be off by the size of the logits).
  std::printf("[cuda runner %s] graph replay vs eager: worst %.5f x row RMS, %lld graph steps\n",
              GetParam() ? "qwen3" : "llama", worst, (long long)graphs.num_graph_steps());
  EXPECT_LE(worst, 0.02);
}

// Sampling on the GPU through the engine: seeded requests reproduce across runs and between the
// synchronous and deferred paths; penalties and min_tokens act on the GPU; and the CPU engine,
// which implements the same sampling definition, draws the same tokens until the first place
// where the backends' logits differ enough to move a draw.
TEST_P(CudaRunner, SeededSamplingReproducesAndMatchesTheCpu) {
  const auto tok =
      Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny");
  const int64_t vocab = model_->config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 6; ++i) prompts.push_back(random_tokens(5 + 11 * i, vocab, 500 + i));
  std::vector<SamplingParams> params(prompts.size());
  for (size_t i = 0; i < params.size(); ++i) {
    SamplingParams& p = params[i];
    p.temperature = 1.5f + 0.1f * float(i);  // flat enough that draws differ from argmax
    p.top_k = i % 2 ? 40 : -1;
    p.top_p = i % 3 ? 0.9f : 1.0f;
    p.min_p = i == 4 ? 0.05f : 0.0f;
    p.seed = 1234 + i;
    p.ignore_eos = true;
    p.max_tokens = 20;
    if (i == 5) {
      p.repetition_penalty = 1.5f;
      p.frequency_penalty = 0.8f;
      p.presence_penalty = 0.4f;
    }
  }
  auto run = [&](const std::string& device, bool async, const std::vector<SamplingParams>& ps) {
    EngineConfig c;
    c.device = device;
    c.async_output = async;
    c.num_kv_blocks = 96;
    c.scheduler.max_model_len = 256;
    c.scheduler.max_num_seqs = 8;
    LLMEngine engine(*model_, *tok, c);
    std::vector<std::vector<int32_t>> out;
    for (const RequestOutput& r : engine.generate(prompts, ps)) out.push_back(r.output_ids);
    return out;
  };
  const auto sync = run("cuda", false, params);
  EXPECT_EQ(run("cuda", true, params), sync) << "deferred output changed seeded samples";
  EXPECT_EQ(run("cuda", false, params), sync) << "a seeded run is not reproducible";
  std::vector<SamplingParams> reseeded = params;
  for (SamplingParams& p : reseeded) *p.seed += 1000;
  const auto other = run("cuda", false, reseeded);
  size_t differ = 0;
  for (size_t i = 0; i < sync.size(); ++i) differ += other[i] != sync[i];
  EXPECT_GE(differ, sync.size() / 2) << "other seeds should give other samples";
  // Sampled, not greedy: at temperature 1.5+ over 500 tokens the outputs are not all argmax.
  SamplingParams g = params[0];
  g.temperature = 0.0f;
  const auto greedy = run("cuda", false, std::vector<SamplingParams>(prompts.size(), g));
  size_t not_greedy = 0;
  for (size_t i = 0; i < sync.size(); ++i) not_greedy += sync[i] != greedy[i];
  EXPECT_GE(not_greedy, sync.size() / 2);
  // Penalties on the GPU (request 5 has all three) agree with the CPU's in greedy decoding,
  // where nothing but the logits decides: sync and deferred (in-flight token counted on the
  // device) alike, and they change the output.
  {
    std::vector<SamplingParams> pen(prompts.size(), g);
    for (SamplingParams& p : pen) {
      p.repetition_penalty = 1.3f;
      p.frequency_penalty = 0.5f;
      p.presence_penalty = 0.3f;
    }
    const auto gpu_pen = run("cuda", false, pen);
    EXPECT_EQ(run("cuda", true, pen), gpu_pen) << "deferred output changed penalised tokens";
    const auto cpu_pen = run("cpu", false, pen);
    int64_t same = 0, total = 0;
    size_t changed = 0;
    for (size_t i = 0; i < gpu_pen.size(); ++i) {
      size_t k = 0;
      while (k < gpu_pen[i].size() && gpu_pen[i][k] == cpu_pen[i][k]) ++k;
      same += int64_t(k);
      total += int64_t(gpu_pen[i].size());
      changed += gpu_pen[i] != greedy[i];
    }
    std::printf(
        "[cuda runner %s] penalised greedy tokens equal to the CPU engine's: %lld of "
        "%lld\n",
        GetParam() ? "qwen3" : "llama", (long long)same, (long long)total);
    EXPECT_GE(same, total / 2);
    EXPECT_GE(changed, 1u) << "penalties had no effect";
  }
  const auto cpu = run("cpu", false, params);
  int64_t same = 0, total = 0;
  for (size_t i = 0; i < sync.size(); ++i) {
    size_t k = 0;
    while (k < sync[i].size() && sync[i][k] == cpu[i][k]) ++k;
    same += int64_t(k);
    total += int64_t(sync[i].size());
  }
  std::printf(
      "[cuda runner %s] seeded samples equal to the CPU engine's before the first "
      "difference: %lld of %lld tokens\n",
      GetParam() ? "qwen3" : "llama", (long long)same, (long long)total);
  // Independent definitions would agree on a token about once in the vocabulary's effective
  // size; one definition agrees until bf16 logit noise first moves a draw across a boundary.
  EXPECT_GE(same, total / 5) << "the CPU and the GPU implement one sampling definition";
}

// min_tokens masks the stop ids on the GPU, with and without an in-flight token.
TEST_P(CudaRunner, MinTokensMasksStopIds) {
  const auto tok =
      Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny");
  const int64_t vocab = model_->config().vocab_size;
  const std::vector<int32_t> prompt = random_tokens(9, vocab, 600);
  for (const bool async : {false, true}) {
    EngineConfig c;
    c.device = "cuda";
    c.async_output = async;
    c.num_kv_blocks = 32;
    c.scheduler.max_model_len = 128;
    LLMEngine engine(*model_, *tok, c);
    // Every token but two is a stop id: without the mask the first token would stop.
    SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = 6;
    p.min_tokens = 4;
    p.ignore_eos = true;
    for (int32_t t = 2; t < vocab; ++t) p.stop_token_ids.push_back(t);
    const std::vector<RequestOutput> out = engine.generate({prompt}, {p});
    ASSERT_EQ(out.size(), 1u);
    ASSERT_GE(out[0].output_ids.size(), 4u) << (async ? "deferred" : "sync");
    for (size_t k = 0; k < 4; ++k) EXPECT_LT(out[0].output_ids[k], 2) << "token " << k;
  }
}

// ATOM_ENFORCE_EAGER=1 turns the graphs off as --enforce-eager does; unset, they are captured.
TEST(CudaRunnerConfig, EnforceEagerVariableDisablesGraphs) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  const auto model = make_tiny(false);
  EngineConfig c;
  c.device = "cuda";
  c.num_kv_blocks = 16;
  c.scheduler.max_model_len = 128;
  c.scheduler.max_num_seqs = 4;
  c.scheduler.max_num_batched_tokens = 128;
  envs::unset("ATOM_ENFORCE_EAGER");
  auto graphs = make_runner(*model, c);
  EXPECT_EQ(dynamic_cast<CudaModelRunner&>(*graphs).graph_sizes(), (std::vector<int64_t>{1, 2, 4}));
  envs::set("ATOM_ENFORCE_EAGER", "1");
  auto eager = make_runner(*model, c);
  envs::unset("ATOM_ENFORCE_EAGER");
  EXPECT_TRUE(dynamic_cast<CudaModelRunner&>(*eager).graph_sizes().empty());
  c.enforce_eager = true;
  EXPECT_TRUE(dynamic_cast<CudaModelRunner&>(*make_runner(*model, c)).graph_sizes().empty());
}

TEST(CudaRunnerConfig, KvPoolFitsTheMemoryBudget) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  const auto model = make_tiny(false);
  CudaRunnerConfig rc;
  rc.num_blocks = 0;  // sized from the budget
  rc.max_num_batched_tokens = 512;
  rc.max_num_seqs = 16;
  rc.max_model_len = 512;
  rc.gpu_memory_utilization = 0.05;
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  const CudaModelRunner runner(*model, rc);
  const CudaMemoryPlan p = cuda_memory_plan(model->config(), 16, 512, 16, 512);
  EXPECT_GT(runner.num_blocks(), 0);
  EXPECT_LE(double(runner.num_blocks()) * double(p.kv_block_bytes), 0.05 * double(total));
  EXPECT_FALSE(runner.graph_sizes().empty());
  // A budget the device already exceeds is a clear error, not a crash.
  rc.gpu_memory_utilization = 1e-4;
  EXPECT_THROW(CudaModelRunner(*model, rc), Error);
}

// --kv_cache_dtype fp8: the same steps as a bf16 runner, eager and through graphs, give logits
// within fp8's rounding of K and V (3 mantissa bits: a relative error up to 2^-4 on each cached
// value, which attention averages), the same greedy tokens where bf16's top two are not close,
// and graph replays equal to eager steps of the fp8 runner itself.
TEST_P(CudaRunner, Fp8KvCacheTracksBf16) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 64;
  CudaRunnerConfig bf16_cfg = runner_config(kBlocks);
  bf16_cfg.enforce_eager = true;
  CudaRunnerConfig fp8_eager_cfg = bf16_cfg;
  fp8_eager_cfg.kv_cache_fp8 = true;
  CudaRunnerConfig fp8_graph_cfg = runner_config(kBlocks);
  fp8_graph_cfg.kv_cache_fp8 = true;
  fp8_graph_cfg.cudagraph_capture_sizes = {1, 2, 4, 8};
  CudaModelRunner ref(*model_, bf16_cfg), fp8(*model_, fp8_eager_cfg),
      fp8_graphs(*model_, fp8_graph_cfg);
  const size_t kSeqs = 4;
  std::vector<std::vector<int32_t>> tokens, tables;
  for (size_t i = 0; i < kSeqs; ++i) {
    tokens.push_back(random_tokens(20 + 13 * i, vocab, 700 + i));
    std::vector<int32_t> t;
    for (int32_t j = 0; j < 8; ++j) t.push_back(int32_t(kSeqs * size_t(j) + i));
    tables.push_back(t);
  }
  auto step = [&](bool prefill) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < kSeqs; ++i) {
      const int64_t n = int64_t(tokens[i].size()), start = prefill ? 0 : n - 1;
      seqs.push_back(StepSeq{int64_t(i), tokens[i], n, start, n - start, tables[i], true});
    }
    return seqs;
  };
  double worst_vs_bf16 = 0, worst_graph = 0;
  int64_t agree = 0, decided = 0;
  for (int s = 0; s < 8; ++s) {
    const std::vector<StepSeq> seqs = step(s == 0);
    const std::vector<float> want = ref.forward_logits(seqs);
    const std::vector<float> got = fp8.forward_logits(seqs);
    const std::vector<float> replay = fp8_graphs.forward_logits(seqs);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_EQ(replay.size(), want.size());
    for (size_t i = 0; i < kSeqs; ++i) {
      const float* w = want.data() + i * size_t(vocab);
      const float* g = got.data() + i * size_t(vocab);
      const float* r = replay.data() + i * size_t(vocab);
      const double rms = row_rms(w, vocab);
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_TRUE(std::isfinite(g[v]) && std::isfinite(r[v])) << "step " << s << " row " << i;
        worst_vs_bf16 = std::max(worst_vs_bf16, std::abs(double(g[v]) - w[v]) / rms);
        worst_graph = std::max(worst_graph, std::abs(double(r[v]) - g[v]) / rms);
      }
      // Greedy agreement where bf16's margin is clear (a tenth of the row's RMS).
      std::vector<float> sorted(w, w + vocab);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] > 0.1 * rms) {
        ++decided;
        agree += argmax(g, vocab) == argmax(w, vocab);
      }
      tokens[i].push_back(argmax(w, vocab));  // every runner is fed bf16's token
    }
  }
  std::printf(
      "[fp8 kv] worst |fp8 - bf16| %.4f x RMS, graph vs eager %.4f x RMS, greedy %lld/%lld\n",
      worst_vs_bf16, worst_graph, (long long)agree, (long long)decided);
  EXPECT_LT(worst_vs_bf16, 0.25);  // fp8 K/V: a few percent of a logit row's spread
  EXPECT_LT(worst_graph, 0.02);    // the graph path is the same fp8 kernels
  EXPECT_GT(decided, 0);
  EXPECT_EQ(agree, decided);
  // Half the KV bytes a block, twice the blocks for the same budget.
  const CudaMemoryPlan b = cuda_memory_plan(model_->config(), 16, 512, 16, 512, false);
  const CudaMemoryPlan f = cuda_memory_plan(model_->config(), 16, 512, 16, 512, true);
  EXPECT_EQ(2 * f.kv_block_bytes, b.kv_block_bytes);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaRunner, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Qwen3" : "Llama"; });

TEST(CudaRunnerConfig, MemoryPlanCountsWeightsAndKv) {
  // The attention workspace size depends on the device's multiprocessor count.
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  const auto model = make_tiny(false);
  const ModelConfig& c = model->config();
  const CudaMemoryPlan p = cuda_memory_plan(c, 16, 512, 16, 512);
  // Untied Llama: embed + lm_head + per layer qkv, o, gate_up, down and norms, in bf16.
  const size_t per_layer = size_t(256 * 512 + 256 * 256 + 2 * 512 * 256 + 256 * 512);
  EXPECT_GE(p.weight_bytes, (2 * 512 * 256 + 2 * per_layer) * 2);
  EXPECT_EQ(p.kv_block_bytes, size_t(2 * 2 * 16 * 2 * 64) * 2);
  EXPECT_GT(p.workspace_bytes, size_t(16 * 512) * 4);  // at least the logits
}

}  // namespace
}  // namespace atom

// ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION on the CPU decoder: a tiny random Qwen3 gives the
// same logits, bit for bit, with the fused qk_norm_rope_and_cache (1) and the unfused ops (0,
// the default), and decoder_path_counts() shows which path each forward took; the variable is
// read per forward; a Llama (no q/k norm) never takes the fused path.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "atom/core/envs.h"
#include "atom/models/decoder.h"
#include "atom/models/hf_loader.h"
#include "atom/models/model.h"
#include "atom/runner/model_runner.h"

namespace atom {
namespace {

constexpr const char* kVar = "ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION";
constexpr int64_t kBlockSize = 16;
constexpr int64_t kSeqLen = 40;  // tokens per sequence

// Sets (or unsets) the variable for a scope and restores what the environment had.
class ScopedVar {
 public:
  explicit ScopedVar(std::optional<std::string> value) : saved_(envs::raw(kVar)) { apply(value); }
  ~ScopedVar() { apply(saved_); }
  static void apply(const std::optional<std::string>& value) {
    if (value) {
      envs::set(kVar, *value);
    } else {
      envs::unset(kVar);
    }
  }

 private:
  std::optional<std::string> saved_;
};

// Dummy weights, except random q/k norm weights: the dummy ones are all 1, which a kernel that
// ignored the weight (or swapped q's for k's) would pass.
class RandomNormSource final : public HfWeightSource {
 public:
  explicit RandomNormSource(const ModelConfig& c) : base_(make_dummy_source(c)) {}
  cpu::QMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                      WeightStorage& storage) override {
    return base_->matrix(name, rows, cols, storage);
  }
  std::vector<float> vector(const std::string& name, int64_t n) override {
    std::vector<float> v = base_->vector(name, n);
    if (name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight")) {
      std::mt19937 rng(uint32_t(std::hash<std::string>{}(name)));
      std::uniform_real_distribution<float> dist(0.5f, 1.5f);
      for (float& x : v) x = dist(rng);
    }
    return v;
  }
  std::shared_ptr<const void> keep_alive() const override { return base_->keep_alive(); }

 private:
  std::unique_ptr<HfWeightSource> base_;
};

// Qwen3-shaped: head_dim (64) independent of hidden / heads, GQA 4, big enough that a prefill
// step takes the ops' multithreaded branches.
ModelConfig tiny_config(const std::string& architecture) {
  ModelConfig c;
  c.architecture = architecture;
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.rotary_dim = 64;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.max_position_embeddings = 512;
  c.dtype = "float32";
  return c;
}

std::unique_ptr<Model> tiny_qwen3() {
  const ModelConfig c = tiny_config("Qwen3ForCausalLM");
  RandomNormSource source(c);
  return make_qwen3_from_hf(c, source);
}

std::unique_ptr<Model> tiny_llama() {
  const ModelConfig c = tiny_config("LlamaForCausalLM");
  const std::unique_ptr<HfWeightSource> source = make_dummy_source(c);
  return make_llama_from_hf(c, *source);
}

// Two sequences of kSeqLen tokens over a fresh cache: a mixed prefill, a second prefill chunk
// beside a decode, then decodes of both; every step's logits concatenated. `before_step(i)`
// runs before step i (to change the variable mid-run).
std::vector<float> run_steps(Model& model, const std::function<void(int)>& before_step = {}) {
  const ModelConfig& c = model.config();
  const int64_t blocks_per_seq = (kSeqLen + kBlockSize - 1) / kBlockSize;
  const int64_t num_blocks = 2 * blocks_per_seq + 1;
  ModelRunner runner(model, num_blocks, kBlockSize);
  KvCache kv(c.num_hidden_layers, num_blocks, kBlockSize, c.num_key_value_heads, c.head_dim);
  std::vector<int32_t> ids_a(kSeqLen), ids_b(kSeqLen);
  for (int64_t i = 0; i < kSeqLen; ++i) {
    ids_a[size_t(i)] = int32_t((i * 37 + 11) % c.vocab_size);
    ids_b[size_t(i)] = int32_t((i * 101 + 5) % c.vocab_size);
  }
  // Physical blocks interleaved and reversed, block 0 unused.
  std::vector<int32_t> table_a, table_b;
  for (int64_t i = 0; i < blocks_per_seq; ++i) {
    table_a.push_back(int32_t(num_blocks - 1 - 2 * i));
    table_b.push_back(int32_t(num_blocks - 2 - 2 * i));
  }
  // {start, count} of A and B per step.
  const int64_t steps[][4] = {{0, 23, 0, 9}, {23, 14, 9, 1}, {37, 1, 10, 1}, {38, 1, 11, 1}};
  std::vector<float> all, logits;
  int step_index = 0;
  for (const auto& s : steps) {
    if (before_step) before_step(step_index);
    ++step_index;
    const StepSeq seqs[] = {{0, ids_a, kSeqLen, s[0], s[1], table_a, true, nullptr},
                            {1, ids_b, kSeqLen, s[2], s[3], table_b, true, nullptr}};
    model.forward(runner.plan(seqs), kv, logits);
    EXPECT_EQ(logits.size(), size_t(2 * c.vocab_size));
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}
constexpr int64_t kSteps = 4;

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return !v.empty();
}

TEST(QkNormRopeCacheFusion, Qwen3LogitsEqualAndPathObservable) {
  const std::unique_ptr<Model> model = tiny_qwen3();
  ASSERT_TRUE(decoder_parts(*model).variant.qk_norm);

  std::vector<float> unset_logits, off_logits, on_logits;
  {
    const ScopedVar var(std::nullopt);  // the default: unfused
    unset_logits = run_steps(*model);
  }
  DecoderPathCounts n = decoder_path_counts(*model);
  EXPECT_EQ(n.forwards, kSteps);
  EXPECT_EQ(n.fused_qk_norm_rope_cache, 0);
  {
    const ScopedVar var("1");
    on_logits = run_steps(*model);
  }
  n = decoder_path_counts(*model);
  EXPECT_EQ(n.forwards, 2 * kSteps);
  EXPECT_EQ(n.fused_qk_norm_rope_cache, kSteps);
  {
    const ScopedVar var("0");
    off_logits = run_steps(*model);
  }
  n = decoder_path_counts(*model);
  EXPECT_EQ(n.forwards, 3 * kSteps);
  EXPECT_EQ(n.fused_qk_norm_rope_cache, kSteps);

  ASSERT_TRUE(all_finite(unset_logits));
  EXPECT_EQ(on_logits, unset_logits);  // bit for bit (f32 ==)
  EXPECT_EQ(off_logits, unset_logits);
}

TEST(QkNormRopeCacheFusion, ReadAtEachForward) {
  // Fused prefill, unfused decodes over the cache it wrote, and the reverse: the same logits.
  const std::unique_ptr<Model> model = tiny_qwen3();
  std::vector<float> reference;
  {
    const ScopedVar var("0");
    reference = run_steps(*model);
  }
  for (const int fused_step : {0, 2}) {
    const DecoderPathCounts before = decoder_path_counts(*model);
    const ScopedVar var(std::nullopt);
    const std::vector<float> mixed = run_steps(*model, [&](int step) {
      ScopedVar::apply(step == fused_step ? std::optional<std::string>("1") : std::nullopt);
    });
    const DecoderPathCounts after = decoder_path_counts(*model);
    EXPECT_EQ(after.forwards - before.forwards, kSteps);
    EXPECT_EQ(after.fused_qk_norm_rope_cache - before.fused_qk_norm_rope_cache, 1)
        << "fused step " << fused_step;
    EXPECT_EQ(mixed, reference) << "fused step " << fused_step;
  }
}

TEST(QkNormRopeCacheFusion, ExactValueOneOnly) {
  // ATOM booleans are true only for "1".
  const std::unique_ptr<Model> model = tiny_qwen3();
  for (const char* value : {"true", "01", ""}) {
    const ScopedVar var(value);
    run_steps(*model);
    EXPECT_EQ(decoder_path_counts(*model).fused_qk_norm_rope_cache, 0) << "'" << value << "'";
  }
}

TEST(QkNormRopeCacheFusion, LlamaUnaffected) {
  const std::unique_ptr<Model> model = tiny_llama();
  ASSERT_FALSE(decoder_parts(*model).variant.qk_norm);
  std::vector<float> off, on;
  {
    const ScopedVar var("0");
    off = run_steps(*model);
  }
  {
    const ScopedVar var("1");
    on = run_steps(*model);
  }
  const DecoderPathCounts n = decoder_path_counts(*model);
  EXPECT_EQ(n.forwards, 2 * kSteps);
  EXPECT_EQ(n.fused_qk_norm_rope_cache, 0);
  ASSERT_TRUE(all_finite(off));
  EXPECT_EQ(on, off);
}

TEST(QkNormRopeCacheFusion, CountsOfOtherModelsAreZero) {
  struct NotADecoder final : Model {
    ModelConfig cfg;
    const ModelConfig& config() const override { return cfg; }
    void forward(const ForwardBatch&, KvCache&, std::vector<float>&) override {}
  } other;
  const DecoderPathCounts n = decoder_path_counts(other);
  EXPECT_EQ(n.forwards, 0);
  EXPECT_EQ(n.fused_qk_norm_rope_cache, 0);
}

}  // namespace
}  // namespace atom

#include "atom/runner/generate.h"

#include <algorithm>
#include <chrono>

#include "atom/core/error.h"

namespace atom {

ForwardBatch plan_single_sequence(const std::vector<int32_t>& tokens, int64_t start,
                                  int64_t count, int64_t num_blocks) {
  ForwardBatch b;
  b.token_ids.assign(tokens.begin() + start, tokens.begin() + start + count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t pos = start + i;
    b.positions.push_back(int32_t(pos));
    b.slot_mapping.push_back(int32_t(pos));  // identity block table: slot == position
  }
  b.cu_seqlens_q = {0, int32_t(count)};
  b.seq_lens = {int32_t(start + count)};
  b.max_blocks_per_seq = num_blocks;
  for (int64_t i = 0; i < num_blocks; ++i) b.block_tables.push_back(int32_t(i));
  b.logits_indices = {int32_t(count - 1)};
  return b;
}

GenerateResult generate(Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opts,
                        const std::function<bool(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  const ModelConfig& cfg = model.config();
  const int64_t max_len = opts.max_model_len > 0 ? opts.max_model_len
                                                 : cfg.max_position_embeddings;
  ATOM_CHECK(!prompt.empty(), kInvalidArgument, "the prompt is empty (0 tokens)");
  ATOM_CHECK(int64_t(prompt.size()) < max_len, kOutOfRange,
             "the prompt has {} tokens, but the model's context length is {} (it must leave room "
             "for at least one new token)",
             prompt.size(), max_len);
  opts.sampling.validate();

  // Output is capped by the context: prompt + output <= max_len.
  const int64_t max_new = std::min<int64_t>(opts.sampling.max_tokens, max_len - int64_t(prompt.size()));
  const int64_t total = int64_t(prompt.size()) + max_new;
  const int64_t bs = opts.block_size;
  const int64_t num_blocks = (total + bs - 1) / bs;
  KvCache kv(cfg.num_hidden_layers, num_blocks, bs, cfg.num_key_value_heads, cfg.head_dim);

  Sampler sampler(opts.sampling);
  GenerateResult res;
  res.prompt_tokens = int64_t(prompt.size());
  std::vector<int32_t> tokens = prompt;
  std::vector<float> logits;
  const auto t0 = Clock::now();

  // Chunked prefill: each chunk attends to the chunks before it through the paged cache.
  const int64_t chunk = std::max<int64_t>(1, opts.max_num_batched_tokens);
  for (int64_t start = 0; start < int64_t(prompt.size()); start += chunk) {
    const int64_t n = std::min<int64_t>(chunk, int64_t(prompt.size()) - start);
    model.forward(plan_single_sequence(tokens, start, n, num_blocks), kv, logits);
  }

  auto t_first = t0;
  for (int64_t step = 0; step < max_new; ++step) {
    const int32_t next = sampler.sample(logits.data(), cfg.vocab_size);
    if (step == 0) t_first = Clock::now();
    res.output_ids.push_back(next);
    tokens.push_back(next);
    const bool is_stop = !opts.sampling.ignore_eos && std::find(opts.sampling.stop_token_ids.begin(),
                                                       opts.sampling.stop_token_ids.end(),
                                                       next) != opts.sampling.stop_token_ids.end();
    const bool keep_going = on_token ? on_token(next) : true;
    if (is_stop || !keep_going) {
      res.finish_reason = "stop";
      break;
    }
    if (step + 1 == max_new) {
      res.finish_reason = "length";
      break;
    }
    model.forward(plan_single_sequence(tokens, int64_t(tokens.size()) - 1, 1, num_blocks), kv,
                  logits);
  }
  const auto t_end = Clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
  res.decode_seconds = std::chrono::duration<double>(t_end - t_first).count();
  return res;
}

}  // namespace atom

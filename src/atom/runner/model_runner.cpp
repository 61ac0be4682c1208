#include "atom/runner/model_runner.h"

#include <algorithm>

#include "atom/core/error.h"

namespace atom {

ModelRunner::ModelRunner(Model& model, int64_t num_blocks, int64_t block_size)
    : model_(model),
      kv_(model.config().num_hidden_layers, num_blocks, block_size,
          model.config().num_key_value_heads, model.config().head_dim) {}

int64_t ModelRunner::num_blocks_for_bytes(const ModelConfig& cfg, size_t bytes,
                                          int64_t block_size) {
  const size_t per_block = size_t(2 * cfg.num_hidden_layers * block_size *
                                  cfg.num_key_value_heads * cfg.head_dim) * sizeof(float);
  return int64_t(bytes / per_block);
}

ForwardBatch ModelRunner::plan(std::span<const StepSeq> seqs) const {
  const int64_t bs = kv_.block_size();
  ForwardBatch b;
  int64_t max_blocks = 1;
  for (const StepSeq& s : seqs) max_blocks = std::max<int64_t>(max_blocks, s.block_table.size());
  b.max_blocks_per_seq = max_blocks;
  b.cu_seqlens_q.push_back(0);
  for (const StepSeq& s : seqs) {
    ATOM_ASSERT(s.count > 0 && s.start + s.count <= int64_t(s.token_ids.size()));
    ATOM_ASSERT(int64_t(s.block_table.size()) * bs >= s.start + s.count);
    for (int64_t pos = s.start; pos < s.start + s.count; ++pos) {
      b.token_ids.push_back(s.token_ids[size_t(pos)]);
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(int32_t(s.block_table[size_t(pos / bs)] * bs + pos % bs));
    }
    b.cu_seqlens_q.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(s.start + s.count));
    b.block_tables.insert(b.block_tables.end(), s.block_table.begin(), s.block_table.end());
    b.block_tables.resize(b.seq_lens.size() * size_t(max_blocks), 0);  // pad: never read
    if (s.sample) b.logits_indices.push_back(int32_t(b.token_ids.size()) - 1);
  }
  return b;
}

std::vector<int32_t> ModelRunner::execute(std::span<const StepSeq> seqs) {
  if (seqs.empty()) return {};
  const ForwardBatch batch = plan(seqs);
  model_.forward(batch, kv_, logits_);
  const int64_t vocab = model_.config().vocab_size;
  std::vector<int32_t> sampled;
  size_t row = 0;
  for (const StepSeq& s : seqs) {
    if (!s.sample) continue;
    auto it = samplers_.find(s.seq_id);
    if (it == samplers_.end()) it = samplers_.emplace(s.seq_id, Sampler(*s.params)).first;
    float* logits = logits_.data() + row * size_t(vocab);
    const auto prompt = s.token_ids.first(size_t(s.num_prompt_tokens));
    const auto output = s.token_ids.subspan(size_t(s.num_prompt_tokens));
    it->second.apply_penalties(logits, vocab, prompt, output);
    sampled.push_back(it->second.sample(logits, vocab));
    ++row;
  }
  return sampled;
}

void ModelRunner::release(int64_t seq_id) { samplers_.erase(seq_id); }

}  // namespace atom

#include "atom/engine/sequence.h"

#include <algorithm>
#include <atomic>

#include "atom/core/error.h"

namespace atom {

namespace {
std::atomic<int64_t> g_next_sequence_id{0};
}  // namespace

const char* sequence_status_name(SequenceStatus status) {
  switch (status) {
    case SequenceStatus::kWaiting:
      return "waiting";
    case SequenceStatus::kRunning:
      return "running";
    case SequenceStatus::kFinished:
      return "finished";
  }
  return "unknown";
}

Sequence::Sequence(std::vector<int32_t> prompt, SamplingParams params_in, int64_t block_size,
                   int64_t id)
    : token_ids(std::move(prompt)),
      params(std::move(params_in)),
      arrival_time(Clock::now()),
      id_(id >= 0 ? id : g_next_sequence_id.fetch_add(1)),
      block_size_(block_size) {
  ATOM_CHECK(block_size > 0, kInvalidArgument, "KV block size must be positive, got {}",
             block_size);
  num_prompt_tokens = num_tokens();
}

void Sequence::reset_id_counter() { g_next_sequence_id.store(0); }

std::span<const int32_t> Sequence::prompt_ids() const {
  return std::span<const int32_t>(token_ids).first(size_t(num_prompt_tokens));
}

std::span<const int32_t> Sequence::output_ids() const {
  return std::span<const int32_t>(token_ids).subspan(size_t(num_prompt_tokens));
}

int32_t Sequence::last_token() const {
  ATOM_CHECK(!token_ids.empty(), kOutOfRange, "sequence {} has no tokens", id_);
  return token_ids.back();
}

int64_t Sequence::num_blocks() const { return (num_tokens() + block_size_ - 1) / block_size_; }

int64_t Sequence::last_block_num_tokens() const {
  return num_tokens() - (num_blocks() - 1) * block_size_;
}

std::span<const int32_t> Sequence::block_tokens(int64_t i) const {
  ATOM_CHECK(i >= 0 && i < num_blocks(), kOutOfRange,
             "block index {} out of range for sequence {} with {} blocks", i, id_, num_blocks());
  const int64_t begin = i * block_size_;
  const int64_t end = std::min(begin + block_size_, num_tokens());
  return std::span<const int32_t>(token_ids).subspan(size_t(begin), size_t(end - begin));
}

void Sequence::append_token(int32_t id) { token_ids.push_back(id); }

}  // namespace atom

// Dataset sampling on small fixtures (tests/data/bench) with GPT-2's vocabulary.
#include <gtest/gtest.h>

#include <set>

#include "atom/bench/dataset.h"
#include "atom/core/error.h"
#include "bench_test_util.h"

namespace atom::bench {
namespace {

using testing::bench_data;

const char* const kTemplate =
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";

TEST(ShareGpt, FiltersShufflesAndMeasures) {
  ATOM_REQUIRE_GPT2(tok);
  Rng rng(0);
  const auto reqs = sample_sharegpt_requests(bench_data("sharegpt_small.json"), 10, tok, rng, {});
  // Kept: a, e, f. Dropped: b (one turn), c (prompt "Hi" < 4 tokens), d (reply "Ok." < 4), g.
  ASSERT_EQ(reqs.size(), 3u);
  std::set<std::string> prompts;
  for (const auto& r : reqs) {
    prompts.insert(r.prompt);
    EXPECT_EQ(r.prompt_len, int64_t(tok.encode(r.prompt, true).size()));
    EXPECT_GE(r.output_len, 4);
  }
  EXPECT_EQ(prompts, (std::set<std::string>{
                         "Write a short poem about the sea and the wind at night.",
                         "List three prime numbers greater than ten, please.",
                         "What is the capital city of France known for?"}));
  for (const auto& r : reqs) {
    if (r.prompt.rfind("Write", 0) == 0) {  // first two turns only: the reply's length
      EXPECT_EQ(r.output_len,
                int64_t(tok.encode("The sea hums low beneath the moon, the wind replies in "
                                   "silver tune.",
                                   true)
                            .size()));
    }
  }

  // A fixed output length keeps the short reply (d) and sets every output length.
  Rng rng2(0);
  const auto fixed = sample_sharegpt_requests(bench_data("sharegpt_small.json"), 10, tok, rng2, 7);
  ASSERT_EQ(fixed.size(), 4u);
  for (const auto& r : fixed) EXPECT_EQ(r.output_len, 7);

  // num_requests caps the count; the seed fixes the shuffle.
  Rng r1(3), r2(3);
  const auto a = sample_sharegpt_requests(bench_data("sharegpt_small.json"), 2, tok, r1, {});
  const auto b = sample_sharegpt_requests(bench_data("sharegpt_small.json"), 2, tok, r2, {});
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].prompt, b[0].prompt);
  EXPECT_EQ(a[1].prompt, b[1].prompt);
}

TEST(ShareGpt, ErrorsNameTheProblem) {
  ATOM_REQUIRE_GPT2(tok);
  Rng rng(0);
  EXPECT_THROW(sample_sharegpt_requests("", 1, tok, rng, {}), Error);
  EXPECT_THROW(sample_sharegpt_requests(bench_data("missing.json"), 1, tok, rng, {}), Error);
  try {
    sample_sharegpt_requests(bench_data("burstgpt_small.csv"), 1, tok, rng, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos);
  }
}

TEST(BurstGpt, Gpt4RowsWithAResponse) {
  ATOM_REQUIRE_GPT2(tok);
  const std::set<std::pair<int64_t, int64_t>> valid = {{417, 276}, {25, 12}, {300, 41}};
  const auto two = sample_burstgpt_requests(bench_data("burstgpt_small.csv"), 2, 0, tok);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NE(std::make_pair(two[0].prompt_len, two[0].output_len),
            std::make_pair(two[1].prompt_len, two[1].output_len));  // without replacement
  const auto many = sample_burstgpt_requests(bench_data("burstgpt_small.csv"), 7, 0, tok);
  ASSERT_EQ(many.size(), 7u);  // with replacement
  for (size_t i = 0; i < many.size(); ++i) {
    EXPECT_TRUE(valid.count({many[i].prompt_len, many[i].output_len}))
        << many[i].prompt_len << "," << many[i].output_len;
    std::vector<int32_t> ids;
    for (int64_t j = 0; j < many[i].prompt_len; ++j)
      ids.push_back(int32_t((int64_t(i) + j) % tok.vocab_size()));
    EXPECT_EQ(many[i].prompt, tok.decode(ids));
  }
  const auto again = sample_burstgpt_requests(bench_data("burstgpt_small.csv"), 7, 0, tok);
  for (size_t i = 0; i < many.size(); ++i) EXPECT_EQ(again[i].prompt_len, many[i].prompt_len);
}

TEST(Random, LengthsPrefixAndSeed) {
  ATOM_REQUIRE_GPT2(tok);
  RandomDatasetOptions o;
  o.input_len = 32;
  o.output_len = 8;
  o.range_ratio = 0.5;
  o.prefix_len = 4;
  Rng rng(0);
  const auto reqs = sample_random_requests(o, 50, tok, rng, nullptr);
  ASSERT_EQ(reqs.size(), 50u);
  std::set<int64_t> in_lens, out_lens;
  for (const auto& r : reqs) {
    EXPECT_GE(r.prompt_len, 4 + 16);
    EXPECT_LE(r.prompt_len, 4 + 32);
    EXPECT_GE(r.output_len, 4);
    EXPECT_LE(r.output_len, 8);
    in_lens.insert(r.prompt_len);
    out_lens.insert(r.output_len);
    EXPECT_FALSE(r.prompt.empty());
    // Decoded from at most prefix+len ids: re-encoding gives about that many tokens.
    EXPECT_LE(int64_t(tok.encode(r.prompt, false).size()), r.prompt_len + 4);
  }
  EXPECT_GT(in_lens.size(), 5u);  // lengths do vary over [16, 32]
  EXPECT_GT(out_lens.size(), 2u);
  Rng same(0), other(1);
  const auto a = sample_random_requests(o, 50, tok, same, nullptr);
  const auto b = sample_random_requests(o, 50, tok, other, nullptr);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].prompt, reqs[i].prompt);
  EXPECT_NE(a[0].prompt, b[0].prompt);

  // Range ratio 1: every length is exactly L.
  o.range_ratio = 1.0;
  for (const auto& r : sample_random_requests(o, 5, tok, rng, nullptr)) {
    EXPECT_EQ(r.prompt_len, 36);
    EXPECT_EQ(r.output_len, 8);
  }
  o.range_ratio = 1.5;
  EXPECT_THROW(sample_random_requests(o, 5, tok, rng, nullptr), Error);
}

TEST(Random, ChatTemplateWrapsAndKeepsTheLength) {
  ATOM_REQUIRE_GPT2(tok);
  const ChatFormatter chat(kTemplate, "", "");
  EXPECT_EQ(chat.render_user("a"), "<|user|>a<|end|><|assistant|>");
  RandomDatasetOptions o;
  o.input_len = 40;
  o.output_len = 4;
  o.use_chat_template = true;
  Rng rng(0);
  const int64_t overhead = int64_t(tok.encode(chat.render_user("a"), false).size()) - 1;
  for (const auto& r : sample_random_requests(o, 5, tok, rng, &chat)) {
    EXPECT_EQ(r.prompt.rfind("<|user|>", 0), 0u);
    EXPECT_EQ(r.prompt.substr(r.prompt.size() - 13), "<|assistant|>");
    EXPECT_EQ(r.prompt_len, 40);  // (40 - overhead) random ids + overhead
  }
  EXPECT_GT(overhead, 0);
}

TEST(Sonnet, FixedPrefixLinesThenSampledOnes) {
  ATOM_REQUIRE_GPT2(tok);
  const ChatFormatter chat(kTemplate, "", "");
  SonnetOptions o;
  o.input_len = 150;
  o.prefix_len = 60;
  o.output_len = 9;
  Rng rng(0);
  const auto reqs =
      sample_sonnet_requests(bench_data("sonnet_small.txt"), 4, o, tok, chat, rng, false);
  ASSERT_EQ(reqs.size(), 4u);
  const std::string head =
      "<|user|>Pick as many lines as you can from these poem lines:\nShall I compare thee to a "
      "summer's day?\n";
  for (const auto& r : reqs) {
    EXPECT_EQ(r.prompt.substr(0, head.size()), head);
    EXPECT_EQ(r.prompt_len, int64_t(tok.encode(r.prompt, true).size()));
    EXPECT_EQ(r.output_len, 9);
    EXPECT_NEAR(double(r.prompt_len), 150.0, 40.0);
  }
  Rng rng2(0);
  const auto raw =
      sample_sonnet_requests(bench_data("sonnet_small.txt"), 1, o, tok, chat, rng2, true);
  EXPECT_EQ(raw[0].prompt.rfind("Pick as many lines", 0), 0u);
  EXPECT_EQ(raw[0].prompt_len, reqs[0].prompt_len);  // same draws, counted formatted

  o.prefix_len = 200;
  EXPECT_THROW(
      sample_sonnet_requests(bench_data("sonnet_small.txt"), 1, o, tok, chat, rng, false), Error);
  o.prefix_len = 5;
  try {
    sample_sonnet_requests(bench_data("sonnet_small.txt"), 1, o, tok, chat, rng, false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Please set 'args.sonnet-prefix-len' higher than"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace atom::bench

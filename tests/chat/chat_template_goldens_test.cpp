// Real model chat templates rendered over varied conversations, byte for byte against Python
// jinja2 configured as transformers configures it.
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "chat/chat_test_util.h"

namespace atom {
namespace {

using chat_test::check_case;
using chat_test::kDataDir;
using chat_test::kSharedDir;
using chat_test::read_json;
using chat_test::read_text;

// Goldens in tests/data/chat_templates/<name>.golden.json; the template text is read from
// ../shared/testdata/chat_templates (third-party, not in the repo) or tests/data/chat_templates.
const std::vector<std::string> kModelTemplates = {
    "meta-llama-Llama-3.1-8B-Instruct",
    "Qwen-Qwen2.5-7B-Instruct",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "microsoft-Phi-3.5-mini-instruct",
    "google-gemma-2-2b-it",
    "smollm2",
};

class ModelTemplateGoldens : public testing::TestWithParam<std::string> {};

TEST_P(ModelTemplateGoldens, RendersLikeTransformers) {
  const auto golden = read_json(kDataDir / (GetParam() + ".golden.json"));
  const std::string file = golden.at("template").get<std::string>();
  std::filesystem::path path = kDataDir / file;
  if (golden.at("source") == "shared") {
    if (!std::filesystem::is_directory(kSharedDir)) {
      GTEST_SKIP() << kSharedDir << " is absent: the third-party model templates live there";
    }
    path = kSharedDir / file;
  }
  const ChatTemplate tmpl(read_text(path));
  const auto& cases = golden.at("cases");
  ASSERT_GE(cases.size(), 40u);
  int expected_outputs = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(file + " / " + c.at("name").get<std::string>());
    check_case(tmpl, c);
    expected_outputs += c.contains("expected") ? 1 : 0;
  }
  // Most conversations render; the rest check that atom raises where the template raises.
  EXPECT_GE(expected_outputs, static_cast<int>(cases.size()) / 3);
}

INSTANTIATE_TEST_SUITE_P(ChatTemplates, ModelTemplateGoldens, testing::ValuesIn(kModelTemplates),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// A template added to either folder must come with a golden and a test above.
TEST(ModelTemplateGoldens, EveryTemplateIsCovered) {
  std::set<std::string> covered(kModelTemplates.begin(), kModelTemplates.end());
  std::vector<std::filesystem::path> dirs = {kDataDir};
  if (std::filesystem::is_directory(kSharedDir)) dirs.push_back(kSharedDir);
  int seen = 0;
  for (const auto& dir : dirs) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().extension() != ".jinja") continue;
      const std::string stem = entry.path().stem().string();
      EXPECT_TRUE(covered.count(stem)) << entry.path() << " has no golden test";
      EXPECT_TRUE(std::filesystem::exists(kDataDir / (stem + ".golden.json"))) << stem;
      ++seen;
    }
  }
  EXPECT_GE(seen, 1);
}

// The default model's template, over a long conversation: rendering must stay cheap next to
// tokenization (a few ms for thousands of messages).
TEST(ModelTemplateGoldens, LongConversationRendersQuickly) {
  const ChatTemplate tmpl(read_text(kDataDir / "smollm2.jinja"));
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  std::string expected =
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n";
  for (int i = 0; i < 2000; ++i) {
    const std::string role = i % 2 == 0 ? "user" : "assistant";
    const std::string content = "message number " + std::to_string(i) + " with some text";
    messages.push_back({{"role", role}, {"content", content}});
    expected += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  }
  expected += "<|im_start|>assistant\n";
  const nlohmann::ordered_json context = {{"messages", messages}, {"add_generation_prompt", true}};
  const auto start = std::chrono::steady_clock::now();
  const std::string out = tmpl.render(context);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(out, expected);
  EXPECT_LT(ms, 1000.0);
  RecordProperty("render_ms_2000_messages", std::to_string(ms));
}

}  // namespace
}  // namespace atom

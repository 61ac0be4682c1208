// GET /health reports a degraded engine: 200 while steps succeed, 503 {"status": "unhealthy",
// "error": ...} once EngineCore::kFailedStepsUnhealthy steps in a row have failed (a device that
// keeps failing), 200 again after a step succeeds. OpenAiServer::handle is driven directly with a
// recording responder; the model fails on demand.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "atom/core/error.h"
#include "atom/engine/engine_core.h"
#include "atom/engine/llm_engine.h"
#include "atom/models/model.h"
#include "atom/server/openai_server.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::server {
namespace {

// Logits that always pick token 5; forward throws while `fail` is set.
class SwitchableModel : public Model {
 public:
  explicit SwitchableModel(int64_t vocab) {
    config_.architecture = "FakeForCausalLM";
    config_.vocab_size = vocab;
    config_.num_hidden_layers = 1;
    config_.num_key_value_heads = 1;
    config_.head_dim = 1;
    config_.max_position_embeddings = 128;
  }
  const ModelConfig& config() const override { return config_; }
  void forward(const ForwardBatch& batch, KvCache&, std::vector<float>& logits) override {
    ATOM_CHECK(!fail.load(), kInternal, "the device is gone");
    logits.assign(batch.logits_indices.size() * size_t(config_.vocab_size), 0.0f);
    for (size_t r = 0; r < batch.logits_indices.size(); ++r)
      logits[r * size_t(config_.vocab_size) + 5] = 1.0f;
  }
  std::atomic<bool> fail{false};

 private:
  ModelConfig config_;
};

// Records the one response of a non-streaming request.
class Recorder : public HttpResponder {
 public:
  void send(int status, std::string, std::string body, Headers) override {
    done_.set_value({status, std::move(body)});
  }
  void start_stream(int, std::string, Headers) override { ADD_FAILURE() << "unexpected stream"; }
  void write(std::string) override {}
  void end() override {}
  void on_disconnect(std::function<void()>) override {}
  void post(std::function<void()> fn) override { fn(); }
  std::pair<int, std::string> get() { return done_.get_future().get(); }

 private:
  std::promise<std::pair<int, std::string>> done_;
};

std::pair<int, std::string> call(OpenAiServer& api, const std::string& method,
                                 const std::string& path, const std::string& body = "") {
  HttpRequest req;
  req.method = method;
  req.target = req.path = path;
  req.body = body;
  if (!body.empty()) req.headers.push_back({"Content-Type", "application/json"});
  auto rec = std::make_shared<Recorder>();
  api.handle(std::move(req), rec);
  return rec->get();
}

TEST(Health, ReportsAnEngineWhoseStepsKeepFailing) {
  const auto tok =
      Tokenizer::from_hf_folder(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny");
  SwitchableModel model(tok->vocab_size());
  EngineConfig c;
  c.num_kv_blocks = 16;
  c.scheduler.max_model_len = 64;
  EngineCore core(std::make_unique<LLMEngine>(model, *tok, c));
  OpenAiServerConfig sc;
  sc.served_model_name = "m";
  OpenAiServer api(core, *tok, sc);
  const std::string completion = R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 2})";

  EXPECT_EQ(call(api, "GET", "/health").first, 200);
  model.fail = true;
  for (int64_t i = 0; i < EngineCore::kFailedStepsUnhealthy; ++i) {
    EXPECT_EQ(call(api, "GET", "/health").first, 200) << i << " failed steps";
    (void)call(api, "POST", "/v1/completions", completion);  // its step fails; it is aborted
  }
  const auto [status, body] = call(api, "GET", "/health");
  EXPECT_EQ(status, 503);
  const nlohmann::json j = nlohmann::json::parse(body);
  EXPECT_EQ(j.at("status"), "unhealthy");
  EXPECT_NE(j.at("error").get<std::string>().find("the device is gone"), std::string::npos)
      << body;
  model.fail = false;
  EXPECT_EQ(call(api, "POST", "/v1/completions", completion).first, 200);
  EXPECT_EQ(call(api, "GET", "/health").first, 200);
  core.shutdown();
}

}  // namespace
}  // namespace atom::server

// GET /health reports a degraded engine: 200 while steps succeed, 503 {"status": "unhealthy",
// "error": ...} once EngineCore::kFailedStepsUnhealthy steps in a row have failed (a device that
// keeps failing), 200 again after a step succeeds. OpenAiServer::handle is driven directly with a
// recording responder; the fake model fails on the prompts that hold its `boom` token.
#include <gtest/gtest.h>

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
#include "common/fake_model.h"

namespace atom::server {
namespace {

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
  FakeModel model(tok->vocab_size());
  model.boom = 2;
  EngineConfig c;
  c.num_kv_blocks = 16;
  c.scheduler.max_model_len = 64;
  EngineCore core(std::make_unique<LLMEngine>(model, *tok, c));
  OpenAiServerConfig sc;
  sc.served_model_name = "m";
  OpenAiServer api(core, *tok, sc);
  const std::string completion = R"({"model": "m", "prompt": [100, 101], "max_tokens": 2})";
  const std::string failing = R"({"model": "m", "prompt": [100, 2, 101], "max_tokens": 2})";

  EXPECT_EQ(call(api, "GET", "/health").first, 200);
  for (int64_t i = 0; i < EngineCore::kFailedStepsUnhealthy; ++i) {
    EXPECT_EQ(call(api, "GET", "/health").first, 200) << i << " failed steps";
    (void)call(api, "POST", "/v1/completions", failing);  // its step fails; it is aborted
  }
  const auto [status, body] = call(api, "GET", "/health");
  EXPECT_EQ(status, 503);
  const nlohmann::json j = nlohmann::json::parse(body);
  EXPECT_EQ(j.at("status"), "unhealthy");
  EXPECT_NE(j.at("error").get<std::string>().find("the fake model was fed token 2"),
            std::string::npos)
      << body;
  EXPECT_EQ(call(api, "POST", "/v1/completions", completion).first, 200);
  EXPECT_EQ(call(api, "GET", "/health").first, 200);
  core.shutdown();
}

}  // namespace
}  // namespace atom::server

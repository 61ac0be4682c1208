// The OpenAI-compatible API over an EngineCore: routes, authentication, request validation,
// tokenization and chat templates, then one engine request per choice (n per prompt) whose
// outputs come back on the engine thread and are formatted on the connection's strand, either
// as one JSON body or as SSE chunks. A client that disconnects aborts its engine requests.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "atom/chat/chat_template.h"
#include "atom/engine/engine_core.h"
#include "atom/server/http_server.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::server {

struct OpenAiServerConfig {
  std::string served_model_name;         // what /v1/models lists and requests must name
  std::string model_root;                // the model's path or repo id (/v1/models "root")
  std::string api_key;                   // "": no authentication
  int64_t max_pending_requests = 4096;   // engine requests unfinished; beyond: 503
  std::vector<int32_t> stop_token_ids;   // the model's end-of-turn ids (EOS, EOT, ...)
  std::string version;                   // /version
};

// The /v1/models body: a list of the one model served (the engine server and the
// data-parallel front end answer the same).
std::string models_list_body(const std::string& served_model_name, const std::string& root,
                             int64_t max_model_len);

class OpenAiServer {
 public:
  // The engine and tokenizer must outlive this object. Throws atom::Error(kUnsupported) for a
  // chat template the interpreter cannot parse (a model without one serves completions only).
  OpenAiServer(EngineCore& engine, const Tokenizer& tokenizer, OpenAiServerConfig config);

  // The HttpHandler: answers every route.
  void handle(HttpRequest request, std::shared_ptr<HttpResponder> responder);
  // Shutdown has begun: new generation requests get 503, those in flight go on.
  void set_draining() { draining_ = true; }

  // Prometheus text exposition (version 0.0.4) under vLLM's names with an "atom:" prefix: the
  // engine's gauges, counters and histograms (docs/serving.md lists them) and the server's own
  // counters, every sample labelled model_name="<served model name>".
  std::string metrics() const;

  // The error body the HTTP layer uses for what it answers itself.
  static std::pair<std::string, std::string> http_error_body(int status,
                                                             const std::string& message);

 private:
  struct Job;
  void route(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res);
  void generate(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res, bool chat);
  void tokenize(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res);
  void detokenize(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res);
  std::vector<int32_t> render_chat(const nlohmann::ordered_json& messages,
                                   const nlohmann::ordered_json& kwargs,
                                   bool add_generation_prompt, bool add_special_tokens) const;
  void check_model(const std::optional<std::string>& model) const;
  // /start_profile and /stop_profile: 400 without a profiler directory or out of order.
  void profile(bool start, const std::shared_ptr<HttpResponder>& res);

  EngineCore& engine_;
  const Tokenizer& tok_;
  OpenAiServerConfig config_;
  std::optional<ChatTemplate> template_;
  std::atomic<bool> draining_{false};
  // The server's own counters for /metrics (the engine keeps the rest).
  std::atomic<int64_t> requests_total_{0};
  std::atomic<int64_t> aborted_by_client_{0};
};

}  // namespace atom::server

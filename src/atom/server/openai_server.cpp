#include "atom/server/openai_server.h"

#include <fmt/format.h>

#include <chrono>
#include <random>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/server/openai_protocol.h"

namespace atom::server {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kJson = "application/json";

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(const std::shared_ptr<HttpResponder>& res, int status, const ojson& body,
               Headers extra = {}) {
  res->send(status, kJson, dump(body), std::move(extra));
}

void send_error(const std::shared_ptr<HttpResponder>& res, const ApiError& e,
                Headers extra = {}) {
  if (e.status == 503) extra.emplace_back("Retry-After", "1");
  res->send(e.status, kJson, error_json(e), std::move(extra));
}

// "cmpl-" / "chatcmpl-" followed by 32 random hex digits, as OpenAI's and vLLM's ids.
std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:016x}", prefix, rng(), rng());
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// OpenAI's finish_reason is stop/length; vLLM's stop_reason says what stopped it: the stop
// string, the stop token id, or null for EOS and length.
json stop_reason(const RequestOutput& o) {
  if (o.raw_finish_reason == "stop_sequence") return o.stop_string;
  if (o.raw_finish_reason.rfind("stop_", 0) == 0) {
    try {
      return std::stoll(o.raw_finish_reason.substr(5));
    } catch (const std::exception&) {
      return nullptr;
    }
  }
  return nullptr;
}

}  // namespace

// One API request in flight: its choices (n per prompt), each backed by one engine request.
// Lives on the connection's strand: the engine callbacks post their outputs there.
struct OpenAiServer::Job {
  OpenAiServer* server = nullptr;
  std::shared_ptr<HttpResponder> res;
  bool chat = false, stream = false, include_usage = false, echo = false;
  std::string id, model;
  int64_t created = 0;
  struct Choice {
    size_t prompt = 0;
    int64_t engine_id = -1;
    std::string text;
    std::string finish_reason;
    json stop_reason;
    int64_t completion_tokens = 0;
    int64_t cached_tokens = 0;
    bool done = false;
  };
  std::vector<Choice> choices;
  std::vector<int64_t> prompt_tokens;    // per prompt
  std::vector<std::string> prompt_text;  // per prompt, for echo
  size_t remaining = 0;
  bool ended = false;

  // The fields every response and chunk starts with, in OpenAI's order.
  ojson header(const char* object) const {
    ojson c;
    c["id"] = id;
    c["object"] = object;
    c["created"] = created;
    c["model"] = model;
    return c;
  }
  const char* chunk_object() const { return chat ? "chat.completion.chunk" : "text_completion"; }

  ojson chunk(ojson choice) const {
    ojson c = header(chunk_object());
    c["choices"] = ojson::array({std::move(choice)});
    if (include_usage) c["usage"] = nullptr;
    return c;
  }

  ojson chunk_choice(size_t index, const std::string& text, const json& finish,
                     const json& stop) const {
    ojson ch;
    ch["index"] = index;
    if (chat) {
      // Even the EOS token's empty delta says "content", as vLLM sends it.
      ch["delta"] = {{"content", text}};
    } else {
      ch["text"] = text;
    }
    ch["logprobs"] = nullptr;
    ch["finish_reason"] = finish;
    ch["stop_reason"] = finish.is_null() ? json(nullptr) : stop;  // vLLM's; null until the end
    return ch;
  }

  void send_event(const ojson& j) { res->write("data: " + dump(j) + "\n\n"); }

  ojson usage() const {
    int64_t p = 0, c = 0, cached = 0;
    for (int64_t n : prompt_tokens) p += n;
    for (const Choice& ch : choices) c += ch.completion_tokens;
    for (size_t i = 0; i < choices.size(); i += choices.size() / prompt_tokens.size())
      cached += choices[i].cached_tokens;  // once per prompt, as its tokens are counted
    ojson u;
    u["prompt_tokens"] = p;
    u["completion_tokens"] = c;
    u["total_tokens"] = p + c;
    u["prompt_tokens_details"] = {{"cached_tokens", cached}};
    return u;
  }

  // Streaming: the chat role delta (and the echoed prompt) for every choice, first.
  void start() {
    if (!stream) return;
    res->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
    for (size_t i = 0; i < choices.size(); ++i) {
      if (chat) {
        ojson ch;
        ch["index"] = i;
        ch["delta"] = {{"role", "assistant"}, {"content", ""}};
        ch["logprobs"] = nullptr;
        ch["finish_reason"] = nullptr;
        ch["stop_reason"] = nullptr;
        send_event(chunk(std::move(ch)));
      } else if (echo) {
        send_event(chunk(chunk_choice(i, prompt_text[choices[i].prompt], nullptr, nullptr)));
      }
    }
  }

  void on_output(size_t i, const RequestOutput& o) {
    Choice& ch = choices[i];
    if (ch.done || ended) return;
    ch.text += o.delta_text;
    if (o.finished) {
      ch.done = true;
      --remaining;
      ch.finish_reason = o.finish_reason;
      ch.stop_reason = stop_reason(o);
      ch.completion_tokens = int64_t(o.output_ids.size());
      ch.cached_tokens = o.num_cached_tokens;
    }
    // A chunk for every step that sampled tokens, even when they add no text yet (a partial
    // UTF-8 character, text held back for a stop string, an id past the tokenizer's vocabulary):
    // vLLM does the same, and its benchmark times TTFT and ITL from these chunks.
    if (stream && (!o.delta_text.empty() || !o.new_token_ids.empty() || o.finished)) {
      send_event(chunk(chunk_choice(i, o.delta_text,
                                    o.finished ? json(o.finish_reason) : json(nullptr),
                                    ch.stop_reason)));
    }
    if (remaining == 0) finish();
  }

  void finish() {
    ended = true;
    if (stream) {
      if (include_usage) {
        ojson c = header(chunk_object());
        c["choices"] = ojson::array();
        c["usage"] = usage();
        send_event(c);
      }
      res->write("data: [DONE]\n\n");
      res->end();
      return;
    }
    ojson body = header(chat ? "chat.completion" : "text_completion");
    body["choices"] = ojson::array();
    for (size_t i = 0; i < choices.size(); ++i) {
      const Choice& c = choices[i];
      ojson ch;
      ch["index"] = i;
      if (chat) {
        ch["message"] = {{"role", "assistant"}, {"content", c.text}};
      } else {
        ch["text"] = echo ? prompt_text[c.prompt] + c.text : c.text;
      }
      ch["logprobs"] = nullptr;
      ch["finish_reason"] = c.finish_reason;
      ch["stop_reason"] = c.stop_reason;
      body["choices"].push_back(std::move(ch));
    }
    body["usage"] = usage();
    send_json(res, 200, body);
  }
};

std::string models_list_body(const std::string& served_model_name, const std::string& root,
                             int64_t max_model_len) {
  ojson m;
  m["id"] = served_model_name;
  m["object"] = "model";
  m["created"] = unix_now();
  m["owned_by"] = "atom";
  m["root"] = root;
  m["max_model_len"] = max_model_len;
  ojson body;
  body["object"] = "list";
  body["data"] = ojson::array({m});
  return dump(body);
}

OpenAiServer::OpenAiServer(EngineCore& engine, const Tokenizer& tokenizer,
                           OpenAiServerConfig config)
    : engine_(engine), tok_(tokenizer), config_(std::move(config)) {
  if (!tok_.chat_template().empty()) template_.emplace(tok_.chat_template());
}

std::pair<std::string, std::string> OpenAiServer::http_error_body(int status,
                                                                  const std::string& message) {
  return {kJson, error_json(api_error(status, message))};
}

void OpenAiServer::handle(HttpRequest req, std::shared_ptr<HttpResponder> res) {
  try {
    route(req, res);
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const Error& e) {
    // Input the engine, tokenizer or template refused (a prompt over the context, a template's
    // raise_exception) is the client's; anything else is ours.
    const bool client = e.code() == ErrorCode::kInvalidArgument ||
                        e.code() == ErrorCode::kOutOfRange || e.code() == ErrorCode::kUnsupported;
    if (!client) ATOM_LOG_ERROR("{} {}: {}", req.method, req.path, e.what());
    send_error(res, client ? bad_request(e.what()) : api_error(500, e.what()));
  } catch (const std::exception& e) {
    ATOM_LOG_ERROR("{} {}: {}", req.method, req.path, e.what());
    send_error(res, api_error(500, std::string("internal error: ") + e.what()));
  }
}

void OpenAiServer::route(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res) {
  struct Route {
    const char* path;
    const char* method;
  };
  static const Route kRoutes[] = {
      {"/health", "GET"},          {"/version", "GET"},
      {"/v1/models", "GET"},       {"/metrics", "GET"},
      {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
      {"/tokenize", "POST"},       {"/detokenize", "POST"},
      {"/start_profile", "POST"},  {"/stop_profile", "POST"},
  };
  const Route* route = nullptr;
  for (const Route& r : kRoutes)
    if (req.path == r.path) route = &r;
  if (!route) throw api_error(404, fmt::format("no route for {} {}", req.method, req.path));
  if (req.method != route->method) {
    send_error(res,
               api_error(405, fmt::format("method {} is not allowed on {} (use {})", req.method,
                                          req.path, route->method)),
               {{"Allow", route->method}});
    return;
  }
  // As vLLM: the key guards the OpenAI routes; health, metrics and the rest stay open.
  if (!config_.api_key.empty() && req.path.rfind("/v1/", 0) == 0) {
    const std::string auth = req.header("Authorization");
    if (auth != "Bearer " + config_.api_key) {
      send_error(res, api_error(401, auth.empty() ? "missing API key: send the header "
                                                    "'Authorization: Bearer <key>'"
                                                  : "incorrect API key"),
                 {{"WWW-Authenticate", "Bearer"}});
      return;
    }
  }
  const std::string& p = req.path;
  if (p == "/health") {
    if (draining_) {
      send_json(res, 503, {{"status", "draining"}}, {{"Retry-After", "1"}});
    } else if (!engine_.healthy()) {  // its steps keep failing: let a load balancer move on
      send_json(res, 503, {{"status", "unhealthy"}, {"error", engine_.last_error()}});
    } else {
      send_json(res, 200, {{"status", "ok"}});
    }
  } else if (p == "/version") {
    send_json(res, 200, {{"version", config_.version}});
  } else if (p == "/v1/models") {
    res->send(200, kJson,
              models_list_body(config_.served_model_name, config_.model_root,
                               engine_.config().scheduler.max_model_len));
  } else if (p == "/metrics") {
    res->send(200, "text/plain; version=0.0.4; charset=utf-8", metrics());
  } else if (p == "/v1/completions" || p == "/v1/chat/completions") {
    generate(req, res, p == "/v1/chat/completions");
  } else if (p == "/tokenize") {
    tokenize(req, res);
  } else if (p == "/detokenize") {
    detokenize(req, res);
  } else {  // /start_profile, /stop_profile
    profile(p == "/start_profile", res);
  }
}

void OpenAiServer::profile(bool start, const std::shared_ptr<HttpResponder>& res) {
  if (engine_.config().torch_profiler_dir.empty())
    throw bad_request("profiling is not enabled on this server: start atom serve with "
                      "--torch-profiler-dir DIR (or set ATOM_TORCH_PROFILER_DIR)");
  // Answered from the engine thread once it ran the command between steps; a stop answers
  // only when the trace file is complete.
  auto done = [res, start](std::exception_ptr error, const std::string& path) {
    if (error) {
      try {
        std::rethrow_exception(error);
      } catch (const Error& e) {
        const bool client = e.code() == ErrorCode::kInvalidArgument;
        if (!client) ATOM_LOG_ERROR("profiler: {}", e.what());
        send_error(res, client ? bad_request(e.what()) : api_error(500, e.what()));
      } catch (const std::exception& e) {
        ATOM_LOG_ERROR("profiler: {}", e.what());
        send_error(res, api_error(500, std::string("internal error: ") + e.what()));
      }
      return;
    }
    ojson body;
    body["status"] = "success";
    body["message"] = start ? "Profiling started" : "Profiling stopped. Trace files generated.";
    if (!start) body["trace"] = path;
    send_json(res, 200, body);
  };
  if (start)
    engine_.start_profile(std::move(done));
  else
    engine_.stop_profile(std::move(done));
}

void OpenAiServer::check_model(const std::optional<std::string>& model) const {
  if (model && *model != config_.served_model_name)
    throw bad_request(fmt::format("the model '{}' does not exist; this server serves '{}'",
                                  *model, config_.served_model_name),
                      "model", "model_not_found");
}

std::vector<int32_t> OpenAiServer::render_chat(const ojson& messages, const ojson& kwargs,
                                               bool add_generation_prompt,
                                               bool add_special_tokens) const {
  if (!template_)
    throw bad_request("this model has no chat template: use /v1/completions", "messages");
  ojson ctx = kwargs.is_object() ? kwargs : ojson::object();
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = add_generation_prompt;
  const auto piece = [&](int32_t id) { return id >= 0 ? tok_.token_bytes(id) : std::string(); };
  ctx = chat_template_context(std::move(ctx), piece(tok_.bos_id()), piece(tok_.eos_id()));
  // The template writes the special tokens (BOS included): encoding adds none by default,
  // unlike ATOM, which adds a second BOS.
  return tok_.encode(template_->render(ctx), add_special_tokens);
}

void OpenAiServer::generate(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res,
                            bool chat) {
  const json body = parse_json_object(req.body);
  GenerationRequest r = chat ? parse_chat_request(body) : parse_completion_request(body);
  check_model(r.model);
  if (draining_) throw api_error(503, "the server is shutting down");

  auto job = std::make_shared<Job>();
  job->server = this;
  job->res = res;
  job->chat = chat;
  job->stream = r.stream;
  job->include_usage = r.stream && r.include_usage;
  job->echo = r.echo;
  job->id = random_id(chat ? "chatcmpl-" : "cmpl-");
  job->model = config_.served_model_name;
  job->created = unix_now();

  // Tokenize every prompt and check every (prompt, choice) before starting any.
  std::vector<std::vector<int32_t>> prompts;
  if (chat) {
    prompts.push_back(render_chat(r.messages, r.template_kwargs, r.add_generation_prompt,
                                  r.add_special_tokens.value_or(false)));
    job->prompt_text.emplace_back();
  } else {
    for (PromptSpec& p : r.prompts) {
      if (p.is_text) {
        prompts.push_back(tok_.encode(p.text, r.add_special_tokens.value_or(true)));
        job->prompt_text.push_back(std::move(p.text));
      } else {
        // Against the tokenizer's vocabulary, which may be smaller than the model's (padded
        // embeddings; the engine checks that one): echo and streaming decode these ids.
        for (int32_t id : p.ids)
          if (id >= tok_.vocab_size())
            throw bad_request(fmt::format("prompt token id {} is out of range for the "
                                          "vocabulary (size {})",
                                          id, tok_.vocab_size()),
                              "prompt");
        prompts.push_back(std::move(p.ids));
        job->prompt_text.push_back(r.echo ? tok_.decode(prompts.back(), false) : std::string());
      }
    }
  }
  const int64_t max_len = engine_.config().scheduler.max_model_len;
  std::vector<SamplingParams> params;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t len = int64_t(prompts[i].size());
    if (len == 0) throw bad_request("the prompt is empty (0 tokens)", chat ? "messages" : "prompt");
    for (int64_t j = 0; j < r.n; ++j) {
      SamplingParams p = r.params;
      // Unset max_tokens: OpenAI's 16 for completions; for chat, up to the context's end.
      p.max_tokens = r.max_tokens.value_or(chat ? std::max<int64_t>(1, max_len - len) : 16);
      if (p.min_tokens > p.max_tokens)
        throw bad_request(fmt::format("'min_tokens' ({}) must not exceed max_tokens ({})",
                                      p.min_tokens, p.max_tokens),
                          "min_tokens");
      if (p.seed && j > 0) p.seed = *p.seed + uint64_t(j);  // n samples, not n copies
      // The model's end-of-turn ids stop generation unless ignore_eos; the request's own
      // stop_token_ids always do (as vLLM).
      std::vector<int32_t> stops;
      if (!p.ignore_eos) stops = config_.stop_token_ids;
      for (int32_t id : p.stop_token_ids)
        if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
      p.stop_token_ids = std::move(stops);
      engine_.validate(prompts[i], p);  // 400: prompt + max_tokens over the context, ...
      params.push_back(std::move(p));
      Job::Choice c;
      c.prompt = i;
      job->choices.push_back(std::move(c));
    }
    job->prompt_tokens.push_back(len);
  }
  const int64_t total = int64_t(job->choices.size());
  if (engine_.num_unfinished() + total > config_.max_pending_requests) {
    throw api_error(503, fmt::format("the server is at capacity ({} requests pending, limit {}); "
                                     "retry later",
                                     engine_.num_unfinished(), config_.max_pending_requests));
  }
  ++requests_total_;
  job->remaining = job->choices.size();
  job->start();
  for (size_t i = 0; i < job->choices.size(); ++i) {
    const size_t pi = job->choices[i].prompt;
    try {
      job->choices[i].engine_id = engine_.add_request(
          prompts[pi], std::move(params[i]), [job, i](const RequestOutput& o) {
            job->res->post([job, i, o] { job->on_output(i, o); });
          });
    } catch (const Error& e) {  // the engine began shutting down meanwhile
      for (size_t k = 0; k < i; ++k) engine_.abort(job->choices[k].engine_id);
      job->ended = true;
      if (job->stream) {  // the stream has begun: end it with an error event
        res->write("data: " + error_json(api_error(503, e.what())) + "\n\n");
        res->end();
        return;
      }
      throw api_error(503, e.what());
    }
  }
  res->on_disconnect([this, job] {
    for (const Job::Choice& c : job->choices) {
      if (c.done || c.engine_id < 0) continue;
      engine_.abort(c.engine_id);
      ++aborted_by_client_;
    }
  });
}

void OpenAiServer::tokenize(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res) {
  const json body = parse_json_object(req.body);
  if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) throw bad_request("'model' must be a string", "model");
    check_model(it->get<std::string>());
  }
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    GenerationRequest r = parse_chat_request(body);
    ids = render_chat(r.messages, r.template_kwargs, r.add_generation_prompt,
                      r.add_special_tokens.value_or(false));
  } else {
    auto it = body.find("prompt");
    if (it == body.end() || !it->is_string())
      throw bad_request("'prompt' (a string) or 'messages' is required", "prompt");
    bool add_special = true;
    if (auto a = body.find("add_special_tokens"); a != body.end() && !a->is_null()) {
      if (!a->is_boolean()) throw bad_request("'add_special_tokens' must be a boolean",
                                              "add_special_tokens");
      add_special = a->get<bool>();
    }
    ids = tok_.encode(it->get<std::string>(), add_special);
  }
  ojson out;
  out["count"] = ids.size();
  out["max_model_len"] = engine_.config().scheduler.max_model_len;
  out["tokens"] = ids;
  send_json(res, 200, out);
}

void OpenAiServer::detokenize(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res) {
  const json body = parse_json_object(req.body);
  auto it = body.find("tokens");
  if (it == body.end() || !it->is_array())
    throw bad_request("'tokens' (a list of token ids) is required", "tokens");
  std::vector<int32_t> ids;
  for (const json& x : *it) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= tok_.vocab_size())
      throw bad_request(fmt::format("'tokens' must hold token ids in [0, {}), got {}",
                                    tok_.vocab_size(), dump(x)),
                        "tokens");
    ids.push_back(x.get<int32_t>());
  }
  send_json(res, 200, {{"prompt", tok_.decode(ids, false)}});
}

std::string OpenAiServer::metrics() const {
  const EngineStats& st = engine_.stats();
  const auto load = [](const std::atomic<int64_t>& c) {
    return double(c.load(std::memory_order_relaxed));
  };
  PrometheusWriter w({{"model_name", config_.served_model_name}});
  w.gauge("atom:num_requests_running", "Number of requests in model execution batches.",
          double(engine_.num_running()));
  w.gauge("atom:num_requests_waiting", "Number of requests waiting to be processed.",
          double(engine_.num_waiting()));
  w.gauge("atom:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
          engine_.kv_cache_usage());
  w.counter("atom:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            load(st.prefix_cache_queries));
  w.counter("atom:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.", load(st.prefix_cache_hits));
  w.counter("atom:num_preemptions_total", "Cumulative number of preemption from the engine.",
            load(st.num_preemptions));
  w.counter("atom:prompt_tokens_total", "Number of prefill tokens processed.",
            load(st.prompt_tokens));
  w.counter("atom:generation_tokens_total", "Number of generation tokens processed.",
            load(st.generation_tokens));
  std::array<std::pair<std::string_view, double>, kFinishReasonNames.size()> finished;
  for (size_t i = 0; i < finished.size(); ++i)
    finished[i] = {kFinishReasonNames[i], load(st.request_success[i])};
  w.labelled_counter("atom:request_success_total", "Count of successfully processed requests.",
                     "finished_reason", finished);
  w.histogram("atom:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              st.time_to_first_token.snapshot());
  // vLLM's two names for the same per-token observations (the first is the deprecated one).
  const Histogram::Snapshot itl = st.inter_token_latency.snapshot();
  w.histogram("atom:time_per_output_token_seconds",
              "Histogram of time per output token in seconds.", itl);
  w.histogram("atom:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              itl);
  w.histogram("atom:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
              st.e2e_request_latency.snapshot());
  w.histogram("atom:request_queue_time_seconds",
              "Histogram of time spent in WAITING phase for request.",
              st.request_queue_time.snapshot());
  w.histogram("atom:request_prompt_tokens", "Number of prefill tokens processed.",
              st.request_prompt_tokens.snapshot());
  w.histogram("atom:request_generation_tokens", "Number of generation tokens processed.",
              st.request_generation_tokens.snapshot());
  w.counter("atom:request_total", "API requests accepted for generation.",
            load(requests_total_));
  w.counter("atom:request_aborted_by_client_total",
            "Engine requests aborted because their client disconnected.",
            load(aborted_by_client_));
  return w.text();
}

}  // namespace atom::server

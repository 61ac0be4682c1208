#include "atom/server/dp_front_end.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/engine/stats.h"
#include "atom/server/openai_protocol.h"
#include "atom/server/openai_server.h"

namespace atom::server {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kJson = "application/json";
constexpr const char* kRankHeader = "X-Atom-Dp-Rank";
// A rank's /metrics answers at once unless the rank is in trouble: a scrape of the front end
// must not wait for it (its samples are just missing). Profile commands may write a trace.
constexpr std::chrono::milliseconds kMetricsConnectTimeout{2000};
constexpr std::chrono::milliseconds kMetricsDeadline{3000};
constexpr std::chrono::milliseconds kProfileDeadline{60000};

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The error of a request whose rank failed: 503, with a code a client can tell apart from
// "overloaded" (which is worth a retry on the same server only after a while).
ApiError rank_failed(std::string message) {
  ApiError e = api_error(503, std::move(message));
  e.code = "dp_rank_failed";
  return e;
}

}  // namespace

// One client request on its way through a rank. The upstream callbacks run on the call's strand
// one at a time; `call` and `client_gone` are also touched by the client's disconnect callback.
struct DpFrontEnd::Proxy {
  DpFrontEnd* fe = nullptr;
  HttpRequest req;
  std::shared_ptr<HttpResponder> res;
  std::vector<int64_t> tried;  // ranks this request could not be connected to
  std::string last_error;      // why the last of them could not
  std::atomic<bool> client_gone{false};
  std::mutex mu;
  std::shared_ptr<UpstreamCall> call;  // guarded by mu: the current attempt's
  // The current attempt (on the call's strand):
  int64_t rank = -1;
  RankEndpoint endpoint;
  int status = 0;
  bool streamed = false, sse = false, head_relayed = false;
  std::string content_type;
  Headers relay;
  std::string body;     // a whole body, sent once complete
  std::string partial;  // SSE: the start of an event whose blank line has not come yet
};

DpFrontEnd::DpFrontEnd(DpRouter& router, DpFrontEndConfig config)
    : router_(router), config_(std::move(config)), client_(config_.client_threads) {
  calls_.resize(size_t(router_.dp_size()));
}

DpFrontEnd::~DpFrontEnd() { stop(); }

void DpFrontEnd::stop() {
  if (stopped_.exchange(true)) return;
  std::vector<std::shared_ptr<UpstreamCall>> open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& m : calls_)
      for (auto& [p, w] : m)
        if (auto c = w.lock()) open.push_back(std::move(c));
  }
  for (auto& c : open) c->cancel("the server is shutting down");
  // Let the cancellations' callbacks run (they answer the clients), then stop the threads.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (open_.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  client_.stop();
}

void DpFrontEnd::rank_dead(int64_t rank, const std::string& reason) {
  std::vector<std::shared_ptr<UpstreamCall>> open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, w] : calls_[size_t(rank)])
      if (auto c = w.lock()) open.push_back(std::move(c));
  }
  for (auto& c : open) c->cancel(reason);
}

void DpFrontEnd::rank_unreachable(int64_t rank, const RankEndpoint& endpoint,
                                  const std::string& reason) {
  if (router_.info(rank).endpoint != endpoint) return;  // registered again since
  if (!router_.mark_dead(rank, reason)) return;
  ATOM_LOG_ERROR("dp rank {} is dead: {}; new requests go to ranks [{}]", rank, reason,
                 fmt::join(router_.ranks_in(RankState::kUp), ", "));
  rank_dead(rank, reason);
  if (on_unreachable_) on_unreachable_(rank, endpoint, reason);
}

std::shared_ptr<UpstreamCall> DpFrontEnd::start_call(
    int64_t rank, const RankEndpoint& endpoint, UpstreamRequest request, UpstreamHandlers handlers,
    std::chrono::milliseconds connect_timeout, std::optional<std::chrono::milliseconds> deadline,
    const std::function<void(const std::shared_ptr<UpstreamCall>&)>& registered) {
  std::shared_ptr<UpstreamCall> call;
  std::string dead_reason;
  {
    // The call's on_done unregisters under mu_, so it cannot end before it is registered.
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = next_call_++;
    handlers.on_done = [this, rank, id,
                        done = std::move(handlers.on_done)](const UpstreamResult& r) {
      {
        std::lock_guard<std::mutex> l(mu_);
        calls_[size_t(rank)].erase(id);
      }
      if (done) done(r);
    };
    call = client_.start(endpoint.host, endpoint.port, std::move(request), std::move(handlers),
                         connect_timeout, deadline);
    calls_[size_t(rank)][id] = call;
    if (registered) registered(call);
    // rank_dead() marks the router first and then collects the calls under mu_: a rank not
    // live now was declared dead before this call could be collected.
    const RankInfo info = router_.info(rank);
    if (info.state != RankState::kUp && info.state != RankState::kDraining)
      dead_reason = info.reason.empty() ? std::string("the rank was declared dead") : info.reason;
  }
  if (!dead_reason.empty()) call->cancel(dead_reason);
  return call;
}

bool DpFrontEnd::authorized(const HttpRequest& req,
                            const std::shared_ptr<HttpResponder>& res) const {
  if (config_.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return true;
  const std::string auth = req.header("Authorization");
  if (auth == "Bearer " + config_.api_key) return true;
  const ApiError e = api_error(401, auth.empty() ? "missing API key: send the header "
                                                   "'Authorization: Bearer <key>'"
                                                 : "incorrect API key");
  res->send(401, kJson, error_json(e), {{"WWW-Authenticate", "Bearer"}});
  return false;
}

void DpFrontEnd::handle(HttpRequest req, std::shared_ptr<HttpResponder> res) {
  const std::string& p = req.path;
  if (p == "/health" && req.method == "GET") return health(res);
  if (p == "/version" && req.method == "GET") {
    res->send(200, kJson, dump({{"version", config_.version}}));
    return;
  }
  if (p == "/metrics" && req.method == "GET") return metrics(res);
  if (p == "/v1/models" && req.method == "GET") {
    if (!authorized(req, res)) return;
    res->send(
        200, kJson,
        models_list_body(config_.served_model_name, config_.model_root, config_.max_model_len));
    return;
  }
  if (draining_) {
    res->send(503, kJson, error_json(api_error(503, "the server is shutting down")),
              {{"Retry-After", "1"}});
    return;
  }
  if ((p == "/start_profile" || p == "/stop_profile") && req.method == "POST")
    return broadcast(req, res);
  auto proxy = std::make_shared<Proxy>();
  proxy->fe = this;
  proxy->req = std::move(req);
  proxy->res = res;
  ++open_;
  // Set before the first attempt can answer: a client that leaves cancels the attempt in
  // flight, and its rank aborts the engine request when the connection closes.
  res->on_disconnect([proxy] {
    proxy->client_gone = true;
    std::shared_ptr<UpstreamCall> c;
    {
      std::lock_guard<std::mutex> lock(proxy->mu);
      c = proxy->call;
    }
    if (c) c->cancel("the client disconnected");
  });
  forward(proxy);
}

void DpFrontEnd::forward(const std::shared_ptr<Proxy>& p) {
  const std::optional<int64_t> pick = router_.acquire(p->tried);
  if (!pick && !p->last_error.empty()) {  // every rank left was tried
    p->res->send(503, kJson, error_json(rank_failed(p->last_error)), {{"Retry-After", "1"}});
    --open_;
    return;
  }
  if (!pick) {
    std::vector<std::string> states;
    for (const RankInfo& r : router_.snapshot())
      states.push_back(fmt::format("rank {} {}{}", r.rank, rank_state_name(r.state),
                                   r.reason.empty() ? "" : " (" + r.reason + ")"));
    p->res->send(503, kJson,
                 error_json(rank_failed(fmt::format("no data-parallel rank is up to take the "
                                                    "request: {}",
                                                    fmt::join(states, "; ")))),
                 {{"Retry-After", "1"}});
    --open_;
    return;
  }
  p->rank = *pick;
  p->endpoint = router_.info(*pick).endpoint;
  p->status = 0;
  p->streamed = p->sse = p->head_relayed = false;
  p->body.clear();
  p->partial.clear();
  ATOM_LOG_DEBUG("dp: {} {} -> rank {} ({}:{})", p->req.method, p->req.target, p->rank,
                 p->endpoint.host, p->endpoint.port);

  UpstreamRequest up;
  up.method = p->req.method;
  up.target = p->req.target;
  up.body = p->req.body;
  for (const char* h : {"Content-Type", "Authorization", "Accept"}) {
    const std::string v = p->req.header(h);
    if (!v.empty()) up.headers.emplace_back(h, v);
  }

  UpstreamHandlers h;
  h.on_head = [p](int status, const Headers& headers, bool streamed) {
    p->status = status;
    p->streamed = streamed;
    p->content_type = header_value(headers, "Content-Type");
    p->relay.clear();
    for (const char* name : {"Retry-After", "Allow", "WWW-Authenticate", "Cache-Control"}) {
      const std::string v = header_value(headers, name);
      if (!v.empty()) p->relay.emplace_back(name, v);
    }
    p->relay.emplace_back(kRankHeader, std::to_string(p->rank));
    if (streamed) {
      p->sse = p->content_type.rfind("text/event-stream", 0) == 0;
      p->res->start_stream(status, p->content_type, p->relay);
      p->head_relayed = true;
    }
  };
  h.on_data = [p](std::string data) {
    if (!p->streamed) {
      p->body += data;
      return;
    }
    if (!p->sse) {
      p->res->write(std::move(data));
      return;
    }
    // Whole events only, so that an error event after a failure never lands mid-event.
    p->partial += data;
    const size_t end = p->partial.rfind("\n\n");
    if (end == std::string::npos) return;
    p->res->write(p->partial.substr(0, end + 2));
    p->partial.erase(0, end + 2);
  };
  h.on_done = [p](const UpstreamResult& r) {
    DpFrontEnd& fe = *p->fe;
    {
      std::lock_guard<std::mutex> lock(p->mu);
      p->call.reset();
    }
    if (r.ok) {
      fe.router_.release(p->rank, false);
      if (p->streamed) {
        if (!p->partial.empty()) p->res->write(std::move(p->partial));
        p->res->end();
      } else {
        p->res->send(p->status, p->content_type, std::move(p->body), p->relay);
      }
      --fe.open_;
      return;
    }
    if (p->client_gone) {
      fe.router_.release(p->rank, false);
      --fe.open_;
      return;
    }
    const std::string where = fmt::format("{}:{}", p->endpoint.host, p->endpoint.port);
    if (r.connect_failed && !p->head_relayed) {
      // Nothing reached the rank: the request may go to another one. Only a refusal or an
      // unreachable host says the rank is gone; a local failure or a timeout does not.
      fe.router_.release(p->rank, false);
      p->tried.push_back(p->rank);
      p->last_error = fmt::format("data-parallel rank {} at {} could not be reached: {}", p->rank,
                                  where, r.error);
      if (r.peer_down) {
        fe.rank_unreachable(
            p->rank, p->endpoint,
            fmt::format("its endpoint {} refused the front end ({})", where, r.error));
      } else {
        ATOM_LOG_WARN("dp: could not connect to rank {} at {} ({}); trying another rank", p->rank,
                      where, r.error);
      }
      if (!fe.stopped_) return fe.forward(p);
      p->res->send(503, kJson, error_json(rank_failed(p->last_error)), {{"Retry-After", "1"}});
      --fe.open_;
      return;
    }
    fe.router_.release(p->rank, true);
    const std::string message =
        fmt::format("data-parallel rank {} (at {}) failed while answering this request: {}",
                    p->rank, where, r.error);
    ATOM_LOG_WARN("dp: {} {} on rank {} failed: {}", p->req.method, p->req.target, p->rank,
                  r.error);
    if (p->head_relayed) {
      // The stream has begun: end it with an error event, as the engine server does.
      if (p->sse) p->res->write("data: " + error_json(rank_failed(message)) + "\n\n");
      p->res->end();
    } else {
      p->res->send(503, kJson, error_json(rank_failed(message)),
                   {{kRankHeader, std::to_string(p->rank)}});
    }
    --fe.open_;
  };

  // Set before the call can end (its on_done resets it); a client gone meanwhile cancels it.
  start_call(p->rank, p->endpoint, std::move(up), std::move(h), config_.connect_timeout,
             std::nullopt, [&p](const std::shared_ptr<UpstreamCall>& call) {
               {
                 std::lock_guard<std::mutex> plock(p->mu);
                 p->call = call;
               }
               if (p->client_gone) call->cancel("the client disconnected");
             });
}

void DpFrontEnd::health(const std::shared_ptr<HttpResponder>& res) {
  const std::vector<RankInfo> ranks = router_.snapshot();
  ojson list = ojson::array();
  std::vector<int64_t> up, down;
  for (const RankInfo& r : ranks) {
    ojson j;
    j["dp_rank"] = r.rank;
    j["state"] = rank_state_name(r.state);
    if (!r.endpoint.host.empty()) {
      j["address"] = fmt::format("{}:{}", r.endpoint.host, r.endpoint.port);
      j["pid"] = r.endpoint.pid;
    }
    j["running"] = r.load.running;
    j["waiting"] = r.load.waiting;
    j["kv_cache_usage"] = r.load.kv_cache_usage;
    j["open"] = r.open;
    j["routed"] = r.routed_total;
    j["failed"] = r.failed_total;
    if (!r.reason.empty()) j["reason"] = r.reason;
    list.push_back(std::move(j));
    (r.state == RankState::kUp ? up : down).push_back(r.rank);
  }
  ojson body;
  int status = 200;
  if (draining_) {
    body["status"] = "draining";
    status = 503;
  } else if (up.empty()) {
    body["status"] = "unhealthy";
    status = 503;
  } else {
    body["status"] = down.empty() ? "ok" : "degraded";
  }
  body["dp_size"] = router_.dp_size();
  body["ranks_up"] = up;
  body["ranks_down"] = down;
  body["ranks"] = std::move(list);
  res->send(status, kJson, dump(body), status == 503 ? Headers{{"Retry-After", "1"}} : Headers{});
}

namespace {

// Answers of one request sent to several ranks, collected on the calls' strands.
struct Gather {
  std::mutex mu;
  size_t remaining = 0;
  std::vector<std::pair<int64_t, std::string>> bodies;  // (rank, body) of the 200 answers
  std::vector<std::pair<int64_t, std::string>> errors;  // (rank, why) of the others
  std::vector<std::pair<int64_t, int>> statuses;
};

}  // namespace

void DpFrontEnd::broadcast(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res) {
  std::vector<RankInfo> targets;
  for (const RankInfo& r : router_.snapshot())
    if (r.state == RankState::kUp) targets.push_back(r);
  if (targets.empty()) {
    res->send(503, kJson, error_json(rank_failed("no data-parallel rank is up")));
    return;
  }
  auto g = std::make_shared<Gather>();
  g->remaining = targets.size();
  const std::string path = req.path;
  auto finish = [g, res, path] {
    int status = 200;
    ojson ranks = ojson::array();
    for (const auto& [rank, st] : g->statuses) status = std::max(status, st);
    for (const auto& [rank, body] : g->bodies) {
      ojson j;
      j["dp_rank"] = rank;
      ojson parsed = ojson::parse(body, nullptr, false);
      // A body that is not JSON goes on as text (a discarded value cannot be dumped).
      j["response"] = parsed.is_discarded() ? ojson(body) : std::move(parsed);
      ranks.push_back(std::move(j));
    }
    for (const auto& [rank, why] : g->errors) {
      ojson j;
      j["dp_rank"] = rank;
      j["error"] = why;
      ranks.push_back(std::move(j));
    }
    ojson body;
    if (status == 200) {
      body["status"] = "success";
      body["message"] = path == "/start_profile" ? "Profiling started on every rank"
                                                 : "Profiling stopped on every rank";
    } else {
      ApiError e = api_error(status, fmt::format("{} failed on some data-parallel ranks", path));
      body = ojson::parse(error_json(e));
    }
    body["ranks"] = std::move(ranks);
    res->send(status, kJson, dump(body));
  };
  for (const RankInfo& r : targets) {
    UpstreamRequest up;
    up.method = req.method;
    up.target = req.target;
    up.body = req.body;
    const std::string ct = req.header("Content-Type");
    if (!ct.empty()) up.headers.emplace_back("Content-Type", ct);
    auto st = std::make_shared<std::pair<int, std::string>>();
    UpstreamHandlers h;
    h.on_head = [st](int status, const Headers&, bool) { st->first = status; };
    h.on_data = [st](std::string d) { st->second += d; };
    h.on_done = [g, st, rank = r.rank, finish](const UpstreamResult& result) {
      bool last;
      {
        std::lock_guard<std::mutex> lock(g->mu);
        if (result.ok && st->first == 200) {
          g->bodies.emplace_back(rank, st->second);
        } else {
          g->errors.emplace_back(rank, result.ok ? st->second : result.error);
          g->statuses.emplace_back(rank, result.ok ? st->first : 503);
        }
        last = --g->remaining == 0;
      }
      if (last) finish();
    };
    start_call(r.rank, r.endpoint, std::move(up), std::move(h), config_.connect_timeout,
               kProfileDeadline);
  }
}

void DpFrontEnd::metrics(const std::shared_ptr<HttpResponder>& res) {
  std::vector<RankInfo> targets;
  for (const RankInfo& r : router_.snapshot())
    if (r.state == RankState::kUp || r.state == RankState::kDraining) targets.push_back(r);
  struct Scrape {
    std::mutex mu;
    size_t remaining = 0;
    std::vector<std::pair<int64_t, std::string>> texts;
  };
  auto s = std::make_shared<Scrape>();
  s->remaining = targets.size();
  auto finish = [this, s, res] {
    std::sort(s->texts.begin(), s->texts.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    res->send(200, "text/plain; version=0.0.4; charset=utf-8",
              own_metrics() + merge_rank_metrics(s->texts));
  };
  if (targets.empty()) return finish();
  for (const RankInfo& r : targets) {
    UpstreamRequest up;
    up.method = "GET";
    up.target = "/metrics";
    auto st = std::make_shared<std::pair<int, std::string>>();
    UpstreamHandlers h;
    h.on_head = [st](int status, const Headers&, bool) { st->first = status; };
    h.on_data = [st](std::string d) { st->second += d; };
    h.on_done = [s, st, rank = r.rank, finish](const UpstreamResult& result) {
      bool last;
      {
        std::lock_guard<std::mutex> lock(s->mu);
        if (result.ok && st->first == 200) s->texts.emplace_back(rank, std::move(st->second));
        last = --s->remaining == 0;
      }
      if (last) finish();
    };
    start_call(r.rank, r.endpoint, std::move(up), std::move(h), kMetricsConnectTimeout,
               kMetricsDeadline);
  }
}

std::string DpFrontEnd::own_metrics() const {
  const std::vector<RankInfo> ranks = router_.snapshot();
  const std::string model = PrometheusWriter::escape_label_value(config_.served_model_name);
  std::string out;
  const auto family = [&](const char* name, const char* type, const char* help, auto value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (const RankInfo& r : ranks)
      out += fmt::format("{}{{model_name=\"{}\",dp_rank=\"{}\"}} {}\n", name, model, r.rank,
                         PrometheusWriter::format_value(double(value(r))));
  };
  family("atom:dp_rank_up", "gauge",
         "1 while the data-parallel rank is registered and takes requests, else 0.",
         [](const RankInfo& r) { return r.state == RankState::kUp ? 1 : 0; });
  family("atom:dp_rank_requests_open", "gauge",
         "Requests the front end routed to the rank that are not answered yet.",
         [](const RankInfo& r) { return r.open; });
  family("atom:dp_rank_requests_routed_total", "counter",
         "Requests the front end routed to the rank.",
         [](const RankInfo& r) { return r.routed_total; });
  family("atom:dp_rank_requests_failed_total", "counter",
         "Requests routed to the rank that failed because the rank failed.",
         [](const RankInfo& r) { return r.failed_total; });
  return out;
}

std::string merge_rank_metrics(const std::vector<std::pair<int64_t, std::string>>& expositions) {
  struct Family {
    std::string help, type;
    std::vector<std::string> samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Family> families;
  const auto family = [&](const std::string& name) -> Family& {
    auto [it, fresh] = families.try_emplace(name);
    if (fresh) order.push_back(name);
    return it->second;
  };
  for (const auto& [rank, text] : expositions) {
    std::string current;  // the family the last HELP/TYPE line named
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      const std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.empty()) continue;
      if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
        const size_t start = 7, sp = line.find(' ', start);
        current = line.substr(start, sp == std::string::npos ? std::string::npos : sp - start);
        Family& f = family(current);
        std::string& slot = line[2] == 'H' ? f.help : f.type;
        if (slot.empty()) slot = line;
        continue;
      }
      if (line[0] == '#') continue;
      const size_t name_end = line.find_first_of("{ ");
      const std::string name = line.substr(0, name_end);
      const std::string label = fmt::format("dp_rank=\"{}\"", rank);
      std::string sample;
      if (name_end != std::string::npos && line[name_end] == '{') {
        const bool empty = line.size() > name_end + 1 && line[name_end + 1] == '}';
        sample = name + "{" + label + (empty ? "" : ",") + line.substr(name_end + 1);
      } else {
        sample = name + "{" + label + "}" + (name_end == std::string::npos ? " " : "") +
                 (name_end == std::string::npos ? "" : line.substr(name_end));
      }
      const bool in_current = !current.empty() && name.rfind(current, 0) == 0;
      family(in_current ? current : name).samples.push_back(std::move(sample));
    }
  }
  std::string out;
  for (const std::string& name : order) {
    const Family& f = families[name];
    if (!f.help.empty()) out += f.help + "\n";
    if (!f.type.empty()) out += f.type + "\n";
    for (const std::string& s : f.samples) out += s + "\n";
  }
  return out;
}

}  // namespace atom::server

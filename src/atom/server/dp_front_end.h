// The data-parallel front end (rank 0's public port): one OpenAI-compatible API in front of
// dp engine ranks, each a separate process serving the same routes on an internal endpoint.
//
// Generation, tokenizer and other routes are forwarded whole (method, path and query, body,
// Content-Type/Authorization/Accept) to the least-loaded rank (dp_router.h) and the answer is
// relayed as it comes: a JSON body once complete, an SSE stream event by event (never buffered
// whole). Answered here: /health (200 while at least one rank is up, naming which are; 503 when
// none), /v1/models and /version (from rank 0's registration), /metrics (the front end's own
// per-rank counters plus every live rank's exposition, each sample labelled dp_rank="<r>"), and
// /start_profile, /stop_profile, which go to every live rank.
//
// A rank that fails (its rendezvous connection ends or its reports stop, see dp_rendezvous.h)
// fails the requests open on it at once, each with an error naming the rank: HTTP 503 with an
// OpenAI error body, or, once a stream has begun, an SSE `data: {"error": ...}` event after
// which the stream ends (what the engine server does when its engine fails mid-stream). When a
// rank cannot be connected to, the request goes to another rank (nothing had reached it); only
// a refusal or an unreachable host marks the rank dead, and the on_rank_unreachable listener
// confirms that through the rendezvous (the rank is dropped there, so it exits or registers
// again); a local failure (no free descriptor or port, a connect timeout) leaves it up. Every
// answer carries the header X-Atom-Dp-Rank naming the rank that served it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "atom/server/dp_router.h"
#include "atom/server/http_client.h"
#include "atom/server/http_server.h"

namespace atom::server {

struct DpFrontEndConfig {
  std::string served_model_name;  // what /v1/models lists (rank 0's)
  std::string model_root;
  int64_t max_model_len = 0;
  std::string api_key;  // "": none; else the /v1 routes answered here check it
  std::string version;
  int client_threads = 2;                           // I/O threads of the connections to the ranks
  std::chrono::milliseconds connect_timeout{5000};  // to a rank's endpoint, per attempt
};

class DpFrontEnd {
 public:
  DpFrontEnd(DpRouter& router, DpFrontEndConfig config);
  ~DpFrontEnd();  // stop()
  DpFrontEnd(const DpFrontEnd&) = delete;
  DpFrontEnd& operator=(const DpFrontEnd&) = delete;

  // The HttpHandler of the public port.
  void handle(HttpRequest request, std::shared_ptr<HttpResponder> responder);
  // Shutdown has begun: new requests get 503, those in flight go on.
  void set_draining() { draining_ = true; }
  // `rank` was declared dead: its open requests end now with an error naming it and `reason`.
  void rank_dead(int64_t rank, const std::string& reason);
  // Called (on a connection's thread) after the front end marked a rank dead because its
  // endpoint refused a connection or its host was unreachable, with the endpoint it tried. Set
  // it before the first request.
  void on_rank_unreachable(
      std::function<void(int64_t rank, const RankEndpoint& endpoint, const std::string& reason)>
          listener) {
    on_unreachable_ = std::move(listener);
  }
  // Requests forwarded and not answered yet.
  int64_t num_open() const { return open_.load(); }
  // Cancels what is still open and stops the connections' threads.
  void stop();

  // The front end's own metric families (per-rank up, open, routed and failed counts).
  std::string own_metrics() const;

 private:
  struct Proxy;
  // Starts a call to `rank` that rank_dead() and stop() cancel. `registered` runs once the call
  // is registered, before it can end. A rank declared dead meanwhile (after the caller picked
  // it, before the call was registered) has the call cancelled at once with the rank's reason.
  std::shared_ptr<UpstreamCall> start_call(
      int64_t rank, const RankEndpoint& endpoint, UpstreamRequest request,
      UpstreamHandlers handlers, std::chrono::milliseconds connect_timeout,
      std::optional<std::chrono::milliseconds> deadline,
      const std::function<void(const std::shared_ptr<UpstreamCall>&)>& registered = {});
  // Marks `rank` dead after its endpoint refused a connection (unless it registered again at
  // another endpoint meanwhile), fails its requests and tells the listener.
  void rank_unreachable(int64_t rank, const RankEndpoint& endpoint, const std::string& reason);
  void forward(const std::shared_ptr<Proxy>& p);
  void broadcast(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res);
  void metrics(const std::shared_ptr<HttpResponder>& res);
  void health(const std::shared_ptr<HttpResponder>& res);
  bool authorized(const HttpRequest& req, const std::shared_ptr<HttpResponder>& res) const;

  DpRouter& router_;
  DpFrontEndConfig config_;
  HttpClient client_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> open_{0};
  std::atomic<bool> stopped_{false};
  std::function<void(int64_t, const RankEndpoint&, const std::string&)> on_unreachable_;
  std::mutex mu_;
  // Per rank: the calls open on it (forwarded requests, metric scrapes, profile commands) by
  // their number, so a dead rank's calls can be ended at once.
  std::vector<std::unordered_map<uint64_t, std::weak_ptr<UpstreamCall>>> calls_;
  uint64_t next_call_ = 0;  // guarded by mu_
};

// One exposition from several ranks' (rank, Prometheus text) pairs: every sample gains the
// label dp_rank="<rank>" (first), and each family's HELP and TYPE lines appear once, before the
// samples of every rank, families in the order first seen.
std::string merge_rank_metrics(const std::vector<std::pair<int64_t, std::string>>& expositions);

}  // namespace atom::server

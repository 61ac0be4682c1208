// Data-parallel routing (SPEC 4.2, 11 item 12): the front end's table of DP ranks and the
// least-loaded policy that picks the rank for each request.
//
// Each rank is a full engine in its own process. It reports its load (running and waiting
// requests, KV-cache usage) every ~50 ms; the front end adds its own count of the requests it
// routed there that are still open, updated at once, so that a burst arriving between two
// reports spreads over the ranks instead of piling onto the one that looked idle. The lowest
// score wins; ties go to the lower rank. Unlike ATOM's round-robin placement, a rank busy with
// long requests or with a full KV cache gets the new short ones last.
//
// pick_least_loaded() is the policy as a pure function (unit-tested without sockets); DpRouter
// is the thread-safe table around it that the front end and the rendezvous update.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace atom::server {

// What a rank reports about its engine (EngineCore's gauges).
struct RankLoad {
  int64_t running = 0;          // requests in the running batch
  int64_t waiting = 0;          // requests waiting for admission
  double kv_cache_usage = 0.0;  // fraction of KV blocks in use, 0..1
};

// The policy's weights. A waiting request counts double: it is not served yet and a new one
// would queue behind it. A full KV cache counts as kKvFull requests: the rank is about to
// preempt (recompute) its sequences, so even a short request is better placed elsewhere.
struct RoutingWeights {
  double open = 1.0;     // per request the front end routed there and has not seen end
  double running = 1.0;  // per reported running request
  double waiting = 2.0;  // per reported waiting request
  double kv_full = 8.0;  // at kv_cache_usage 1.0 (linear below)
};

// One rank as the policy sees it.
struct RankView {
  bool routable = false;  // registered, alive and not draining
  RankLoad load;          // the last report
  int64_t open = 0;       // front-end requests routed to it and still open
};

// The rank's score under `w`; lower is less loaded.
double load_score(const RankView& rank, const RoutingWeights& w = {});

// The routable rank with the lowest score, the lower rank on a tie; nullopt when none is
// routable.
std::optional<int64_t> pick_least_loaded(std::span<const RankView> ranks,
                                         const RoutingWeights& w = {});

enum class RankState {
  kPending,   // not registered yet
  kUp,        // registered and reporting: takes requests
  kDraining,  // shutting down on its own: finishes what it has, takes nothing new
  kStopped,   // shut down cleanly after draining
  kDead,      // its connection failed or its reports stopped: requests on it failed
};
const char* rank_state_name(RankState s);

// Where a rank serves its engine, as it registered.
struct RankEndpoint {
  std::string host;  // the address the front end connects to
  int port = 0;
  int64_t pid = 0;  // the rank's process, on its host
  bool operator==(const RankEndpoint&) const = default;
};

// A snapshot of one rank for /health, /metrics and logs.
struct RankInfo {
  int64_t rank = 0;
  RankState state = RankState::kPending;
  RankEndpoint endpoint;
  RankLoad load;
  int64_t open = 0;          // front-end requests open on it now
  int64_t routed_total = 0;  // requests the front end sent it
  int64_t failed_total = 0;  // of those, ended by the rank's failure
  std::string reason;        // why it is dead or stopped
};

class DpRouter {
 public:
  using Clock = std::chrono::steady_clock;

  explicit DpRouter(int64_t dp_size, RoutingWeights weights = {});

  int64_t dp_size() const { return int64_t(ranks_.size()); }

  // Registration (a new rank, or one that replaces a dead or stopped one): kUp at `endpoint`
  // with an empty load. The rendezvous checks who may register.
  void set_up(int64_t rank, RankEndpoint endpoint, Clock::time_point now);
  // A load report; ignored unless the rank is up or draining.
  void report(int64_t rank, const RankLoad& load, Clock::time_point now);
  // The rank announced its own shutdown: kDraining (no new requests; the open ones go on).
  void set_draining(int64_t rank);
  // The rank left after draining: kStopped.
  void set_stopped(int64_t rank, std::string reason);
  // Marks the rank dead; true when it was up or draining (the caller logs and fails its
  // requests), false when it already was dead or never registered.
  bool mark_dead(int64_t rank, std::string reason);
  // Up or draining ranks whose last report is older than `timeout`: marked dead, returned.
  std::vector<int64_t> expire_silent(Clock::time_point now, Clock::duration timeout);

  // Picks the least-loaded routable rank, other than those in `exclude` (ranks a request
  // already failed to reach), and counts a request open on it (and routed to it); nullopt when
  // no rank is left. Every pick must be followed by one release().
  std::optional<int64_t> acquire(std::span<const int64_t> exclude = {});
  // The request routed to `rank` ended; `failed`: it ended because the rank failed.
  void release(int64_t rank, bool failed);

  RankInfo info(int64_t rank) const;
  std::vector<RankInfo> snapshot() const;
  std::vector<int64_t> ranks_in(RankState state) const;
  int64_t num_routable() const;

 private:
  struct Rank {
    RankInfo info;
    Clock::time_point last_report{};
  };
  mutable std::mutex mu_;
  RoutingWeights weights_;
  std::vector<Rank> ranks_;  // guarded by mu_; indexed by rank
};

}  // namespace atom::server

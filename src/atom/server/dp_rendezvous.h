// Data-parallel rendezvous: how the DP ranks of one deployment find the front end, and how the
// front end learns that a rank is up, how loaded it is, and that it died.
//
// Rank 0 runs the master (DpMaster) on --data-parallel-master-ip/-port (ATOM_DP_MASTER_IP/PORT).
// Every rank, rank 0 included, connects to it with a DpRankReporter once its engine is ready and
// its internal HTTP endpoint listens, registers (rank, the address and port the front end should
// use, model name, max_model_len), and then keeps the connection open, sending its load every
// kLoadReportInterval. The protocol is one JSON object per line over TCP, so it works across
// hosts as well as on one node:
//
//   rank -> master  {"type":"register","rank":1,"dp_size":2,"host":"10.0.0.2","port":41234,
//                    "model":"M","max_model_len":4096,"root":"/models/M","pid":4242}
//   master -> rank  {"type":"accepted"} | {"type":"refused","error":"..."}
//   rank -> master  {"type":"load","running":3,"waiting":0,"kv_cache_usage":0.12}   (repeated)
//   master -> rank  {"type":"heartbeat"}    (every kHeartbeatInterval once accepted)
//   rank -> master  {"type":"draining"}     (the rank shuts down: finish, take nothing new)
//   master -> rank  {"type":"dropped","error":"..."}   (then closes: the rank was declared dead)
//
// Rank 0's registration is the reference: the others must serve the same model name, the same
// max_model_len and the same dp size, or they are refused by name (a rank that registers before
// rank 0 waits for rank 0's). A rank whose connection fails, or whose reports stop for
// kLoadReportTimeout, is marked dead in the router and the listener is told, so that its open
// requests fail at once; so is one the front end could not connect to (DpMaster::drop). A rank
// that was declared dead is told so and disconnected: rank 0 registers again, the others exit.
// A dead rank may register again (a restarted process). A rank that hears nothing from the
// master (no heartbeat) for kHeartbeatTimeout takes the master for lost, as when the
// connection closes. Both ends set TCP keepalive and TCP_USER_TIMEOUT (kRankSocketTimeout), so
// a host that vanishes without closing is noticed too, and neither end ever blocks writing.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "atom/server/dp_router.h"

namespace atom::server {

// Ranks report every 50 ms: fresh enough that routing sees a burst's effect within a step or
// two. A rank is declared dead after 1 s of silence: a CPU rank's OpenMP threads saturate every
// core, which can starve its report thread for a few hundred milliseconds without anything being
// wrong; a crashed process is noticed at once anyway, when its connection closes.
inline constexpr std::chrono::milliseconds kLoadReportInterval{50};
inline constexpr std::chrono::milliseconds kLoadReportTimeout{1000};
// The master's heartbeat to every accepted rank, and how long a rank waits without hearing
// anything before it takes the master (the front end) for lost. Longer than the reports'
// timeout: the master's thread shares rank 0's cores with its engine.
inline constexpr std::chrono::milliseconds kHeartbeatInterval{500};
inline constexpr std::chrono::milliseconds kHeartbeatTimeout{3000};
// TCP_USER_TIMEOUT and the keepalive probes' span on the rendezvous connections.
inline constexpr std::chrono::milliseconds kRankSocketTimeout{5000};

struct RankRegistration {
  int64_t rank = 0;
  int64_t dp_size = 1;
  std::string host;  // where the front end reaches the rank's internal endpoint
  int port = 0;
  std::string model;  // the served model name
  int64_t max_model_len = 0;
  std::string root;  // the model's path or repo id (/v1/models "root")
  int64_t pid = 0;
};

class DpMaster {
 public:
  // Binds ip:port (port 0: any free port) and listens; throws atom::Error(kInvalidArgument)
  // naming the address when that fails. Nothing is accepted before start().
  DpMaster(DpRouter& router, const std::string& ip, int port);
  ~DpMaster();  // stop()
  DpMaster(const DpMaster&) = delete;
  DpMaster& operator=(const DpMaster&) = delete;

  int port() const;
  // Called (on the master's thread) when a rank is marked dead, with the reason.
  void on_rank_dead(std::function<void(int64_t rank, const std::string& reason)> listener);
  void start();
  // Stops the thread; the listener is not called after it returns. Idempotent.
  void stop();
  // Confirms a rank's death that someone else suspected (the front end could not connect to
  // it): unless the rank registered again at another endpoint meanwhile, marks it dead (the
  // listener is told, if it was not dead yet), tells the rank it was dropped and closes its
  // connection. Thread-safe; returns at once (the master's thread does it).
  void drop(int64_t rank, const RankEndpoint& endpoint, const std::string& reason);

  // Waits until every rank is up, `deadline` passes, or `interrupted()` returns true (polled
  // every 50 ms); returns the ranks still missing.
  std::vector<int64_t> wait_for_ranks(std::chrono::steady_clock::time_point deadline,
                                      const std::function<bool()>& interrupted);
  // Rank 0's registration, once it came (model name, max_model_len, root for /v1/models).
  std::optional<RankRegistration> reference() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

class DpRankReporter {
 public:
  DpRankReporter(std::string master_ip, int master_port);
  ~DpRankReporter();  // stop()
  DpRankReporter(const DpRankReporter&) = delete;
  DpRankReporter& operator=(const DpRankReporter&) = delete;

  // Connects to the master, retrying until `deadline` (or `interrupted()`); returns this end's
  // local address, which is the address the master can reach this host at. Throws
  // atom::Error(kNotFound) naming the master when the deadline passes.
  std::string connect(std::chrono::steady_clock::time_point deadline,
                      const std::function<bool()>& interrupted);
  // Sends the registration and waits (until `deadline`) for the answer; a refusal throws
  // atom::Error(kInvalidArgument) with the master's reason.
  void register_rank(const RankRegistration& registration,
                     std::chrono::steady_clock::time_point deadline,
                     const std::function<bool()>& interrupted);
  // From now on, sends load() every kLoadReportInterval from a thread of its own.
  void start_reporting(std::function<RankLoad()> load);
  // Tells the master this rank is shutting down (it keeps reporting until stop()).
  void draining();
  // True once the master closed the connection, declared this rank dead or went silent (no
  // heartbeat for kHeartbeatTimeout); lost_reason() says which.
  bool master_lost() const;
  std::string lost_reason() const;
  // Closes the connection and stops the thread; never waits on the network. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::server

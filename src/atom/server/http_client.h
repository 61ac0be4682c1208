// A small asynchronous HTTP/1.1 client (Boost.Beast over Asio) for the data-parallel front end:
// it forwards one request to a rank's internal endpoint and hands the answer back piece by
// piece as it arrives, so an SSE stream is relayed chunk by chunk, never buffered whole.
//
// One connection per call ("Connection: close"): ranks are on the same node or network, where a
// connect costs far less than a generated token, and a call that is cancelled (its client went
// away, or its rank was declared dead) just closes its socket, which the rank notices and
// answers by aborting the engine request.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "atom/server/http_server.h"

namespace atom::server {

struct UpstreamRequest {
  std::string method = "GET";
  std::string target = "/";  // path and query
  Headers headers;           // besides Host, Content-Length and Connection, which are set
  std::string body;
};

struct UpstreamResult {
  bool ok = false;              // the whole response arrived
  bool connect_failed = false;  // nothing reached the server: the call may go elsewhere
  // With connect_failed: the server's host refused the connection or is unreachable
  // (ECONNREFUSED, EHOSTUNREACH, ...), so the server is likely gone; false for a local failure
  // (no free descriptor or port, an unresolvable name) and for a connect timeout.
  bool peer_down = false;
  bool cancelled = false;  // cancel() ended it
  std::string error;       // what went wrong, for messages ("" when ok)
};

// Every callback runs on the call's strand, one at a time, in this order: on_head once (unless
// the call fails first), on_data zero or more times, on_done exactly once.
struct UpstreamHandlers {
  // The status and headers. `streamed`: no Content-Length, the body comes chunked as produced.
  std::function<void(int status, const Headers& headers, bool streamed)> on_head;
  std::function<void(std::string data)> on_data;  // body bytes, de-chunked, as they arrive
  std::function<void(const UpstreamResult& result)> on_done;
};

class UpstreamCall {
 public:
  virtual ~UpstreamCall() = default;
  // Ends the call now (thread-safe; no effect once it is done): the socket is closed and
  // on_done runs with cancelled = true and `reason` as the error.
  virtual void cancel(std::string reason) = 0;
};

class HttpClient {
 public:
  explicit HttpClient(int threads = 1);
  ~HttpClient();  // stop()
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Starts the call to host:port (an IP address or a host name) and returns at once. With a
  // `deadline`, a call not done that long after its start ends as if cancelled, its error
  // saying so.
  std::shared_ptr<UpstreamCall> start(
      const std::string& host, int port, UpstreamRequest request, UpstreamHandlers handlers,
      std::chrono::milliseconds connect_timeout = std::chrono::seconds(5),
      std::optional<std::chrono::milliseconds> deadline = std::nullopt);
  // Cancels nothing by itself: stops the I/O threads (calls still open never finish).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::server

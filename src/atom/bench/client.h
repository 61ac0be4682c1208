// The HTTP side of the benchmark: one thread, one libcurl multi handle, every request a
// non-blocking transfer on it (no thread per request). Requests become due at their arrival
// offsets; due requests wait in FIFO order while --max-concurrency transfers are in flight (the
// reference's asyncio semaphore). A request's clock starts when its transfer starts, so queueing
// behind the cap is not part of its TTFT, as in the reference.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "atom/bench/request.h"

namespace atom::bench {

class StreamingClient {
 public:
  // api_key: the Authorization header carries "Bearer <key>" ("Bearer None" when unset, as
  // the reference formats a missing key).
  StreamingClient(Backend backend, std::optional<std::string> api_key);
  ~StreamingClient();
  StreamingClient(const StreamingClient&) = delete;
  StreamingClient& operator=(const StreamingClient&) = delete;

  // Sends inputs[i] at send_offsets[i] seconds (non-decreasing) after the call, at most
  // max_concurrency at a time (0: no cap). on_done(i) runs as each finishes. Failures never
  // throw: they come back as outputs with success=false and an error.
  std::vector<RequestOutput> run(const std::vector<RequestInput>& inputs,
                                 const std::vector<double>& send_offsets,
                                 int64_t max_concurrency,
                                 const std::function<void(size_t)>& on_done = {});
  RequestOutput run_one(const RequestInput& input);

  // POSTs the payload of `input` to its URL and reports whether the status was 200 (the
  // /start_profile and /stop_profile calls, which reply with plain JSON, not a stream).
  bool post_ok(const RequestInput& input);

  struct Transfer;  // one in-flight request (client.cpp)

 private:
  Backend backend_;
  std::string auth_header_;
  void* multi_ = nullptr;  // CURLM*
};

// Seconds on the steady clock (the timestamps of every measurement).
double now_seconds();

}  // namespace atom::bench

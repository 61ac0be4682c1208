// A small event-driven HTTP/1.1 server (Boost.Beast over Asio): a few I/O threads serve any
// number of connections, so hundreds of open streams cost sockets, not threads. Requests are
// parsed by Beast; each one goes to a Handler with an HttpResponder that answers it at once or
// later, from any thread (the engine thread's callbacks), as one body or as a chunked stream.
// While a response is pending the connection is watched, so a client that goes away is noticed
// without waiting for the next write, and the handler's on_disconnect callback runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace atom::server {

using Headers = std::vector<std::pair<std::string, std::string>>;

// ASCII case-insensitive equality, as HTTP compares header names.
bool iequals(std::string_view a, std::string_view b);
// The value of the first header named `name` (case-insensitive), "" when absent.
std::string header_value(const Headers& headers, std::string_view name);

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path and query
  std::string path;    // target up to '?'
  Headers headers;
  std::string body;
  // The value of a header (case-insensitive name), "" when absent.
  std::string header(std::string_view name) const;
};

// Answers one request: either send() once, or start_stream(), write()..., end(). Every method is
// thread-safe and returns at once (the work runs on the connection's strand); calls after the
// client went away are ignored.
class HttpResponder {
 public:
  virtual ~HttpResponder() = default;
  virtual void send(int status, std::string content_type, std::string body,
                    Headers extra = {}) = 0;
  virtual void start_stream(int status, std::string content_type, Headers extra = {}) = 0;
  virtual void write(std::string data) = 0;  // one chunk of the stream
  virtual void end() = 0;                    // the stream's last chunk
  // Runs once, on the connection's strand, when the client disconnects (or a write fails)
  // before the response is complete. Set it before the request can outlive the handler call.
  virtual void on_disconnect(std::function<void()> callback) = 0;
  // Runs `fn` on the connection's strand, in order with the calls above: state shared by a
  // handler and its engine callbacks can live there without a lock.
  virtual void post(std::function<void()> fn) = 0;
};

// Called on an I/O thread for every complete request. It must not block for long (tokenizing
// a prompt is fine, waiting for generation is not): long work answers later via the responder.
using HttpHandler = std::function<void(HttpRequest, std::shared_ptr<HttpResponder>)>;

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 8000;                              // 0: any free port (see HttpServer::port)
  int threads = 2;                              // I/O threads
  size_t max_body_bytes = size_t(32) << 20;     // larger request bodies get 413
  int idle_timeout_seconds = 120;               // keep-alive connections with no request
  int write_timeout_seconds = 60;               // a client that stops reading is dropped
  // The body of the errors the HTTP layer answers itself (400 unparsable request, 413 body too
  // large, 500 handler failure), as (status, message) -> (content type, body).
  std::function<std::pair<std::string, std::string>(int, const std::string&)> error_body;
};

class HttpServer {
 public:
  // Binds and listens; throws atom::Error(kInvalidArgument) when the address cannot be bound.
  // Nothing is accepted before start().
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;  // the bound port
  void start();      // starts the I/O threads and accepting
  // Closes the listening socket: new connections are refused, open ones keep being served.
  void stop_accepting();
  // Requests received whose response is not complete (and whose client is still there).
  int64_t num_open_requests() const;
  // Stops the I/O threads and drops every connection. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::server

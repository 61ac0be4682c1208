#include "atom/server/http_server.h"

#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <future>
#include <deque>
#include <optional>
#include <thread>
#include <unordered_set>
#include <mutex>

#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string header_value(const Headers& headers, std::string_view name) {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return {};
}

namespace {

// The status line and headers of a response. content_length unset: a streamed body (chunked
// on HTTP/1.1; on HTTP/1.0 the body runs to the connection's close).
std::string response_head(int status, const std::string& content_type, const Headers& extra,
                          bool keep_alive, bool chunked, std::optional<size_t> content_length) {
  std::string h = "HTTP/1.1 " + std::to_string(status) + " ";
  const auto reason = http::obsolete_reason(http::int_to_status(unsigned(status)));
  h += reason.empty() ? std::string("Unknown") : std::string(reason.data(), reason.size());
  h += "\r\n";
  if (!content_type.empty()) h += "Content-Type: " + content_type + "\r\n";
  for (const auto& [k, v] : extra) h += k + ": " + v + "\r\n";
  if (content_length) {
    h += "Content-Length: " + std::to_string(*content_length) + "\r\n";
  } else if (chunked) {
    h += "Transfer-Encoding: chunked\r\n";
  }
  h += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  h += "\r\n";
  return h;
}

std::string hex(size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), kDigits[n & 15]);
    n >>= 4;
  } while (n);
  return s;
}

}  // namespace

std::string HttpRequest::header(std::string_view name) const {
  return header_value(headers, name);
}

class Session;

struct ServerState {
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<int64_t> open_requests{0};
  std::mutex mu;
  std::unordered_set<Session*> sessions;  // guarded by mu: every live connection
};

// One connection. Everything below runs on the connection's strand (the socket's executor).
// A connection answers its requests one at a time; `gen_` numbers them so a responder of an
// earlier request can never touch a later one.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerState> state,
          std::shared_ptr<net::io_context> ioc)
      : ioc_(std::move(ioc)), state_holder_(std::move(state)), state_(*state_holder_),
        stream_(std::move(socket)) {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.sessions.insert(this);
  }

  ~Session() {
    std::lock_guard<std::mutex> lock(state_.mu);
    state_.sessions.erase(this);
    if (pending_) --state_.open_requests;
  }

  // HttpServer::stop(), with no I/O thread running: close the socket and cancel the timers, so
  // that every pending operation completes (aborted) and releases the session.
  void force_close() {
    closed_ = true;
    queue_.clear();
    on_disconnect_ = nullptr;
    stream_.close();
  }

  void run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->do_read(); });
  }

  template <typename F>
  void on_strand(F&& f) {
    net::dispatch(stream_.get_executor(), std::forward<F>(f));
  }

  void send(uint64_t gen, int status, const std::string& content_type, const std::string& body,
            const Headers& extra) {
    if (!current(gen) || started_) return;
    started_ = true;
    enqueue(response_head(status, content_type, extra, keep_alive_, false, body.size()) + body);
    finish();
  }

  void start_stream(uint64_t gen, int status, const std::string& content_type,
                    const Headers& extra) {
    if (!current(gen) || started_) return;
    started_ = true;
    streaming_ = true;
    enqueue(response_head(status, content_type, extra, keep_alive_, chunked_, std::nullopt));
  }

  void write_chunk(uint64_t gen, const std::string& data) {
    if (!current(gen) || !streaming_ || finishing_ || data.empty()) return;
    enqueue(chunked_ ? hex(data.size()) + "\r\n" + data + "\r\n" : data);
  }

  void end_stream(uint64_t gen) {
    if (!current(gen) || !streaming_ || finishing_) return;
    if (chunked_) enqueue("0\r\n\r\n");
    finish();
  }

  void set_on_disconnect(uint64_t gen, std::function<void()> cb) {
    if (gen != gen_) return;
    if (gone_) {  // the client left before the handler registered: tell it now
      cb();
      return;
    }
    if (pending_) on_disconnect_ = std::move(cb);
  }

 private:
  bool current(uint64_t gen) const { return gen == gen_ && pending_ && !closed_; }

  void do_read() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(state_.options.max_body_bytes);
    stream_.expires_after(std::chrono::seconds(state_.options.idle_timeout_seconds));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(error_code ec, size_t) {
    if (closed_) return;
    if (ec == http::error::end_of_stream || ec == net::error::operation_aborted) return close();
    if (ec == http::error::body_limit) {
      return reply_and_close(413, fmt::format("the request body is larger than {} bytes",
                                              state_.options.max_body_bytes));
    }
    if (ec == http::error::partial_message) return close();  // the client left mid-request
    if (ec.category() == http::make_error_code(http::error::bad_target).category())
      return reply_and_close(400, "malformed HTTP request: " + ec.message());
    if (ec) return close();  // timeout, reset: nobody to answer
    stream_.expires_never();
    http::request<http::string_body> msg = parser_->release();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.path = req.target.substr(0, req.target.find('?'));
    for (const auto& field : msg)
      req.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    req.body = std::move(msg.body());
    keep_alive_ = msg.keep_alive();
    chunked_ = msg.version() >= 11;
    begin_request();
    watch();
    auto responder = make_responder();
    try {
      state_.handler(std::move(req), responder);
    } catch (const std::exception& e) {
      ATOM_LOG_ERROR("HTTP handler failed: {}", e.what());
      auto [type, body] = error_body(500, std::string("internal error: ") + e.what());
      send(gen_, 500, type, body, {});
    }
  }

  void begin_request() {
    ++gen_;
    pending_ = true;
    gone_ = false;
    started_ = streaming_ = finishing_ = false;
    on_disconnect_ = nullptr;
    ++state_.open_requests;
  }

  std::pair<std::string, std::string> error_body(int status, const std::string& message) const {
    if (state_.options.error_body) return state_.options.error_body(status, message);
    return {"text/plain", message + "\n"};
  }

  void reply_and_close(int status, const std::string& message) {
    keep_alive_ = false;
    chunked_ = true;
    begin_request();
    auto [type, body] = error_body(status, message);
    send(gen_, status, type, body, {});
  }

  // While a response is pending, wait for the socket to become readable: with no request
  // pipelined behind this one, that means the client closed or reset the connection.
  void watch() {
    if (watching_ || closed_) return;
    watching_ = true;
    stream_.socket().async_wait(tcp::socket::wait_read,
                                beast::bind_front_handler(&Session::on_readable,
                                                          shared_from_this()));
  }

  void on_readable(error_code ec) {
    watching_ = false;
    if (closed_ || ec == net::error::operation_aborted) return;
    if (ec) return client_gone();
    if (!pending_) return;  // the response completed meanwhile: the next read owns the socket
    char c;
    const ssize_t n = ::recv(stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return client_gone();  // orderly close
    if (n > 0) return;  // a pipelined request: it is read after this response
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return watch();
    client_gone();
  }

  void enqueue(std::string bytes) {
    if (closed_ || bytes.empty()) return;
    queue_.push_back(std::move(bytes));
    if (!writing_) do_write();
  }

  void do_write() {
    writing_ = true;
    stream_.expires_after(std::chrono::seconds(state_.options.write_timeout_seconds));
    net::async_write(stream_, net::buffer(queue_.front()),
                     beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }

  void on_write(error_code ec, size_t) {
    writing_ = false;
    if (closed_) return;
    if (ec) return client_gone();
    queue_.pop_front();
    if (!queue_.empty()) return do_write();
    stream_.expires_never();
    if (finishing_) response_done();
  }

  // The response's last bytes are queued: complete once they are written.
  void finish() {
    finishing_ = true;
    if (!writing_ && queue_.empty()) response_done();
  }

  void response_done() {
    pending_ = false;
    finishing_ = false;
    on_disconnect_ = nullptr;
    --state_.open_requests;
    if (!keep_alive_) {
      error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      return close();
    }
    do_read();
  }

  void client_gone() {
    if (closed_) return;
    const bool was_pending = pending_;
    close();
    if (was_pending) {
      gone_ = true;
      if (on_disconnect_) {
        auto cb = std::move(on_disconnect_);
        on_disconnect_ = nullptr;
        cb();
      }
    }
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    if (pending_) {
      pending_ = false;
      --state_.open_requests;
    }
    queue_.clear();
    error_code ignored;
    stream_.socket().close(ignored);
  }

  std::shared_ptr<HttpResponder> make_responder();

  // A responder may outlive the server (held by a late engine callback): the session keeps the
  // I/O context and the shared state alive, declared first so they go last.
  std::shared_ptr<net::io_context> ioc_;
  std::shared_ptr<ServerState> state_holder_;
  ServerState& state_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  uint64_t gen_ = 0;         // number of the request being answered
  bool pending_ = false;     // its response is not complete yet
  bool gone_ = false;        // the client left before it was
  bool started_ = false;     // send() or start_stream() was called
  bool streaming_ = false;
  bool finishing_ = false;   // the last bytes are queued
  bool keep_alive_ = false;
  bool chunked_ = true;      // HTTP/1.1: streams use chunked transfer encoding
  bool closed_ = false;
  bool watching_ = false;
  bool writing_ = false;
  std::deque<std::string> queue_;  // framed bytes to write, in order
  std::function<void()> on_disconnect_;
};

namespace {

class Responder final : public HttpResponder {
 public:
  Responder(std::shared_ptr<Session> session, uint64_t gen)
      : session_(std::move(session)), gen_(gen) {}

  void send(int status, std::string content_type, std::string body, Headers extra) override {
    session_->on_strand([s = session_, g = gen_, status, t = std::move(content_type),
                         b = std::move(body), e = std::move(extra)] {
      s->send(g, status, t, b, e);
    });
  }
  void start_stream(int status, std::string content_type, Headers extra) override {
    session_->on_strand([s = session_, g = gen_, status, t = std::move(content_type),
                         e = std::move(extra)] { s->start_stream(g, status, t, e); });
  }
  void write(std::string data) override {
    session_->on_strand([s = session_, g = gen_, d = std::move(data)] { s->write_chunk(g, d); });
  }
  void end() override {
    session_->on_strand([s = session_, g = gen_] { s->end_stream(g); });
  }
  void on_disconnect(std::function<void()> callback) override {
    session_->on_strand([s = session_, g = gen_, cb = std::move(callback)]() mutable {
      s->set_on_disconnect(g, std::move(cb));
    });
  }
  void post(std::function<void()> fn) override { session_->on_strand(std::move(fn)); }

 private:
  std::shared_ptr<Session> session_;
  uint64_t gen_;
};

}  // namespace

std::shared_ptr<HttpResponder> Session::make_responder() {
  return std::make_shared<Responder>(shared_from_this(), gen_);
}

struct HttpServer::Impl {
  // Shared with the sessions: a responder kept past the server's end keeps them alive.
  std::shared_ptr<ServerState> state = std::make_shared<ServerState>();
  std::shared_ptr<net::io_context> ioc;
  tcp::acceptor acceptor;
  std::vector<std::thread> threads;
  bool stopped = false;

  Impl(HttpServerOptions options, HttpHandler handler)
      : ioc(std::make_shared<net::io_context>(std::max(1, options.threads))),
        acceptor(net::make_strand(*ioc)) {
    state->options = std::move(options);
    state->handler = std::move(handler);
  }

  void accept() {
    acceptor.async_accept(net::make_strand(*ioc), [this](error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);  // SSE chunks go out at once
        std::make_shared<Session>(std::move(socket), state, ioc)->run();
      } else {
        ATOM_LOG_WARN("accept failed: {}", ec.message());
      }
      accept();
    });
  }
};

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {
  const HttpServerOptions& o = impl_->state->options;
  error_code ec;
  const auto address = net::ip::make_address(o.host, ec);
  ATOM_CHECK(!ec, kInvalidArgument, "--host {}: not an IP address ({})", o.host, ec.message());
  ATOM_CHECK(o.port >= 0 && o.port <= 65535, kInvalidArgument, "port {} is out of range",
             o.port);
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(o.port));
  tcp::acceptor& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  ATOM_CHECK(!ec, kInvalidArgument, "cannot listen on {}:{}: {}", o.host, o.port, ec.message());
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::start() {
  net::dispatch(impl_->acceptor.get_executor(), [this] { impl_->accept(); });
  const int n = std::max(1, impl_->state->options.threads);
  for (int i = 0; i < n; ++i) impl_->threads.emplace_back([this] { impl_->ioc->run(); });
}

void HttpServer::stop_accepting() {
  // Closing the acceptor must happen on its strand; wait for it so the port is closed on return.
  std::promise<void> done;
  net::dispatch(impl_->acceptor.get_executor(), [&] {
    error_code ignored;
    impl_->acceptor.close(ignored);
    done.set_value();
  });
  if (impl_->threads.empty()) {  // never started: run the handler here
    impl_->ioc->poll();
  }
  done.get_future().wait();
}

int64_t HttpServer::num_open_requests() const { return impl_->state->open_requests.load(); }

void HttpServer::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->ioc->stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
  // No I/O thread runs now: close every connection and the listener, then run the aborted
  // operations' handlers here, so each session not held elsewhere is released (no fd leaks).
  {
    std::lock_guard<std::mutex> lock(impl_->state->mu);
    for (Session* s : impl_->state->sessions) s->force_close();
  }
  error_code ignored;
  impl_->acceptor.close(ignored);
  impl_->ioc->restart();
  impl_->ioc->run();
}

}  // namespace atom::server

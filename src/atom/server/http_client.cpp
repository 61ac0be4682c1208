#include "atom/server/http_client.h"

#include <fmt/format.h>

#include <utility>  // std::exchange, which boost/asio/awaitable.hpp uses unincluded

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

constexpr size_t kReadBufferBytes = 16 * 1024;

class Call final : public UpstreamCall, public std::enable_shared_from_this<Call> {
 public:
  Call(net::io_context& ioc, UpstreamRequest request, UpstreamHandlers handlers,
       std::chrono::milliseconds connect_timeout, std::optional<std::chrono::milliseconds> deadline)
      : stream_(net::make_strand(ioc)),
        deadline_timer_(stream_.get_executor()),
        request_(std::move(request)),
        handlers_(std::move(handlers)),
        connect_timeout_(connect_timeout),
        deadline_(deadline) {}

  void start(tcp::endpoint endpoint) {
    net::dispatch(stream_.get_executor(), [self = shared_from_this(), endpoint] {
      if (self->done_) return;
      self->arm_deadline();
      self->stream_.expires_after(self->connect_timeout_);
      self->stream_.async_connect(endpoint, beast::bind_front_handler(&Call::on_connect, self));
    });
  }

  // A failure before the call could start (an unresolvable host): reported like any other.
  void fail_now(std::string error) {
    net::dispatch(stream_.get_executor(), [self = shared_from_this(), e = std::move(error)] {
      self->finish(false, true, false, e);
    });
  }

  void cancel(std::string reason) override {
    net::dispatch(stream_.get_executor(), [self = shared_from_this(), r = std::move(reason)] {
      self->finish(false, false, true, r);
    });
  }

 private:
  void arm_deadline() {
    if (!deadline_) return;
    deadline_timer_.expires_after(*deadline_);
    deadline_timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec) return;  // cancelled: the call finished first
      self->finish(false, false, true,
                   fmt::format("no complete answer within {} ms", self->deadline_->count()));
    });
  }

  // A refusal or an unreachable host says the server is gone; anything else (no descriptor,
  // no local port, a timeout) may be this side's trouble or a slow network.
  static bool peer_down(const error_code& ec) {
    return ec == net::error::connection_refused || ec == net::error::host_unreachable ||
           ec == net::error::network_unreachable || ec == net::error::connection_reset;
  }

  void on_connect(error_code ec) {
    if (done_) return;
    if (ec) {
      peer_down_ = peer_down(ec);
      return finish(false, true, false,
                    ec == beast::error::timeout ? std::string("connect timed out")
                                                : "cannot connect: " + ec.message());
    }
    stream_.expires_never();
    http::verb verb = http::string_to_verb(request_.method);
    if (verb == http::verb::unknown) verb = http::verb::get;
    msg_.method(verb);
    msg_.target(request_.target);
    msg_.version(11);
    const tcp::endpoint peer = stream_.socket().remote_endpoint(ec);
    if (!ec) {
      const std::string address = peer.address().to_string();
      msg_.set(http::field::host, (peer.address().is_v6() ? "[" + address + "]" : address) + ":" +
                                      std::to_string(peer.port()));
    }
    for (const auto& [k, v] : request_.headers) msg_.set(k, v);
    msg_.keep_alive(false);
    msg_.body() = std::move(request_.body);
    msg_.prepare_payload();
    http::async_write(stream_, msg_,
                      beast::bind_front_handler(&Call::on_write, shared_from_this()));
  }

  void on_write(error_code ec, size_t) {
    if (done_) return;
    if (ec) return finish(false, false, false, "sending the request failed: " + ec.message());
    // A stream may be long; the rank bounds it. (Not boost::none: Boost 1.74 compares a
    // Content-Length against an empty limit as if the limit were below it.)
    parser_.body_limit(std::numeric_limits<std::uint64_t>::max());
    do_read();
  }

  void do_read() {
    parser_.get().body().data = buffer_bytes_;
    parser_.get().body().size = sizeof(buffer_bytes_);
    http::async_read_some(stream_, buffer_, parser_,
                          beast::bind_front_handler(&Call::on_read, shared_from_this()));
  }

  void on_read(error_code ec, size_t) {
    if (done_) return;
    if (ec == http::error::need_buffer) ec = {};  // our buffer is full: hand it on, read on
    if (!head_sent_ && parser_.is_header_done()) {
      head_sent_ = true;
      const auto& res = parser_.get();
      Headers headers;
      for (const auto& field : res)
        headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
      const bool streamed = !parser_.content_length().has_value();
      if (handlers_.on_head)
        safely([&] { handlers_.on_head(int(res.result_int()), headers, streamed); });
    }
    const size_t got = sizeof(buffer_bytes_) - parser_.get().body().size;
    if (got > 0 && handlers_.on_data)
      safely([&] { handlers_.on_data(std::string(buffer_bytes_, got)); });
    if (ec) {
      const std::string what = ec == http::error::end_of_stream || ec == net::error::eof ||
                                       ec == http::error::partial_message
                                   ? std::string(
                                         "the connection closed before the response "
                                         "was complete")
                                   : "connection lost: " + ec.message();
      return finish(false, false, false, what);
    }
    if (parser_.is_done()) return finish(true, false, false, "");
    do_read();
  }

  template <typename F>
  void safely(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      ATOM_LOG_ERROR("upstream call handler failed: {}", e.what());
    }
  }

  void finish(bool ok, bool connect_failed, bool cancelled, const std::string& error) {
    if (done_) return;
    done_ = true;
    deadline_timer_.cancel();
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    UpstreamResult r;
    r.ok = ok;
    r.connect_failed = connect_failed;
    r.peer_down = connect_failed && peer_down_;
    r.cancelled = cancelled;
    r.error = error;
    if (handlers_.on_done) safely([&] { handlers_.on_done(r); });
    handlers_ = {};  // drop what the callbacks hold (responders, state) now
  }

  beast::tcp_stream stream_;
  net::steady_timer deadline_timer_;
  UpstreamRequest request_;
  UpstreamHandlers handlers_;
  std::chrono::milliseconds connect_timeout_;
  std::optional<std::chrono::milliseconds> deadline_;
  http::request<http::string_body> msg_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  char buffer_bytes_[kReadBufferBytes];
  bool head_sent_ = false;
  bool done_ = false;
  bool peer_down_ = false;
};

}  // namespace

struct HttpClient::Impl {
  net::io_context ioc;
  net::executor_work_guard<net::io_context::executor_type> work = net::make_work_guard(ioc);
  std::vector<std::thread> threads;
  bool stopped = false;
};

HttpClient::HttpClient(int threads) : impl_(std::make_unique<Impl>()) {
  for (int i = 0; i < std::max(1, threads); ++i)
    impl_->threads.emplace_back([this] { impl_->ioc.run(); });
}

HttpClient::~HttpClient() { stop(); }

void HttpClient::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->work.reset();
  impl_->ioc.stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
}

std::shared_ptr<UpstreamCall> HttpClient::start(const std::string& host, int port,
                                                UpstreamRequest request, UpstreamHandlers handlers,
                                                std::chrono::milliseconds connect_timeout,
                                                std::optional<std::chrono::milliseconds> deadline) {
  auto call = std::make_shared<Call>(impl_->ioc, std::move(request), std::move(handlers),
                                     connect_timeout, deadline);
  error_code ec;
  net::ip::address address = net::ip::make_address(host, ec);
  if (ec) {  // a host name: resolve it here (rare: ranks register with their address)
    tcp::resolver resolver(impl_->ioc);
    const auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      call->fail_now("cannot resolve " + host + ": " + (ec ? ec.message() : "no address"));
      return call;
    }
    address = results.begin()->endpoint().address();
  }
  call->start(tcp::endpoint(address, static_cast<unsigned short>(port)));
  return call;
}

}  // namespace atom::server

// A scripted OpenAI-style streaming server on 127.0.0.1 for the benchmark tests: each POST gets
// a status and a list of (delay, bytes) events written as HTTP chunks, so the test knows the
// TTFT, ITLs and latency the client should measure. It records every request and the highest
// number of requests it served at once.
#pragma once

#define CPPHTTPLIB_TCP_NODELAY true
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace atom::bench::testing {

struct Event {
  int delay_ms = 0;  // slept before the bytes are written
  std::string bytes;
};

struct Script {
  int status = 200;
  std::vector<Event> events;
};

struct Recorded {
  std::string path;
  std::string authorization;
  std::string content_type;
  nlohmann::json body;
  double arrival_s = 0;  // steady clock, as atom::bench::now_seconds()
};

// "data: <json>\n\n" for a completions token chunk.
inline std::string completion_chunk(const std::string& text) {
  nlohmann::json j = {{"id", "cmpl-1"}, {"object", "text_completion"}, {"model", "m"},
                      {"choices", {{{"index", 0}, {"text", text}, {"finish_reason", nullptr}}}}};
  return "data: " + j.dump() + "\n\n";
}
inline std::string usage_chunk(int completion_tokens) {
  nlohmann::json j = {{"id", "cmpl-1"},
                      {"usage",
                       {{"prompt_tokens", 5},
                        {"completion_tokens", completion_tokens},
                        {"total_tokens", 5 + completion_tokens}}}};
  return "data: " + j.dump() + "\n\n";
}
inline std::string chat_chunk(const nlohmann::json& delta) {
  nlohmann::json j = {{"object", "chat.completion.chunk"},
                      {"choices", {{{"index", 0}, {"delta", delta}, {"finish_reason", nullptr}}}}};
  return "data: " + j.dump() + "\n\n";
}
inline const std::string kDone = "data: [DONE]\n\n";

// A completions reply as ATOM streams it: first token after ttft_ms, then tokens-1 more every
// itl_ms, the trailing empty "stop" chunk right after, the usage chunk and [DONE].
inline Script atom_like_stream(int ttft_ms, int itl_ms, int tokens) {
  Script s;
  s.events.push_back({ttft_ms, completion_chunk("t0")});
  for (int i = 1; i < tokens; ++i) s.events.push_back({itl_ms, completion_chunk("t")});
  s.events.push_back({0, completion_chunk("") + usage_chunk(tokens) + kDone});
  return s;
}

class FakeServer {
 public:
  using Handler = std::function<Script(const Recorded&, int64_t request_number)>;

  explicit FakeServer(Handler handler) : handler_(std::move(handler)) {
    // One thread per connection so concurrent streams are not serialized by the server.
    server_.new_task_queue = [] { return new httplib::ThreadPool(256); };
    // Idle keep-alive connections hold a worker until this timeout, which stop() waits for.
    server_.set_keep_alive_timeout(1);
    const auto serve = [this](const httplib::Request& req, httplib::Response& res) {
      Recorded rec;
      rec.path = req.path;
      rec.authorization = req.get_header_value("Authorization");
      rec.content_type = req.get_header_value("Content-Type");
      rec.body = nlohmann::json::parse(req.body, nullptr, false);
      rec.arrival_s = std::chrono::duration<double>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
      int64_t number = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        number = int64_t(requests_.size());
        requests_.push_back(rec);
      }
      Script script = handler_(rec, number);
      res.status = script.status;
      if (script.status != 200) {
        res.set_content("{\"detail\": \"scripted failure\"}", "application/json");
        return;
      }
      const int now = ++in_flight_;
      int prev = max_in_flight_.load();
      while (now > prev && !max_in_flight_.compare_exchange_weak(prev, now)) {
      }
      auto events = std::make_shared<std::vector<Event>>(std::move(script.events));
      res.set_chunked_content_provider(
          "text/event-stream", [this, events](size_t, httplib::DataSink& sink) {
            for (const Event& e : *events) {
              if (e.delay_ms > 0)
                std::this_thread::sleep_for(std::chrono::milliseconds(e.delay_ms));
              sink.write(e.bytes.data(), e.bytes.size());
            }
            --in_flight_;
            sink.done();
            return true;
          });
    };
    server_.Post(".*", serve);
    // The library listens with a backlog of 5: a burst of more connections than that would
    // have SYNs dropped and retried a second later. Listening again raises the backlog.
    int listen_fd = -1;
    server_.set_socket_options([&listen_fd](int fd) {
      listen_fd = fd;
      int yes = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (listen_fd >= 0) ::listen(listen_fd, 1024);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeServer() {
    server_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<Recorded> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int max_in_flight() const { return max_in_flight_.load(); }

 private:
  Handler handler_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Recorded> requests_;
  std::atomic<int> in_flight_{0};
  std::atomic<int> max_in_flight_{0};
};

// A port with nothing listening: bound (never listened on), read back, closed.
inline int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace atom::bench::testing

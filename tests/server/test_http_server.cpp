// The HTTP layer with scripted handlers and a raw-socket client: bodies, keep-alive, chunked
// streams written from other threads, client disconnects noticed while a response is pending,
// limits, malformed requests, and many concurrent streams on two I/O threads.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "atom/server/http_server.h"

namespace atom::server {
namespace {

using namespace std::chrono_literals;

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};  // a hung server fails the test instead of hanging it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    off += size_t(n);
  }
}

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::vector<std::string> chunks;  // a chunked body's chunks, in order
};

// Reads one response from fd; `buf` keeps bytes read past it (the next response).
Response read_response(int fd, std::string& buf) {
  const auto fill = [&]() {
    char tmp[4096];
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf.append(tmp, size_t(n));
    return true;
  };
  Response r;
  size_t end;
  while ((end = buf.find("\r\n\r\n")) == std::string::npos)
    if (!fill()) return r;
  const std::string head = buf.substr(0, end);
  buf.erase(0, end + 4);
  r.status = std::stoi(head.substr(9, 3));
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos + 2 < head.size()) {
    const size_t next = head.find("\r\n", pos + 2);
    const std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos
                                                                            : next - pos - 2);
    const size_t colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = line.substr(colon + 2);
    pos = next;
  }
  if (r.headers.count("content-length")) {
    const size_t len = std::stoul(r.headers["content-length"]);
    while (buf.size() < len)
      if (!fill()) return r;
    r.body = buf.substr(0, len);
    buf.erase(0, len);
  } else if (r.headers["transfer-encoding"] == "chunked") {
    for (;;) {
      size_t eol;
      while ((eol = buf.find("\r\n")) == std::string::npos)
        if (!fill()) return r;
      const size_t size = std::stoul(buf.substr(0, eol), nullptr, 16);
      while (buf.size() < eol + 2 + size + 2)
        if (!fill()) return r;
      if (size == 0) {
        buf.erase(0, eol + 4);
        break;
      }
      r.chunks.push_back(buf.substr(eol + 2, size));
      r.body += r.chunks.back();
      buf.erase(0, eol + 2 + size + 2);
    }
  }
  return r;
}

Response roundtrip(int port, const std::string& request) {
  const int fd = connect_to(port);
  EXPECT_GE(fd, 0);
  send_all(fd, request);
  std::string buf;
  Response r = read_response(fd, buf);
  ::close(fd);
  return r;
}

std::string post(const std::string& path, const std::string& body, bool keep_alive = true) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
         (keep_alive ? "" : "Connection: close\r\n") +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

HttpServerOptions local() {
  HttpServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.threads = 2;
  return o;
}

TEST(HttpServer, AnswersWithBodyAndKeepsTheConnectionAlive) {
  HttpServer server(local(), [](HttpRequest req, std::shared_ptr<HttpResponder> res) {
    res->send(200, "text/plain",
              req.method + " " + req.path + " [" + req.body + "] " + req.header("x-TEST"),
              {{"X-Reply", "yes"}});
  });
  server.start();
  const int fd = connect_to(server.port());
  ASSERT_GE(fd, 0);
  std::string buf;
  send_all(fd, post("/a?q=1", "hello") + "GET /b HTTP/1.1\r\nHost: x\r\nX-Test: v\r\n\r\n");
  Response r1 = read_response(fd, buf);  // two pipelined requests, answered in order
  Response r2 = read_response(fd, buf);
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(r1.body, "POST /a [hello] ");
  EXPECT_EQ(r1.headers["x-reply"], "yes");
  EXPECT_EQ(r1.headers["connection"], "keep-alive");
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(r2.body, "GET /b [] v");
  send_all(fd, post("/c", "", /*keep_alive=*/false));
  Response r3 = read_response(fd, buf);
  EXPECT_EQ(r3.body, "POST /c [] ");
  EXPECT_EQ(r3.headers["connection"], "close");
  char c;
  EXPECT_EQ(::recv(fd, &c, 1, 0), 0);  // the server closed after Connection: close
  ::close(fd);
  EXPECT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
}

TEST(HttpServer, StreamsChunksWrittenFromAnotherThread) {
  std::vector<std::thread> writers;
  std::mutex mu;
  HttpServer server(local(), [&](HttpRequest, std::shared_ptr<HttpResponder> res) {
    std::lock_guard<std::mutex> lock(mu);
    writers.emplace_back([res] {
      res->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
      for (int i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(10ms);
        res->write("data: " + std::to_string(i) + "\n\n");
      }
      res->write("");  // an empty write must not end the chunked stream
      res->end();
      res->write("after the end");  // ignored
    });
  });
  server.start();
  const int fd = connect_to(server.port());
  std::string buf;
  send_all(fd, post("/s", "{}"));
  Response r = read_response(fd, buf);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  EXPECT_EQ(r.headers["transfer-encoding"], "chunked");
  EXPECT_EQ(r.headers["cache-control"], "no-cache");
  EXPECT_EQ(r.chunks, (std::vector<std::string>{"data: 0\n\n", "data: 1\n\n", "data: 2\n\n"}));
  // The connection is reusable after the stream.
  send_all(fd, post("/s", "{}"));
  EXPECT_EQ(read_response(fd, buf).chunks.size(), 3u);
  ::close(fd);
  std::lock_guard<std::mutex> lock(mu);
  for (std::thread& t : writers) t.join();
}

TEST(HttpServer, NoticesAClientThatLeavesWhileTheResponseIsPending) {
  std::promise<void> gone;
  std::shared_ptr<HttpResponder> kept;
  HttpServer server(local(), [&](HttpRequest, std::shared_ptr<HttpResponder> res) {
    kept = res;  // never answered: only the disconnect can end it
    res->on_disconnect([&] { gone.set_value(); });
  });
  server.start();
  const int fd = connect_to(server.port());
  send_all(fd, post("/wait", "{}"));
  ASSERT_TRUE(wait_until([&] { return server.num_open_requests() == 1; }));
  ::close(fd);
  EXPECT_EQ(gone.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
  kept->send(200, "text/plain", "too late");  // ignored, no crash
  kept.reset();
}

TEST(HttpServer, NoticesAClientThatLeavesMidStream) {
  std::promise<void> gone;
  std::atomic<bool> stop{false};
  std::thread writer;
  HttpServer server(local(), [&](HttpRequest, std::shared_ptr<HttpResponder> res) {
    res->on_disconnect([&] { gone.set_value(); });
    res->start_stream(200, "text/event-stream");
    writer = std::thread([res, &stop] {
      while (!stop) {
        res->write("data: tick\n\n");
        std::this_thread::sleep_for(20ms);
      }
    });
  });
  server.start();
  const int fd = connect_to(server.port());
  send_all(fd, post("/stream", "{}"));
  char tmp[256];
  ASSERT_GT(::recv(fd, tmp, sizeof tmp, 0), 0);  // the stream has begun
  ::close(fd);
  EXPECT_EQ(gone.get_future().wait_for(5s), std::future_status::ready);
  stop = true;
  writer.join();
  EXPECT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
}

TEST(HttpServer, RegisteringAfterTheClientLeftStillCallsBack) {
  std::promise<std::shared_ptr<HttpResponder>> got;
  HttpServer server(local(), [&](HttpRequest, std::shared_ptr<HttpResponder> res) {
    got.set_value(res);
  });
  server.start();
  const int fd = connect_to(server.port());
  send_all(fd, post("/late", "{}"));
  auto res = got.get_future().get();
  ::close(fd);
  ASSERT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
  std::promise<void> called;
  res->on_disconnect([&] { called.set_value(); });
  EXPECT_EQ(called.get_future().wait_for(5s), std::future_status::ready);
}

TEST(HttpServer, LimitsMalformedRequestsAndHandlerFailures) {
  HttpServerOptions o = local();
  o.max_body_bytes = 64;
  o.error_body = [](int status, const std::string& message) {
    return std::make_pair(std::string("application/json"),
                          "{\"status\":" + std::to_string(status) + ",\"m\":\"" + message + "\"}");
  };
  HttpServer server(o, [](HttpRequest req, std::shared_ptr<HttpResponder> res) {
    if (req.path == "/throw") throw std::runtime_error("boom");
    res->send(200, "text/plain", "ok");
  });
  server.start();
  Response big = roundtrip(server.port(), post("/x", std::string(65, 'a')));
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.headers["content-type"], "application/json");
  EXPECT_NE(big.body.find("\"status\":413"), std::string::npos);
  EXPECT_EQ(roundtrip(server.port(), post("/x", std::string(64, 'a'))).status, 200);
  Response bad = roundtrip(server.port(), "NOT A REQUEST\r\n\r\n");
  EXPECT_EQ(bad.status, 400);
  Response boom = roundtrip(server.port(), post("/throw", ""));
  EXPECT_EQ(boom.status, 500);
  EXPECT_NE(boom.body.find("boom"), std::string::npos);
  // The server is unharmed.
  EXPECT_EQ(roundtrip(server.port(), post("/x", "")).body, "ok");
  EXPECT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
}

TEST(HttpServer, ServesManyConcurrentStreamsOnTwoThreads) {
  constexpr int kClients = 200;
  std::mutex mu;
  std::vector<std::shared_ptr<HttpResponder>> open;
  HttpServer server(local(), [&](HttpRequest req, std::shared_ptr<HttpResponder> res) {
    res->start_stream(200, "text/event-stream");
    res->write("data: " + req.body + "\n\n");
    std::lock_guard<std::mutex> lock(mu);
    open.push_back(res);
  });
  server.start();
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) {
    fds.push_back(connect_to(server.port()));
    ASSERT_GE(fds.back(), 0);
    send_all(fds.back(), post("/s", std::to_string(i)));
  }
  // Every stream is open at once: none waits for another to finish.
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(mu);
    return int(open.size()) == kClients;
  }));
  EXPECT_EQ(server.num_open_requests(), kClients);
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& res : open) {
      res->write("data: end\n\n");
      res->end();
    }
  }
  for (int i = 0; i < kClients; ++i) {
    std::string buf;
    Response r = read_response(fds[size_t(i)], buf);
    ASSERT_EQ(r.chunks.size(), 2u);
    EXPECT_EQ(r.chunks[0], "data: " + std::to_string(i) + "\n\n");
    EXPECT_EQ(r.chunks[1], "data: end\n\n");
    ::close(fds[size_t(i)]);
  }
  EXPECT_TRUE(wait_until([&] { return server.num_open_requests() == 0; }));
}

TEST(HttpServer, StopAcceptingClosesThePortButFinishesOpenRequests) {
  std::promise<std::shared_ptr<HttpResponder>> got;
  HttpServer server(local(), [&](HttpRequest, std::shared_ptr<HttpResponder> res) {
    got.set_value(res);
  });
  server.start();
  const int port = server.port();
  const int fd = connect_to(port);
  send_all(fd, post("/slow", "{}"));
  auto res = got.get_future().get();
  server.stop_accepting();
  EXPECT_EQ(connect_to(port), -1);  // refused
  res->send(200, "text/plain", "finished");
  std::string buf;
  EXPECT_EQ(read_response(fd, buf).body, "finished");
  ::close(fd);
  server.stop();
}

TEST(HttpServer, RefusesAnAddressItCannotBind) {
  HttpServerOptions o = local();
  o.host = "not-an-ip";
  EXPECT_THROW(HttpServer(o, [](HttpRequest, std::shared_ptr<HttpResponder>) {}), std::exception);
  HttpServer first(local(), [](HttpRequest, std::shared_ptr<HttpResponder>) {});
  HttpServerOptions same = local();
  same.port = first.port();
  EXPECT_THROW(HttpServer(same, [](HttpRequest, std::shared_ptr<HttpResponder>) {}),
               std::exception);
}

}  // namespace
}  // namespace atom::server

#include "atom/bench/client.h"

#include <curl/curl.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>

#include "atom/core/error.h"

namespace atom::bench {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    ATOM_CHECK(rc == CURLE_OK, kInternal, "curl_global_init failed: {}", curl_easy_strerror(rc));
    // One socket per in-flight request: at a high --max-concurrency (or rate inf) the default
    // soft limit of open files (often 1024) would make connections fail on the client side.
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
      lim.rlim_cur = lim.rlim_max;
      setrlimit(RLIMIT_NOFILE, &lim);
    }
  });
}

constexpr long kTimeoutSeconds = 6 * 60 * 60;  // the reference's aiohttp total timeout

}  // namespace

struct StreamingClient::Transfer {
  Transfer(Backend backend, double start, int64_t prompt_len)
      : parser(backend, start, prompt_len) {}
  ~Transfer() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    if (headers != nullptr) curl_slist_free_all(headers);
  }

  size_t index = 0;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::string payload;
  std::string partial;  // the start of a body line whose '\n' has not arrived yet
  std::string reason;   // HTTP reason phrase of the last status line
  long status = -1;     // read once the body starts
  bool discard_body = false;  // profile calls and non-200 replies
  StreamParser parser;
  char errbuf[CURL_ERROR_SIZE] = {};

  static size_t on_header(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    const std::string_view line(data, size * n);
    if (line.substr(0, 5) == "HTTP/") {  // "HTTP/1.1 500 Internal Server Error\r\n"
      t->reason.clear();
      const size_t sp1 = line.find(' ');
      const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
      if (sp2 != std::string_view::npos) {
        std::string_view r = line.substr(sp2 + 1);
        while (!r.empty() && (r.back() == '\r' || r.back() == '\n' || r.back() == ' '))
          r.remove_suffix(1);
        t->reason = std::string(r);
      }
    }
    return size * n;
  }

  static size_t on_body(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    const size_t len = size * n;
    if (t->status < 0) {
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
      if (t->status != 200) t->discard_body = true;
    }
    if (t->discard_body) return len;
    // aiohttp hands the reference's loop one line at a time; each line is timed when read.
    size_t pos = 0;
    while (pos < len) {
      const void* nl = std::memchr(data + pos, '\n', len - pos);
      if (nl == nullptr) {
        t->partial.append(data + pos, len - pos);
        break;
      }
      const size_t end = size_t(static_cast<const char*>(nl) - data);
      bool ok;
      if (t->partial.empty()) {
        ok = t->parser.on_line(std::string_view(data + pos, end - pos), now_seconds());
      } else {
        t->partial.append(data + pos, end - pos);
        ok = t->parser.on_line(t->partial, now_seconds());
        t->partial.clear();
      }
      if (!ok) return 0;  // a malformed chunk: stop reading, as the reference's exception does
      pos = end + 1;
    }
    return len;
  }
};

StreamingClient::StreamingClient(Backend backend, std::optional<std::string> api_key)
    : backend_(backend),
      auth_header_("Authorization: Bearer " + (api_key ? *api_key : std::string("None"))) {
  global_init();
  multi_ = curl_multi_init();
  ATOM_CHECK(multi_ != nullptr, kInternal, "curl_multi_init failed");
}

StreamingClient::~StreamingClient() { curl_multi_cleanup(static_cast<CURLM*>(multi_)); }

namespace {

std::unique_ptr<StreamingClient::Transfer> make_transfer(Backend backend,
                                                          const std::string& auth_header,
                                                          const RequestInput& in, size_t index,
                                                          bool discard_body);

}  // namespace

std::vector<RequestOutput> StreamingClient::run(const std::vector<RequestInput>& inputs,
                                                const std::vector<double>& send_offsets,
                                                int64_t max_concurrency,
                                                const std::function<void(size_t)>& on_done) {
  ATOM_ASSERT(inputs.size() == send_offsets.size());
  CURLM* multi = static_cast<CURLM*>(multi_);
  const size_t n = inputs.size();
  std::vector<RequestOutput> outputs(n);
  std::vector<std::unique_ptr<Transfer>> live(n);
  std::deque<size_t> waiting;
  size_t next = 0, active = 0, done = 0;
  const double t0 = now_seconds();
  while (done < n) {
    const double now = now_seconds();
    while (next < n && t0 + send_offsets[next] <= now) waiting.push_back(next++);
    while (!waiting.empty() && (max_concurrency <= 0 || int64_t(active) < max_concurrency)) {
      const size_t i = waiting.front();
      waiting.pop_front();
      live[i] = make_transfer(backend_, auth_header_, inputs[i], i, false);
      curl_multi_add_handle(multi, live[i]->easy);
      ++active;
    }
    int running = 0;
    curl_multi_perform(multi, &running);
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Transfer* t = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
      const CURLcode rc = msg->data.result;
      long status = 0;
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
      RequestOutput out;
      if (t->parser.failed()) {
        out = t->parser.finish();
      } else if (rc != CURLE_OK) {
        out = t->parser.fail(t->errbuf[0] != '\0'
                                 ? fmt::format("{}: {}", curl_easy_strerror(rc), t->errbuf)
                                 : std::string(curl_easy_strerror(rc)));
      } else if (status != 200) {
        // The reference keeps only the reason phrase (empty over HTTP/2).
        out = t->parser.fail(t->reason);
      } else {
        if (!t->partial.empty()) t->parser.on_line(t->partial, now_seconds());  // no final '\n'
        out = t->parser.finish();
      }
      const size_t i = t->index;
      outputs[i] = std::move(out);
      curl_multi_remove_handle(multi, t->easy);
      live[i].reset();
      --active;
      ++done;
      if (on_done) on_done(i);
    }
    if (done == n) break;
    if (!waiting.empty() && (max_concurrency <= 0 || int64_t(active) < max_concurrency)) continue;
    int timeout_ms = 1000;
    if (next < n) {
      const double wait = t0 + send_offsets[next] - now_seconds();
      timeout_ms = int(std::clamp(std::ceil(wait * 1000.0), 0.0, 1000.0));
    }
    if (timeout_ms > 0 || active > 0) curl_multi_poll(multi, nullptr, 0, timeout_ms, nullptr);
  }
  return outputs;
}

RequestOutput StreamingClient::run_one(const RequestInput& input) {
  return run({input}, {0.0}, 0).front();
}

bool StreamingClient::post_ok(const RequestInput& input) {
  auto t = make_transfer(backend_, auth_header_, input, 0, true);
  const CURLcode rc = curl_easy_perform(t->easy);
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  return rc == CURLE_OK && status == 200;
}

namespace {

std::unique_ptr<StreamingClient::Transfer> make_transfer(Backend backend,
                                                          const std::string& auth_header,
                                                          const RequestInput& in, size_t index,
                                                          bool discard_body) {
  auto t = std::make_unique<StreamingClient::Transfer>(backend, 0.0, in.prompt_len);
  t->index = index;
  t->discard_body = discard_body;
  t->payload = build_payload(backend, in);
  t->easy = curl_easy_init();
  ATOM_CHECK(t->easy != nullptr, kInternal, "curl_easy_init failed");
  t->headers = curl_slist_append(t->headers, "Content-Type: application/json");
  t->headers = curl_slist_append(t->headers, auth_header.c_str());
  // curl would otherwise send "Expect: 100-continue" for bodies over 1 KiB and wait for the
  // server's go-ahead, adding a round trip (or a 1 s stall) to every long prompt's TTFT.
  t->headers = curl_slist_append(t->headers, "Expect:");
  CURL* e = t->easy;
  curl_easy_setopt(e, CURLOPT_URL, in.api_url.c_str());
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->payload.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(t->payload.size()));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &StreamingClient::Transfer::on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &StreamingClient::Transfer::on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t.get());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, kTimeoutSeconds);
  // The request's clock starts now (the reference reads perf_counter just before its POST).
  t->parser = StreamParser(backend, now_seconds(), in.prompt_len);
  return t;
}

}  // namespace

}  // namespace atom::bench

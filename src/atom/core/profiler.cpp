#include "atom/core/profiler.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <system_error>

#include "atom/core/error.h"

namespace atom::profiler {

namespace detail {
std::atomic<uint32_t> g_state{0};
}  // namespace detail

namespace {

namespace fs = std::filesystem;

// A host event as recorded: pointers to literals and integers only, so recording allocates
// nothing beyond the buffer's growth.
struct HostEvent {
  const char* name = nullptr;
  const char* cat = nullptr;
  int64_t index = -1;  // >= 0: the name is "<name> <index>"
  char ph = 'X';
  uint8_t num_args = 0;
  int64_t ts_ns = 0;
  int64_t dur_ns = 0;
  std::array<Arg, kMaxArgs> args{};
};

struct ThreadBuffer {
  std::mutex mu;  // the owner appends, stop() takes the events: uncontended but for stop()
  std::vector<HostEvent> events;
  int64_t tid = 0;
  const char* name = nullptr;  // set_thread_name's
  std::string os_name;         // the OS thread name, when set_thread_name was not called
};

std::mutex g_registry_mu;  // guards g_buffers
std::vector<std::shared_ptr<ThreadBuffer>> g_buffers;

thread_local std::shared_ptr<ThreadBuffer> t_buffer;
thread_local const char* t_name = nullptr;

// Session state, guarded by g_session_mu (start, stop and the tracer list).
std::mutex g_session_mu;
bool g_active = false;
StartOptions g_options;
int64_t g_start_ns = 0;
std::vector<std::shared_ptr<DeviceTracer>> g_tracers;

// Memory tallies, keyed by (what, device).
struct MemoryTally {
  const char* what = nullptr;
  int device = -1;
  int64_t bytes = 0;
};
std::mutex g_memory_mu;
std::map<std::pair<std::string, int>, MemoryTally> g_memory;

int64_t this_tid() { return int64_t(syscall(SYS_gettid)); }

ThreadBuffer& buffer() {
  if (!t_buffer) {
    auto b = std::make_shared<ThreadBuffer>();
    b->tid = this_tid();
    b->name = t_name;
    char os_name[64] = {};
    if (pthread_getname_np(pthread_self(), os_name, sizeof(os_name)) == 0) b->os_name = os_name;
    b->events.reserve(1024);
    {
      std::lock_guard<std::mutex> lock(g_registry_mu);
      g_buffers.push_back(b);
    }
    t_buffer = std::move(b);
  }
  return *t_buffer;
}

void push(const HostEvent& e) {
  ThreadBuffer& b = buffer();
  std::lock_guard<std::mutex> lock(b.mu);
  b.events.push_back(e);
}

HostEvent make_event(const char* name, const char* cat, char ph, int64_t ts_ns, Args args) {
  HostEvent e;
  e.name = name;
  e.cat = cat;
  e.ph = ph;
  e.ts_ns = ts_ns;
  for (const Arg& a : args) {
    if (e.num_args == kMaxArgs) break;
    e.args[e.num_args++] = a;
  }
  return e;
}

// Buffers of threads that have exited (only the registry holds them) and have nothing left.
void prune_buffers_locked() {
  std::erase_if(g_buffers, [](const std::shared_ptr<ThreadBuffer>& b) {
    if (b.use_count() > 1) return false;
    std::lock_guard<std::mutex> lock(b->mu);
    return b->events.empty();
  });
}

// --- writing ---

void append_escaped(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += ch;
    }
  }
  out += '"';
}

// Microseconds with nanosecond digits, as the trace format's ts and dur.
void append_us(std::string& out, int64_t ns) {
  const bool neg = ns < 0;
  const uint64_t a = neg ? uint64_t(-ns) : uint64_t(ns);
  fmt::format_to(std::back_inserter(out), "{}{}.{:03}", neg ? "-" : "", a / 1000, a % 1000);
}

struct Row {
  int64_t pid, tid;
  std::string name;
};

struct Collected {
  int64_t pid = 0;
  int64_t tid = 0;
  HostEvent e;
};

std::string event_name(const HostEvent& e) {
  return e.index >= 0 ? fmt::format("{} {}", e.name, e.index) : std::string(e.name);
}

// An event's fields up to its args, the object left open:
// {"ph":..,"name":..,"cat":..,"pid":..,"tid":..,"ts":..[,"dur":..|,"s":"t"]
void append_event_head(std::string& out, char ph, std::string_view name, std::string_view cat,
                       int64_t pid, int64_t tid, int64_t ts_ns, int64_t dur_ns) {
  out += "{\"ph\":\"";
  out += ph;
  out += "\",\"name\":";
  append_escaped(out, name);
  out += ",\"cat\":";
  append_escaped(out, cat);
  fmt::format_to(std::back_inserter(out), ",\"pid\":{},\"tid\":{},\"ts\":", pid, tid);
  append_us(out, ts_ns);
  if (ph == 'X') {
    out += ",\"dur\":";
    append_us(out, dur_ns);
  } else if (ph == 'i') {
    out += ",\"s\":\"t\"";
  }
}

void append_host_event(std::string& out, const Collected& c) {
  const HostEvent& e = c.e;
  append_event_head(out, e.ph, event_name(e), e.cat ? e.cat : "host", c.pid, c.tid, e.ts_ns,
                    e.dur_ns);
  if (e.num_args > 0) {
    out += ",\"args\":{";
    for (uint8_t i = 0; i < e.num_args; ++i) {
      if (i) out += ',';
      append_escaped(out, e.args[i].key ? e.args[i].key : "?");
      fmt::format_to(std::back_inserter(out), ":{}", e.args[i].value);
    }
    out += '}';
  }
  out += '}';
}

void append_trace_event(std::string& out, const TraceEvent& e) {
  append_event_head(out, e.ph, e.name, e.cat, e.pid, e.tid, e.ts_ns, e.dur_ns);
  if (!e.args.is_null()) {
    out += ",\"args\":";
    out += e.args.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  out += '}';
}

void append_row(std::string& out, const Row& r) {
  const bool process = r.tid < 0;
  fmt::format_to(std::back_inserter(out), "{{\"ph\":\"M\",\"name\":\"{}\",\"pid\":{},\"tid\":{},",
                 process ? "process_name" : "thread_name", r.pid, process ? 0 : r.tid);
  out += "\"args\":{\"name\":";
  append_escaped(out, r.name);
  out += "}}";
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void write_gzip(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  gzFile f = gzopen(tmp.c_str(), "wb6");
  ATOM_CHECK(f != nullptr, kIo, "cannot create the trace file {}", tmp.string());
  size_t at = 0;
  bool ok = true;
  while (ok && at < text.size()) {
    const unsigned n = unsigned(std::min<size_t>(text.size() - at, size_t(1) << 30));
    ok = gzwrite(f, text.data() + at, n) == int(n);
    at += n;
  }
  ok = (gzclose(f) == Z_OK) && ok;
  std::error_code ec;
  if (!ok) {
    fs::remove(tmp, ec);
    throw_error(ErrorCode::kIo, "cannot write the trace file {}", tmp.string());
  }
  fs::rename(tmp, path, ec);
  ATOM_CHECK(!ec, kIo, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
}

}  // namespace

// --- recording ---

void Scope::begin(const char* name, const char* cat, int64_t index, Args args) noexcept {
  name_ = name;
  cat_ = cat;
  index_ = index;
  size_t n = 0;
  for (const Arg& a : args) {
    if (n == kMaxArgs) break;
    args_[n++] = a;
  }
  start_ns_ = now_ns();
}

void Scope::end() noexcept {
  const int64_t end_ns = now_ns();
  if (!enabled()) return;  // the session ended while the scope was open
  HostEvent e;
  e.name = name_;
  e.cat = cat_;
  e.index = index_;
  e.ph = 'X';
  e.ts_ns = start_ns_;
  e.dur_ns = end_ns - start_ns_;
  for (const Arg& a : args_) {
    if (!a.key) break;
    e.args[e.num_args++] = a;
  }
  try {
    push(e);
  } catch (...) {  // out of memory while profiling: lose the event, not the step
  }
}

void instant(const char* name, const char* cat, Args args) {
  if (!enabled()) return;
  push(make_event(name, cat, 'i', now_ns(), args));
}

void set_thread_name(const char* name) {
  t_name = name;
  if (t_buffer) t_buffer->name = name;
}

// --- memory ---

void record_memory(const char* what, int64_t bytes, int device) {
  if (bytes == 0 || what == nullptr) return;
  int64_t total = 0;
  {
    std::lock_guard<std::mutex> lock(g_memory_mu);
    MemoryTally& t = g_memory[{std::string(what), device}];
    if (!t.what) t.what = what;
    t.device = device;
    t.bytes += bytes;
    total = t.bytes;
  }
  if (!more_enabled()) return;
  const int64_t ts = now_ns();
  push(make_event(bytes > 0 ? "alloc" : "free", "memory", 'i', ts,
                  {{"bytes", bytes}, {"total_bytes", total}, {"device", device}}));
  HostEvent c = make_event("memory", "memory", 'C', ts, {{what, total}});
  push(c);
}

MemoryRecord::MemoryRecord(const char* what, int64_t bytes, int device)
    : what_(what), bytes_(bytes), device_(device) {
  record_memory(what_, bytes_, device_);
}

MemoryRecord::~MemoryRecord() {
  if (what_) record_memory(what_, -bytes_, device_);
}

MemoryRecord& MemoryRecord::operator=(MemoryRecord&& o) noexcept {
  if (this != &o) {
    if (what_) record_memory(what_, -bytes_, device_);
    what_ = std::exchange(o.what_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    device_ = o.device_;
  }
  return *this;
}

void MemoryRecord::resize(int64_t bytes) {
  if (!what_ || bytes == bytes_) return;
  record_memory(what_, bytes - bytes_, device_);
  bytes_ = bytes;
}

// --- device tracers ---

int64_t device_pid(int device) { return (int64_t(1) << 30) + device; }

void add_device_tracer(std::shared_ptr<DeviceTracer> tracer) {
  std::lock_guard<std::mutex> lock(g_session_mu);
  for (const auto& t : g_tracers)
    if (t == tracer) return;
  g_tracers.push_back(std::move(tracer));
}

void remove_device_tracer(const DeviceTracer* tracer) {
  std::lock_guard<std::mutex> lock(g_session_mu);
  std::erase_if(g_tracers, [&](const auto& t) { return t.get() == tracer; });
}

// --- sessions ---

void start(const StartOptions& options) {
  std::lock_guard<std::mutex> lock(g_session_mu);
  ATOM_CHECK(!g_active, kInvalidArgument,
             "the profiler is already running (writing to {}): stop it first", g_options.dir);
  ATOM_CHECK(!options.dir.empty(), kInvalidArgument, "the profiler needs a trace directory");
  std::error_code ec;
  fs::create_directories(options.dir, ec);
  ATOM_CHECK(!ec && fs::is_directory(options.dir), kIo,
             "cannot create the profiler's trace directory {}: {}", options.dir,
             ec ? ec.message() : "not a directory");
  {
    // Drop what a scope that ended just after the last stop() may have left.
    std::lock_guard<std::mutex> reg(g_registry_mu);
    prune_buffers_locked();
    for (const auto& b : g_buffers) {
      std::lock_guard<std::mutex> bl(b->mu);
      b->events.clear();
    }
  }
  g_options = options;
  for (const auto& t : g_tracers) t->start(options.more);
  g_start_ns = now_ns();
  g_active = true;
  detail::g_state.store(kOn | (options.more ? kMore : 0), std::memory_order_relaxed);
  if (options.more) {
    // What was allocated before the session (the KV cache, the weights): one sample each.
    std::vector<MemoryTally> tallies;
    {
      std::lock_guard<std::mutex> ml(g_memory_mu);
      for (const auto& [key, t] : g_memory) tallies.push_back(t);
    }
    for (const MemoryTally& t : tallies)
      push(make_event("memory", "memory", 'C', g_start_ns, {{t.what, t.bytes}}));
  }
}

bool active() {
  std::lock_guard<std::mutex> lock(g_session_mu);
  return g_active;
}

std::string stop() {
  std::lock_guard<std::mutex> lock(g_session_mu);
  ATOM_CHECK(g_active, kInvalidArgument, "the profiler is not running: start it first");
  detail::g_state.store(0, std::memory_order_relaxed);
  g_active = false;
  const int64_t start_ns = g_start_ns;

  std::vector<TraceEvent> device_events;
  std::vector<TraceRow> device_rows;
  for (const auto& t : g_tracers) t->stop(device_events, device_rows);

  const int64_t pid = int64_t(getpid());
  std::vector<Collected> host;
  std::vector<Row> rows;
  rows.push_back(Row{pid, -1, g_options.process_name.empty() ? "atom" : g_options.process_name});
  {
    std::lock_guard<std::mutex> reg(g_registry_mu);
    for (const auto& b : g_buffers) {
      std::vector<HostEvent> events;
      const char* name;
      {
        std::lock_guard<std::mutex> bl(b->mu);
        events.swap(b->events);
        name = b->name;
      }
      bool any = false;
      for (const HostEvent& e : events) {
        if (e.ts_ns < start_ns) continue;  // a scope of an earlier session
        host.push_back(Collected{pid, b->tid, e});
        any = true;
      }
      if (any)
        rows.push_back(Row{pid, b->tid,
                           name ? std::string(name)
                                : (b->os_name.empty() ? fmt::format("thread {}", b->tid)
                                                      : b->os_name)});
    }
    prune_buffers_locked();
  }
  for (const TraceRow& r : device_rows) rows.push_back(Row{r.pid, r.tid, r.name});

  // Per row, by start time, parents (longer) before the children they enclose.
  std::stable_sort(host.begin(), host.end(), [](const Collected& a, const Collected& b) {
    if (a.tid != b.tid) return a.tid < b.tid;
    if (a.e.ts_ns != b.e.ts_ns) return a.e.ts_ns < b.e.ts_ns;
    return a.e.dur_ns > b.e.dur_ns;
  });
  std::stable_sort(device_events.begin(), device_events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) {
                     if (a.pid != b.pid) return a.pid < b.pid;
                     if (a.tid != b.tid) return a.tid < b.tid;
                     if (a.ts_ns != b.ts_ns) return a.ts_ns < b.ts_ns;
                     return a.dur_ns > b.dur_ns;
                   });

  std::string out;
  out.reserve(256 + 160 * (host.size() + device_events.size()));
  out += "{\"schemaVersion\":1,\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"atom\",";
  fmt::format_to(std::back_inserter(out), "\"start_us\":");
  append_us(out, start_ns);
  fmt::format_to(std::back_inserter(out), ",\"detailed\":{}}},\"traceEvents\":[\n",
                 g_options.more ? "true" : "false");
  bool first = true;
  auto sep = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  for (const Row& r : rows) {
    sep();
    append_row(out, r);
  }
  for (const Collected& c : host) {
    sep();
    append_host_event(out, c);
  }
  for (const TraceEvent& e : device_events) {
    sep();
    append_trace_event(out, e);
  }
  out += "\n]}\n";

  // The torch profiler's name: <host>_<pid>.<unix ms>.pt.trace.json.gz.
  const std::string worker = fmt::format("{}_{}", host_name(), pid);
  int64_t ms = unix_ms();
  fs::path path;
  std::error_code ec;
  do {
    path = fs::path(g_options.dir) / fmt::format("{}.{}.pt.trace.json.gz", worker, ms++);
  } while (fs::exists(path, ec));
  write_gzip(path, out);
  return path.string();
}

std::string rank_folder(int64_t tp_rank, int64_t dp_rank_local, int64_t dp_size) {
  if (dp_size > 1 || dp_rank_local > 0) return fmt::format("dp{}_tp{}", dp_rank_local, tp_rank);
  return fmt::format("rank_{}", tp_rank);
}

}  // namespace atom::profiler

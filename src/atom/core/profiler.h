// The trace profiler (SPEC 8.1): between start() and stop() every thread records what it does as
// Chrome-trace events ("complete" events with a name, a category, a start and a duration on one
// steady clock), and stop() writes them, with the events of the registered device tracers (the
// GPU's kernels, from CUPTI), into one gzip-compressed JSON file that Perfetto and
// chrome://tracing open:
//   <dir>/<host>_<pid>.<unix ms>.pt.trace.json.gz   (the torch profiler's naming)
//
// Cost when off: a Scope is one relaxed atomic load and nothing else, so scopes stay in the
// engine's step and the model's forward for good. When on: each thread appends to its own
// buffer (an uncontended lock), merged at stop().
//
// Two levels: the default records the engine's phases (schedule, plan, forward, sample,
// postprocess, outputs) and the request lifecycle; detailed profiling (ATOM_PROFILER_MORE=1)
// adds per-layer scopes with their shapes and memory allocations (instant and counter events).
//
// Names and categories given as `const char*` must be string literals (or otherwise live for
// the whole process): events keep the pointer, not a copy.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace atom::profiler {

// --- state: the scopes' fast path ---

inline constexpr uint32_t kOn = 1;    // recording
inline constexpr uint32_t kMore = 2;  // detailed: per-layer scopes, memory

namespace detail {
extern std::atomic<uint32_t> g_state;
}  // namespace detail

inline bool enabled() { return detail::g_state.load(std::memory_order_relaxed) & kOn; }
inline bool more_enabled() {
  return (detail::g_state.load(std::memory_order_relaxed) & (kOn | kMore)) == (kOn | kMore);
}

// Nanoseconds on the clock every event uses (steady_clock); device tracers convert onto it.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// --- recording ---

// An integer argument of a host event (shapes, counts, ids); key: a string literal.
struct Arg {
  const char* key = nullptr;
  int64_t value = 0;
};
inline constexpr size_t kMaxArgs = 4;
using Args = std::initializer_list<Arg>;

// Detailed-only scopes and events: recorded only when ATOM_PROFILER_MORE was on at start().
struct MoreTag {};
inline constexpr MoreTag kMoreOnly{};

// A "complete" event from construction to destruction on the calling thread. The name is
// `name`, or "`name` `index`" when index >= 0 (per-layer scopes: "layer 3"), so building it
// costs nothing until the trace is written.
class Scope {
 public:
  explicit Scope(const char* name, const char* cat = "host") noexcept {
    if (enabled()) begin(name, cat, -1, {});
  }
  Scope(const char* name, const char* cat, Args args) noexcept {
    if (enabled()) begin(name, cat, -1, args);
  }
  Scope(MoreTag, const char* name, int64_t index, const char* cat, Args args) noexcept {
    if (more_enabled()) begin(name, cat, index, args);
  }
  ~Scope() {
    if (name_) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(const char* name, const char* cat, int64_t index, Args args) noexcept;
  void end() noexcept;

  const char* name_ = nullptr;
  const char* cat_ = nullptr;
  int64_t index_ = -1;
  int64_t start_ns_ = 0;
  std::array<Arg, kMaxArgs> args_{};
};

// An instant event ("ph": "i", thread scope) at now, e.g. a request arriving.
void instant(const char* name, const char* cat, Args args = {});

// Names the calling thread in the trace ("engine", "runner"); the OS thread name otherwise.
// `name` must be a string literal. Cheap, and kept across sessions: call it once per thread.
void set_thread_name(const char* name);

// --- memory (detailed profiling) ---

// Tallies an allocation of `bytes` (negative: a free) under `what` (a string literal, e.g.
// "cpu kv cache"), on `device` (-1: host memory). The tally is kept always (allocations are
// rare), so a session started later still shows what was allocated before it: start() emits
// the current totals, and while a detailed session runs each change is an instant event
// ("alloc"/"free" with the bytes) and a counter sample ("memory", one series per `what`).
void record_memory(const char* what, int64_t bytes, int device = -1);

// RAII form of record_memory: +bytes now, -bytes when destroyed (moves transfer it).
class MemoryRecord {
 public:
  MemoryRecord() = default;
  MemoryRecord(const char* what, int64_t bytes, int device = -1);
  ~MemoryRecord();
  MemoryRecord(MemoryRecord&& o) noexcept { *this = std::move(o); }
  MemoryRecord& operator=(MemoryRecord&& o) noexcept;
  MemoryRecord(const MemoryRecord&) = delete;
  MemoryRecord& operator=(const MemoryRecord&) = delete;
  // Changes the recorded size to `bytes` (a buffer that grew), recording the difference.
  void resize(int64_t bytes);
  int64_t bytes() const { return bytes_; }

 private:
  const char* what_ = nullptr;
  int64_t bytes_ = 0;
  int device_ = -1;
};

// --- device tracers (the GPU's activity, e.g. CUPTI) ---

// An event already resolved to its final form (the device tracers' output).
struct TraceEvent {
  std::string name;
  std::string cat;
  char ph = 'X';        // 'X' complete, 'i' instant, 'C' counter
  int64_t ts_ns = 0;    // on now_ns()'s clock
  int64_t dur_ns = 0;   // 'X' only
  int64_t pid = 0;
  int64_t tid = 0;
  nlohmann::json args;  // null: none
};

// Rows of the trace that are not host threads: process and thread names for the metadata.
struct TraceRow {
  int64_t pid = 0;
  int64_t tid = -1;   // -1: names the process
  std::string name;
};

// The pid of device `device`'s rows (host threads use the real pid).
int64_t device_pid(int device);

class DeviceTracer {
 public:
  virtual ~DeviceTracer() = default;
  // Begins recording (the session's start; `more`: detailed profiling).
  virtual void start(bool more) = 0;
  // Ends recording: waits for the device's outstanding work, then appends every event since
  // start() to `events` (timestamps on now_ns()'s clock) and its rows' names to `rows`.
  virtual void stop(std::vector<TraceEvent>& events, std::vector<TraceRow>& rows) = 0;
};

// Registers a tracer for every later session; the profiler keeps it alive. Idempotent per
// object.
void add_device_tracer(std::shared_ptr<DeviceTracer> tracer);
void remove_device_tracer(const DeviceTracer* tracer);

// --- sessions ---

struct StartOptions {
  std::string dir;            // where the trace file goes (created)
  bool more = false;          // detailed profiling (ATOM_PROFILER_MORE)
  std::string process_name;   // the host process's row, e.g. "atom rank_0"
};

// Starts a session; kInvalidArgument when one is running, kIo when `dir` cannot be created.
void start(const StartOptions& options);
// Ends the session: collects every thread's events and the device tracers', writes the file
// and returns its path once it is complete (written under a temporary name, then renamed).
// kInvalidArgument when no session runs.
std::string stop();
bool active();

// SPEC 8.1's per-rank folder: "rank_<tp_rank>", or "dp<dp_rank_local>_tp<tp_rank>" when
// dp_size > 1 or dp_rank_local > 0.
std::string rank_folder(int64_t tp_rank, int64_t dp_rank_local, int64_t dp_size);

}  // namespace atom::profiler

#include "atom/runner/cuda/cupti_trace.h"

#include "atom/core/logging.h"

#ifdef ATOM_HAVE_CUPTI

#include <cupti.h>
#include <cuda_runtime_api.h>
#include <cxxabi.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "atom/core/profiler.h"

namespace atom::cuda {

namespace {

// The newest record layouts of this CUPTI (the activity API hands out only the newest).
#if CUPTI_API_VERSION >= 130000
using KernelRecord = CUpti_ActivityKernel10;
#else
using KernelRecord = CUpti_ActivityKernel9;
#endif
using MemcpyRecord = CUpti_ActivityMemcpy6;
using MemsetRecord = CUpti_ActivityMemset4;

constexpr size_t kBufferBytes = size_t(8) << 20;  // per CUPTI buffer; CUPTI asks for more
constexpr size_t kBufferAlign = 8;                // CUPTI's record alignment

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                         CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};

const char* cupti_error(CUptiResult r) {
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  return s ? s : "unknown CUPTI error";
}

std::string demangle(const char* name) {
  if (!name) return "kernel";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

const char* memcpy_name(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "Memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "Memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "Memcpy DtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH: return "Memcpy HtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "Memcpy PtoP";
    default: return "Memcpy";
  }
}

// CUPTI's timestamps on the host events' clock: the profiler's steady clock.
uint64_t CUPTIAPI host_clock_ns() { return uint64_t(profiler::now_ns()); }

class CuptiTracer final : public profiler::DeviceTracer {
 public:
  static CuptiTracer& instance() {
    static CuptiTracer* t = new CuptiTracer();  // lives as long as CUPTI may call back
    return *t;
  }

  // Registers the buffer callbacks and the clock; false (logged) when CUPTI refuses. Done at the
  // first session, so a process that never profiles makes no CUPTI call.
  bool init() {
    CUptiResult r = cuptiActivityRegisterCallbacks(&buffer_requested, &buffer_completed);
    if (r != CUPTI_SUCCESS) {
      ATOM_LOG_WARN("profiler: CUPTI is unavailable ({}): traces will hold no GPU activity",
                    cupti_error(r));
      return false;
    }
    r = cuptiActivityRegisterTimestampCallback(&host_clock_ns);
    if (r != CUPTI_SUCCESS) {
      // CUPTI keeps its own clock (CLOCK_REALTIME): convert with the offset taken at start().
      ATOM_LOG_DEBUG("profiler: CUPTI timestamp callback refused ({}): using a clock offset",
                     cupti_error(r));
      own_clock_ = false;
    }
    return true;
  }

  void start(bool more) override {
    if (!initialized_) {
      usable_ = init();
      initialized_ = true;
    }
    if (!usable_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.clear();
      streams_.clear();
      offset_ns_ = 0;
      if (!own_clock_) {
        uint64_t cupti_now = 0;
        const int64_t before = profiler::now_ns();
        cuptiGetTimestamp(&cupti_now);
        const int64_t after = profiler::now_ns();
        offset_ns_ = (before + after) / 2 - int64_t(cupti_now);
      }
      recording_ = true;
    }
    for (CUpti_ActivityKind k : kKinds) {
      const CUptiResult r = cuptiActivityEnable(k);
      if (r != CUPTI_SUCCESS)
        ATOM_LOG_WARN("profiler: CUPTI cannot record activity kind {} ({}): the trace will miss "
                      "it",
                      int(k), cupti_error(r));
    }
  }

  void stop(std::vector<profiler::TraceEvent>& events,
            std::vector<profiler::TraceRow>& rows) override {
    if (!usable_) return;
    // Work launched before stop() belongs to the session: let it finish, then flush its records
    // (forced: also those of buffers CUPTI has not filled).
    (void)cudaDeviceSynchronize();
    (void)cudaGetLastError();  // a failed sync here belongs to the step, not to the profiler
    CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    if (r != CUPTI_SUCCESS) ATOM_LOG_WARN("profiler: CUPTI flush failed ({})", cupti_error(r));
    for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
    std::lock_guard<std::mutex> lock(mu_);
    recording_ = false;
    for (profiler::TraceEvent& e : events_) events.push_back(std::move(e));
    events_.clear();
    std::set<uint32_t> devices;
    for (const auto& [device, stream] : streams_) {
      devices.insert(device);
      rows.push_back({profiler::device_pid(int(device)), int64_t(stream),
                      "stream " + std::to_string(stream)});
    }
    for (uint32_t device : devices)
      rows.push_back({profiler::device_pid(int(device)), -1, "GPU " + std::to_string(device)});
  }

 private:
  CuptiTracer() = default;

  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(kBufferAlign, kBufferBytes));
    *size = *buffer ? kBufferBytes : 0;
    *max_records = 0;  // as many as fit
  }

  static void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t,
                                        size_t valid) {
    instance().parse(buffer, valid);
    std::free(buffer);
  }

  void parse(uint8_t* buffer, size_t valid) {
    std::lock_guard<std::mutex> lock(mu_);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (!recording_) continue;  // records flushed after stop(): drop them
      switch (record->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
          const auto* k = reinterpret_cast<const KernelRecord*>(record);
          profiler::TraceEvent e = event(k->start, k->end, k->deviceId, k->streamId);
          e.name = demangle(k->name);
          e.cat = "kernel";
          e.args = {{"device", k->deviceId},
                    {"stream", k->streamId},
                    {"correlation", k->correlationId},
                    {"grid", {k->gridX, k->gridY, k->gridZ}},
                    {"block", {k->blockX, k->blockY, k->blockZ}},
                    {"registers per thread", k->registersPerThread},
                    {"shared memory", k->staticSharedMemory + k->dynamicSharedMemory}};
          events_.push_back(std::move(e));
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
          const auto* m = reinterpret_cast<const MemcpyRecord*>(record);
          profiler::TraceEvent e = event(m->start, m->end, m->deviceId, m->streamId);
          e.name = memcpy_name(m->copyKind);
          e.cat = "gpu_memcpy";
          e.args = {{"device", m->deviceId},
                    {"stream", m->streamId},
                    {"correlation", m->correlationId},
                    {"bytes", m->bytes}};
          events_.push_back(std::move(e));
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
          const auto* m = reinterpret_cast<const MemsetRecord*>(record);
          profiler::TraceEvent e = event(m->start, m->end, m->deviceId, m->streamId);
          e.name = "Memset";
          e.cat = "gpu_memset";
          e.args = {{"device", m->deviceId},
                    {"stream", m->streamId},
                    {"correlation", m->correlationId},
                    {"bytes", m->bytes},
                    {"value", m->value}};
          events_.push_back(std::move(e));
          break;
        }
        default:
          break;
      }
    }
  }

  // A complete event on row (device, stream), its times on the host clock. mu_ is held.
  profiler::TraceEvent event(uint64_t start, uint64_t end, uint32_t device, uint32_t stream) {
    streams_.insert({device, stream});
    profiler::TraceEvent e;
    e.ph = 'X';
    e.ts_ns = int64_t(start) + offset_ns_;
    e.dur_ns = end > start ? int64_t(end - start) : 0;
    e.pid = profiler::device_pid(int(device));
    e.tid = int64_t(stream);
    return e;
  }

  // Only the profiler's start() and stop() (serialised by it) touch these two.
  bool initialized_ = false;
  bool usable_ = false;
  std::mutex mu_;  // CUPTI's worker thread delivers buffers while the engine steps
  bool recording_ = false;
  bool own_clock_ = true;   // CUPTI stamps with host_clock_ns
  int64_t offset_ns_ = 0;   // otherwise: host clock - CUPTI clock, at start()
  std::vector<profiler::TraceEvent> events_;
  std::set<std::pair<uint32_t, uint32_t>> streams_;  // (device, stream) rows seen
};

// Adapts the process-wide tracer to the profiler's shared ownership.
class TracerHandle final : public profiler::DeviceTracer {
 public:
  void start(bool more) override { CuptiTracer::instance().start(more); }
  void stop(std::vector<profiler::TraceEvent>& events,
            std::vector<profiler::TraceRow>& rows) override {
    CuptiTracer::instance().stop(events, rows);
  }
};

}  // namespace

bool register_cupti_tracer() {
  static const bool ok = [] {
    profiler::add_device_tracer(std::make_shared<TracerHandle>());
    return true;
  }();
  return ok;
}

}  // namespace atom::cuda

#else  // a CUDA toolkit without CUPTI

namespace atom::cuda {

bool register_cupti_tracer() {
  static const bool logged = [] {
    ATOM_LOG_WARN("profiler: this build has no CUPTI: traces will hold no GPU activity");
    return true;
  }();
  return !logged;
}

}  // namespace atom::cuda

#endif

// The GPU's side of the trace profiler (core/profiler.h): a DeviceTracer over the CUPTI activity
// API that records every kernel, memcpy and memset between start and stop, with timestamps on the
// host events' clock, as rows "GPU <device>" / "stream <id>" of the Chrome trace.
//
// This header names no CUDA type; builds whose CUDA toolkit has no CUPTI compile a tracer that
// registers nothing (and says so once in the log).
#pragma once

namespace atom::cuda {

// Registers the CUPTI tracer with the profiler, once per process (later calls return at once).
// Call it before the first profiling session that should see the GPU (the CUDA runner does, when
// it is built). CUPTI itself is first called at a session's start, so a process that never
// profiles pays nothing; if CUPTI refuses then, the log says why and traces hold host events
// only. Returns false when this build has no CUPTI.
bool register_cupti_tracer();

}  // namespace atom::cuda

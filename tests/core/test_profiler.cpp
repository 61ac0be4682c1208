// core/profiler: the trace file (gzip, valid Chrome-trace JSON, the torch profiler's name),
// nesting and order of the events, thread names, detailed scopes and memory, device tracers,
// and that nothing is recorded or written while the profiler is off.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "atom/core/error.h"
#include "atom/core/profiler.h"
#include "common/gunzip.h"

namespace atom::profiler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::gunzip;

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path());
  return out;
}

// Events with phase `ph` (and name `name`, when given).
std::vector<json> events(const json& trace, const std::string& ph, const std::string& name = "") {
  std::vector<json> out;
  for (const json& e : trace["traceEvents"])
    if (e["ph"] == ph && (name.empty() || e["name"] == name)) out.push_back(e);
  return out;
}

class ProfilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("atom_profiler_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (active()) stop();
    fs::remove_all(dir_);
  }
  json stop_and_read() {
    const std::string path = stop();
    EXPECT_EQ(fs::path(path).parent_path(), dir_);
    const std::string text = gunzip(path);
    return json::parse(text);  // throws (fails the test) on invalid JSON
  }
  fs::path dir_;
};

TEST(ProfilerRankFolder, FollowsSpecLayout) {
  EXPECT_EQ(rank_folder(0, 0, 1), "rank_0");
  EXPECT_EQ(rank_folder(3, 0, 1), "rank_3");
  EXPECT_EQ(rank_folder(1, 0, 2), "dp0_tp1");
  EXPECT_EQ(rank_folder(0, 2, 1), "dp2_tp0");
}

TEST_F(ProfilerTest, OffRecordsNothingAndWritesNoFile) {
  EXPECT_FALSE(enabled());
  {
    Scope s("before_start");
    instant("instant_before_start", "test");
  }
  EXPECT_THROW(stop(), Error);
  EXPECT_FALSE(fs::exists(dir_));
  // A session started afterwards holds none of it.
  start({dir_.string(), false, "atom test"});
  EXPECT_TRUE(enabled());
  EXPECT_FALSE(more_enabled());
  const json trace = stop_and_read();
  EXPECT_FALSE(enabled());
  for (const json& e : trace["traceEvents"]) {
    EXPECT_NE(e["name"], "before_start");
    EXPECT_NE(e["name"], "instant_before_start");
  }
  EXPECT_EQ(files_in(dir_).size(), 1u);
}

TEST_F(ProfilerTest, WritesGzipChromeTraceWithNestedOrderedNamedEvents) {
  set_thread_name("main");
  start({dir_.string(), false, "atom rank_0"});
  {
    Scope outer("step", "engine");
    {
      Scope a("schedule", "engine", {{"seqs", 3}});
    }
    {
      Scope b("forward", "engine");
      Scope c("inner", "engine");
    }
    instant("request added", "request", {{"id", 7}});
  }
  std::thread worker([] {
    set_thread_name("worker");
    Scope w("worker_scope", "runner", {{"tokens", 12}, {"hidden", 64}});
  });
  worker.join();
  const std::string path = stop();

  // <host>_<pid>.<unix ms>.pt.trace.json.gz, complete (no temporary left), alone in the folder.
  const std::string file = fs::path(path).filename().string();
  EXPECT_TRUE(std::regex_match(file, std::regex(".+_" + std::to_string(getpid()) +
                                                R"(\.[0-9]{13}\.pt\.trace\.json\.gz)")))
      << file;
  const auto files = files_in(dir_);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].string(), path);
  const json trace = json::parse(gunzip(path));
  ASSERT_TRUE(trace.contains("traceEvents"));

  // Process and thread names.
  const int64_t pid = getpid();
  std::map<int64_t, std::string> threads;
  bool process_named = false;
  for (const json& m : events(trace, "M")) {
    if (m["name"] == "process_name" && m["pid"] == pid) {
      EXPECT_EQ(m["args"]["name"], "atom rank_0");
      process_named = true;
    }
    if (m["name"] == "thread_name") threads[m["tid"].get<int64_t>()] = m["args"]["name"];
  }
  EXPECT_TRUE(process_named);

  auto only = [&](const std::string& name) {
    const auto v = events(trace, "X", name);
    EXPECT_EQ(v.size(), 1u) << name;
    return v.empty() ? json() : v[0];
  };
  const json step = only("step"), schedule = only("schedule"), forward = only("forward"),
             inner = only("inner"), w = only("worker_scope");
  EXPECT_EQ(step["cat"], "engine");
  EXPECT_EQ(schedule["args"]["seqs"], 3);
  EXPECT_EQ(w["args"]["tokens"], 12);
  EXPECT_EQ(w["args"]["hidden"], 64);
  EXPECT_EQ(threads[step["tid"].get<int64_t>()], "main");
  EXPECT_EQ(threads[w["tid"].get<int64_t>()], "worker");
  EXPECT_NE(step["tid"], w["tid"]);
  EXPECT_EQ(step["pid"], pid);

  // Nesting: children inside their parent; siblings in order.
  auto inside = [](const json& child, const json& parent) {
    const double cs = child["ts"], cd = child["dur"], ps = parent["ts"], pd = parent["dur"];
    return cs >= ps && cs + cd <= ps + pd + 1e-3;
  };
  EXPECT_TRUE(inside(schedule, step));
  EXPECT_TRUE(inside(forward, step));
  EXPECT_TRUE(inside(inner, forward));
  EXPECT_LE(schedule["ts"].get<double>() + schedule["dur"].get<double>(),
            forward["ts"].get<double>() + 1e-3);
  const auto inst = events(trace, "i", "request added");
  ASSERT_EQ(inst.size(), 1u);
  EXPECT_EQ(inst[0]["args"]["id"], 7);
  EXPECT_EQ(inst[0]["s"], "t");
  EXPECT_TRUE(inside(json{{"ts", inst[0]["ts"]}, {"dur", 0.0}}, step));

  // Events of one thread come sorted by start time.
  std::map<int64_t, double> last;
  for (const json& e : trace["traceEvents"]) {
    if (e["ph"] == "M") continue;
    const int64_t tid = e["tid"];
    const double ts = e["ts"];
    if (last.count(tid)) {
      EXPECT_GE(ts, last[tid]) << e.dump();
    }
    last[tid] = ts;
  }
}

TEST_F(ProfilerTest, StartTwiceAndStopTwiceAreErrors) {
  start({dir_.string(), false, ""});
  try {
    start({dir_.string(), false, ""});
    FAIL() << "a second start must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("already running"), std::string::npos) << e.what();
  }
  stop();
  try {
    stop();
    FAIL() << "stop without start must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("not running"), std::string::npos) << e.what();
  }
  EXPECT_EQ(files_in(dir_).size(), 1u);
}

TEST_F(ProfilerTest, ScopeOpenAcrossStopIsDroppedNotCarriedOver) {
  start({dir_.string(), false, ""});
  auto open = std::make_unique<Scope>("straddles_stop");
  stop_and_read();
  start({dir_.string(), false, ""});
  open.reset();  // ends in the second session, but began before it
  const json trace = stop_and_read();
  EXPECT_TRUE(events(trace, "X", "straddles_stop").empty());
}

TEST_F(ProfilerTest, DetailedScopesOnlyWithMore) {
  start({dir_.string(), false, ""});
  {
    Scope layer(kMoreOnly, "layer", 3, "model", {{"tokens", 5}, {"hidden", 64}});
  }
  json trace = stop_and_read();
  EXPECT_TRUE(events(trace, "X", "layer 3").empty());

  start({dir_.string(), true, ""});
  EXPECT_TRUE(more_enabled());
  {
    Scope layer(kMoreOnly, "layer", 3, "model", {{"tokens", 5}, {"hidden", 64}});
  }
  trace = stop_and_read();
  const auto layers = events(trace, "X", "layer 3");
  ASSERT_EQ(layers.size(), 1u);
  EXPECT_EQ(layers[0]["cat"], "model");
  EXPECT_EQ(layers[0]["args"]["tokens"], 5);
  EXPECT_EQ(layers[0]["args"]["hidden"], 64);
  EXPECT_EQ(trace["otherData"]["detailed"], true);
}

TEST_F(ProfilerTest, MemoryTalliesAndEventsWithMore) {
  MemoryRecord kv("test kv cache", 1 << 20);  // before the session: a counter at its start
  start({dir_.string(), true, ""});
  {
    MemoryRecord ws("test workspace", 4096);
    ws.resize(8192);
  }
  const json trace = stop_and_read();
  std::vector<int64_t> kv_samples, ws_samples;
  for (const json& c : events(trace, "C", "memory")) {
    if (c["args"].contains("test kv cache")) kv_samples.push_back(c["args"]["test kv cache"]);
    if (c["args"].contains("test workspace")) ws_samples.push_back(c["args"]["test workspace"]);
  }
  ASSERT_FALSE(kv_samples.empty());
  EXPECT_EQ(kv_samples[0], 1 << 20);
  EXPECT_EQ(ws_samples, (std::vector<int64_t>{4096, 8192, 0}));
  std::vector<int64_t> deltas;
  for (const json& e : trace["traceEvents"])
    if (e["ph"] == "i" && e["cat"] == "memory") deltas.push_back(e["args"]["bytes"]);
  EXPECT_EQ(deltas, (std::vector<int64_t>{4096, 4096, -8192}));

  // Without detailed profiling memory stays out of the trace.
  start({dir_.string(), false, ""});
  { MemoryRecord ws("test workspace", 4096); }
  const json plain = stop_and_read();
  EXPECT_TRUE(events(plain, "C", "memory").empty());
}

class FakeTracer : public DeviceTracer {
 public:
  void start(bool more) override {
    ++starts;
    start_ns = now_ns();
  }
  void stop(std::vector<TraceEvent>& out, std::vector<TraceRow>& rows) override {
    ++stops;
    TraceEvent e;
    e.name = "fake_kernel<\"x\">";
    e.cat = "kernel";
    e.ts_ns = start_ns + 1000;
    e.dur_ns = 2500;
    e.pid = device_pid(0);
    e.tid = 7;
    e.args = {{"stream", 7}};
    out.push_back(e);
    rows.push_back({device_pid(0), -1, "GPU 0"});
    rows.push_back({device_pid(0), 7, "stream 7"});
  }
  int starts = 0, stops = 0;
  int64_t start_ns = 0;
};

TEST_F(ProfilerTest, DeviceTracerEventsJoinTheTrace) {
  auto tracer = std::make_shared<FakeTracer>();
  add_device_tracer(tracer);
  add_device_tracer(tracer);  // idempotent
  start({dir_.string(), false, ""});
  const json trace = stop_and_read();
  remove_device_tracer(tracer.get());
  EXPECT_EQ(tracer->starts, 1);
  EXPECT_EQ(tracer->stops, 1);
  const auto k = events(trace, "X", "fake_kernel<\"x\">");
  ASSERT_EQ(k.size(), 1u);
  EXPECT_EQ(k[0]["pid"], device_pid(0));
  EXPECT_EQ(k[0]["tid"], 7);
  EXPECT_DOUBLE_EQ(k[0]["dur"].get<double>(), 2.5);
  bool gpu_named = false, stream_named = false;
  for (const json& m : events(trace, "M")) {
    if (m["pid"] != device_pid(0)) continue;
    if (m["name"] == "process_name") gpu_named = m["args"]["name"] == "GPU 0";
    if (m["name"] == "thread_name" && m["tid"] == 7) stream_named = m["args"]["name"] == "stream 7";
  }
  EXPECT_TRUE(gpu_named);
  EXPECT_TRUE(stream_named);
  // Removed: later sessions do not call it.
  start({dir_.string(), false, ""});
  stop();
  EXPECT_EQ(tracer->starts, 1);
}

TEST_F(ProfilerTest, UncreatableDirectoryIsAnIoError) {
  fs::create_directories(dir_);
  const fs::path file = dir_ / "a_file";
  std::FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  try {
    start({(file / "sub").string(), false, ""});
    FAIL() << "start under a regular file must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
  EXPECT_FALSE(active());
}

}  // namespace
}  // namespace atom::profiler

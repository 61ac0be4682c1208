// core/logging: both formats captured through a test sink, levels, lazy formatting and the
// ATOM_LOG_MORE switch.
#include <gtest/gtest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace {

// Formatting it counts, so a test can tell whether a message was formatted at all.
struct Counted {
  int* formats;
};

}  // namespace

template <>
struct fmt::formatter<Counted> : fmt::formatter<int> {
  auto format(const Counted& c, fmt::format_context& ctx) const {
    ++*c.formats;
    return fmt::formatter<int>::format(*c.formats, ctx);
  }
};

namespace atom::logging {
namespace {

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_log_more_ = envs::raw("ATOM_LOG_MORE");
    ::unsetenv("ATOM_LOG_MORE");
    configure();
    set_level(Level::kInfo);
    set_sink(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_, true));
  }
  void TearDown() override {
    set_sink(nullptr);
    if (saved_log_more_) {
      ::setenv("ATOM_LOG_MORE", saved_log_more_->c_str(), 1);
    } else {
      ::unsetenv("ATOM_LOG_MORE");
    }
    configure();
    set_level(Level::kInfo);
    set_process_name("MainProcess");
  }
  void verbose(bool on) {
    ::setenv("ATOM_LOG_MORE", on ? "1" : "0", 1);
    configure();
  }
  std::string take() {
    std::string s = out_.str();
    out_.str("");
    return s;
  }

  std::ostringstream out_;

 private:
  std::optional<std::string> saved_log_more_;
};

TEST_F(LoggingTest, DefaultFormat) {
  ATOM_LOG_INFO("hello {} and {:.2f}", 42, 1.5);
  EXPECT_EQ(take(), "[atom] hello 42 and 1.50\n");
  ATOM_LOG_WARN("careful");
  ATOM_LOG_ERROR("broken: {}", "disk");
  EXPECT_EQ(take(), "[atom] careful\n[atom] broken: disk\n");
  ATOM_LOG_INFO("two\nlines");
  EXPECT_EQ(take(), "[atom] two\nlines\n");
  EXPECT_EQ(logger().name(), "atom");
}

TEST_F(LoggingTest, InfoIsTheDefaultThreshold) {
  EXPECT_EQ(level(), Level::kInfo);
  ATOM_LOG_DEBUG("hidden");
  ATOM_LOG_INFO("shown");
  EXPECT_EQ(take(), "[atom] shown\n");
}

TEST_F(LoggingTest, SetLevel) {
  set_level(Level::kDebug);
  ATOM_LOG_DEBUG("d");
  ATOM_LOG_INFO("i");
  EXPECT_EQ(take(), "[atom] d\n[atom] i\n");
  set_level(Level::kWarning);
  ATOM_LOG_INFO("i");
  ATOM_LOG_WARN("w");
  ATOM_LOG_ERROR("e");
  EXPECT_EQ(take(), "[atom] w\n[atom] e\n");
  set_level(Level::kError);
  ATOM_LOG_WARN("w");
  ATOM_LOG_ERROR("e");
  EXPECT_EQ(take(), "[atom] e\n");
  EXPECT_FALSE(enabled(Level::kWarning));
  EXPECT_TRUE(enabled(Level::kError));
}

TEST_F(LoggingTest, DisabledMessagesAreNotFormatted) {
  int formats = 0;
  ATOM_LOG_DEBUG("{}", Counted{&formats});
  EXPECT_EQ(formats, 0);
  EXPECT_EQ(take(), "");
  ATOM_LOG_INFO("{}", Counted{&formats});
  EXPECT_EQ(formats, 1);
  EXPECT_EQ(take(), "[atom] 1\n");
}

TEST_F(LoggingTest, VerboseFormat) {
  verbose(true);
  // The logger stamps with system_clock; std::time may read a coarse clock a tick behind it,
  // which put a stamp just past a second boundary "after" `after` now and then.
  using std::chrono::system_clock;
  const auto now = [] { return system_clock::to_time_t(system_clock::now()); };
  const std::time_t before = now();
  const int line = __LINE__ + 1;
  ATOM_LOG_WARN("careful {}", "now");
  const std::time_t after = now();
  const std::string s = take();
  const std::regex re(
      R"(\[atom WARNING\] (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(0|[1-9]\d{0,2}) - )"
      R"(MainProcess:(\d+) - (.+):(\d+) - (\w+)\ncareful now\n)");
  std::smatch m;
  ASSERT_TRUE(std::regex_match(s, m, re)) << s;
  std::tm tm{};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  tm.tm_isdst = -1;
  const std::time_t stamp = std::mktime(&tm);  // local time, as Python's asctime
  EXPECT_GE(stamp, before);
  EXPECT_LE(stamp, after);
  EXPECT_EQ(std::stol(m[8]), long(::getpid()));
  EXPECT_EQ(m[9].str(), __FILE__);
  EXPECT_EQ(std::stoi(m[10]), line);
  EXPECT_EQ(m[11].str(), "TestBody");
}

// Python's "%(msecs)01d": the milliseconds of the second, truncated, without zero padding.
TEST_F(LoggingTest, VerboseTimestampAtAFixedTime) {
  verbose(true);
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 1;  // February
  tm.tm_mday = 29;
  tm.tm_hour = 13;
  tm.tm_min = 5;
  tm.tm_sec = 9;
  tm.tm_isdst = -1;
  const auto second = std::chrono::system_clock::from_time_t(std::mktime(&tm));
  const spdlog::source_loc where{"/src/x.cpp", 7, "fn"};
  for (const auto& [offset_us, shown] : std::vector<std::pair<int, std::string>>{
           {0, "0"}, {7'900, "7"}, {47'000, "47"}, {999'999, "999"}}) {
    logger().log(second + std::chrono::microseconds(offset_us), where, spdlog::level::info, "m");
    EXPECT_EQ(take(), "[atom INFO] 2024-02-29 13:05:09." + shown + " - MainProcess:" +
                          std::to_string(::getpid()) + " - /src/x.cpp:7 - fn\nm\n");
  }
}

void log_from_a_named_function() { ATOM_LOG_INFO("inside"); }

TEST_F(LoggingTest, VerboseLevelNamesAndFunction) {
  verbose(true);
  set_level(Level::kDebug);
  ATOM_LOG_DEBUG("a");
  ATOM_LOG_INFO("b");
  ATOM_LOG_WARN("c");
  ATOM_LOG_ERROR("d");
  log_from_a_named_function();
  const std::string s = take();
  const std::regex head(R"(\[atom (\w+)\] [^\n]* - (\w+)\n(\w+)\n)");
  std::vector<std::string> levels, functions, messages;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), head); it != std::sregex_iterator();
       ++it) {
    levels.push_back((*it)[1]);
    functions.push_back((*it)[2]);
    messages.push_back((*it)[3]);
  }
  EXPECT_EQ(levels, (std::vector<std::string>{"DEBUG", "INFO", "WARNING", "ERROR", "INFO"})) << s;
  EXPECT_EQ(functions, (std::vector<std::string>{"TestBody", "TestBody", "TestBody", "TestBody",
                                                 "log_from_a_named_function"}))
      << s;
  EXPECT_EQ(messages, (std::vector<std::string>{"a", "b", "c", "d", "inside"}));
}

TEST_F(LoggingTest, LogMoreValues) {
  ::setenv("ATOM_LOG_MORE", "2", 1);  // any non-zero integer
  configure();
  ATOM_LOG_INFO("x");
  EXPECT_TRUE(take().starts_with("[atom INFO] "));
  ::setenv("ATOM_LOG_MORE", "0", 1);
  configure();
  ATOM_LOG_INFO("x");
  EXPECT_EQ(take(), "[atom] x\n");

  ::setenv("ATOM_LOG_MORE", "yes", 1);
  try {
    configure();
    ADD_FAILURE() << "a non-integer ATOM_LOG_MORE must be rejected";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("ATOM_LOG_MORE"), std::string::npos) << e.what();
  }
  // The format in force is kept when the new value is rejected.
  ATOM_LOG_INFO("still");
  EXPECT_EQ(take(), "[atom] still\n");
}

TEST_F(LoggingTest, ProcessName) {
  verbose(true);
  set_process_name("EngineCore_DP0");
  ATOM_LOG_INFO("x");
  EXPECT_NE(take().find(" - EngineCore_DP0:" + std::to_string(::getpid()) + " - "),
            std::string::npos);
}

TEST_F(LoggingTest, SinkReplacementRestoresStderr) {
  ATOM_LOG_INFO("to the test sink");
  set_sink(nullptr);
  testing::internal::CaptureStderr();
  ATOM_LOG_INFO("to stderr");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(take(), "[atom] to the test sink\n");
  EXPECT_EQ(err, "[atom] to stderr\n");
}

TEST_F(LoggingTest, ConcurrentMessagesStayWhole) {
  constexpr int kThreads = 4, kEach = 250;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kEach; ++i) ATOM_LOG_INFO("thread {} message {}", t, i);
    });
  }
  for (std::thread& th : threads) th.join();
  std::stringstream ss(take());
  const std::regex line_re(R"(\[atom\] thread [0-3] message \d+)");
  int lines = 0;
  for (std::string l; std::getline(ss, l); ++lines) {
    EXPECT_TRUE(std::regex_match(l, line_re)) << l;
  }
  EXPECT_EQ(lines, kThreads * kEach);
}

TEST(LoggingLevels, ParseAndName) {
  EXPECT_EQ(parse_level("debug"), Level::kDebug);
  EXPECT_EQ(parse_level("INFO"), Level::kInfo);
  EXPECT_EQ(parse_level("Warning"), Level::kWarning);
  EXPECT_EQ(parse_level("warn"), Level::kWarning);
  EXPECT_EQ(parse_level("error"), Level::kError);
  for (const char* bad : {"", "verbose", "critical", "infos"}) {
    try {
      parse_level(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
  }
  EXPECT_EQ(level_name(Level::kDebug), "DEBUG");
  EXPECT_EQ(level_name(Level::kInfo), "INFO");
  EXPECT_EQ(level_name(Level::kWarning), "WARNING");
  EXPECT_EQ(level_name(Level::kError), "ERROR");
}

}  // namespace
}  // namespace atom::logging

#include "atom/core/logging.h"

#include <spdlog/formatter.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <ctime>
#include <iterator>
#include <mutex>

#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom::logging {

namespace {

constexpr std::string_view kLoggerName = "atom";

std::string_view spdlog_level_name(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "TRACE";
    case spdlog::level::debug:
      return "DEBUG";
    case spdlog::level::info:
      return "INFO";
    case spdlog::level::warn:
      return "WARNING";
    case spdlog::level::err:
      return "ERROR";
    case spdlog::level::critical:
      return "CRITICAL";
    case spdlog::level::off:
    case spdlog::level::n_levels:
      break;
  }
  return "NOTSET";
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarning:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

// Renders one record in the reference engine's formats:
//   "[%(name)s] %(message)s" or, verbose,
//   "[%(name)s %(levelname)s] %(asctime)s.%(msecs)01d - %(processName)s:%(process)d - "
//   "%(pathname)s:%(lineno)d - %(funcName)s\n%(message)s", datefmt "%Y-%m-%d %H:%M:%S".
class AtomFormatter final : public spdlog::formatter {
 public:
  AtomFormatter(bool verbose, std::string process_name)
      : verbose_(verbose), process_name_(std::move(process_name)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view name(msg.logger_name.data(), msg.logger_name.size());
    const std::string_view text(msg.payload.data(), msg.payload.size());
    auto out = std::back_inserter(dest);
    if (!verbose_) {
      fmt::format_to(out, "[{}] {}\n", name, text);
      return;
    }
    const auto since_epoch = msg.time.time_since_epoch();
    const std::time_t secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    // Python's msecs is the fraction of the second in ms, truncated by the %d conversion.
    const int64_t msecs =
        std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000;
    std::tm tm{};
    localtime_r(&secs, &tm);
    char date[32];
    const size_t n = std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    fmt::format_to(out, "[{} {}] {}.{} - {}:{} - {}:{} - {}\n{}\n", name,
                   spdlog_level_name(msg.level), std::string_view(date, n), msecs, process_name_,
                   ::getpid(), msg.source.filename ? msg.source.filename : "", msg.source.line,
                   msg.source.funcname ? msg.source.funcname : "", text);
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<AtomFormatter>(verbose_, process_name_);
  }

 private:
  bool verbose_;
  std::string process_name_;
};

std::atomic<Level> g_threshold{Level::kInfo};

// The logger owns one distribution sink whose single child is stderr or a test's sink; swapping
// the child goes through the distribution sink's mutex, so it is safe while others log.
struct State {
  State()
      : dist(std::make_shared<spdlog::sinks::dist_sink_mt>()),
        logger(std::make_shared<spdlog::logger>(std::string(kLoggerName), dist)),
        verbose(envs::ATOM_LOG_MORE()) {
    dist->set_level(to_spdlog(g_threshold.load()));
    dist->set_sinks({std::make_shared<spdlog::sinks::stderr_sink_mt>()});
    dist->set_formatter(make_formatter());
    // As the reference: the logger passes DEBUG and the handler applies the threshold.
    logger->set_level(spdlog::level::debug);
    logger->flush_on(spdlog::level::debug);
  }

  std::unique_ptr<spdlog::formatter> make_formatter() const {
    return std::make_unique<AtomFormatter>(verbose, process_name);
  }

  std::shared_ptr<spdlog::sinks::dist_sink_mt> dist;
  std::shared_ptr<spdlog::logger> logger;
  std::mutex mutex;  // guards verbose and process_name
  bool verbose;
  std::string process_name = "MainProcess";
};

State& state() {
  // Built on first use; a bad ATOM_LOG_MORE throws here and the next use tries again. Never
  // destroyed, so that code running in static destructors can still log.
  static State* s = new State();
  return *s;
}

}  // namespace

std::string_view level_name(Level level) { return spdlog_level_name(to_spdlog(level)); }

Level parse_level(std::string_view text) {
  std::string t(text);
  for (char& c : t) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (t == "debug") return Level::kDebug;
  if (t == "info") return Level::kInfo;
  if (t == "warning" || t == "warn") return Level::kWarning;
  if (t == "error") return Level::kError;
  throw_error(ErrorCode::kInvalidArgument,
              "unknown log level \"{}\" (expected debug, info, warning or error)", text);
}

void configure() {
  State& s = state();
  const bool verbose = envs::ATOM_LOG_MORE();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.verbose = verbose;
  s.dist->set_formatter(s.make_formatter());
}

void set_level(Level level) {
  g_threshold.store(level);
  state().dist->set_level(to_spdlog(level));
}

Level level() { return g_threshold.load(); }

bool enabled(Level level) { return int(level) >= int(g_threshold.load()); }

void set_sink(std::shared_ptr<spdlog::sinks::sink> sink) {
  State& s = state();
  if (!sink) sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  std::lock_guard<std::mutex> lock(s.mutex);
  sink->set_formatter(s.make_formatter());
  s.dist->set_sinks({std::move(sink)});
}

void set_process_name(std::string name) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.process_name = std::move(name);
  s.dist->set_formatter(s.make_formatter());
}

spdlog::logger& logger() { return *state().logger; }

void write(Level level, const SourceLocation& where, std::string_view message) {
  if (!enabled(level)) return;
  state().logger->log(spdlog::source_loc{where.file, where.line, where.function}, to_spdlog(level),
                      spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace atom::logging

// Logging: one logger named "atom" writing to stderr at INFO by default, in one of the two
// formats of the reference engine:
//   default:            [atom] <message>
//   ATOM_LOG_MORE != 0: [atom INFO] 2025-01-31 12:00:00.7 - MainProcess:4242 - /src/x.cpp:42 - fn
//                       <message>
// (the verbose one mirrors Python's "%(asctime)s.%(msecs)01d": milliseconds without padding).
// Use the macros, which capture file, line and function and format only when the level is on:
//   ATOM_LOG_INFO("loaded {} tensors in {:.2f} s", n, secs);
#pragma once

#include <fmt/format.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace spdlog {
class logger;
namespace sinks {
class sink;
}  // namespace sinks
}  // namespace spdlog

namespace atom::logging {

enum class Level { kDebug, kInfo, kWarning, kError };

// Python's level names: "DEBUG", "INFO", "WARNING", "ERROR".
std::string_view level_name(Level level);
// "debug", "info", "warning" (or "warn"), "error", in any case; else kInvalidArgument.
Level parse_level(std::string_view text);

// Re-reads ATOM_LOG_MORE and applies the matching format. Called on first use; call it again at
// start-up (to report a bad ATOM_LOG_MORE early) or after changing the variable. Throws
// atom::Error(kInvalidArgument) when ATOM_LOG_MORE is not an integer.
void configure();

// The threshold below which messages are dropped (INFO by default), e.g. from --log-level.
void set_level(Level level);
Level level();
bool enabled(Level level);

// Sends every message to `sink` (with atom's format applied) instead of stderr; nullptr restores
// stderr. Safe to call while other threads log.
void set_sink(std::shared_ptr<spdlog::sinks::sink> sink);

// The processName field of the verbose format: "MainProcess" unless a worker process renames
// itself after it starts.
void set_process_name(std::string name);

// The underlying spdlog logger, for code that needs spdlog's own API (flush, for instance).
spdlog::logger& logger();

struct SourceLocation {
  const char* file;
  int line;
  const char* function;
};

void write(Level level, const SourceLocation& where, std::string_view message);

template <typename... Args>
void log(Level level, const SourceLocation& where, fmt::format_string<Args...> f, Args&&... args) {
  if (!enabled(level)) return;
  write(level, where, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace atom::logging

#define ATOM_LOG_AT(level, ...)                                                              \
  ::atom::logging::log(level, ::atom::logging::SourceLocation{__FILE__, __LINE__, __func__}, \
                       __VA_ARGS__)
#define ATOM_LOG_DEBUG(...) ATOM_LOG_AT(::atom::logging::Level::kDebug, __VA_ARGS__)
#define ATOM_LOG_INFO(...) ATOM_LOG_AT(::atom::logging::Level::kInfo, __VA_ARGS__)
#define ATOM_LOG_WARN(...) ATOM_LOG_AT(::atom::logging::Level::kWarning, __VA_ARGS__)
#define ATOM_LOG_ERROR(...) ATOM_LOG_AT(::atom::logging::Level::kError, __VA_ARGS__)

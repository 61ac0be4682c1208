// `atom serve -dp N` in one command (ATOM's CoreManager, node-local): the process is rank 0 and
// starts ranks 1..N-1 as child processes of the same executable with the same arguments, minus
// the data-parallel flags, plus ATOM_DP_SIZE/RANK/RANK_LOCAL/MASTER_IP/MASTER_PORT in their
// environment. Each child asks the kernel for SIGTERM when the thread that started it (the main
// thread, which lives as long as the process) ends, so a parent killed outright leaves no
// orphans; a parent that shuts down stops and reaps them itself.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace atom::apps {

// This process's arguments after the program name (from /proc/self/cmdline) without the
// data-parallel size, rank, local rank and master flags and --enable-dp-attention, in any of
// their spellings (-dp N, -dpN, -dp=N, --data-parallel-size N, --data-parallel-size=N,
// --enable-dp-attention=true, ...): a child learns its rank and the resolved data-parallel size
// from ATOM_DP_*. With DP attention on, the tensor-parallel size (-tp 2, -tp2, -tp=2,
// --tensor-parallel-size ...) goes too, since the resolved dp already folded it in and the child
// runs with tp 1; without it the child keeps its tp. Nothing after "--" changes.
std::vector<std::string> child_rank_args();
// The same filter over given arguments (for tests and for child_rank_args).
std::vector<std::string> strip_data_parallel_args(const std::vector<std::string>& args);

class LocalRanks {
 public:
  // Starts ranks 1..dp_size-1. Call it before any thread is started: between fork and exec the
  // child only calls async-signal-safe functions, but a fork of one thread is simpler still.
  // Throws atom::Error(kIo) when a fork fails (the ranks already started are stopped).
  LocalRanks(const std::vector<std::string>& args, int64_t dp_size, const std::string& master_ip,
             int master_port);
  ~LocalRanks();  // stop(10 s)
  LocalRanks(const LocalRanks&) = delete;
  LocalRanks& operator=(const LocalRanks&) = delete;

  struct Exit {
    int64_t rank;
    pid_t pid;
    std::string how;  // "exited with code 1", "was killed by signal 9 (Killed)"
    bool clean;       // exit code 0
  };
  // The children that ended since the last call, reaped.
  std::vector<Exit> reap();
  // Sends `sig` to every child still running.
  void signal_all(int sig);
  // Waits up to `timeout` for every child to end, then kills (SIGKILL) and reaps the rest; true
  // when all ended by themselves.
  bool stop(std::chrono::milliseconds timeout);
  size_t num_running() const;

 private:
  struct Child {
    int64_t rank;
    pid_t pid;
    bool running;
  };
  std::vector<Child> children_;
};

}  // namespace atom::apps

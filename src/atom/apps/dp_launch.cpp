#include "atom/apps/dp_launch.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "atom/core/error.h"
#include "atom/core/logging.h"

extern char** environ;  // the child's environment is built from it, with ATOM_DP_* replaced

namespace atom::apps {

namespace {

// Flags that take a value; the child gets its own through ATOM_DP_* instead.
constexpr std::array<std::string_view, 6> kDpFlags = {
    "-dp",
    "--data-parallel-size",
    "--data-parallel-rank",
    "--data-parallel-rank-local",
    "--data-parallel-master-ip",
    "--data-parallel-master-port",
};
// With --enable-dp-attention the tensor-parallel size goes too: a child is one rank of the
// data-parallel size this process resolved, which already multiplied it in (the child runs with
// tp 1). Without it a child keeps its tp: each replica spans tp GPUs.
constexpr std::array<std::string_view, 2> kTpFlags = {"-tp", "--tensor-parallel-size"};
// Flags without a value ("--flag", or "--flag=value" as CLI11 takes it): applied here already,
// a child would fold tp into dp a second time.
constexpr std::array<std::string_view, 1> kDpSwitches = {"--enable-dp-attention"};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status),
                       strsignal(WTERMSIG(status)));
  return "ended";
}

// Whether `a` is `flag` or `flag=value` (CLI11's spellings of a switch).
bool is_switch(const std::string& a, std::string_view flag) {
  return a == flag ||
         (a.size() > flag.size() && a.compare(0, flag.size(), flag) == 0 && a[flag.size()] == '=');
}

// Whether the arguments (before "--") turn DP attention on: the switch, or `=value` with a value
// CLI11 reads as true.
bool dp_attention_on(const std::vector<std::string>& args) {
  bool on = false;
  for (const std::string& a : args) {
    if (a == "--") break;
    for (const std::string_view flag : kDpSwitches) {
      if (a == flag) on = true;
      if (is_switch(a, flag) && a != flag) {
        const std::string v = a.substr(flag.size() + 1);
        on = !(v == "false" || v == "0" || v == "off" || v == "no");
      }
    }
  }
  return on;
}

}  // namespace

std::vector<std::string> strip_data_parallel_args(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  const bool fold_tp = dp_attention_on(args);
  bool literal = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (literal || a == "--") {
      literal = true;
      out.push_back(a);
      continue;
    }
    bool drop = false;
    std::vector<std::string_view> value_flags(kDpFlags.begin(), kDpFlags.end());
    if (fold_tp) value_flags.insert(value_flags.end(), kTpFlags.begin(), kTpFlags.end());
    for (const std::string_view flag : value_flags) {
      if (a == flag) {  // "--flag value": the value goes too
        drop = true;
        ++i;
        break;
      }
      const bool short_flag = flag.size() == 3;  // -dp, -tp
      if (a.size() > flag.size() && a.compare(0, flag.size(), flag) == 0 &&
          (a[flag.size()] == '=' ||
           (short_flag && std::isdigit(static_cast<unsigned char>(a[flag.size()])) != 0))) {
        drop = true;  // "--flag=value", "-dpN", "-tpN"
        break;
      }
    }
    for (const std::string_view flag : kDpSwitches)
      if (is_switch(a, flag)) drop = true;
    if (!drop) out.push_back(a);
  }
  return out;
}

std::vector<std::string> child_rank_args() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ATOM_CHECK(!raw.empty(), kIo, "cannot read /proc/self/cmdline to start the data-parallel ranks");
  std::vector<std::string> args;
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t end = raw.find('\0', pos);
    args.push_back(raw.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  args.erase(args.begin());  // the program
  return strip_data_parallel_args(args);
}

LocalRanks::LocalRanks(const std::vector<std::string>& args, int64_t dp_size,
                       const std::string& master_ip, int master_port) {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  ATOM_CHECK(n > 0, kIo, "cannot find this executable (/proc/self/exe): {}", strerror(errno));
  exe[n] = '\0';
  const pid_t parent = getpid();
  for (int64_t rank = 1; rank < dp_size; ++rank) {
    // Everything the child needs is built before fork: after it, only exec.
    std::vector<std::string> argv_s = {exe};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<std::string> env_s;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e)
      if (std::strncmp(*e, "ATOM_DP_", 8) != 0) env_s.emplace_back(*e);
    env_s.push_back(fmt::format("ATOM_DP_SIZE={}", dp_size));
    env_s.push_back(fmt::format("ATOM_DP_RANK={}", rank));
    env_s.push_back(fmt::format("ATOM_DP_RANK_LOCAL={}", rank));
    env_s.push_back(fmt::format("ATOM_DP_MASTER_IP={}", master_ip));
    env_s.push_back(fmt::format("ATOM_DP_MASTER_PORT={}", master_port));
    std::vector<char*> argv_p, env_p;
    for (std::string& s : argv_s) argv_p.push_back(s.data());
    argv_p.push_back(nullptr);
    for (std::string& s : env_s) env_p.push_back(s.data());
    env_p.push_back(nullptr);

    const pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      stop(std::chrono::seconds(10));
      throw_error(ErrorCode::kIo, "cannot start data-parallel rank {}: fork failed: {}", rank,
                  strerror(err));
    }
    if (pid == 0) {
      // The child: SIGTERM when the parent goes, unless it already went.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      execve(exe, argv_p.data(), env_p.data());
      _exit(127);
    }
    children_.push_back({rank, pid, true});
    ATOM_LOG_INFO("started data-parallel rank {} as process {}", rank, pid);
  }
}

LocalRanks::~LocalRanks() { stop(std::chrono::seconds(10)); }

std::vector<LocalRanks::Exit> LocalRanks::reap() {
  std::vector<Exit> out;
  for (Child& c : children_) {
    if (!c.running) continue;
    int status = 0;
    const pid_t r = waitpid(c.pid, &status, WNOHANG);
    if (r == c.pid || (r < 0 && errno == ECHILD)) {
      c.running = false;
      const bool clean = r == c.pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
      out.push_back({c.rank, c.pid, r == c.pid ? describe_status(status) : "ended", clean});
    }
  }
  return out;
}

void LocalRanks::signal_all(int sig) {
  for (const Child& c : children_)
    if (c.running) kill(c.pid, sig);
}

bool LocalRanks::stop(std::chrono::milliseconds timeout) {
  signal_all(SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (num_running() > 0 && std::chrono::steady_clock::now() < deadline) {
    for (const Exit& e : reap())
      if (!e.clean) ATOM_LOG_WARN("data-parallel rank {} (process {}) {}", e.rank, e.pid, e.how);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (num_running() == 0) return true;
  for (Child& c : children_) {
    if (!c.running) continue;
    ATOM_LOG_WARN("data-parallel rank {} (process {}) did not stop within {} ms: killing it",
                  c.rank, c.pid, timeout.count());
    kill(c.pid, SIGKILL);
    int status = 0;
    waitpid(c.pid, &status, 0);
    c.running = false;
  }
  return false;
}

size_t LocalRanks::num_running() const {
  size_t n = 0;
  for (const Child& c : children_) n += c.running ? 1 : 0;
  return n;
}

}  // namespace atom::apps

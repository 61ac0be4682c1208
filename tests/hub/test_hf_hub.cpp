// io/hf_hub: resolving `org/name[@rev]` through the huggingface_hub cache layout and a mock Hub
// (cpp-httplib on 127.0.0.1, random port) that serves the model API, resolve URLs (LFS files
// redirect to a CDN path, as the real Hub does) and records every request.
#include "atom/io/hf_hub.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kRepo = "test-org/tiny-model";
constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";
constexpr const char* kToken = "hf_test_token_123";

struct MockFile {
  std::string name;
  std::string content;
  bool lfs = false;
  std::string oid;  // LFS sha256 (64 hex) or git blob id (40 hex); fake but well-formed
};

// Deterministic bytes that differ at every offset, so a resume from the wrong place shows.
std::string pseudo_random_bytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t x = seed;
  for (char& c : out) {
    x = x * 1664525u + 1013904223u;
    c = char(x >> 24);
  }
  return out;
}

MockFile mock_file(std::string name, std::string content, bool lfs = false) {
  return MockFile{std::move(name), std::move(content), lfs, ""};
}

std::vector<MockFile> tiny_model_files() {
  const std::string index = R"({"metadata": {"total_size": 8000}, "weight_map": {
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.norm.weight": "model-00002-of-00002.safetensors",
      "lm_head.weight": "model-00002-of-00002.safetensors"}})";
  std::vector<MockFile> files = {
      mock_file("config.json", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64})"),
      mock_file("generation_config.json", R"({"eos_token_id": 2})"),
      mock_file("tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE"}})"),
      mock_file("tokenizer_config.json", R"({"bos_token": "<s>"})"),
      mock_file("special_tokens_map.json", R"({"eos_token": "</s>"})"),
      mock_file("model.safetensors.index.json", index),
      mock_file("model-00001-of-00002.safetensors", pseudo_random_bytes(5000, 1), true),
      mock_file("model-00002-of-00002.safetensors", pseudo_random_bytes(3000, 2), true),
      // Never needed: the original checkpoint, pickles, GGUF, the model card.
      mock_file("original/consolidated.00.pth", "pth", true),
      mock_file("original/params.json", "{}"),
      mock_file("original/model.safetensors", "st", true),
      mock_file("pytorch_model.bin", "bin", true),
      mock_file("model.Q4_0.gguf", "gguf", true),
      mock_file("README.md", "# tiny"),
  };
  for (size_t i = 0; i < files.size(); ++i) {
    files[i].oid =
        files[i].lfs ? fmt::format("{:064x}", 0xabc000 + i) : fmt::format("{:040x}", 0xdef000 + i);
  }
  return files;
}

class MockHub {
 public:
  struct Seen {
    std::string path;
    std::string range;                // the Range header, "" when absent
    std::optional<std::string> auth;  // the Authorization header
  };
  struct Answer {
    std::string path;
    int status = 0;
    size_t body_bytes = 0;
  };

  MockHub() {
    repos_[kRepo] = tiny_model_files();
    repos_["test-org/gguf-only"] = {{"config.json", "{}", false, std::string(40, 'c')},
                                    {"model.gguf", "gguf", true, std::string(64, 'd')}};
    server_.Get(R"(/api/models/([^/]+/[^/]+)/revision/(.+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  record(req);
                  api(req.matches[1], req.matches[2], res);
                });
    server_.Get(R"(/([^/]+/[^/]+)/resolve/([0-9a-f]{40})/(.+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  record(req);
                  resolve(req.matches[1], req.matches[2], req.matches[3], res);
                });
    server_.Get(R"(/cdn/([0-9a-f]+))", [this](const httplib::Request& req, httplib::Response& res) {
      record(req);
      for (const auto& [repo, files] : repos_) {
        for (const MockFile& f : files) {
          // The full body: cpp-httplib answers a Range request with 206 and the asked-for part.
          if (f.oid == req.matches[1])
            return res.set_content(f.content, "application/octet-stream");
        }
      }
      res.status = 404;
    });
    // Called once the response is written; stop() joins the workers, so after it every answer
    // is recorded.
    server_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      answers_.push_back({req.path, res.status, res.body.size()});
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!server_.is_running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~MockHub() { stop(); }

  void stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  std::string endpoint() const { return fmt::format("http://127.0.0.1:{}", port_); }
  std::vector<Seen> seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  std::vector<Answer> answers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return answers_;
  }
  const MockFile& file(const std::string& name) const {
    for (const MockFile& f : repos_.at(kRepo)) {
      if (f.name == name) return f;
    }
    throw std::runtime_error("no mock file " + name);
  }

 private:
  void record(const httplib::Request& req) {
    std::lock_guard<std::mutex> lock(mu_);
    Seen s{req.path, req.get_header_value("Range"), std::nullopt};
    if (req.has_header("Authorization")) s.auth = req.get_header_value("Authorization");
    seen_.push_back(std::move(s));
  }

  void api(const std::string& repo, const std::string& revision, httplib::Response& res) {
    if (repo == "test-org/gated") {
      res.status = 401;
      res.set_header("X-Error-Code", "GatedRepo");
      res.set_content(R"({"error": "Access to model test-org/gated is restricted."})",
                      "application/json");
      return;
    }
    if (!repos_.contains(repo)) {
      res.status = 404;
      res.set_header("X-Error-Code", "RepoNotFound");
      res.set_content(R"({"error": "Repository not found"})", "application/json");
      return;
    }
    if (revision != "main" && revision != "v1.0" && revision != kCommit) {
      res.status = 404;
      res.set_header("X-Error-Code", "RevisionNotFound");
      res.set_content(R"({"error": "Invalid rev id: )" + revision + "\"}", "application/json");
      return;
    }
    nlohmann::json siblings = nlohmann::json::array();
    for (const MockFile& f : repos_.at(repo)) {
      nlohmann::json s = {{"rfilename", f.name}, {"size", f.content.size()}};
      if (f.lfs) {
        s["blobId"] = std::string(40, 'e');
        s["lfs"] = {{"sha256", f.oid}, {"size", f.content.size()}, {"pointerSize", 134}};
      } else {
        s["blobId"] = f.oid;
      }
      siblings.push_back(s);
    }
    const nlohmann::json body = {{"id", repo}, {"sha", kCommit}, {"siblings", siblings}};
    res.set_content(body.dump(), "application/json");
  }

  void resolve(const std::string& repo, const std::string& commit, const std::string& name,
               httplib::Response& res) {
    if (repos_.contains(repo) && commit == kCommit) {
      for (const MockFile& f : repos_.at(repo)) {
        if (f.name != name) continue;
        if (f.lfs) return res.set_redirect("/cdn/" + f.oid);
        return res.set_content(f.content, "application/octet-stream");
      }
    }
    res.status = 404;
    res.set_header("X-Error-Code", "EntryNotFound");
  }

  std::map<std::string, std::vector<MockFile>> repos_;
  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Seen> seen_;
  std::vector<Answer> answers_;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

template <typename F>
Error expect_error(F&& f, ErrorCode code, const std::vector<std::string>& fragments) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& s : fragments) {
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << s << "\"";
    }
    return e;
  }
  ADD_FAILURE() << "expected atom::Error(" << error_code_name(code) << ")";
  return Error(ErrorCode::kInternal, "");
}

const std::vector<std::string> kNeeded = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
};

// A temporary HF_HOME and the mock as HF_ENDPOINT; the Hub variables come back afterwards.
class HfHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"HF_HOME", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"}) {
      saved_[name] = envs::raw(name);
      envs::unset(name);
    }
    static int counter = 0;
    tmp_ = fs::temp_directory_path() / fmt::format("atom_hf_hub_{}_{}", ::getpid(), counter++);
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
    envs::set("HF_HOME", (tmp_ / "hf").string());
    envs::set("HF_ENDPOINT", hub_.endpoint());
    options_.progress = false;
  }
  void TearDown() override {
    hub_.stop();
    fs::remove_all(tmp_);
    for (const auto& [name, value] : saved_) {
      if (value) {
        envs::set(name, *value);
      } else {
        envs::unset(name);
      }
    }
  }

  fs::path repo_dir() const { return tmp_ / "hf" / "hub" / "models--test-org--tiny-model"; }
  fs::path blob(const std::string& name) const {
    return repo_dir() / "blobs" / hub_.file(name).oid;
  }

  MockHub hub_;
  fs::path tmp_;
  HubOptions options_;
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST_F(HfHubTest, DownloadsIntoTheHuggingfaceHubCacheLayout) {
  const std::string snap = resolve_hf_model(kRepo, options_);
  EXPECT_EQ(fs::path(snap), repo_dir() / "snapshots" / kCommit);
  EXPECT_EQ(hf_cache_repo_dir(kRepo), repo_dir().string());
  EXPECT_EQ(read_file(repo_dir() / "refs" / "main"), kCommit);

  // Each needed file is a relative symlink into blobs/, named by the file's LFS sha256 or git
  // blob id (huggingface_hub's ETag naming), with the served bytes.
  std::set<std::string> expected_blobs;
  for (const std::string& name : kNeeded) {
    const fs::path link = fs::path(snap) / name;
    ASSERT_TRUE(fs::is_symlink(link)) << name;
    EXPECT_EQ(fs::read_symlink(link), fs::path("../../blobs") / hub_.file(name).oid) << name;
    EXPECT_EQ(read_file(link), hub_.file(name).content) << name;
    expected_blobs.insert(hub_.file(name).oid);
  }
  std::set<std::string> blobs;
  for (const auto& e : fs::directory_iterator(repo_dir() / "blobs")) {
    blobs.insert(e.path().filename().string());
  }
  EXPECT_EQ(blobs, expected_blobs) << "no .incomplete left, nothing extra";
  std::set<std::string> in_snapshot;
  for (const auto& e : fs::recursive_directory_iterator(snap)) {
    in_snapshot.insert(e.path().lexically_relative(snap).string());
  }
  EXPECT_EQ(in_snapshot, std::set<std::string>(kNeeded.begin(), kNeeded.end()));

  // original/*, pickles, GGUF and the model card were never even requested; LFS files came
  // through the redirect; no token was sent.
  bool api_seen = false;
  for (const MockHub::Seen& s : hub_.seen()) {
    for (const char* skipped : {"original", ".bin", ".pth", ".gguf", "README"}) {
      EXPECT_EQ(s.path.find(skipped), std::string::npos) << s.path;
    }
    EXPECT_FALSE(s.auth.has_value()) << s.path;
    EXPECT_EQ(s.range, "") << s.path;
    api_seen |= s.path == fmt::format("/api/models/{}/revision/main", kRepo);
  }
  EXPECT_TRUE(api_seen);
  size_t cdn = 0;
  for (const MockHub::Seen& s : hub_.seen()) cdn += s.path.starts_with("/cdn/");
  EXPECT_EQ(cdn, 2u);
}

TEST_F(HfHubTest, SecondResolveUsesTheCacheWithTheServerStopped) {
  const std::string first = resolve_hf_model(kRepo, options_);
  hub_.stop();
  EXPECT_EQ(resolve_hf_model(kRepo, options_), first);
  envs::set("HF_HUB_OFFLINE", "1");
  EXPECT_EQ(resolve_hf_model(kRepo, options_), first);
  // The commit itself needs no ref.
  EXPECT_EQ(resolve_hf_model(fmt::format("{}@{}", kRepo, kCommit), options_), first);
}

// A cache written by the Python tools: refs/main, blobs, relative symlinks, one weights file.
TEST_F(HfHubTest, UsesASnapshotLaidOutByHuggingfaceHub) {
  hub_.stop();
  const std::string commit = "fedcba9876543210fedcba9876543210fedcba98";
  const fs::path repo = tmp_ / "hf" / "hub" / "models--other--single";
  write_file(repo / "refs" / "main", commit);
  for (const auto& [name, blob] : std::map<std::string, std::string>{
           {"config.json", std::string(40, '1')}, {"model.safetensors", std::string(64, '2')}}) {
    write_file(repo / "blobs" / blob, name);
    fs::create_directories(repo / "snapshots" / commit);
    fs::create_symlink(fs::path("../../blobs") / blob, repo / "snapshots" / commit / name);
  }
  EXPECT_EQ(resolve_hf_model("other/single", options_), (repo / "snapshots" / commit).string());

  // A shard of the index missing: not complete, and offline that is an error naming the shard.
  write_file(repo / "snapshots" / commit / "model.safetensors.index.json",
             R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                "b": "model-00002-of-00002.safetensors"}})");
  write_file(repo / "snapshots" / commit / "model-00001-of-00002.safetensors", "x");
  envs::set("HF_HUB_OFFLINE", "true");
  expect_error([&] { resolve_hf_model("other/single", options_); }, ErrorCode::kNotFound,
               {"other/single", "model-00002-of-00002.safetensors", repo.string()});
  write_file(repo / "snapshots" / commit / "model-00002-of-00002.safetensors", "y");
  EXPECT_EQ(resolve_hf_model("other/single", options_), (repo / "snapshots" / commit).string());
}

TEST_F(HfHubTest, ResumesAnIncompleteDownloadWithARangeRequest) {
  const std::string shard = "model-00001-of-00002.safetensors";
  const std::string& full = hub_.file(shard).content;
  const size_t have = 1234;
  write_file(blob(shard).string() + ".incomplete", full.substr(0, have));

  const std::string snap = resolve_hf_model(kRepo, options_);
  EXPECT_EQ(read_file(fs::path(snap) / shard), full);
  EXPECT_FALSE(fs::exists(blob(shard).string() + ".incomplete"));
  // The Range goes to the resolve URL and along its redirect to the CDN, for that file only.
  size_t ranged = 0;
  for (const MockHub::Seen& s : hub_.seen()) {
    if (s.path == "/cdn/" + hub_.file(shard).oid || s.path.ends_with("/" + shard)) {
      EXPECT_EQ(s.range, fmt::format("bytes={}-", have)) << s.path;
      ++ranged;
    } else {
      EXPECT_EQ(s.range, "") << s.path;
    }
  }
  EXPECT_EQ(ranged, 2u);
  // Only the missing tail travelled: the file was appended to, not fetched again.
  hub_.stop();
  size_t answered = 0;
  for (const MockHub::Answer& a : hub_.answers()) {
    if (a.path != "/cdn/" + hub_.file(shard).oid) continue;
    EXPECT_EQ(a.status, 206);
    EXPECT_EQ(a.body_bytes, full.size() - have);
    ++answered;
  }
  EXPECT_EQ(answered, 1u);
}

TEST_F(HfHubTest, AnIncompleteFileLongerThanTheBlobIsDiscarded) {
  const std::string shard = "model-00002-of-00002.safetensors";
  const std::string& full = hub_.file(shard).content;
  write_file(blob(shard).string() + ".incomplete", std::string(full.size() + 10, 'z'));
  const std::string snap = resolve_hf_model(kRepo, options_);
  EXPECT_EQ(read_file(fs::path(snap) / shard), full);
  for (const MockHub::Seen& s : hub_.seen()) EXPECT_EQ(s.range, "") << s.path;
}

TEST_F(HfHubTest, SendsHfTokenAsABearerHeader) {
  envs::set("HF_TOKEN", kToken);
  resolve_hf_model(kRepo, options_);
  const std::vector<MockHub::Seen> seen = hub_.seen();
  EXPECT_GE(seen.size(), kNeeded.size() + 1);
  for (const MockHub::Seen& s : seen) {
    EXPECT_EQ(s.auth, std::optional<std::string>(std::string("Bearer ") + kToken)) << s.path;
  }
}

TEST_F(HfHubTest, UnknownRepoOrRevisionIsNotFound) {
  expect_error([&] { resolve_hf_model("test-org/nope", options_); }, ErrorCode::kNotFound,
               {"HTTP 404", "test-org/nope", "No such repo or revision", "Repository not found"});
  expect_error([&] { resolve_hf_model(std::string(kRepo) + "@no-such-branch", options_); },
               ErrorCode::kNotFound, {"HTTP 404", "no-such-branch"});
  EXPECT_FALSE(fs::exists(repo_dir() / "refs"));
}

TEST_F(HfHubTest, GatedRepoAsksForHfToken) {
  expect_error([&] { resolve_hf_model("test-org/gated", options_); }, ErrorCode::kInvalidArgument,
               {"HTTP 401", "test-org/gated", "gated or private", "set HF_TOKEN", "restricted"});
  envs::set("HF_TOKEN", kToken);
  expect_error([&] { resolve_hf_model("test-org/gated", options_); }, ErrorCode::kInvalidArgument,
               {"HTTP 401", "HF_TOKEN that was sent was refused"});
}

TEST_F(HfHubTest, RepoWithoutSafetensorsIsNotFound) {
  expect_error([&] { resolve_hf_model("test-org/gguf-only", options_); }, ErrorCode::kNotFound,
               {"test-org/gguf-only", "no safetensors weights"});
}

TEST_F(HfHubTest, OfflineWithAnEmptyCacheNamesTheRepoAndTheCache) {
  envs::set("HF_HUB_OFFLINE", "1");
  expect_error([&] { resolve_hf_model(kRepo, options_); }, ErrorCode::kNotFound,
               {kRepo, repo_dir().string(), "HF_HUB_OFFLINE"});
  EXPECT_TRUE(hub_.seen().empty());
}

TEST_F(HfHubTest, UnreachableHubIsAnIoErrorWithAHint) {
  hub_.stop();
  expect_error([&] { resolve_hf_model(kRepo, options_); }, ErrorCode::kIo,
               {hub_.endpoint(), "HF_HUB_OFFLINE=1"});
}

TEST_F(HfHubTest, NamedRevisionWritesItsRef) {
  const std::string snap = resolve_hf_model(std::string(kRepo) + "@v1.0", options_);
  EXPECT_EQ(fs::path(snap), repo_dir() / "snapshots" / kCommit);
  EXPECT_EQ(read_file(repo_dir() / "refs" / "v1.0"), kCommit);
  EXPECT_FALSE(fs::exists(repo_dir() / "refs" / "main"));
  bool asked = false;
  for (const MockHub::Seen& s : hub_.seen()) {
    asked |= s.path == fmt::format("/api/models/{}/revision/v1.0", kRepo);
  }
  EXPECT_TRUE(asked);
}

TEST_F(HfHubTest, ProgressLinesOnStderr) {
  options_.progress = true;
  testing::internal::CaptureStderr();
  resolve_hf_model(kRepo, options_);
  const std::string err = testing::internal::GetCapturedStderr();
  for (const std::string& name : kNeeded) {
    EXPECT_NE(err.find(name), std::string::npos) << name << " in:\n" << err;
  }
  EXPECT_NE(err.find("100%  5.00 kB / 5.00 kB"), std::string::npos) << err;
  EXPECT_NE(err.find("/s"), std::string::npos) << err;
}

TEST(HfHub, FormatDownloadProgress) {
  const std::string half =
      format_download_progress("model.safetensors", 1'340'000'000, 2'680'000'000, 35.1e6);
  EXPECT_NE(half.find("[##########          ]"), std::string::npos) << half;
  EXPECT_NE(half.find(" 50%  1.34 GB / 2.68 GB  35.10 MB/s"), std::string::npos) << half;
  const std::string unknown = format_download_progress("x.json", 512, 0, 0);
  EXPECT_EQ(unknown.find('%'), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("512 B"), std::string::npos) << unknown;
}

TEST(HfHub, ParseRepoId) {
  HfRepoRef r = parse_hf_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(r.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(r.revision, "main");
  r = parse_hf_repo_id("meta-llama/Llama-3.2-1B@refs/pr/12");
  EXPECT_EQ(r.repo, "meta-llama/Llama-3.2-1B");
  EXPECT_EQ(r.revision, "refs/pr/12");
  EXPECT_EQ(parse_hf_repo_id("a/b", "dev").revision, "dev");
  for (const char* bad : {"", "name", "a/b/c", "/b", "a/", "a//b", "a/b@", "-a/b", "a/b.", "a--x/b",
                          "a/b..c", "a b/c", "a/b@../x", "a/b@x y"}) {
    expect_error([&] { parse_hf_repo_id(bad); }, ErrorCode::kInvalidArgument, {});
    EXPECT_FALSE(looks_like_hf_repo_id(bad)) << bad;
  }
  EXPECT_TRUE(looks_like_hf_repo_id("Qwen/Qwen3-0.6B"));
  EXPECT_FALSE(looks_like_hf_repo_id("./models/x.gguf"));
  EXPECT_FALSE(looks_like_hf_repo_id("/abs/model"));
}

TEST(HfHub, SkipsFilesAtomNeverReads) {
  for (const char* f : {"original/consolidated.00.pth", "original/model.safetensors",
                        "pytorch_model.bin", "model.Q4_0.gguf", "tf_model.h5"}) {
    EXPECT_TRUE(hf_skip_file(f)) << f;
  }
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json", "bin/x.json"}) {
    EXPECT_FALSE(hf_skip_file(f)) << f;
  }
}

TEST(HfHub, HubEnvironmentVariables) {
  const std::optional<std::string> endpoint = envs::raw("HF_ENDPOINT");
  const std::optional<std::string> offline = envs::raw("HF_HUB_OFFLINE");
  envs::unset("HF_ENDPOINT");
  envs::unset("HF_HUB_OFFLINE");
  EXPECT_EQ(envs::HF_ENDPOINT(), "https://huggingface.co");
  EXPECT_FALSE(envs::HF_HUB_OFFLINE());
  for (const char* on : {"1", "true", "TRUE", "True"}) {
    envs::set("HF_HUB_OFFLINE", on);
    EXPECT_TRUE(envs::HF_HUB_OFFLINE()) << on;
  }
  for (const char* off : {"0", "", "false", "yes"}) {
    envs::set("HF_HUB_OFFLINE", off);
    EXPECT_FALSE(envs::HF_HUB_OFFLINE()) << off;
  }
  envs::set("HF_ENDPOINT", "https://hf-mirror.example");
  EXPECT_EQ(envs::effective_value("HF_ENDPOINT"), "https://hf-mirror.example");
  for (const auto& [name, value] :
       {std::pair{"HF_ENDPOINT", endpoint}, {"HF_HUB_OFFLINE", offline}}) {
    if (value) {
      envs::set(name, *value);
    } else {
      envs::unset(name);
    }
  }
}

}  // namespace
}  // namespace atom

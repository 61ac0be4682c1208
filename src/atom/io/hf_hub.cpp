#include "atom/io/hf_hub.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kIndexFile = "model.safetensors.index.json";
constexpr std::string_view kSingleWeights = "model.safetensors";
// Everything besides the weights that loading, tokenizing and chatting read.
constexpr std::array<std::string_view, 6> kSideFiles = {
    "config.json",           "generation_config.json",  "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
};
// Error bodies are read for their message only; a huge one is not worth keeping.
constexpr size_t kMaxErrorBody = 64 * 1024;
constexpr size_t kMaxApiBody = 64 * 1024 * 1024;

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }

bool is_hex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

bool is_commit_hash(std::string_view s) { return s.size() == 40 && is_hex(s); }

// huggingface_hub's rule for one part of a repo id: [\w.-]+ starting and ending with [\w].
bool valid_repo_part(std::string_view p) {
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  if (p.empty() || !word(p.front()) || !word(p.back())) return false;
  return std::all_of(p.begin(), p.end(), [&](char c) { return word(c) || c == '-' || c == '.'; });
}

// A repo-relative path from the server, used as a path under snapshots/: no way out of it.
bool safe_relative_path(std::string_view p) {
  if (p.empty() || p.front() == '/' || p.find('\\') != std::string_view::npos) return false;
  for (const fs::path& part : fs::path(p)) {
    if (part == ".." || part == "." || part.empty()) return false;
  }
  return true;
}

// RFC 3986 percent-encoding; `keep_slash` for file paths, off for revisions ("refs/pr/1").
std::string url_encode(std::string_view s, bool keep_slash) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (keep_slash && c == '/')) {
      out += c;
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Written whole or not at all, so a crash never leaves a half-written ref.
void write_text_atomic(const fs::path& p, std::string_view text) {
  fs::create_directories(p.parent_path());
  const fs::path tmp = p.string() + fmt::format(".tmp{}", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(text.data(), std::streamsize(text.size()));
    ATOM_CHECK(out.good(), kIo, "cannot write {}", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  ATOM_CHECK(!ec, kIo, "cannot rename {} to {}: {}", tmp.string(), p.string(), ec.message());
}

std::string human_bytes(double b) {
  constexpr std::array<const char*, 5> kUnits = {"B", "kB", "MB", "GB", "TB"};
  size_t u = 0;
  while (b >= 1000.0 && u + 1 < kUnits.size()) {
    b /= 1000.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, kUnits[u]) : fmt::format("{:.2f} {}", b, kUnits[u]);
}

// The shard names of an index (sorted, unique); throws kCorrupt naming the file when malformed.
std::vector<std::string> index_shards(const fs::path& index) {
  json j;
  try {
    j = json::parse(read_text(index));
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{} is not valid JSON: {}", index.string(), e.what());
  }
  ATOM_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), kCorrupt,
             "{} has no \"weight_map\" object", index.string());
  std::set<std::string> shards;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    ATOM_CHECK(file.is_string() && safe_relative_path(file.get<std::string>()), kCorrupt,
               "{}: tensor {} maps to a bad file name {}", index.string(), tensor, file.dump());
    shards.insert(file.get<std::string>());
  }
  ATOM_CHECK(!shards.empty(), kCorrupt, "{} names no weight files", index.string());
  return {shards.begin(), shards.end()};
}

// What a snapshot still lacks to be loaded ("" when complete): config.json and the weights,
// either model.safetensors, an index with every shard, or (no index) some top-level
// *.safetensors. Symlinks into blobs/ count only when their blob exists.
std::string snapshot_missing(const fs::path& snap) {
  std::error_code ec;
  if (!fs::is_directory(snap, ec)) return "the snapshot folder";
  if (!fs::is_regular_file(snap / "config.json", ec)) return "config.json";
  const fs::path index = snap / kIndexFile;
  if (fs::is_regular_file(index, ec)) {
    std::vector<std::string> shards;
    try {
      shards = index_shards(index);
    } catch (const Error&) {
      return std::string(kIndexFile) + " (unreadable)";
    }
    for (const std::string& s : shards) {
      if (!fs::is_regular_file(snap / s, ec)) return s;
    }
    return "";
  }
  if (fs::is_regular_file(snap / kSingleWeights, ec)) return "";
  for (const fs::directory_entry& e : fs::directory_iterator(snap, ec)) {
    if (ends_with(e.path().filename().string(), ".safetensors") && e.is_regular_file(ec)) {
      return "";
    }
  }
  return std::string(kSingleWeights);
}

// The commit a revision names in the cache: itself when it is a commit hash, else refs/<rev>.
std::optional<std::string> cached_commit(const fs::path& repo_dir, const std::string& revision) {
  if (is_commit_hash(revision)) return revision;
  std::error_code ec;
  const fs::path ref = repo_dir / "refs" / revision;
  if (!fs::is_regular_file(ref, ec)) return std::nullopt;
  const std::string commit = trim(read_text(ref));
  if (!is_commit_hash(commit)) return std::nullopt;
  return commit;
}

// ---- HTTP -------------------------------------------------------------------------------------

void curl_global_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Headers {
  std::map<std::string, std::string> values;  // lower-case names, of the last response only
  std::string get(const std::string& name) const {
    const auto it = values.find(name);
    return it == values.end() ? std::string() : it->second;
  }
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* h = static_cast<Headers*>(user);
  const std::string_view line(data, size * n);
  // Each response of a redirect chain starts with its status line: keep the last one's headers.
  if (line.starts_with("HTTP/")) {
    h->values.clear();
  } else if (const size_t colon = line.find(':'); colon != std::string_view::npos) {
    h->values[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  return size * n;
}

class CurlRequest {
 public:
  CurlRequest(const std::string& url, const std::optional<std::string>& token,
              const HubOptions& options)
      : url_(url) {
    curl_global_once();
    h_ = curl_easy_init();
    ATOM_CHECK(h_ != nullptr, kIo, "cannot start an HTTP client");
    curl_easy_setopt(h_, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(h_, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h_, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h_, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
    curl_easy_setopt(h_, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h_, CURLOPT_LOW_SPEED_TIME, options.stall_timeout_s);
    curl_easy_setopt(h_, CURLOPT_USERAGENT, "atom");
    curl_easy_setopt(h_, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h_, CURLOPT_HEADERDATA, &headers_);
    // libcurl sends a custom Authorization header to the original host only, so the token does
    // not follow the Hub's redirects to its CDN.
    if (token) {
      list_ = curl_slist_append(list_, ("Authorization: Bearer " + *token).c_str());
      curl_easy_setopt(h_, CURLOPT_HTTPHEADER, list_);
    }
  }
  ~CurlRequest() {
    curl_slist_free_all(list_);
    curl_easy_cleanup(h_);
  }
  CurlRequest(const CurlRequest&) = delete;
  CurlRequest& operator=(const CurlRequest&) = delete;

  CURL* handle() const { return h_; }
  const Headers& headers() const { return headers_; }
  const std::string& url() const { return url_; }
  long status() const {
    long code = 0;
    curl_easy_getinfo(h_, CURLINFO_RESPONSE_CODE, &code);
    return code;
  }

 private:
  std::string url_;
  CURL* h_ = nullptr;
  curl_slist* list_ = nullptr;
  Headers headers_;
};

struct HubContext {
  std::string endpoint;  // without a trailing '/'
  std::optional<std::string> token;
  HfRepoRef ref;
  HubOptions options;
};

// HTTP status -> atom::Error with the status, the server's own words and what to do about it.
[[noreturn]] void throw_http_error(const HubContext& ctx, const CurlRequest& req,
                                   const std::string& body, std::string_view what) {
  const long status = req.status();
  std::string server = req.headers().get("x-error-message");
  if (server.empty()) {
    try {
      const json j = json::parse(body);
      if (j.is_object() && j.contains("error") && j["error"].is_string()) server = j["error"];
    } catch (const json::exception&) {
      server = trim(body.substr(0, 200));
    }
  }
  const std::string said = server.empty() ? "" : fmt::format(" (\"{}\")", server);
  const std::string error_code = req.headers().get("x-error-code");
  const std::string head = fmt::format("{}: HTTP {} from {}{}", what, status, req.url(), said);
  if (status == 401 || status == 403 || error_code == "GatedRepo") {
    const std::string token_hint =
        ctx.token ? "the HF_TOKEN that was sent was refused or has no access to it; check it"
                  : "set HF_TOKEN to an access token of an account that has access";
    throw_error(ErrorCode::kInvalidArgument,
                "{}. {} is a gated or private repo, or does not exist: {} (and for a gated repo, "
                "accept its terms on {}/{})",
                head, ctx.ref.repo, token_hint, ctx.endpoint, ctx.ref.repo);
  }
  if (status == 404) {
    if (error_code == "EntryNotFound") {
      throw_error(ErrorCode::kNotFound, "{}. The file is not in {}@{}", head, ctx.ref.repo,
                  ctx.ref.revision);
    }
    throw_error(ErrorCode::kNotFound, "{}. No such repo or revision: {}@{} (check the spelling)",
                head, ctx.ref.repo, ctx.ref.revision);
  }
  if (status == 429) {
    throw_error(ErrorCode::kIo, "{}. Rate limited by the Hub: wait and retry{}", head,
                ctx.token ? "" : ", or set HF_TOKEN");
  }
  throw_error(
      ErrorCode::kIo, "{}. {}", head,
      status >= 500 ? "The Hub had a server error: retry later" : "The Hub refused the request");
}

[[noreturn]] void throw_transfer_error(const HubContext& ctx, const CurlRequest& req, CURLcode rc,
                                       const char* errbuf, std::string_view what) {
  throw_error(ErrorCode::kIo,
              "{}: {} failed: {}{}. Check the network and HF_ENDPOINT ({}), or "
              "set HF_HUB_OFFLINE=1 to use only models already in the cache",
              what, req.url(), curl_easy_strerror(rc),
              errbuf[0] != '\0' ? fmt::format(" ({})", errbuf) : std::string(), ctx.endpoint);
}

size_t append_capped(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::pair<std::string*, size_t>*>(user);
  if (out->first->size() + size * n > out->second) return 0;  // aborts the transfer
  out->first->append(data, size * n);
  return size * n;
}

json get_json(const HubContext& ctx, const std::string& url, std::string_view what) {
  CurlRequest req(url, ctx.token, ctx.options);
  std::string body;
  std::pair<std::string*, size_t> sink{&body, kMaxApiBody};
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(req.handle(), CURLOPT_WRITEFUNCTION, append_capped);
  curl_easy_setopt(req.handle(), CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(req.handle(), CURLOPT_ERRORBUFFER, errbuf);
  const CURLcode rc = curl_easy_perform(req.handle());
  if (rc != CURLE_OK) throw_transfer_error(ctx, req, rc, errbuf, what);
  if (req.status() >= 400) throw_http_error(ctx, req, body, what);
  try {
    return json::parse(body);
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{}: the answer of {} is not JSON: {}", what, url, e.what());
  }
}

// ---- progress ---------------------------------------------------------------------------------

struct Progress {
  std::string name;
  bool enabled = false;
  bool live = false;      // stderr is a terminal: redraw one line in place
  uint64_t resumed = 0;   // bytes already on disk when the transfer started
  uint64_t expected = 0;  // size from the API, 0 when unknown
  uint64_t done = 0;      // bytes on disk now
  uint64_t total = 0;
  Clock::time_point start = Clock::now();
  Clock::time_point last_draw{};

  double rate() const {
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    return s > 0 ? double(done - resumed) / s : 0.0;
  }
  void draw(bool final) {
    if (!enabled || (!live && !final)) return;
    const std::string line = format_download_progress(name, done, total, rate());
    std::fprintf(stderr, live ? "\r%s\x1b[K%s" : "%s%s", line.c_str(), final ? "\n" : "");
    std::fflush(stderr);
  }
};

int on_progress(void* user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t, curl_off_t) {
  auto* p = static_cast<Progress*>(user);
  p->done = p->resumed + uint64_t(dlnow);
  p->total = dltotal > 0 ? p->resumed + uint64_t(dltotal) : p->expected;
  const Clock::time_point now = Clock::now();
  if (now - p->last_draw >= std::chrono::milliseconds(100)) {
    p->last_draw = now;
    p->draw(false);
  }
  return 0;
}

// ---- one file ---------------------------------------------------------------------------------

// The body of a download: appended to the .incomplete file on 206, replacing it on 200, kept in
// memory (for the error message) on an error status.
struct DownloadSink {
  CurlRequest* req = nullptr;
  fs::path path;
  uint64_t offset = 0;  // the Range start that was asked for
  FILE* file = nullptr;
  Progress* progress = nullptr;
  bool decided = false;
  std::string error_body;
  std::string failure;  // why the sink stopped the transfer
};

size_t on_download_data(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<DownloadSink*>(user);
  const size_t bytes = size * n;
  const long status = s->req->status();
  if (status >= 300) {
    if (s->error_body.size() < kMaxErrorBody) s->error_body.append(data, bytes);
    return bytes;
  }
  if (!s->decided) {
    s->decided = true;
    bool append = false;
    if (status == 206) {
      // "bytes <start>-<end>/<total>": the server must continue exactly where the file ends.
      const std::string range = s->req->headers().get("content-range");
      unsigned long long start = ~0ull;
      if (std::sscanf(range.c_str(), "bytes %llu-", &start) != 1 || start != s->offset) {
        s->failure = fmt::format("the server answered a Range request for byte {} with \"{}\"",
                                 s->offset, range);
        return 0;
      }
      append = true;
    } else {
      s->progress->resumed = 0;  // the server ignored the Range: the count starts over
    }
    s->file = std::fopen(s->path.c_str(), append ? "ab" : "wb");
    if (s->file == nullptr) {
      s->failure = fmt::format("cannot open {} for writing", s->path.string());
      return 0;
    }
  }
  if (std::fwrite(data, 1, bytes, s->file) != bytes) {
    s->failure = fmt::format("cannot write {} (disk full?)", s->path.string());
    return 0;
  }
  return bytes;
}

// An exclusive lock on <cache>/.locks/<repo folder>/<blob>.lock for the whole download, so two
// processes fetching the same model do not write the same .incomplete file.
class FileLock {
 public:
  explicit FileLock(const fs::path& p) {
    fs::create_directories(p.parent_path());
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ATOM_CHECK(fd_ >= 0, kIo, "cannot open lock file {}", p.string());
    ::flock(fd_, LOCK_EX);
  }
  ~FileLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

struct RepoFile {
  std::string name;  // rfilename
  std::string blob;  // blob file name: LFS sha256, git blob id, or a local stand-in
  std::optional<uint64_t> size;
};

void download_blob(const HubContext& ctx, const std::string& commit, const RepoFile& file,
                   const fs::path& repo_dir) {
  const fs::path blob = repo_dir / "blobs" / file.blob;
  const fs::path lock_path =
      repo_dir.parent_path() / ".locks" / repo_dir.filename() / (file.blob + ".lock");
  FileLock lock(lock_path);
  std::error_code ec;
  if (fs::is_regular_file(blob, ec)) return;  // another process finished it meanwhile
  fs::create_directories(blob.parent_path());
  const fs::path incomplete = blob.string() + ".incomplete";
  const std::string url = fmt::format("{}/{}/resolve/{}/{}", ctx.endpoint, ctx.ref.repo, commit,
                                      url_encode(file.name, true));
  const std::string what = fmt::format("downloading {} of {}", file.name, ctx.ref.repo);

  // Two tries at most: the second restarts from zero after the server rejected the Range of
  // the first (416: the partial file is not a prefix of this file).
  for (int attempt = 0; attempt < 2; ++attempt) {
    uint64_t offset = fs::is_regular_file(incomplete, ec) ? fs::file_size(incomplete, ec) : 0;
    if (file.size && offset > *file.size) {
      fs::remove(incomplete, ec);
      offset = 0;
    }
    if (!(file.size && offset == *file.size && offset > 0)) {
      CurlRequest req(url, ctx.token, ctx.options);
      Progress progress;
      progress.name = file.name;
      progress.enabled = ctx.options.progress;
      progress.live = ::isatty(STDERR_FILENO) == 1;
      progress.resumed = offset;
      progress.expected = file.size.value_or(0);
      progress.done = offset;
      progress.total = progress.expected;
      DownloadSink sink;
      sink.req = &req;
      sink.path = incomplete;
      sink.offset = offset;
      sink.progress = &progress;
      char errbuf[CURL_ERROR_SIZE] = {};
      const std::string range = fmt::format("{}-", offset);
      if (offset > 0) curl_easy_setopt(req.handle(), CURLOPT_RANGE, range.c_str());
      curl_easy_setopt(req.handle(), CURLOPT_WRITEFUNCTION, on_download_data);
      curl_easy_setopt(req.handle(), CURLOPT_WRITEDATA, &sink);
      curl_easy_setopt(req.handle(), CURLOPT_ERRORBUFFER, errbuf);
      curl_easy_setopt(req.handle(), CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(req.handle(), CURLOPT_XFERINFOFUNCTION, on_progress);
      curl_easy_setopt(req.handle(), CURLOPT_XFERINFODATA, &progress);
      const CURLcode rc = curl_easy_perform(req.handle());
      if (sink.file != nullptr && std::fclose(sink.file) != 0 && sink.failure.empty()) {
        sink.failure = fmt::format("cannot write {} (disk full?)", incomplete.string());
      }
      ATOM_CHECK(sink.failure.empty(), kIo, "{}: {}", what, sink.failure);
      if (rc != CURLE_OK) {
        progress.draw(true);
        throw_transfer_error(ctx, req, rc, errbuf, what);
      }
      const long status = req.status();
      if (status == 416 && offset > 0 && attempt == 0) {
        fs::remove(incomplete, ec);
        continue;
      }
      if (status >= 300) throw_http_error(ctx, req, sink.error_body, what);
      // An empty file has no body to open the output for.
      if (!sink.decided) std::ofstream(incomplete, std::ios::binary | std::ios::app).close();
      progress.done = fs::file_size(incomplete, ec);
      progress.total = std::max(progress.total, progress.done);
      progress.draw(true);
    }
    const uint64_t got = fs::file_size(incomplete, ec);
    ATOM_CHECK(!file.size || got == *file.size, kIo,
               "{}: got {} bytes of {}; run again to resume from {}", what, got, *file.size,
               incomplete.string());
    fs::rename(incomplete, blob, ec);
    ATOM_CHECK(!ec, kIo, "cannot rename {} to {}: {}", incomplete.string(), blob.string(),
               ec.message());
    return;
  }
  throw_error(ErrorCode::kIo, "{}: the server rejected resuming from {} twice", what,
              incomplete.string());
}

// snapshots/<commit>/<name> -> ../../blobs/<blob> (one more ".." per sub-folder), as
// huggingface_hub links them; a copy where the filesystem has no symlinks.
void link_into_snapshot(const fs::path& repo_dir, const std::string& commit, const RepoFile& file) {
  const fs::path blob = repo_dir / "blobs" / file.blob;
  const fs::path link = repo_dir / "snapshots" / commit / file.name;
  fs::create_directories(link.parent_path());
  std::error_code ec;
  fs::remove(link, ec);
  const fs::path target = blob.lexically_relative(link.parent_path());
  fs::create_symlink(target, link, ec);
  if (ec) {
    fs::copy_file(blob, link, fs::copy_options::overwrite_existing, ec);
    ATOM_CHECK(!ec, kIo, "cannot place {} in the snapshot {}: {}", file.name,
               link.parent_path().string(), ec.message());
  }
}

std::string download_snapshot(const HubContext& ctx, const fs::path& repo_dir) {
  const std::string api = fmt::format("{}/api/models/{}/revision/{}?blobs=true", ctx.endpoint,
                                      ctx.ref.repo, url_encode(ctx.ref.revision, false));
  const std::string what =
      fmt::format("looking up {}@{} on the Hub", ctx.ref.repo, ctx.ref.revision);
  const json info = get_json(ctx, api, what);
  ATOM_CHECK(info.is_object() && info.contains("sha") && info["sha"].is_string() &&
                 is_commit_hash(info["sha"].get<std::string>()),
             kCorrupt, "{}: the answer of {} has no commit \"sha\"", what, api);
  ATOM_CHECK(info.contains("siblings") && info["siblings"].is_array(), kCorrupt,
             "{}: the answer of {} has no \"siblings\" file list", what, api);
  const std::string commit = info["sha"];

  // rfilename -> where its bytes go. The blob name is what huggingface_hub names it (the ETag:
  // LFS sha256 or git blob id) when the API gives it, so both tools share blobs.
  std::map<std::string, RepoFile> repo_files;
  for (const json& s : info["siblings"]) {
    if (!s.is_object() || !s.contains("rfilename") || !s["rfilename"].is_string()) continue;
    RepoFile f;
    f.name = s["rfilename"];
    if (!safe_relative_path(f.name)) continue;
    if (s.contains("lfs") && s["lfs"].is_object()) {
      const json& lfs = s["lfs"];
      if (lfs.contains("sha256") && lfs["sha256"].is_string()) f.blob = lfs["sha256"];
      if (lfs.contains("size") && lfs["size"].is_number_unsigned()) f.size = lfs["size"];
    }
    if (f.blob.empty() && s.contains("blobId") && s["blobId"].is_string()) f.blob = s["blobId"];
    if (!f.size && s.contains("size") && s["size"].is_number_unsigned()) f.size = s["size"];
    // A server that names no blob (or an odd one): a stand-in unique to this commit and file.
    if (!is_hex(f.blob)) {
      f.blob = commit + "-" + url_encode(f.name, false);
      f.size.reset();
    }
    repo_files[f.name] = std::move(f);
  }

  const std::string where =
      fmt::format("{}@{} (commit {})", ctx.ref.repo, ctx.ref.revision, commit);
  ATOM_CHECK(repo_files.contains("config.json"), kNotFound,
             "{} has no config.json: not a transformers model folder atom can load", where);

  auto fetch = [&](const std::string& name) {
    const RepoFile& f = repo_files.at(name);
    if (!fs::is_regular_file(repo_dir / "blobs" / f.blob)) download_blob(ctx, commit, f, repo_dir);
    link_into_snapshot(repo_dir, commit, f);
  };

  for (std::string_view side : kSideFiles) {
    if (repo_files.contains(std::string(side))) fetch(std::string(side));
  }
  const fs::path snap = repo_dir / "snapshots" / commit;
  std::vector<std::string> weights;
  if (repo_files.contains(std::string(kIndexFile))) {
    fetch(std::string(kIndexFile));
    for (const std::string& shard : index_shards(snap / kIndexFile)) {
      ATOM_CHECK(repo_files.contains(shard) && !hf_skip_file(shard), kCorrupt,
                 "{}: {} names the shard {}, which the repo does not have", where, kIndexFile,
                 shard);
      weights.push_back(shard);
    }
  } else if (repo_files.contains(std::string(kSingleWeights))) {
    weights.emplace_back(kSingleWeights);
  } else {
    for (const auto& [name, f] : repo_files) {
      if (name.find('/') == std::string::npos && ends_with(name, ".safetensors") &&
          !hf_skip_file(name)) {
        weights.push_back(name);
      }
    }
  }
  ATOM_CHECK(!weights.empty(), kNotFound,
             "{} has no safetensors weights (atom reads model.safetensors or sharded "
             "safetensors; for a GGUF file, download it and pass its path)",
             where);
  for (const std::string& w : weights) fetch(w);

  // The ref is written last: a revision points at a snapshot only once it is complete.
  if (ctx.ref.revision != commit) write_text_atomic(repo_dir / "refs" / ctx.ref.revision, commit);
  const std::string missing = snapshot_missing(snap);
  ATOM_CHECK(missing.empty(), kCorrupt, "{}: the downloaded snapshot {} lacks {}", where,
             snap.string(), missing);
  return snap.string();
}

}  // namespace

HfRepoRef parse_hf_repo_id(std::string_view id, std::string_view default_revision) {
  HfRepoRef out;
  std::string_view repo = id;
  std::string_view revision = default_revision;
  if (const size_t at = id.find('@'); at != std::string_view::npos) {
    repo = id.substr(0, at);
    revision = id.substr(at + 1);
    ATOM_CHECK(!revision.empty(), kInvalidArgument, "model id \"{}\": empty revision after '@'",
               id);
  }
  const size_t slash = repo.find('/');
  ATOM_CHECK(slash != std::string_view::npos && repo.find('/', slash + 1) == std::string_view::npos,
             kInvalidArgument, "model id \"{}\" is not of the form org/name[@revision]", id);
  ATOM_CHECK(repo.size() <= 96, kInvalidArgument, "model id \"{}\" is longer than 96 characters",
             id);
  ATOM_CHECK(valid_repo_part(repo.substr(0, slash)) && valid_repo_part(repo.substr(slash + 1)) &&
                 repo.find("--") == std::string_view::npos &&
                 repo.find("..") == std::string_view::npos,
             kInvalidArgument,
             "model id \"{}\": org and name use letters, digits, '_', '-' and '.', start and end "
             "with a letter, digit or '_', and contain no \"--\" or \"..\"",
             id);
  // The revision becomes a path under refs/: a branch like "refs/pr/1" is fine, ".." is not.
  ATOM_CHECK(safe_relative_path(revision) &&
                 std::none_of(revision.begin(), revision.end(),
                              [](char c) { return std::isspace(static_cast<unsigned char>(c)); }),
             kInvalidArgument, "model id \"{}\": bad revision \"{}\"", id, revision);
  out.repo = std::string(repo);
  out.revision = std::string(revision);
  return out;
}

bool looks_like_hf_repo_id(std::string_view s) {
  try {
    parse_hf_repo_id(s);
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::string hf_cache_repo_dir(std::string_view repo) {
  std::string folder = "models--";
  for (const char c : repo) {
    if (c == '/') {
      folder += "--";
    } else {
      folder += c;
    }
  }
  return (fs::path(envs::HF_HOME()) / "hub" / folder).string();
}

bool hf_skip_file(std::string_view f) {
  if (f.starts_with("original/")) return true;
  for (std::string_view ext :
       {".bin", ".pth", ".pt", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".pkl"}) {
    if (f.ends_with(ext)) return true;
  }
  return false;
}

std::string format_download_progress(std::string_view name, uint64_t done, uint64_t total,
                                     double bytes_per_second) {
  constexpr int kBarWidth = 20;
  std::string shown(name);
  if (shown.size() > 40) shown = "..." + shown.substr(shown.size() - 37);
  const std::string rate = human_bytes(bytes_per_second) + "/s";
  if (total == 0) {
    return fmt::format("{:<40}  {}  {}", shown, human_bytes(double(done)), rate);
  }
  const double frac = std::min(1.0, double(done) / double(total));
  const int filled = int(frac * kBarWidth);
  return fmt::format("{:<40} [{}{}] {:3.0f}%  {} / {}  {}", shown, std::string(filled, '#'),
                     std::string(kBarWidth - filled, ' '), frac * 100.0, human_bytes(double(done)),
                     human_bytes(double(total)), rate);
}

std::string resolve_hf_model(const std::string& repo_id, const HubOptions& options) {
  HubContext ctx;
  ctx.ref = parse_hf_repo_id(repo_id, options.revision);
  ctx.options = options;
  const fs::path repo_dir = hf_cache_repo_dir(ctx.ref.repo);

  const std::optional<std::string> commit = cached_commit(repo_dir, ctx.ref.revision);
  std::string missing = "the snapshot folder";
  if (commit) {
    const fs::path snap = repo_dir / "snapshots" / *commit;
    missing = snapshot_missing(snap);
    if (missing.empty()) return snap.string();
  }
  if (envs::HF_HUB_OFFLINE()) {
    const std::string state = commit ? fmt::format("its snapshot {} lacks {}", *commit, missing)
                                     : fmt::format("no snapshot of revision {}", ctx.ref.revision);
    throw_error(ErrorCode::kNotFound,
                "model {}@{} is not in the Hugging Face cache {} ({}) and HF_HUB_OFFLINE is "
                "set: download it once with network access, or unset HF_HUB_OFFLINE",
                ctx.ref.repo, ctx.ref.revision, repo_dir.string(), state);
  }
  ctx.endpoint = envs::HF_ENDPOINT();
  while (!ctx.endpoint.empty() && ctx.endpoint.back() == '/') ctx.endpoint.pop_back();
  ATOM_CHECK(!ctx.endpoint.empty(), kInvalidArgument, "HF_ENDPOINT is empty");
  ctx.token = envs::HF_TOKEN();
  if (ctx.token && ctx.token->empty()) ctx.token.reset();
  return download_snapshot(ctx, repo_dir);
}

}  // namespace atom

// Hugging Face Hub models: `--model org/name[@revision]` -> a local snapshot folder holding
// config.json, the tokenizer files and the safetensors weights.
//
// The cache is huggingface_hub's, shared with the Python tools ($HF_HOME/hub):
//   models--org--name/refs/<revision>          the commit hash the revision pointed to
//   models--org--name/blobs/<etag>             file contents (LFS sha256 or git blob id)
//   models--org--name/snapshots/<commit>/<f>   relative symlinks into blobs/
// A complete snapshot (config.json plus model.safetensors, or an index plus every shard it
// names) is used without touching the network. Otherwise the files are fetched from
// HF_ENDPOINT: GET /api/models/<repo>/revision/<rev> for the commit and file list, then
// /<repo>/resolve/<commit>/<file> for each needed file. Downloads go to blobs/<etag>.incomplete
// and continue from where they stopped (HTTP Range) after an interruption.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace atom {

struct HubOptions {
  std::string revision = "main";  // used when the repo id carries no "@revision"
  bool progress = true;           // a progress line per file on stderr
  long connect_timeout_s = 30;
  // A transfer that moves less than 1 byte/s for this long is abandoned (resumable later).
  long stall_timeout_s = 120;
};

struct HfRepoRef {
  std::string repo;      // "org/name"
  std::string revision;  // branch, tag or 40-hex commit
};

// "org/name" or "org/name@rev" -> its parts (revision falls back to default_revision). Throws
// kInvalidArgument for an id huggingface_hub would reject (empty parts, "..", "--", characters
// outside [A-Za-z0-9._-], more than 96 characters).
HfRepoRef parse_hf_repo_id(std::string_view id, std::string_view default_revision = "main");

// True when `s` has the shape of a Hub id ("org/name", optional "@rev"). The caller decides
// between a local path and a Hub id: an existing path wins.
bool looks_like_hf_repo_id(std::string_view s);

// $HF_HOME/hub/models--org--name
std::string hf_cache_repo_dir(std::string_view repo);

// The snapshot folder for the model, downloading what is missing. Throws atom::Error: kNotFound
// for an unknown repo/revision (HTTP 404), a repo without config.json or safetensors weights, or
// offline mode (HF_HUB_OFFLINE) with no complete snapshot cached; kInvalidArgument for HTTP
// 401/403 (gated or private: set HF_TOKEN); kIo for network and disk failures.
std::string resolve_hf_model(const std::string& repo_id, const HubOptions& options = {});

// True when the repo file is one atom never needs (original/*, *.bin, *.pth, *.gguf, ...).
bool hf_skip_file(std::string_view rfilename);

// One progress line: "<name> [#####     ]  45%  1.20 GB / 2.67 GB  35.1 MB/s" (total 0: size
// unknown, no bar or percentage).
std::string format_download_progress(std::string_view name, uint64_t done, uint64_t total,
                                     double bytes_per_second);

}  // namespace atom

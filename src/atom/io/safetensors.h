// safetensors reader: one file (SafetensorsFile) or a checkpoint folder (SafetensorsCheckpoint),
// either a single model.safetensors or shards listed by model.safetensors.index.json.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}
// then the data section; offsets are relative to its start. Every malformed input (truncated
// header, bad JSON, offsets out of range or overlapping, a byte range that does not match
// dtype x shape) throws atom::Error naming the file and what is wrong. Data is memory-mapped, or
// read whole when use_mmap is false (the caller passes envs::ATOM_DISABLE_MMAP()).
#pragma once

#include "atom/io/file_bytes.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "atom/core/dtype.h"
#include "atom/core/error.h"

namespace atom {

// The element types atom reads. Other valid safetensors dtypes (F64, I16, U16, U32, U64,
// F8_E5M2, ...) are kept as kUnsupported so a checkpoint holding an unused tensor of such a type
// still opens; reading that tensor throws kUnsupported naming the dtype.
enum class SafetensorsDType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF8E4M3,
  kI8,
  kU8,
  kI32,
  kI64,
  kBool,
  kUnsupported,
};

// "F32", "BF16", "F8_E4M3", "BOOL", ... (the file's spelling); "unsupported" for kUnsupported.
std::string_view safetensors_dtype_name(SafetensorsDType t);
// Bytes per element (BOOL is one byte); 0 for kUnsupported.
size_t safetensors_dtype_size(SafetensorsDType t);

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::string dtype_name;      // as written in the header, e.g. "F64" for a kUnsupported one
  std::vector<int64_t> shape;  // PyTorch order: shape.back() is the contiguous dimension
  uint64_t begin = 0;          // [begin, end) relative to the data section
  uint64_t end = 0;

  int64_t numel() const;
  size_t nbytes() const { return size_t(end - begin); }
};

// A tensor's bytes in a mapped (or read) file; valid while its file/checkpoint is alive.
struct SafetensorsView {
  std::string_view name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // atom's DType of the elements; BOOL has none and throws kUnsupported.
  DType atom_dtype() const;
};

class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path, bool use_mmap = true);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool mapped() const { return mapped_; }
  // In data-section order (ascending begin).
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  // The "__metadata__" string map (empty when absent), e.g. {"format": "pt"}.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const SafetensorsTensorInfo* find_info(std::string_view name) const;
  // nullopt when absent; kUnsupported when the tensor's dtype is not one atom reads.
  std::optional<SafetensorsView> find(std::string_view name) const;
  SafetensorsView tensor(std::string_view name) const;  // throws kNotFound when absent
  SafetensorsView view(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  void parse();

  std::string path_;
  const uint8_t* base_ = nullptr;  // whole file
  size_t size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  size_t data_size_ = 0;
  bool mapped_ = false;
  FileBytes bytes_;             // owns base_
  std::vector<SafetensorsTensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> index_;  // keys point into tensors_[i].name
  std::map<std::string, std::string> metadata_;
};

// A checkpoint folder. With model.safetensors.index.json, exactly the shards its weight_map
// names are opened (once each; other *.safetensors in the folder, such as a duplicate
// consolidated.safetensors, are ignored); else model.safetensors; else every *.safetensors.
// A tensor present in two shards, a shard file that is missing, or an index entry whose shard
// lacks the tensor throws atom::Error naming the folder, shard and tensor. Tensors keep their
// checkpoint names: fp8 weights and their scales (weight_scale_inv, weight_scale, input_scale)
// are all reachable through find().
class SafetensorsCheckpoint {
 public:
  static std::unique_ptr<SafetensorsCheckpoint> open(const std::string& dir, bool use_mmap = true);

  const std::string& dir() const { return dir_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  size_t num_tensors() const { return index_.size(); }
  std::vector<std::string> names() const;  // sorted
  bool has(std::string_view name) const { return index_.count(std::string(name)) != 0; }

  std::optional<SafetensorsView> find(std::string_view name) const;
  SafetensorsView tensor(std::string_view name) const;  // throws kNotFound naming the folder
  // The file holding `name` (nullptr when absent).
  const SafetensorsFile* file_of(std::string_view name) const;
  // The scale of an fp8 weight "<prefix>.weight": "<prefix>.weight_scale_inv" (block-quantized
  // DeepSeek style) or else "<prefix>.weight_scale" (per-tensor/per-channel); nullopt if neither.
  std::optional<SafetensorsView> find_weight_scale(std::string_view weight_name) const;

 private:
  SafetensorsCheckpoint() = default;
  void add_file(std::unique_ptr<SafetensorsFile> f);

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> (file index, tensor index in that file)
  std::unordered_map<std::string, std::pair<size_t, size_t>> index_;
};

}  // namespace atom

#include "atom/io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace atom {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference implementation rejects headers above 100 MB; a corrupt length must fail cleanly
// instead of asking for gigabytes.
constexpr uint64_t kMaxHeaderLen = uint64_t(100) << 20;
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

struct DTypeEntry {
  std::string_view name;
  SafetensorsDType dtype;
  size_t size;  // bytes per element, used to validate byte ranges of unsupported types too
};

// Every dtype of the safetensors format. Sub-byte types (F4, F6_*) cannot be validated per
// element and are rejected as unknown like any other name.
constexpr DTypeEntry kDTypes[] = {
    {"F32", SafetensorsDType::kF32, 4},
    {"F16", SafetensorsDType::kF16, 2},
    {"BF16", SafetensorsDType::kBF16, 2},
    {"F8_E4M3", SafetensorsDType::kF8E4M3, 1},
    {"I8", SafetensorsDType::kI8, 1},
    {"U8", SafetensorsDType::kU8, 1},
    {"I32", SafetensorsDType::kI32, 4},
    {"I64", SafetensorsDType::kI64, 8},
    {"BOOL", SafetensorsDType::kBool, 1},
    {"F64", SafetensorsDType::kUnsupported, 8},
    {"I16", SafetensorsDType::kUnsupported, 2},
    {"U16", SafetensorsDType::kUnsupported, 2},
    {"U32", SafetensorsDType::kUnsupported, 4},
    {"U64", SafetensorsDType::kUnsupported, 8},
    {"F8_E5M2", SafetensorsDType::kUnsupported, 1},
    {"F8_E8M0", SafetensorsDType::kUnsupported, 1},
    {"C64", SafetensorsDType::kUnsupported, 8},
};

const DTypeEntry* find_dtype(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  ATOM_CHECK(in.good(), kIo, "cannot read {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string_view safetensors_dtype_name(SafetensorsDType t) {
  if (t == SafetensorsDType::kUnsupported) return "unsupported";
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == t) return e.name;
  }
  return "?";
}

size_t safetensors_dtype_size(SafetensorsDType t) {
  if (t == SafetensorsDType::kUnsupported) return 0;
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == t) return e.size;
  }
  return 0;
}

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t SafetensorsView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

DType SafetensorsView::atom_dtype() const {
  switch (dtype) {
    case SafetensorsDType::kF32:
      return DType::kF32;
    case SafetensorsDType::kF16:
      return DType::kF16;
    case SafetensorsDType::kBF16:
      return DType::kBF16;
    case SafetensorsDType::kF8E4M3:
      return DType::kF8E4M3;
    case SafetensorsDType::kI8:
      return DType::kI8;
    case SafetensorsDType::kU8:
      return DType::kU8;
    case SafetensorsDType::kI32:
      return DType::kI32;
    case SafetensorsDType::kI64:
      return DType::kI64;
    case SafetensorsDType::kBool:
    case SafetensorsDType::kUnsupported:
      break;
  }
  throw_error(ErrorCode::kUnsupported, "tensor '{}' has dtype {}, which has no atom DType", name,
              safetensors_dtype_name(dtype));
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path, bool use_mmap) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->bytes_ = FileBytes::open(path, use_mmap, "safetensors file");
  f->base_ = f->bytes_.data();
  f->size_ = f->bytes_.size();
  f->mapped_ = f->bytes_.mapped();
  ATOM_CHECK(f->size_ >= 8, kCorrupt,
             "{}: truncated safetensors file: {} bytes, fewer than the 8-byte header length", path,
             f->size_);
  f->parse();
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::parse() {
  uint64_t header_len = 0;
  std::memcpy(&header_len, base_, 8);  // little-endian, as every supported host
  ATOM_CHECK(header_len <= kMaxHeaderLen, kCorrupt,
             "{}: corrupt safetensors header: length {} exceeds the {} byte limit", path_,
             header_len, kMaxHeaderLen);
  ATOM_CHECK(header_len <= size_ - 8, kCorrupt,
             "{}: truncated safetensors file: header length {} runs past the end of the file "
             "({} bytes)",
             path_, header_len, size_);
  data_ = base_ + 8 + header_len;
  data_size_ = size_ - 8 - size_t(header_len);

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base_ + 8),
                         reinterpret_cast<const char*>(base_ + 8 + header_len));
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "{}: safetensors header is not valid JSON: {}", path_,
                e.what());
  }
  ATOM_CHECK(header.is_object(), kCorrupt, "{}: safetensors header is not a JSON object", path_);

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      ATOM_CHECK(v.is_object(), kCorrupt, "{}: __metadata__ is not a JSON object", path_);
      for (auto m = v.begin(); m != v.end(); ++m) {
        ATOM_CHECK(m.value().is_string(), kCorrupt,
                   "{}: __metadata__ value of '{}' is not a string", path_, m.key());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ATOM_CHECK(v.is_object(), kCorrupt, "{}: header entry of tensor '{}' is not an object", path_,
               name);
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    ATOM_CHECK(dt != v.end() && dt->is_string(), kCorrupt, "{}: tensor '{}' has no string 'dtype'",
               path_, name);
    ATOM_CHECK(sh != v.end() && sh->is_array(), kCorrupt, "{}: tensor '{}' has no 'shape' array",
               path_, name);
    ATOM_CHECK(off != v.end() && off->is_array() && off->size() == 2 &&
                   (*off)[0].is_number_unsigned() && (*off)[1].is_number_unsigned(),
               kCorrupt, "{}: tensor '{}' needs 'data_offsets' [begin, end] of two unsigned ints",
               path_, name);

    SafetensorsTensorInfo t;
    t.name = name;
    t.dtype_name = dt->get<std::string>();
    const DTypeEntry* e = find_dtype(t.dtype_name);
    ATOM_CHECK(e != nullptr, kUnsupported, "{}: tensor '{}' has unknown dtype '{}'", path_, name,
               t.dtype_name);
    t.dtype = e->dtype;

    // numel * element size must not overflow while we check it against the byte range.
    uint64_t expected = e->size;
    for (const json& d : *sh) {
      ATOM_CHECK(d.is_number_unsigned(), kCorrupt,
                 "{}: tensor '{}' has a shape entry {} that is not a non-negative integer", path_,
                 name, d.dump());
      const uint64_t dim = d.get<uint64_t>();
      ATOM_CHECK(dim <= uint64_t(std::numeric_limits<int64_t>::max()) &&
                     (dim == 0 || expected <= std::numeric_limits<uint64_t>::max() / dim),
                 kCorrupt, "{}: tensor '{}' has shape {} whose size overflows", path_, name,
                 sh->dump());
      expected *= dim;
      t.shape.push_back(int64_t(dim));
    }
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    ATOM_CHECK(t.begin <= t.end && t.end <= data_size_, kCorrupt,
               "{}: tensor '{}' has data_offsets [{}, {}] outside the data section of {} bytes",
               path_, name, t.begin, t.end, data_size_);
    ATOM_CHECK(t.end - t.begin == expected, kCorrupt,
               "{}: tensor '{}' ({} {}) needs {} bytes but data_offsets [{}, {}] span {}", path_,
               name, t.dtype_name, sh->dump(), expected, t.begin, t.end, t.end - t.begin);
    tensors_.push_back(std::move(t));
  }

  std::sort(tensors_.begin(), tensors_.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Sorted by begin, two non-empty ranges overlap iff one starts before the previous one ends.
  const SafetensorsTensorInfo* prev = nullptr;
  for (const SafetensorsTensorInfo& t : tensors_) {
    if (t.begin == t.end) continue;
    ATOM_CHECK(prev == nullptr || t.begin >= prev->end, kCorrupt,
               "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", path_,
               prev ? prev->name : "", prev ? prev->begin : 0, prev ? prev->end : 0, t.name,
               t.begin, t.end);
    prev = &t;
  }
  // tensors_ is final: the keys below point into its strings.
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const SafetensorsTensorInfo* SafetensorsFile::find_info(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsView SafetensorsFile::view(const SafetensorsTensorInfo& info) const {
  ATOM_CHECK(info.dtype != SafetensorsDType::kUnsupported, kUnsupported,
             "{}: tensor '{}' has dtype {}, which atom does not support", path_, info.name,
             info.dtype_name);
  SafetensorsView v;
  v.name = info.name;
  v.dtype = info.dtype;
  v.shape = info.shape;
  v.data = data_ + info.begin;
  v.nbytes = info.nbytes();
  return v;
}

std::optional<SafetensorsView> SafetensorsFile::find(std::string_view name) const {
  const SafetensorsTensorInfo* info = find_info(name);
  if (info == nullptr) return std::nullopt;
  return view(*info);
}

SafetensorsView SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsTensorInfo* info = find_info(name);
  ATOM_CHECK(info != nullptr, kNotFound, "{}: no tensor named '{}'", path_, name);
  return view(*info);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

void SafetensorsCheckpoint::add_file(std::unique_ptr<SafetensorsFile> f) {
  const size_t fi = files_.size();
  for (size_t ti = 0; ti < f->tensors().size(); ++ti) {
    const std::string& name = f->tensors()[ti].name;
    const auto [it, inserted] = index_.emplace(name, std::make_pair(fi, ti));
    ATOM_CHECK(inserted, kCorrupt, "{}: tensor '{}' is in two shards: {} and {}", dir_, name,
               files_[it->second.first]->path(), f->path());
  }
  files_.push_back(std::move(f));
}

std::unique_ptr<SafetensorsCheckpoint> SafetensorsCheckpoint::open(const std::string& dir,
                                                                   bool use_mmap) {
  std::unique_ptr<SafetensorsCheckpoint> c(new SafetensorsCheckpoint());
  c->dir_ = dir;
  const fs::path root(dir);
  std::error_code ec;
  ATOM_CHECK(fs::is_directory(root, ec), kNotFound, "checkpoint folder not found: {}", dir);

  const fs::path index_path = root / kIndexFile;
  if (fs::exists(index_path, ec)) {
    json index;
    try {
      index = json::parse(read_text_file(index_path));
    } catch (const json::exception& e) {
      throw_error(ErrorCode::kCorrupt, "{}: not valid JSON: {}", index_path.string(), e.what());
    }
    ATOM_CHECK(index.is_object(), kCorrupt, "{}: not a JSON object", index_path.string());
    const auto wm = index.find("weight_map");
    ATOM_CHECK(wm != index.end() && wm->is_object(), kCorrupt, "{}: no 'weight_map' object",
               index_path.string());
    // Shards in the order they first appear in weight_map (model-00001-of-N usually first).
    std::vector<std::string> shard_order;
    std::set<std::string> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      ATOM_CHECK(it.value().is_string(), kCorrupt,
                 "{}: weight_map entry of '{}' is not a file name", index_path.string(), it.key());
      const std::string shard = it.value().get<std::string>();
      const fs::path sp(shard);
      // Shard names are plain files of this folder; anything else is a broken (or hostile) index.
      ATOM_CHECK(!shard.empty() && sp.is_relative() && sp == sp.filename() && shard != ".." &&
                     shard != ".",
                 kCorrupt, "{}: weight_map names shard '{}', which is not a file in the folder",
                 index_path.string(), shard);
      if (shards.insert(shard).second) shard_order.push_back(shard);
    }
    ATOM_CHECK(!shard_order.empty(), kCorrupt, "{}: weight_map is empty", index_path.string());
    std::map<std::string, size_t> shard_file;
    for (const std::string& shard : shard_order) {
      const fs::path p = root / shard;
      ATOM_CHECK(fs::exists(p, ec), kNotFound, "{}: shard {} named by {} is missing", dir,
                 p.string(), kIndexFile);
      shard_file[shard] = c->files_.size();
      c->add_file(SafetensorsFile::open(p.string(), use_mmap));
    }
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      const size_t fi = shard_file.at(it.value().get<std::string>());
      const SafetensorsFile& f = *c->files_[fi];
      ATOM_CHECK(f.find_info(it.key()) != nullptr, kCorrupt,
                 "{}: {} puts tensor '{}' in {}, which does not contain it", dir, kIndexFile,
                 it.key(), f.path());
    }
    return c;
  }

  const fs::path single = root / kSingleFile;
  if (fs::exists(single, ec)) {
    c->add_file(SafetensorsFile::open(single.string(), use_mmap));
    return c;
  }

  std::vector<fs::path> found;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    if (e.is_regular_file() && e.path().extension() == ".safetensors") found.push_back(e.path());
  }
  ATOM_CHECK(!found.empty(), kNotFound, "{}: no .safetensors files (and no {})", dir, kIndexFile);
  std::sort(found.begin(), found.end());
  for (const fs::path& p : found) c->add_file(SafetensorsFile::open(p.string(), use_mmap));
  return c;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, loc] : index_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsFile* SafetensorsCheckpoint::file_of(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : files_[it->second.first].get();
}

std::optional<SafetensorsView> SafetensorsCheckpoint::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  if (it == index_.end()) return std::nullopt;
  const SafetensorsFile& f = *files_[it->second.first];
  return f.view(f.tensors()[it->second.second]);
}

SafetensorsView SafetensorsCheckpoint::tensor(std::string_view name) const {
  std::optional<SafetensorsView> v = find(name);
  ATOM_CHECK(v.has_value(), kNotFound, "{}: checkpoint has no tensor named '{}'", dir_, name);
  return *v;
}

std::optional<SafetensorsView> SafetensorsCheckpoint::find_weight_scale(
    std::string_view weight_name) const {
  const std::string base(weight_name);
  if (auto v = find(base + "_scale_inv")) return v;
  return find(base + "_scale");
}

}  // namespace atom

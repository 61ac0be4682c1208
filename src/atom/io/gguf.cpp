#include "atom/io/gguf.h"


#include <cstring>
#include <limits>

namespace atom {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
// Sanity limits: a corrupt count must fail cleanly, not allocate terabytes.
constexpr uint64_t kMaxStringLen = uint64_t(1) << 30;
constexpr uint64_t kMaxCount = uint64_t(1) << 28;
constexpr int kMaxDims = 4;  // GGML_MAX_DIMS

// Bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    ATOM_CHECK(len <= kMaxStringLen, kCorrupt, "{}: corrupt GGUF: {} has length {}", path_, what,
               len);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }

  size_t pos() const { return pos_; }

 private:
  void need(uint64_t k, const char* what) {
    ATOM_CHECK(k <= n_ - pos_, kCorrupt,
               "{}: truncated GGUF file: {} needs {} bytes at offset {} but the file has {}",
               path_, what, k, pos_, n_);
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

const char* value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: return "u8";
    case GgufValueType::kI8: return "i8";
    case GgufValueType::kU16: return "u16";
    case GgufValueType::kI16: return "i16";
    case GgufValueType::kU32: return "u32";
    case GgufValueType::kI32: return "i32";
    case GgufValueType::kF32: return "f32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kU64: return "u64";
    case GgufValueType::kI64: return "i64";
    case GgufValueType::kF64: return "f64";
  }
  return "?";
}

bool is_int_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kU16:
    case GgufValueType::kI16: case GgufValueType::kU32: case GgufValueType::kI32:
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kBool:
      return true;
    default:
      return false;
  }
}
bool is_float_type(GgufValueType t) {
  return t == GgufValueType::kF32 || t == GgufValueType::kF64;
}

GgufValueType check_value_type(uint32_t raw, const std::string& path, const std::string& key) {
  ATOM_CHECK(raw <= uint32_t(GgufValueType::kF64), kCorrupt,
             "{}: corrupt GGUF: metadata key '{}' has unknown value type {}", path, key, raw);
  return GgufValueType(raw);
}

int64_t read_int(Cursor& c, GgufValueType t, const std::string& path, const std::string& key) {
  switch (t) {
    case GgufValueType::kU8: return c.read<uint8_t>("u8 value");
    case GgufValueType::kI8: return c.read<int8_t>("i8 value");
    case GgufValueType::kU16: return c.read<uint16_t>("u16 value");
    case GgufValueType::kI16: return c.read<int16_t>("i16 value");
    case GgufValueType::kU32: return c.read<uint32_t>("u32 value");
    case GgufValueType::kI32: return c.read<int32_t>("i32 value");
    case GgufValueType::kI64: return c.read<int64_t>("i64 value");
    case GgufValueType::kBool: {
      const uint8_t b = c.read<uint8_t>("bool value");
      ATOM_CHECK(b <= 1, kCorrupt, "{}: corrupt GGUF: key '{}' has bool value {}", path, key, b);
      return b;
    }
    case GgufValueType::kU64: {
      const uint64_t v = c.read<uint64_t>("u64 value");
      ATOM_CHECK(v <= uint64_t(std::numeric_limits<int64_t>::max()), kCorrupt,
                 "{}: corrupt GGUF: key '{}' has u64 value {} out of range", path, key, v);
      return int64_t(v);
    }
    default:
      ATOM_ASSERT(false);
  }
}

double read_float(Cursor& c, GgufValueType t) {
  return t == GgufValueType::kF32 ? double(c.read<float>("f32 value"))
                                  : c.read<double>("f64 value");
}

}  // namespace

bool GgufValue::is_integer() const { return is_int_type(type); }
bool GgufValue::is_float() const { return is_float_type(type); }

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path, bool use_mmap) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->bytes_ = FileBytes::open(path, use_mmap, "model file");
  f->base_ = f->bytes_.data();
  f->size_ = f->bytes_.size();
  ATOM_CHECK(f->size_ > 0, kCorrupt, "{}: empty file, not a GGUF model", path);
  f->parse();
  return f;
}

GgufFile::~GgufFile() = default;

void GgufFile::parse() {
  Cursor c(base_, size_, path_);
  const uint32_t magic = c.read<uint32_t>("magic");
  ATOM_CHECK(magic == kGgufMagic, kCorrupt, "{}: not a GGUF file (bad magic 0x{:08x})", path_,
             magic);
  version_ = c.read<uint32_t>("version");
  ATOM_CHECK(version_ == 2 || version_ == 3, kUnsupported,
             "{}: GGUF version {} is not supported (atom reads versions 2 and 3)", path_,
             version_);
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  ATOM_CHECK(n_tensors <= kMaxCount && n_kv <= kMaxCount, kCorrupt,
             "{}: corrupt GGUF header: {} tensors, {} metadata keys", path_, n_tensors, n_kv);

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key");
    GgufValue v;
    v.type = check_value_type(c.read<uint32_t>("value type"), path_, key);
    if (v.type == GgufValueType::kString) {
      v.s = c.read_string("string value");
    } else if (is_float_type(v.type)) {
      v.f = read_float(c, v.type);
    } else if (v.type == GgufValueType::kArray) {
      v.elem_type = check_value_type(c.read<uint32_t>("array type"), path_, key);
      const uint64_t n = c.read<uint64_t>("array length");
      ATOM_CHECK(n <= kMaxCount, kCorrupt, "{}: corrupt GGUF: array '{}' has {} elements", path_,
                 key, n);
      ATOM_CHECK(v.elem_type != GgufValueType::kArray, kUnsupported,
                 "{}: nested GGUF arrays are not supported (key '{}')", path_, key);
      if (v.elem_type == GgufValueType::kString) {
        v.strs.reserve(n);
        for (uint64_t j = 0; j < n; ++j) v.strs.push_back(c.read_string("array string"));
      } else if (is_float_type(v.elem_type)) {
        v.floats.reserve(n);
        for (uint64_t j = 0; j < n; ++j) v.floats.push_back(read_float(c, v.elem_type));
      } else {
        v.ints.reserve(n);
        for (uint64_t j = 0; j < n; ++j) v.ints.push_back(read_int(c, v.elem_type, path_, key));
      }
    } else {
      v.i = read_int(c, v.type, path_, key);
    }
    ATOM_CHECK(!kv_.contains(key), kCorrupt, "{}: corrupt GGUF: duplicate metadata key '{}'",
               path_, key);
    key_order_.push_back(key);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    ATOM_CHECK(a->is_integer() && a->i > 0 && (a->i & (a->i - 1)) == 0, kCorrupt,
               "{}: corrupt GGUF: general.alignment must be a power of two", path_);
    alignment_ = size_t(a->i);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string("tensor name");
    const uint32_t n_dims = c.read<uint32_t>("tensor rank");
    ATOM_CHECK(n_dims >= 1 && n_dims <= uint32_t(kMaxDims), kCorrupt,
               "{}: corrupt GGUF: tensor '{}' has {} dimensions", path_, t.name, n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      ATOM_CHECK(dim > 0 && dim <= (uint64_t(1) << 40) &&
                     uint64_t(numel) <= (uint64_t(1) << 50) / dim,
                 kCorrupt, "{}: corrupt GGUF: tensor '{}' has dimension {}", path_, t.name, dim);
      t.dims.push_back(int64_t(dim));
      numel *= int64_t(dim);
    }
    const uint32_t type = c.read<uint32_t>("tensor type");
    const GgmlTypeInfo* info = ggml_type_info(type);
    ATOM_CHECK(info != nullptr, kUnsupported,
               "{}: tensor '{}' has unknown GGML type id {} (newer file format?)", path_, t.name,
               type);
    t.type = GgmlType(type);
    ATOM_CHECK(t.dims[0] % info->block_size == 0, kCorrupt,
               "{}: corrupt GGUF: tensor '{}' of type {} has row length {}, not a multiple of {}",
               path_, t.name, info->name, t.dims[0], info->block_size);
    t.nbytes = size_t(numel / info->block_size) * info->type_size;
    t.offset = c.read<uint64_t>("tensor offset");
    ATOM_CHECK(t.offset % alignment_ == 0, kCorrupt,
               "{}: corrupt GGUF: tensor '{}' offset {} is not aligned to {}", path_, t.name,
               t.offset, alignment_);
    ATOM_CHECK(!tensor_index_.contains(t.name), kCorrupt,
               "{}: corrupt GGUF: duplicate tensor '{}'", path_, t.name);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  const size_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  ATOM_CHECK(data_start <= size_ || tensors_.empty(), kCorrupt,
             "{}: truncated GGUF file: no tensor data section", path_);
  data_ = base_ + std::min(data_start, size_);
  const size_t data_size = size_ - std::min(data_start, size_);
  for (const GgufTensorInfo& t : tensors_) {
    ATOM_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset, kCorrupt,
               "{}: truncated GGUF file: tensor '{}' needs bytes [{}, {}) of a {}-byte data "
               "section",
               path_, t.name, t.offset, t.offset + t.nbytes, data_size);
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, std::string_view key, const GgufValue& v,
                             const char* want) {
  throw_error(ErrorCode::kCorrupt, "{}: GGUF key '{}' is {}{}{}, expected {}", path, key,
              value_type_name(v.type), v.is_array() ? " of " : "",
              v.is_array() ? value_type_name(v.elem_type) : "", want);
}
}  // namespace

#define ATOM_GGUF_FIND(key)                                                                 \
  const GgufValue* v = find(key);                                                           \
  ATOM_CHECK(v != nullptr, kNotFound, "{}: GGUF metadata has no key '{}'", path_, key);

std::string GgufFile::get_string(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (v->type != GgufValueType::kString) wrong_type(path_, key, *v, "string");
  return v->s;
}

int64_t GgufFile::get_int(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (!v->is_integer()) wrong_type(path_, key, *v, "integer");
  return v->i;
}

double GgufFile::get_float(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (v->is_float()) return v->f;
  if (v->is_integer()) return double(v->i);
  wrong_type(path_, key, *v, "number");
}

bool GgufFile::get_bool(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (!v->is_integer()) wrong_type(path_, key, *v, "bool");
  return v->i != 0;
}

const std::vector<std::string>& GgufFile::get_string_array(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (!v->is_array() || v->elem_type != GgufValueType::kString)
    wrong_type(path_, key, *v, "array of strings");
  return v->strs;
}

const std::vector<int64_t>& GgufFile::get_int_array(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (!v->is_array() || !is_int_type(v->elem_type))
    wrong_type(path_, key, *v, "array of integers");
  return v->ints;
}

const std::vector<double>& GgufFile::get_float_array(std::string_view key) const {
  ATOM_GGUF_FIND(key);
  if (!v->is_array() || !is_float_type(v->elem_type))
    wrong_type(path_, key, *v, "array of floats");
  return v->floats;
}

#undef ATOM_GGUF_FIND

std::string GgufFile::get_string_or(std::string_view key, std::string def) const {
  return has(key) ? get_string(key) : def;
}
int64_t GgufFile::get_int_or(std::string_view key, int64_t def) const {
  return has(key) ? get_int(key) : def;
}
double GgufFile::get_float_or(std::string_view key, double def) const {
  return has(key) ? get_float(key) : def;
}
bool GgufFile::get_bool_or(std::string_view key, bool def) const {
  return has(key) ? get_bool(key) : def;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  ATOM_CHECK(t != nullptr, kNotFound, "{}: GGUF file has no tensor '{}'", path_, name);
  return *t;
}

}  // namespace atom

// Writes small GGUF files for tests: valid ones, and (by editing the bytes) broken ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace atom::testing {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  void add_u32(const std::string& k, uint32_t v) { key(k, 4), put(v); }
  void add_i32(const std::string& k, int32_t v) { key(k, 5), put(v); }
  void add_f32(const std::string& k, float v) { key(k, 6), put(v); }
  void add_bool(const std::string& k, bool v) { key(k, 7), put(uint8_t(v)); }
  void add_string(const std::string& k, const std::string& v) { key(k, 8), str(v); }
  void add_u64(const std::string& k, uint64_t v) { key(k, 10), put(v); }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9), put(uint32_t(8)), put(uint64_t(v.size()));
    for (const auto& s : v) str(s);
  }
  void add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9), put(uint32_t(5)), put(uint64_t(v.size()));
    for (int32_t x : v) put(x);
  }
  void add_f32_array(const std::string& k, const std::vector<float>& v) {
    key(k, 9), put(uint32_t(6)), put(uint64_t(v.size()));
    for (float x : v) put(x);
  }
  // dims in GGML order (innermost first); data is the raw bytes of the tensor.
  void add_tensor(const std::string& name, uint32_t type, std::vector<uint64_t> dims,
                  std::vector<uint8_t> data) {
    tensors_.push_back({name, type, std::move(dims), std::move(data)});
  }
  void add_f32_tensor(const std::string& name, std::vector<uint64_t> dims,
                      const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    add_tensor(name, 0, std::move(dims), std::move(b));
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto put_to = [&](const void* p, size_t n) {
      out.insert(out.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    };
    const uint32_t magic = 0x46554747;
    put_to(&magic, 4);
    put_to(&version_, 4);
    const uint64_t nt = tensors_.size();
    put_to(&nt, 8);
    put_to(&n_kv_, 8);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      const uint64_t len = t.name.size();
      put_to(&len, 8);
      put_to(t.name.data(), len);
      const uint32_t nd = uint32_t(t.dims.size());
      put_to(&nd, 4);
      for (uint64_t d : t.dims) put_to(&d, 8);
      put_to(&t.type, 4);
      put_to(&offset, 8);
      offsets.push_back(offset);
      offset += (t.data.size() + 31) / 32 * 32;
    }
    while (out.size() % 32) out.push_back(0);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
      while (out.size() % 32) out.push_back(0);
    }
    return out;
  }

  static void write_file(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }
  void write(const std::string& path) const { write_file(path, bytes()); }

 private:
  struct T {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> data;
  };
  template <typename V>
  void put(V v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    kv_.insert(kv_.end(), p, p + sizeof(V));
  }
  void str(const std::string& s) {
    put(uint64_t(s.size()));
    kv_.insert(kv_.end(), s.begin(), s.end());
  }
  void key(const std::string& k, uint32_t type) {
    ++n_kv_;
    str(k);
    put(type);
  }

  uint32_t version_;
  uint64_t n_kv_ = 0;
  std::vector<uint8_t> kv_;
  std::vector<T> tensors_;
};

}  // namespace atom::testing

// Tensor: shape, dtype, device and shared storage. Contiguous row-major is the norm; views share
// storage with an element offset. CPU memory comes from aligned malloc; CUDA memory from the caching
// allocator that the CUDA backend registers at start-up (so CPU-only code never needs CUDA at run time).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace dcf {

enum class DType : uint8_t { f32, f64, bf16, i32, i64, u16 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int i) { return {Kind::cuda, i}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && (kind == Kind::cpu || index == o.index); }
  std::string str() const;
};

// Allocator hooks for non-CPU devices; the CUDA backend installs them (kernels/cuda_runtime.cu).
struct DeviceAllocator {
  std::function<void*(size_t bytes, int device)> alloc;
  std::function<void(void* p, size_t bytes, int device)> free;
  // Copies between host and device or device and device; kinds are implied by the pointers' devices.
  std::function<void(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes)> copy;
  std::function<void(void* p, size_t bytes, int device)> zero;
};
void register_device_allocator(const DeviceAllocator& a);
bool device_allocator_registered();

class Storage {
 public:
  Storage(size_t bytes, Device dev);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return dev_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device dev_;
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device dev = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device dev = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_); }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Views (share storage).
  Tensor view(const Shape& shape) const;                 // same numel, contiguous
  Tensor slice0(int64_t begin, int64_t end) const;       // rows [begin, end) of dim 0
  Tensor flat_range(int64_t begin, int64_t count) const; // 1-D view of elements [begin, begin+count)

  // Copies.
  Tensor clone() const;
  Tensor to(Device dev) const;
  void copy_from(const Tensor& src);  // same numel and dtype, any devices
  void zero_();
  void fill_(double v);  // CPU only

  std::string desc() const;  // "f32[2,3]@cpu"

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace dcf

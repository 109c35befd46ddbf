// Tensor storage, views and copies (CPU side; device copies go through the registered hooks).
#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace dcf {

namespace {
DeviceAllocator& allocator_slot() {
  static DeviceAllocator a;
  return a;
}
}  // namespace

void register_device_allocator(const DeviceAllocator& a) { allocator_slot() = a; }
bool device_allocator_registered() { return static_cast<bool>(allocator_slot().alloc); }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
  }
  return "?";
}

std::string Device::str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Storage::Storage(size_t bytes, Device dev) : bytes_(bytes), dev_(dev) {
  if (dev.is_cpu()) {
    size_t b = (bytes + 63) / 64 * 64;
    ptr_ = std::aligned_alloc(64, b ? b : 64);
    if (!ptr_) throw DcfError("host allocation of " + std::to_string(bytes) + " bytes failed");
  } else {
    DCF_CHECK(device_allocator_registered(), "no CUDA backend in this build or it was not initialised");
    ptr_ = allocator_slot().alloc(bytes, dev.index);
  }
}

Storage::~Storage() {
  if (dev_.is_cpu())
    std::free(ptr_);
  else if (ptr_)
    allocator_slot().free(ptr_, bytes_, dev_.index);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  for (auto d : shape) DCF_CHECK(d >= 0, "negative dimension in ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), dev);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  t.zero_();
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  DCF_CHECK(shape_numel(shape) == numel(), "view ", shape_str(shape), " of ", desc());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  DCF_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice0 ", begin, ":", end, " of ", desc());
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  Tensor t = *this;
  t.offset_ += begin * row;
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::flat_range(int64_t begin, int64_t count) const {
  DCF_CHECK(begin >= 0 && count >= 0 && begin + count <= numel(), "flat_range of ", desc());
  Tensor t = *this;
  t.offset_ += begin;
  t.shape_ = {count};
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor t = empty(shape_, dtype_, dev);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  DCF_CHECK(src.numel() == numel() && src.dtype() == dtype_, "copy ", src.desc(), " -> ", desc());
  if (nbytes() == 0) return;
  if (device().is_cpu() && src.device().is_cpu())
    std::memcpy(raw(), src.raw(), nbytes());
  else
    allocator_slot().copy(raw(), device(), src.raw(), src.device(), nbytes());
}

void Tensor::zero_() {
  if (nbytes() == 0) return;
  if (device().is_cpu())
    std::memset(raw(), 0, nbytes());
  else
    allocator_slot().zero(raw(), nbytes(), device().index);
}

void Tensor::fill_(double v) {
  DCF_CHECK(device().is_cpu(), "fill_ on ", desc());
  int64_t n = numel();
  switch (dtype_) {
    case DType::f32: for (int64_t i = 0; i < n; ++i) data<float>()[i] = static_cast<float>(v); break;
    case DType::f64: for (int64_t i = 0; i < n; ++i) data<double>()[i] = v; break;
    case DType::i32: for (int64_t i = 0; i < n; ++i) data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::i64: for (int64_t i = 0; i < n; ++i) data<int64_t>()[i] = static_cast<int64_t>(v); break;
    default: throw DcfError(std::string("fill_ not supported for ") + dtype_name(dtype_));
  }
}

std::string Tensor::desc() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + "@" + device().str();
}

}  // namespace dcf

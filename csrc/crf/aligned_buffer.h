// A fixed-size float buffer aligned to 64 bytes, so that rows of 16 floats are cache lines. Large
// buffers ask Linux for transparent huge pages: the CRF's buffers are tens of megabytes, filled
// once per call, and 4 KiB pages would cost a page fault every 1024 floats.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace hassod::crf {

class AlignedFloats {
 public:
  AlignedFloats() = default;
  explicit AlignedFloats(std::size_t count) : size_(count) {
    if (count == 0) return;
    const bool huge = count * sizeof(float) >= kHugePage;
    const std::size_t alignment = huge ? kHugePage : kLine;
    const std::size_t bytes = (count * sizeof(float) + alignment - 1) / alignment * alignment;
    void* memory = std::aligned_alloc(alignment, bytes);
    if (memory == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(memory, bytes, MADV_HUGEPAGE);  // a hint; failure is harmless
#endif
    data_.reset(static_cast<float*>(memory));
  }

  // Makes room for at least `count` floats; the contents are lost when the buffer grows.
  void reserve(std::size_t count) {
    if (count > size_) *this = AlignedFloats(count);
  }

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  std::size_t size() const { return size_; }

 private:
  static constexpr std::size_t kLine = 64;
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;
  struct Free {
    void operator()(float* memory) const { std::free(memory); }
  };
  std::unique_ptr<float[], Free> data_;
  std::size_t size_ = 0;
};

}  // namespace hassod::crf

// What jaxcolor's oneDNN kernels share (dnnl_conv.cc, winograd.cc): the
// engine, errors as FFI errors, parts on XLA's pool with oneDNN
// single-threaded, and scratch blocks kept from call to call.

#ifndef JAXCOLOR_KERNELS_DNNL_COMMON_H_
#define JAXCOLOR_KERNELS_DNNL_COMMON_H_

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "thread_pool.h"
#include "xla/ffi/api/ffi.h"

namespace jaxcolor {

inline dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// Runs `body` and turns its exceptions (oneDNN's among them) into an FFI
// error whose message starts with `what`.
template <typename F>
xla::ffi::Error Guarded(F body, const char* what = "dnnl conv") {
  try {
    body();
  } catch (const dnnl::error& e) {
    return xla::ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return xla::ffi::Error::Internal(std::string(what) + ": " + e.what());
  }
  return xla::ffi::Error::Success();
}

// Runs part(i) for i in [0, parts) on the calling thread and XLA's own
// intra-op threads (thread_pool.h), each part with oneDNN single-threaded:
// XLA runs independent ops side by side on those threads, and a oneDNN call
// with its own team of OpenMP threads as large as the machine would
// oversubscribe the cores (a descheduled team member stalls the team).
// A part's error message starts with `what`.
inline xla::ffi::Error DnnlForEachPart(
    xla::ffi::ThreadPool& pool, int64_t parts,
    const std::function<void(int64_t)>& part, const char* what = "dnnl conv") {
  return ForEachPart(pool, parts, [&](int64_t i) {
    omp_set_num_threads(1);
    xla::ffi::Error result = Guarded([&] { part(i); }, what);
    if (result.failure()) throw std::runtime_error(result.message());
  });
}

// The kernels' scratch blocks (packed weights, per-slice weight grads,
// transformed tiles), kept from call to call: glibc serves a block over 32
// MiB from a fresh mmap and returns it to the kernel when freed, so every
// step would touch new pages, a page fault per 4 KiB, and unmap them again.
// A block given back waits for the next request of its exact size (a step
// asks for the same sizes every call), up to kMaxCached bytes in all, until
// the process ends.
class BlockCache {
 public:
  static BlockCache& Get() {
    static BlockCache* cache = new BlockCache;
    return *cache;
  }
  void* Take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        cached_ -= bytes;
        return block;
      }
    }
    void* block = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign *
                                                 kAlign);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }
  void Give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= kMaxCached) {
        free_.emplace(bytes, block);
        cached_ += bytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  static constexpr size_t kAlign = 64;
  static constexpr size_t kMaxCached = size_t{1} << 30;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// A block of `bytes` from BlockCache, given back when it goes out of scope.
class Block {
 public:
  Block() = default;
  explicit Block(size_t bytes)
      : bytes_(bytes), data_(bytes ? BlockCache::Get().Take(bytes) : nullptr) {}
  Block(Block&& other) noexcept { *this = std::move(other); }
  Block& operator=(Block&& other) noexcept {
    std::swap(bytes_, other.bytes_);
    std::swap(data_, other.data_);
    return *this;
  }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    if (data_ != nullptr) BlockCache::Get().Give(data_, bytes_);
  }
  void* data() const { return data_; }
  float* floats() const { return static_cast<float*>(data_); }

 private:
  size_t bytes_ = 0;
  void* data_ = nullptr;
};

}  // namespace jaxcolor

#endif  // JAXCOLOR_KERNELS_DNNL_COMMON_H_

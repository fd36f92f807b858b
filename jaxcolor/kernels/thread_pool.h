// Work split over XLA's intra-op threads, for jaxcolor's FFI kernels.

#ifndef JAXCOLOR_KERNELS_THREAD_POOL_H_
#define JAXCOLOR_KERNELS_THREAD_POOL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jaxcolor {

// Runs part(i) for i in [0, parts) on the calling thread and XLA's own
// intra-op threads. The caller takes parts too, so the call finishes even
// if no pool thread ever comes; a pool task that starts after the last part
// returns at once. A part that throws fails the call with its message.
inline xla::ffi::Error ForEachPart(xla::ffi::ThreadPool& pool, int64_t parts,
                                   const std::function<void(int64_t)>& part) {
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t parts = 0, left = 0;
    const std::function<void(int64_t)>* part = nullptr;
    std::mutex mu;
    std::condition_variable all_done;
    std::string error;
  };
  auto shared = std::make_shared<Shared>();
  shared->parts = shared->left = parts;
  shared->part = &part;
  auto work = [](const std::shared_ptr<Shared>& sh) {
    for (int64_t i = sh->next++; i < sh->parts; i = sh->next++) {
      std::string error;
      try {
        (*sh->part)(i);
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(sh->mu);
      if (!error.empty() && sh->error.empty()) sh->error = error;
      if (--sh->left == 0) sh->all_done.notify_all();
    }
  };
  int64_t helpers = std::min<int64_t>(parts, pool.num_threads()) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([shared, work] { work(shared); });
  }
  work(shared);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->left == 0; });
  if (!shared->error.empty()) return xla::ffi::Error::Internal(shared->error);
  return xla::ffi::Error::Success();
}

}  // namespace jaxcolor

#endif  // JAXCOLOR_KERNELS_THREAD_POOL_H_

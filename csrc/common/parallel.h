// Minimal thread fan-out for batches: std::thread workers pulling indices from an atomic
// counter. The exception of the lowest failing index is re-thrown on the calling thread, so the
// error reported does not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace hassod {

// Number of worker threads to use: `requested` when positive, else the hardware count.
inline int resolve_num_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls task(i) for i in [0, count) on up to num_threads threads (the caller is one of them).
template <typename Task>
void parallel_for(std::size_t count, int num_threads, Task&& task) {
  const std::size_t workers =
      std::min<std::size_t>(count, static_cast<std::size_t>(std::max(1, num_threads)));
  if (workers <= 1) {
    for (std::size_t i = 0; i < count; ++i) task(i);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr first_error;
  std::size_t error_index = count;
  std::mutex error_mutex;
  auto worker = [&]() {
    for (std::size_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      try {
        task(i);
      } catch (...) {
        // Indices are handed out in order, so every index below i was already handed out and
        // runs to its end: the lowest failing index is among the ones that run.
        std::lock_guard<std::mutex> lock(error_mutex);
        if (i < error_index) {
          error_index = i;
          first_error = std::current_exception();
        }
        next.store(count);  // stop handing out work
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (std::size_t t = 1; t < workers; ++t) {
    try {
      threads.emplace_back(worker);
    } catch (...) {
      // No more threads (std::system_error at a container's process limit, or bad_alloc): the
      // ones started and this one share the work; results do not depend on how many there are.
      break;
    }
  }
  worker();
  for (auto& thread : threads) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

// Calls task(begin, end) over [0, count) cut into blocks of `block` indices (the last may be
// shorter), on up to num_threads threads.
template <typename Task>
void parallel_for_blocks(std::int64_t count, std::int64_t block, int num_threads, Task&& task) {
  if (count <= 0) return;
  const std::int64_t blocks = (count + block - 1) / block;
  parallel_for(static_cast<std::size_t>(blocks), num_threads, [&](std::size_t b) {
    const std::int64_t begin = static_cast<std::int64_t>(b) * block;
    task(begin, std::min(count, begin + block));
  });
}

}  // namespace hassod

// A host emulation of the CUDA SIMT model, so that the kernel headers csrc/*_kernel.cuh compile with g++ and
// run on the CPU in CI (tests/csrc/test_simt_*.py), also under AddressSanitizer and ThreadSanitizer.
//
// What is emulated, and how:
// - a launch runs its blocks one after another; a block's threads are real std::threads (one set per launch,
//   reused block after block), so a missing __syncthreads() is a data race that ThreadSanitizer reports;
// - __syncthreads() is a barrier over the block (mutex + condition variable: sanitizers see the ordering);
// - shared memory (FASTDDPM_STATIC_SHARED / FASTDDPM_DYNAMIC_SHARED) is one heap allocation per array and
//   launch, exactly as large as declared, so AddressSanitizer reports a read past its end; it is filled
//   with 0xff bytes (NaN) before every block, as a GPU gives no initial value;
// - warp shuffles keep their lock-step semantics: each lane writes its value to the warp's exchange
//   buffer, the warp meets at a barrier, and each lane reads its source lane's value (two buffers used in
//   turn, so one barrier per shuffle suffices); only full-warp masks are supported;
// - the launch limits that bite on a GPU are checked: at most 1024 threads, and static + dynamic shared
//   memory at most 48 KiB unless the kernel opted in (FASTDDPM_SET_MAX_DYNAMIC_SHARED), then up to the
//   H100 / H200 limit of 227 KiB;
// - threadIdx, blockIdx, blockDim and gridDim are thread-locals.
// Not emulated: memory coalescing, timing, warps running apart (lanes meet only at shuffles), 2-d / 3-d
// blocks. A __syncthreads() that not every thread of the block reaches (undefined on a GPU) ends the launch
// with an error after a timeout instead of hanging.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#define FASTDDPM_SIMT_HOST 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  uint32_t x, y, z;
  constexpr dim3(uint32_t x_ = 1, uint32_t y_ = 1, uint32_t z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct float2 {
  float x, y;
};

inline float2 make_float2(float x, float y) {
  return float2{x, y};
}

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace fastddpm {
using std::max;  // CUDA's min / max are global device functions
using std::min;
}  // namespace fastddpm

namespace simt {

constexpr size_t kDefaultSharedLimit = 48 * 1024;  // static + dynamic shared memory without an opt-in
constexpr size_t kOptInSharedLimit = 227 * 1024;  // sharedMemPerBlockOptin of an H100 / H200
constexpr int kWarpSize = 32;

// Thrown in every thread of a block when one of them failed, so that none waits for it forever.
struct Aborted {};

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void arrive_and_wait(const char* what) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (aborted_) {
      throw Aborted{};
    }
    const uint64_t generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const bool passed = cv_.wait_for(lock, std::chrono::seconds(60),
                                     [&] { return generation_ != generation || aborted_; });
    if (aborted_) {
      throw Aborted{};
    }
    if (!passed) {
      lock.unlock();
      throw std::runtime_error(std::string("simt: a ") + what +
                               " was not reached by every thread within 60 s (a divergent barrier)");
    }
  }

  void abort() {
    std::lock_guard<std::mutex> lock(mutex_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  const int count_;
  int waiting_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

struct Warp {
  explicit Warp(int lanes) : barrier(lanes) {}
  Barrier barrier;
  uint64_t exchange[2][kWarpSize] = {};  // a shuffle's values, up to 8 bytes each
};

// One shared-memory array: its own heap block, exactly `bytes` long, so that ASan sees its end.
struct SharedArray {
  std::unique_ptr<unsigned char[]> data;
  size_t bytes = 0;
};

struct Launch {
  Launch(int threads, size_t dynamic_bytes, size_t limit)
      : block_barrier(threads), dynamic_bytes(dynamic_bytes), shared_limit(limit) {
    for (int first = 0; first < threads; first += kWarpSize) {
      warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads - first)));
    }
    if (dynamic_bytes > 0) {
      dynamic.data.reset(new unsigned char[dynamic_bytes]);
      dynamic.bytes = dynamic_bytes;
    }
  }

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (error.empty()) {
        error = message;
      }
    }
    block_barrier.abort();
    for (auto& warp : warps) {
      warp->barrier.abort();
    }
  }

  // Shared memory holds no value at the start of a block: NaN bytes make a read before a write visible.
  void poison_shared() {
    if (dynamic.bytes > 0) {
      std::memset(dynamic.data.get(), 0xff, dynamic.bytes);
    }
    for (auto& array : statics) {
      std::memset(array.data.get(), 0xff, array.bytes);
    }
  }

  Barrier block_barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  SharedArray dynamic;
  const size_t dynamic_bytes;
  const size_t shared_limit;
  std::mutex mutex;  // guards statics, static_bytes and error
  std::vector<SharedArray> statics;  // in declaration order
  size_t static_bytes = 0;
  std::string error;
};

inline thread_local Launch* current = nullptr;
inline thread_local size_t static_declaration = 0;  // index of the thread's next static shared array
inline thread_local int shuffle_parity = 0;

inline std::mutex& attribute_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline std::map<const void*, size_t>& max_dynamic_shared() {
  static std::map<const void*, size_t> attributes;
  return attributes;
}

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
template <typename Kernel>
void set_max_dynamic_shared(Kernel kernel, size_t bytes) {
  if (bytes > kOptInSharedLimit) {
    throw std::runtime_error("simt: cudaFuncSetAttribute: " + std::to_string(bytes) +
                             " bytes of dynamic shared memory exceed the device's " +
                             std::to_string(kOptInSharedLimit));
  }
  std::lock_guard<std::mutex> lock(attribute_mutex());
  max_dynamic_shared()[reinterpret_cast<const void*>(kernel)] = bytes;
}

// `__shared__ T name[count]`: the k-th declaration a thread passes is the block's k-th array.
template <typename T>
T* static_shared(size_t count) {
  Launch& launch = *current;
  const size_t index = static_declaration++;
  std::lock_guard<std::mutex> lock(launch.mutex);
  if (index == launch.statics.size()) {
    SharedArray array;
    array.bytes = count * sizeof(T);
    array.data.reset(new unsigned char[array.bytes]);
    std::memset(array.data.get(), 0xff, array.bytes);
    launch.static_bytes += array.bytes;
    launch.statics.push_back(std::move(array));
    const size_t total = launch.static_bytes + launch.dynamic_bytes;
    if (total > launch.shared_limit) {
      throw std::runtime_error("simt: too many resources requested for launch: " + std::to_string(total) +
                               " bytes of shared memory (" + std::to_string(launch.static_bytes) + " static + " +
                               std::to_string(launch.dynamic_bytes) + " dynamic) exceed the limit of " +
                               std::to_string(launch.shared_limit));
    }
  }
  if (launch.statics[index].bytes != count * sizeof(T)) {
    throw std::runtime_error("simt: threads declared different shared arrays");
  }
  return reinterpret_cast<T*>(launch.statics[index].data.get());
}

// `extern __shared__ T name[]`.
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current->dynamic.data.get());
}

inline void syncthreads() {
  current->block_barrier.arrive_and_wait("__syncthreads()");
}

template <typename T>
T shuffle(unsigned mask, T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "simt: shuffles move at most 8 bytes");
  if (mask != 0xffffffffu) {
    throw std::runtime_error("simt: only full-warp shuffle masks are emulated");
  }
  const int lane = threadIdx.x % kWarpSize;
  Warp& warp = *current->warps[threadIdx.x / kWarpSize];
  const int parity = shuffle_parity;
  shuffle_parity ^= 1;
  std::memcpy(&warp.exchange[parity][lane], &value, sizeof(T));
  warp.barrier.arrive_and_wait("warp shuffle");
  T result;
  std::memcpy(&result, &warp.exchange[parity][source % kWarpSize], sizeof(T));
  return result;
}

// A `bytes`-wide vector load or store: a GPU faults on an address that is not a multiple of the width, so the
// emulation aborts the launch there too (an x86 CPU would load it silently).
inline void check_vector_alignment(const void* ptr, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(ptr) % bytes != 0) {
    throw std::runtime_error("simt: misaligned address: a " + std::to_string(bytes) + "-byte vector access at " +
                             std::to_string(reinterpret_cast<uintptr_t>(ptr)));
  }
}

// kernel<<<grid, block, dynamic_bytes>>>(args...): blocks one after another, each on `block.x` threads.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_bytes, Args&&... args) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.y != 1 || block.z != 1 || threads == 0 || threads > 1024) {
    throw std::runtime_error("simt: blocks must be 1-d with 1..1024 threads");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    throw std::runtime_error("simt: invalid grid");
  }
  size_t limit = kDefaultSharedLimit;
  {
    std::lock_guard<std::mutex> lock(attribute_mutex());
    const auto found = max_dynamic_shared().find(reinterpret_cast<const void*>(kernel));
    if (found != max_dynamic_shared().end()) {
      // With an opt-in, the dynamic part may reach the attribute, the total the device's opt-in limit.
      if (dynamic_bytes > found->second) {
        throw std::runtime_error("simt: dynamic shared memory above the kernel's opt-in");
      }
      limit = kOptInSharedLimit;
    }
  }
  if (dynamic_bytes > limit) {
    throw std::runtime_error("simt: too many resources requested for launch: " + std::to_string(dynamic_bytes) +
                             " bytes of dynamic shared memory exceed the limit of " + std::to_string(limit));
  }
  const std::tuple<Params...> arguments(std::forward<Args>(args)...);
  Launch state(static_cast<int>(threads), dynamic_bytes, limit);
  auto body = [&](uint32_t thread) {
    current = &state;
    shuffle_parity = 0;
    threadIdx = dim3(thread);
    blockDim = block;
    gridDim = grid;
    try {
      for (uint32_t z = 0; z < grid.z; ++z) {
        for (uint32_t y = 0; y < grid.y; ++y) {
          for (uint32_t x = 0; x < grid.x; ++x) {
            if (thread == 0) {
              state.poison_shared();
            }
            state.block_barrier.arrive_and_wait("block start");
            blockIdx = dim3(x, y, z);
            static_declaration = 0;
            std::apply(kernel, arguments);
            state.block_barrier.arrive_and_wait("block end");  // the block is done before the next starts
          }
        }
      }
    } catch (const Aborted&) {
    } catch (const std::exception& error) {
      state.fail(error.what());
    }
    current = nullptr;
  };
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (uint32_t thread = 0; thread < threads; ++thread) {
    workers.emplace_back(body, thread);
  }
  for (auto& worker : workers) {
    worker.join();
  }
  if (!state.error.empty()) {
    throw std::runtime_error(state.error);
  }
}

}  // namespace simt

inline void __syncthreads() {
  simt::syncthreads();
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return simt::shuffle(mask, value, (threadIdx.x % simt::kWarpSize) ^ lane_mask);
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
  return simt::shuffle(mask, value, source_lane);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  const unsigned lane = threadIdx.x % simt::kWarpSize;
  return simt::shuffle(mask, value, lane + delta < simt::kWarpSize ? lane + delta : lane);
}

// The launch-code macros of csrc/cuda_platform.cuh, for the host.
#define FASTDDPM_STATIC_SHARED(type, name, count) type* name = ::simt::static_shared<type>(count)
#define FASTDDPM_DYNAMIC_SHARED(type, name) type* name = ::simt::dynamic_shared<type>()
#define FASTDDPM_LAUNCH(kernel, grid, block, dynamic_bytes, ...) \
  ::simt::launch(kernel, grid, block, dynamic_bytes, __VA_ARGS__)
#define FASTDDPM_SET_MAX_DYNAMIC_SHARED(kernel, bytes) ::simt::set_max_dynamic_shared(kernel, bytes)
#define FASTDDPM_CHECK_VECTOR_ALIGNMENT(ptr, bytes) ::simt::check_vector_alignment(ptr, bytes)

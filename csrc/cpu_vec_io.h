// Loads and stores between float32 vectors (at::vec::Vectorized<float>) and float / bfloat16 / float16
// memory, shared by the CPU kernels: the kernels compute in float32 whatever the tensors' dtype. 16-bit
// stores round to nearest even, as torch's casts do.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace fastddpm::cpu_vec {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// A full vector of T as floats.
template <typename T>
inline Vec load_floats(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

// count (<= kLanes) values of T as floats, the other lanes zero.
template <typename T>
inline Vec load_floats(const T* p, int64_t count) {
  if (count == kLanes) {
    return load_floats(p);
  }
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p, count);
  } else {
    float lanes[kLanes] = {};
    for (int64_t i = 0; i < count; ++i) lanes[i] = static_cast<float>(p[i]);
    return Vec::loadu(lanes);
  }
}

template <typename T>
inline void store_floats(T* p, const Vec& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, kLanes);
  }
}

// The first count (<= kLanes) lanes of v, as T.
template <typename T>
inline void store_floats(T* p, const Vec& v, int64_t count) {
  if (count == kLanes) {
    store_floats(p, v);
  } else if constexpr (std::is_same_v<T, float>) {
    v.store(p, count);
  } else {
    float lanes[kLanes];
    v.store(lanes);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<T>(lanes[i]);
  }
}

}  // namespace fastddpm::cpu_vec

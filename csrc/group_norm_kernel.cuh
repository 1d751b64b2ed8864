// fastddpm::group_norm's CUDA kernels and their launch code: GroupNorm(x + add) * weight + bias, then * (1 + scale) + shift, then SiLU,
// float32 statistics for float32 / float16 / bfloat16 inputs, NCHW or channels-last.
//
// Small groups (up to 48 KiB of float32 less 128 B, e.g. the cifar10-32 U-Net: 4 x 1024 or 8 x 256 elements) take one
// kernel with one block per (sample, group): the group is read once from global memory into shared memory,
// mean and variance come from two exact passes over shared memory, and the result is written once.
// Larger groups (the 256 px models: 4 x 65536 elements) take two kernels: a split reduction writes per-block
// shifted sums, then each block of the apply kernel folds its group's partial sums (in double) and writes
// its chunk. Global loads and stores are 16 bytes wide where the layout allows (H*W, or C/G for
// channels-last, a multiple of the vector width; 16-byte aligned pointers): in NCHW a vector lies in one
// channel, in channels-last it holds consecutive channels of one pixel, each with its own parameters.
// This header holds everything but the device guard: csrc/group_norm_cuda.cu includes it for nvcc (after
// csrc/cuda_platform.cuh), csrc/simt/simt_ops.cpp for the host emulation that tests run in CI (after
// csrc/simt/simt_emulation.h).
// Status: compiled with nvcc 13.0 for sm_90 and run on the CPU through the SIMT emulation in CI; not run on
// a GPU in this session.

#pragma once

#ifndef FASTDDPM_SIMT_HOST  // the host build includes csrc/simt/simt_emulation.h first
#include "cuda_platform.cuh"
#endif

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

#include "cuda_reduce.cuh"
#include "group_norm_args.h"

namespace fastddpm::group_norm_gpu {  // its own namespace: the host build includes both kernel headers
namespace {

constexpr int kThreads = 256;
// A block may use 48 KiB of shared memory, static and dynamic together, without an opt-in. The shared
// kernel's static part is its block_sum scratch; groups up to kSharedGroupLimit elements (12,256 floats)
// go through shared memory in one kernel, larger ones through the split reduction. (Opting in to more
// would keep 12,288-float groups, C = 384 / G = 32 at 32 x 32, in one kernel, at fewer blocks per SM;
// not measured, so not done.)
constexpr int kScratchFloats = 32;  // one float per warp of up to 1024 threads
constexpr int64_t kSharedGroupLimit = (48 * 1024 - kScratchFloats * sizeof(float)) / sizeof(float);
// Vectors per thread per block in the split path: a block covers kThreads * VEC * 8 elements.
constexpr int kVectorsPerThread = 8;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

struct Params {
  const float* weight;  // (C,) or null
  const float* bias;  // (C,) or null
  const float* add;  // (N, C) or null, added before the statistics
  const float* scale;  // (N, C) or null: y * (1 + scale) + shift
  const float* shift;  // (N, C) or null, read only with scale (as reference.group_norm)
  float eps;
  bool silu;
  bool channels_last;
  int64_t channels;  // C
  uint32_t pixels;  // H * W
  uint32_t groups;  // G
  uint32_t per_group;  // C / G
  uint32_t count;  // elements per group: per_group * pixels
};

// Where element e (0 <= e < count) of group (n, g) lives, and its channel.
__device__ __forceinline__ void locate(const Params& p, uint32_t n, uint32_t g, uint32_t e, int64_t& offset,
                                       int64_t& channel) {
  if (!p.channels_last) {
    channel = int64_t(g) * p.per_group + e / p.pixels;
    offset = (int64_t(n) * p.channels + int64_t(g) * p.per_group) * p.pixels + e;
  } else {
    const uint32_t pixel = e / p.per_group;
    channel = int64_t(g) * p.per_group + (e - pixel * p.per_group);
    offset = (int64_t(n) * p.pixels + pixel) * p.channels + channel;
  }
}

__device__ __forceinline__ float added(const Params& p, uint32_t n, int64_t channel) {
  return p.add ? p.add[int64_t(n) * p.channels + channel] : 0.f;
}

// y for one (sample, channel): normalise, affine, scale-shift, SiLU; reference.group_norm's operation order.
// (h - mean) * a + b rather than h * a + (b - mean * a): exact when the mean is large next to the spread.
struct ChannelMap {
  float mean, a, b, s1, s0;
  bool scaled, silu;

  __device__ __forceinline__ ChannelMap(const Params& p, uint32_t n, int64_t channel, float group_mean, float rstd) {
    mean = group_mean;
    a = rstd * (p.weight ? p.weight[channel] : 1.f);
    b = p.bias ? p.bias[channel] : 0.f;
    const int64_t nc = int64_t(n) * p.channels + channel;
    scaled = p.scale != nullptr;
    s1 = scaled ? 1.f + p.scale[nc] : 1.f;
    s0 = (scaled && p.shift) ? p.shift[nc] : 0.f;
    silu = p.silu;
  }

  __device__ __forceinline__ float operator()(float h) const {
    float y = (h - mean) * a + b;
    if (scaled) {
      y = y * s1 + s0;
    }
    return silu ? y / (1.f + expf(-y)) : y;
  }
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* ptr) {
  FASTDDPM_CHECK_VECTOR_ALIGNMENT(ptr, sizeof(Pack<T, VEC>));
  return *reinterpret_cast<const Pack<T, VEC>*>(ptr);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, VEC>& pack) {
  FASTDDPM_CHECK_VECTOR_ALIGNMENT(ptr, sizeof(Pack<T, VEC>));
  *reinterpret_cast<Pack<T, VEC>*>(ptr) = pack;
}

// The shift of the statistics: the group's first element (+ add). Sums of (h - shift) stay well conditioned
// in float32 when the group's mean is large next to its spread; every kernel of a group reads the same value.
__device__ __forceinline__ float group_shift_value(float first, const Params& p, uint32_t n, uint32_t g) {
  int64_t offset, channel;
  locate(p, n, g, 0, offset, channel);
  return first + added(p, n, channel);
}

// One block per (sample, group): x -> shared memory (float32, add applied) -> exact mean and variance -> y.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) group_norm_shared_kernel(const T* __restrict__ x,  // input
                                                                     T* __restrict__ y,  // output, x's layout
                                                                     const Params p) {
  FASTDDPM_DYNAMIC_SHARED(float, group);  // count floats
  FASTDDPM_STATIC_SHARED(float, scratch, kScratchFloats);
  const uint32_t n = blockIdx.x / p.groups, g = blockIdx.x % p.groups;
  const uint32_t vectors = p.count / VEC;
  int64_t first_offset, first_channel;
  locate(p, n, g, 0, first_offset, first_channel);
  const float shift = group_shift_value(static_cast<float>(x[first_offset]), p, n, g);

  float sum = 0.f;  // of h - shift: exact enough when the group's mean is large next to its spread
  for (uint32_t i = threadIdx.x; i < vectors; i += kThreads) {
    int64_t offset, channel;
    locate(p, n, g, i * VEC, offset, channel);
    const Pack<T, VEC> pack = load_pack<T, VEC>(x + offset);
    float a = added(p, n, channel);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (p.channels_last && j > 0) {
        a = added(p, n, channel + j);  // channels-last: the pack's elements are consecutive channels
      }
      const float h = static_cast<float>(pack.v[j]) + a;
      group[i * VEC + j] = h;
      sum += h - shift;
    }
  }
  const float mean = shift + block_sum<kThreads>(sum, scratch) / p.count;
  float m2 = 0.f;
  for (uint32_t e = threadIdx.x; e < p.count; e += kThreads) {
    const float d = group[e] - mean;
    m2 += d * d;
  }
  const float var = block_sum<kThreads>(m2, scratch) / p.count;
  const float rstd = 1.f / sqrtf(var + p.eps);

  for (uint32_t i = threadIdx.x; i < vectors; i += kThreads) {
    int64_t offset, channel;
    locate(p, n, g, i * VEC, offset, channel);
    ChannelMap map(p, n, channel, mean, rstd);
    Pack<T, VEC> pack;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (p.channels_last && j > 0) {
        map = ChannelMap(p, n, channel + j, mean, rstd);
      }
      pack.v[j] = static_cast<T>(map(group[i * VEC + j]));
    }
    store_pack<T, VEC>(y + offset, pack);
  }
}

// Split reduction, part 1: block (group, split) writes sum(h - shift) and sum((h - shift)^2) of its chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) group_norm_partial_kernel(const T* __restrict__ x,  // input
                                                                      float2* __restrict__ partials,  // [N*G, splits]
                                                                      const Params p,
                                                                      const uint32_t chunk) {  // elements per split
  FASTDDPM_STATIC_SHARED(float, scratch, kScratchFloats);
  const uint32_t n = blockIdx.x / p.groups, g = blockIdx.x % p.groups;
  int64_t first_offset, first_channel;
  locate(p, n, g, 0, first_offset, first_channel);
  const float shift = group_shift_value(static_cast<float>(x[first_offset]), p, n, g);
  const uint32_t begin = blockIdx.y * chunk;
  const uint32_t end = min(p.count, begin + chunk);

  float s1 = 0.f, s2 = 0.f;
  for (uint32_t e = begin + threadIdx.x * VEC; e < end; e += kThreads * VEC) {
    int64_t offset, channel;
    locate(p, n, g, e, offset, channel);
    const Pack<T, VEC> pack = load_pack<T, VEC>(x + offset);
    float a = added(p, n, channel) - shift;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (p.channels_last && j > 0) {
        a = added(p, n, channel + j) - shift;
      }
      const float d = static_cast<float>(pack.v[j]) + a;
      s1 += d;
      s2 += d * d;
    }
  }
  s1 = block_sum<kThreads>(s1, scratch);
  s2 = block_sum<kThreads>(s2, scratch);
  if (threadIdx.x == 0) {
    partials[int64_t(blockIdx.x) * gridDim.y + blockIdx.y] = make_float2(s1, s2);
  }
}

// Split reduction, part 2: every block folds its group's partial sums (in double), then writes its chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) group_norm_apply_kernel(const T* __restrict__ x,  // input
                                                                    T* __restrict__ y,  // output
                                                                    const float2* __restrict__ partials,
                                                                    const Params p,
                                                                    const uint32_t chunk) {
  FASTDDPM_STATIC_SHARED(float, stats, 2);  // mean, rstd
  const uint32_t n = blockIdx.x / p.groups, g = blockIdx.x % p.groups;
  if (threadIdx.x < 32) {
    double s1 = 0.0, s2 = 0.0;
    for (uint32_t i = threadIdx.x; i < gridDim.y; i += 32) {
      const float2 part = partials[int64_t(blockIdx.x) * gridDim.y + i];
      s1 += part.x;
      s2 += part.y;
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (threadIdx.x == 0) {
      int64_t first_offset, first_channel;
      locate(p, n, g, 0, first_offset, first_channel);
      const float shift = group_shift_value(static_cast<float>(x[first_offset]), p, n, g);
      const double shifted_mean = s1 / p.count;
      const double var = fmax(s2 / p.count - shifted_mean * shifted_mean, 0.0);
      stats[0] = static_cast<float>(shift + shifted_mean);
      stats[1] = static_cast<float>(1.0 / sqrt(var + p.eps));
    }
  }
  __syncthreads();
  const float mean = stats[0], rstd = stats[1];
  const uint32_t begin = blockIdx.y * chunk;
  const uint32_t end = min(p.count, begin + chunk);
  for (uint32_t e = begin + threadIdx.x * VEC; e < end; e += kThreads * VEC) {
    int64_t offset, channel;
    locate(p, n, g, e, offset, channel);
    const Pack<T, VEC> in = load_pack<T, VEC>(x + offset);
    float a = added(p, n, channel);
    ChannelMap map(p, n, channel, mean, rstd);
    Pack<T, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (p.channels_last && j > 0) {
        a = added(p, n, channel + j);
        map = ChannelMap(p, n, channel + j, mean, rstd);
      }
      out.v[j] = static_cast<T>(map(static_cast<float>(in.v[j]) + a));
    }
    store_pack<T, VEC>(y + offset, out);
  }
}

template <typename T, int VEC>
void launch(const at::Tensor& x, at::Tensor& y, const Params& p, int64_t batch) {
  const T* x_ptr = x.const_data_ptr<T>();
  T* y_ptr = y.mutable_data_ptr<T>();
  const int64_t blocks = batch * p.groups;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastddpm::group_norm: N * num_groups = ", blocks,
              " exceeds the CUDA grid");
  if (p.count <= kSharedGroupLimit) {
    const size_t shared_bytes = size_t(p.count) * sizeof(float);
    const auto shared_kernel = group_norm_shared_kernel<T, VEC>;
    FASTDDPM_LAUNCH(shared_kernel, dim3(static_cast<uint32_t>(blocks)), dim3(kThreads), shared_bytes, x_ptr, y_ptr, p);
    return;
  }
  uint32_t chunk = kThreads * VEC * kVectorsPerThread;
  while ((p.count + chunk - 1) / chunk > 65535u) {
    chunk *= 2;  // gridDim.y's limit; only groups of over 500M elements get here
  }
  const uint32_t splits = (p.count + chunk - 1) / chunk;
  at::Tensor partials = at::empty({blocks * splits * 2}, x.options().dtype(at::kFloat));
  float2* partial_ptr = reinterpret_cast<float2*>(partials.mutable_data_ptr<float>());
  const dim3 grid(static_cast<uint32_t>(blocks), splits);
  const auto partial_kernel = group_norm_partial_kernel<T, VEC>;
  FASTDDPM_LAUNCH(partial_kernel, grid, dim3(kThreads), 0, x_ptr, partial_ptr, p, chunk);
  const auto apply_kernel = group_norm_apply_kernel<T, VEC>;
  FASTDDPM_LAUNCH(apply_kernel, grid, dim3(kThreads), 0, x_ptr, y_ptr, partial_ptr, p, chunk);
}

bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

template <typename T>
void dispatch_vector_width(const at::Tensor& x, at::Tensor& y, const Params& p, int64_t batch) {
  constexpr int kWide = 16 / sizeof(T);
  const uint32_t run = p.channels_last ? p.per_group : p.pixels;  // contiguous elements of one channel
  if (run % kWide == 0 && aligned16(x.const_data_ptr()) && aligned16(y.const_data_ptr())) {
    launch<T, kWide>(x, y, p, batch);
  } else {
    launch<T, 1>(x, y, p, batch);
  }
}

at::Tensor run_group_norm(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    double eps,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift,
    bool silu) {
  GroupNormCall call = prepare_group_norm(x, num_groups, weight, bias, add, scale, shift);
  const GroupNormShape& shape = call.shape;
  if (x.numel() == 0) {
    return call.y;
  }
  const int64_t per_group = shape.channels / shape.groups;
  TORCH_CHECK(per_group * shape.pixels <= std::numeric_limits<int32_t>::max(),
              "fastddpm::group_norm: a group of ", per_group * shape.pixels, " elements exceeds 2^31");
  const Params params{float_ptr_or_null(call.weight),
                      float_ptr_or_null(call.bias),
                      float_ptr_or_null(call.add),
                      float_ptr_or_null(call.scale),
                      float_ptr_or_null(call.shift),
                      static_cast<float>(eps),
                      silu,
                      shape.channels_last,
                      shape.channels,
                      static_cast<uint32_t>(shape.pixels),
                      static_cast<uint32_t>(shape.groups),
                      static_cast<uint32_t>(per_group),
                      static_cast<uint32_t>(per_group * shape.pixels)};
  switch (x.scalar_type()) {
    case at::kFloat:
      dispatch_vector_width<float>(call.input, call.y, params, shape.batch);
      break;
    case at::kHalf:
      dispatch_vector_width<c10::Half>(call.input, call.y, params, shape.batch);
      break;
    case at::kBFloat16:
      dispatch_vector_width<c10::BFloat16>(call.input, call.y, params, shape.batch);
      break;
    default:
      TORCH_CHECK(false, "fastddpm::group_norm: unsupported dtype ", x.scalar_type());
  }
  return call.y;
}

}  // namespace
}  // namespace fastddpm::group_norm_gpu

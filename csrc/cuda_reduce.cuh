// Warp and block sums shared by the CUDA kernels (nvcc) and their host build (csrc/simt/).
#pragma once

#ifndef FASTDDPM_SIMT_HOST  // the host build includes csrc/simt/simt_emulation.h first
#include "cuda_platform.cuh"
#endif

namespace fastddpm {

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// The sum of `value` over the block, returned to every thread. `scratch` holds one float per warp; the
// leading barrier lets a block call this twice in a row with the same scratch.
template <int kThreads>
__device__ __forceinline__ float block_sum(float value, float* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum needs whole warps");
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  value = warp_sum(value);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = value;
  }
  __syncthreads();
  if (warp == 0) {
    value = lane < kWarps ? scratch[lane] : 0.f;
    value = warp_sum(value);
    if (lane == 0) {
      scratch[0] = value;
    }
  }
  __syncthreads();
  return scratch[0];
}

}  // namespace fastddpm

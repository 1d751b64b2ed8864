// The launch-code macros that the kernel headers (csrc/*_kernel.cuh) use, for nvcc. The same headers compile
// for the host with csrc/simt/simt_emulation.h instead, which defines these macros for its emulated launches.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

// `__shared__ type name[count]` inside a kernel.
#define FASTDDPM_STATIC_SHARED(type, name, count) __shared__ type name[count]
// The kernel's dynamic shared memory (the third launch parameter), as `type*`.
#define FASTDDPM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
// kernel<<<grid, block, dynamic_bytes, current stream>>>(args...), then the launch error check. `kernel` is
// one token (a function pointer variable), so that template arguments do not split the macro's arguments.
#define FASTDDPM_LAUNCH(kernel, grid, block, dynamic_bytes, ...)                                \
  do {                                                                                          \
    kernel<<<grid, block, dynamic_bytes, c10::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__);    \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                             \
  } while (false)
// A vector access's address is a multiple of its width: a GPU faults ("misaligned address") by itself; the
// host SIMT build checks it (an x86 CPU would silently load the unaligned vector).
#define FASTDDPM_CHECK_VECTOR_ALIGNMENT(ptr, bytes) ((void)0)
// Above 48 KiB of dynamic shared memory a kernel must opt in; not a stream operation, so it is allowed
// during CUDA graph capture.
#define FASTDDPM_SET_MAX_DYNAMIC_SHARED(kernel, bytes) \
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)))

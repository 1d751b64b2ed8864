// fastddpm::attention on CUDA: the kernel and its launch code are in csrc/attention_kernel.cuh, which the
// host build of the SIMT emulation (csrc/simt/) shares; this file adds the device guard.
// Status: compiled with nvcc 13.0 for sm_90 in CI; not run on a GPU in this session.

#include <c10/cuda/CUDAGuard.h>

#include "attention_kernel.cuh"
#include "fastddpm_ops.h"

namespace fastddpm {

at::Tensor attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const c10::cuda::CUDAGuard device_guard(q.device());
  return attention_gpu::run_attention(q, k, v, scale);
}

}  // namespace fastddpm

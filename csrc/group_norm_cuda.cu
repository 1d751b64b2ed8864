// fastddpm::group_norm on CUDA: the kernels and their launch code are in csrc/group_norm_kernel.cuh, which
// the host build of the SIMT emulation (csrc/simt/) shares; this file adds the device guard.
// Status: compiled with nvcc 13.0 for sm_90 in CI; not run on a GPU in this session.

#include <c10/cuda/CUDAGuard.h>

#include "fastddpm_ops.h"
#include "group_norm_kernel.cuh"

namespace fastddpm {

at::Tensor group_norm_cuda(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    double eps,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift,
    bool silu) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return group_norm_gpu::run_group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu);
}

}  // namespace fastddpm

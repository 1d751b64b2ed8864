// The CUDA kernels of csrc/*_kernel.cuh, compiled for the host through the SIMT emulation and registered as
// torch.ops.fastddpm_simt.* (CPU tensors in, CPU tensors out; the same signatures as torch.ops.fastddpm.*).
// Not part of fastddpm._C: tests/csrc/simt_ops.py builds it, optionally under ASan or TSan, for
// tests/csrc/test_simt_*.py. The kernels run serially and slowly here: they are tested, not used.

#include "simt/simt_emulation.h"  // first: the kernel headers see its CUDA built-ins

#include <torch/library.h>

#include "attention_kernel.cuh"
#include "group_norm_kernel.cuh"

namespace {

void check_cpu(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), "fastddpm_simt::", op, ": the host emulation takes CPU tensors, got ",
              x.device());
}

at::Tensor group_norm_simt(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& add,
                           const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                           bool silu) {
  check_cpu(x, "group_norm");
  return fastddpm::group_norm_gpu::run_group_norm(x, num_groups, weight, bias, eps, add, scale, shift, silu);
}

at::Tensor attention_simt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check_cpu(q, "attention");
  return fastddpm::attention_gpu::run_attention(q, k, v, scale);
}

}  // namespace

TORCH_LIBRARY(fastddpm_simt, m) {
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, Tensor? add, "
      "Tensor? scale, Tensor? shift, bool silu) -> Tensor");
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastddpm_simt, CPU, m) {
  m.impl("group_norm", &group_norm_simt);
  m.impl("attention", &attention_simt);
}

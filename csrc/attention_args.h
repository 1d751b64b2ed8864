// Argument checks shared by the CPU and CUDA attention kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastddpm {

// The largest head dimension the kernels serve: the 256 px DDPM models use one head with D = C = 512.
constexpr int64_t kMaxHeadDim = 512;

inline void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "fastddpm::attention: q, k and v must be 4-d (B, heads, L, D), got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "fastddpm::attention: k ", k.sizes(), " must match q ", q.sizes(), " in B, heads and D");
  TORCH_CHECK(v.sizes() == k.sizes(), "fastddpm::attention: v ", v.sizes(), " must have k's shape ", k.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "fastddpm::attention: q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(),
              ", ", v.scalar_type());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fastddpm::attention: q must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kMaxHeadDim, "fastddpm::attention: head dimension D = ", q.size(3),
              " is outside 1..", kMaxHeadDim);
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(),
              "fastddpm::attention: q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ",
              v.device());
  TORCH_CHECK(q.size(2) == 0 || k.size(2) > 0, "fastddpm::attention: k and v need at least one key (L = 0)");
}

}  // namespace fastddpm

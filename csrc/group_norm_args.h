// Argument checks and shapes shared by the CPU and CUDA group_norm kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastddpm {

struct GroupNormShape {
  int64_t batch;  // N
  int64_t channels;  // C
  int64_t pixels;  // H * W
  int64_t groups;  // G
  bool channels_last;  // x is laid out N, H, W, C (and so is the result)
};

// The kernels read x in one of two dense layouts; anything else is made NCHW-contiguous first.
inline bool is_channels_last_input(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_per_channel(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(
      t->dim() == 1 && t->size(0) == x.size(1),
      "fastddpm::group_norm: ", name, " must have shape (C,) = (", x.size(1), ",), got ", t->sizes());
  TORCH_CHECK(t->device() == x.device(), "fastddpm::group_norm: ", name, " is on ", t->device(),
              " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fastddpm::group_norm: ", name, " must be floating point");
}

inline void check_per_sample_channel(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(
      t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(1),
      "fastddpm::group_norm: ", name, " must have shape (N, C) = (", x.size(0), ", ", x.size(1), "), got ",
      t->sizes());
  TORCH_CHECK(t->device() == x.device(), "fastddpm::group_norm: ", name, " is on ", t->device(),
              " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fastddpm::group_norm: ", name, " must be floating point");
}

inline GroupNormShape check_group_norm_args(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(x.dim() == 4, "fastddpm::group_norm: x must be 4-d (N, C, H, W), got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fastddpm::group_norm: x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(num_groups > 0 && x.size(1) % num_groups == 0, "fastddpm::group_norm: num_groups (", num_groups,
              ") must be positive and divide the channel count C = ", x.size(1));
  check_per_channel(weight, x, "weight");
  check_per_channel(bias, x, "bias");
  check_per_sample_channel(add, x, "add");
  check_per_sample_channel(scale, x, "scale");
  check_per_sample_channel(shift, x, "shift");
  return GroupNormShape{x.size(0), x.size(1), x.size(2) * x.size(3), num_groups, is_channels_last_input(x)};
}

// Small parameter tensors as contiguous float32 (nullopt stays absent), so kernels read one type.
inline std::optional<at::Tensor> as_float_contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) {
    return std::nullopt;
  }
  return t->to(at::kFloat).contiguous();
}

inline const float* float_ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<float>() : nullptr;
}

// What the CPU and CUDA entry points both do before their kernels: check the arguments, pick the layout
// (input: x itself when channels-last, else NCHW-contiguous), allocate the result in that layout, and hold
// the per-channel parameters as contiguous float32 for as long as the kernels read them.
struct GroupNormCall {
  GroupNormShape shape;
  at::Tensor input;
  at::Tensor y;
  std::optional<at::Tensor> weight, bias, add, scale, shift;
};

inline GroupNormCall prepare_group_norm(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift) {
  const GroupNormShape shape = check_group_norm_args(x, num_groups, weight, bias, add, scale, shift);
  const auto layout = shape.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return GroupNormCall{shape,
                       shape.channels_last ? x : x.contiguous(),
                       at::empty(x.sizes(), x.options(), layout),
                       as_float_contiguous(weight),
                       as_float_contiguous(bias),
                       as_float_contiguous(add),
                       as_float_contiguous(scale),
                       as_float_contiguous(shift)};
}

}  // namespace fastddpm

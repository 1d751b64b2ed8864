// Declarations of the op implementations that fastddpm_ops.cpp registers, one per op and device.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastddpm {

at::Tensor group_norm_cpu(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    double eps,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift,
    bool silu);

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

at::Tensor winograd_conv3x3_cpu(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual,
    int64_t tile,
    int64_t out_channels);
at::Tensor box_muller_cpu(const at::Tensor& r0, const at::Tensor& r1);
// Columns per packed panel, from the file compiled with the CPU kernels' vector flags.
int64_t matmul_panel_width();
at::Tensor pack_matmul_weight_cpu(const at::Tensor& weight);
at::Tensor matmul_rows_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                           bool input_silu, double divisor);

#ifdef FASTDDPM_WITH_CUDA
at::Tensor group_norm_cuda(
    const at::Tensor& x,
    int64_t num_groups,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias,
    double eps,
    const std::optional<at::Tensor>& add,
    const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift,
    bool silu);

at::Tensor attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);
#endif

}  // namespace fastddpm

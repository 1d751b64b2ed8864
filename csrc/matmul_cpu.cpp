// fastddpm::pack_matmul_weight and fastddpm::matmul_rows on the CPU: the U-Net's linear layers and 1x1
// convolutions as batch-invariant matrix products (matmul_rows.h says why and how), with what follows them
// fused: y = (act(x) @ W + bias + residual) / divisor, act = SiLU or identity, in float32 whatever x's dtype
// (16-bit values are widened on the way in and rounded once on the way out).

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <c10/util/Exception.h>

#include "cpu_vec_io.h"
#include "fastddpm_ops.h"
#include "matmul_rows.h"

#include <vector>

namespace fastddpm {
namespace {

using cpu_vec::kLanes;
using cpu_vec::load_floats;
using cpu_vec::store_floats;
using cpu_vec::Vec;
using matmul::kPanel;

// x / (1 + exp(-x)), as torch's vectorised SiLU. Every element goes through the vector code (a row's tail
// in a zero-padded vector), so an element's value depends on nothing but its input.
inline Vec silu(const Vec& x) { return x / (Vec(1.f) + x.neg().exp()); }

// The rows of x as a float32 (m, k) matrix: x itself when it is float32, row-major and SiLU is not wanted,
// else a converted copy in `scratch`.
template <typename T>
const float* rows_as_float(const at::Tensor& x2d, bool input_silu, at::Tensor& scratch, int64_t& lda) {
  const int64_t m = x2d.size(0), k = x2d.size(1);
  if constexpr (std::is_same_v<T, float>) {
    if (!input_silu) {
      lda = x2d.stride(0);
      return x2d.const_data_ptr<float>();
    }
  }
  scratch = at::empty({m, k}, x2d.options().dtype(at::kFloat));
  float* out = scratch.mutable_data_ptr<float>();
  const T* in = x2d.const_data_ptr<T>();
  const int64_t stride = x2d.stride(0);
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t c = 0; c < k; c += kLanes) {
        const int64_t count = std::min(kLanes, k - c);
        const Vec v = load_floats(in + row * stride + c, count);
        store_floats(out + row * k + c, input_silu ? silu(v) : v, count);
      }
    }
  });
  lda = k;
  return out;
}

// (m, k) view of a tensor whose last dimension is contiguous and whose leading dimensions collapse into
// rows of one stride (a channels_last activation viewed as pixels x channels, or plain row-major).
at::Tensor as_rows(const at::Tensor& t, int64_t k) {
  at::Tensor flat = t.stride(-1) == 1 ? t : t.contiguous();
  try {
    flat = flat.view({-1, k});
  } catch (const c10::Error&) {
    flat = flat.contiguous().view({-1, k});
  }
  return flat.stride(1) == 1 ? flat : flat.contiguous();
}

template <typename T>
void run_matmul(const at::Tensor& x2d, const float* packed, int64_t n, const float* bias, const at::Tensor* residual,
                bool input_silu, float divisor, at::Tensor& y2d) {
  at::Tensor scratch;
  int64_t lda = 0;
  const float* a = rows_as_float<T>(x2d, input_silu, scratch, lda);
  const T* res = residual != nullptr ? residual->const_data_ptr<T>() : nullptr;
  const int64_t res_stride = residual != nullptr ? residual->stride(0) : 0;
  T* out = y2d.mutable_data_ptr<T>();
  const bool divide = divisor != 1.f;
  const Vec div(divisor);
  const auto store = [&](int64_t row, int64_t column, const float* acc, int64_t count) {
    for (int64_t j = 0; j < count; j += kLanes) {
      const int64_t lanes = std::min(kLanes, count - j);
      Vec v = Vec::loadu(acc + j);
      if (bias != nullptr) v = v + Vec::loadu(bias + column + j, lanes);
      if (res != nullptr) v = v + load_floats(res + row * res_stride + column + j, lanes);
      if (divide) v = v / div;
      store_floats(out + row * n + column + j, v, lanes);
    }
  };
  matmul::gemm(a, lda, x2d.size(0), x2d.size(1), packed, n, store);
}

}  // namespace

int64_t matmul_panel_width() { return matmul::kPanel; }

at::Tensor pack_matmul_weight_cpu(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 || weight.dim() == 3,
              "pack_matmul_weight: weight must be (K, N) or (P, K, N), got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "pack_matmul_weight: weight must be floating point");
  const at::Tensor w = (weight.dim() == 2 ? weight.unsqueeze(0) : weight).to(at::kFloat).contiguous();
  const int64_t p_count = w.size(0), k = w.size(1), n = w.size(2), panel_count = matmul::panels(n);
  at::Tensor packed = at::zeros({p_count, panel_count, k, kPanel}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.mutable_data_ptr<float>();
  for (int64_t p = 0; p < p_count; ++p) {
    for (int64_t panel = 0; panel < panel_count; ++panel) {
      const int64_t columns = std::min(kPanel, n - panel * kPanel);
      for (int64_t row = 0; row < k; ++row) {
        const float* from = src + (p * k + row) * n + panel * kPanel;
        float* to = dst + ((p * panel_count + panel) * k + row) * kPanel;
        std::copy(from, from + columns, to);
      }
    }
  }
  return weight.dim() == 2 ? packed.squeeze(0) : packed;
}

at::Tensor matmul_rows_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                           bool input_silu, double divisor) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(x.dim() >= 1 && (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf),
              "matmul_rows: x must be a float32, bfloat16 or float16 tensor, got ", dtype);
  const int64_t k = x.size(-1);
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
                  packed.size(0) == matmul::panels(n) && packed.size(1) == k && packed.size(2) == kPanel,
              "matmul_rows: packed must be pack_matmul_weight's (", matmul::panels(n), ", ", k, ", ", kPanel,
              ") float32 tensor for ", n, " output features, got ", packed.sizes());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  at::Tensor y = at::empty(out_shape, x.options());
  if (y.numel() == 0) {
    return y;
  }
  at::Tensor bias32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "matmul_rows: bias must have shape (", n, ",)");
    bias32 = bias->to(at::kFloat).contiguous();
  }
  at::Tensor res2d;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == dtype,
                "matmul_rows: residual must have the output's shape ", y.sizes(), " and x's dtype");
    res2d = as_rows(*residual, n);
  }
  const at::Tensor x2d = as_rows(x, k);
  at::Tensor y2d = y.view({-1, n});
  const float* bias_data = bias.has_value() ? bias32.const_data_ptr<float>() : nullptr;
  const at::Tensor* res = residual.has_value() ? &res2d : nullptr;
  const float div = static_cast<float>(divisor);
  if (dtype == at::kFloat) {
    run_matmul<float>(x2d, packed.const_data_ptr<float>(), n, bias_data, res, input_silu, div, y2d);
  } else if (dtype == at::kBFloat16) {
    run_matmul<c10::BFloat16>(x2d, packed.const_data_ptr<float>(), n, bias_data, res, input_silu, div, y2d);
  } else {
    run_matmul<c10::Half>(x2d, packed.const_data_ptr<float>(), n, bias_data, res, input_silu, div, y2d);
  }
  return y;
}

}  // namespace fastddpm

// fastddpm::group_norm on the CPU: GroupNorm(x + add) * weight + bias, then * (1 + scale) + shift, then SiLU,
// in one kernel with float32 statistics, vectorised with at::vec and parallel with at::parallel_for.
//
// NCHW: one task per (sample, group); the group's C/G rows are read twice (shifted sums, write) while
// they sit in L1/L2, so main memory sees one read of x and one write of y where torch's group_norm + silu
// reads x twice and y once and writes y twice.
// Channels-last: the group's channels are C/G neighbours inside each pixel's C-vector, so the kernel
// accumulates per-channel sums vectorised over C for chunks of pixels, folds channels into groups, and
// writes vectorised over C.

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu_vec_io.h"
#include "fastddpm_ops.h"
#include "group_norm_args.h"

namespace fastddpm {
namespace {

using cpu_vec::kLanes;
using cpu_vec::load_floats;
using cpu_vec::store_floats;
using cpu_vec::Vec;

inline float sum_lanes(const Vec& v) {
  float lanes[kLanes];
  v.store(lanes);
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) {
    total += lanes[i];
  }
  return total;
}

// torch's SiLU formula (x / (1 + exp(-x))), so fp32 results agree with F.silu to the last bits.
inline Vec silu(const Vec& y) {
  return y / (Vec(1.f) + y.neg().exp());
}

inline float silu(float y) {
  return y / (1.f + std::exp(-y));
}

// Everything the kernels need besides x and y, as raw float32 pointers (null = absent).
struct Params {
  const float* weight;  // (C,)
  const float* bias;  // (C,)
  const float* add;  // (N, C), added to x before the statistics
  const float* scale;  // (N, C), y * (1 + scale) + shift
  const float* shift;  // (N, C), only read with scale (as reference.group_norm does)
  float eps;
  bool silu;
};

// The per-(sample, channel) map after the statistics: y = (h - mean) * a + b, then y * s1 + s0 when scaled.
// Subtracting the mean first (rather than folding it into b, as torch does) keeps y exact when the mean is
// large next to the spread: h * a and mean * a would then be large numbers whose difference is y.
struct ChannelAffine {
  float mean, a, b, s1, s0;
};

inline ChannelAffine channel_affine(const Params& p, int64_t n, int64_t c, int64_t channels, float mean, float rstd) {
  const float a = rstd * (p.weight ? p.weight[c] : 1.f);
  const float b = p.bias ? p.bias[c] : 0.f;
  const int64_t nc = n * channels + c;
  const float s1 = p.scale ? 1.f + p.scale[nc] : 1.f;
  const float s0 = (p.scale && p.shift) ? p.shift[nc] : 0.f;
  return {mean, a, b, s1, s0};
}

inline float apply_scalar(float h, const ChannelAffine& k, bool scaled, bool use_silu) {
  float y = (h - k.mean) * k.a + k.b;
  if (scaled) {
    y = y * k.s1 + k.s0;
  }
  return use_silu ? silu(y) : y;
}

inline Vec apply_vec(const Vec& h, const Vec& mean, const Vec& a, const Vec& b, const Vec& s1, const Vec& s0,
                     bool scaled, bool use_silu) {
  Vec y = (h - mean) * a + b;
  if (scaled) {
    y = y * s1 + s0;
  }
  return use_silu ? silu(y) : y;
}

template <typename T>
void group_norm_nchw(const T* x, T* y, const GroupNormShape& s, const Params& p) {
  const int64_t per_group = s.channels / s.groups;
  const int64_t pixels = s.pixels;
  const int64_t count = per_group * pixels;
  // Tasks of at least ~4k elements: smaller ones cost more in OpenMP hand-off than they save. (With 32k, as
  // torch's GRAIN_SIZE, (8, 256, 4, 4) ran on one thread and lost to torch on 2: 93 us vs 78 us.)
  const int64_t grain = std::max<int64_t>(1, 4096 / count);
  at::parallel_for(0, s.batch * s.groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.groups;
      const int64_t c0 = (task % s.groups) * per_group;
      const T* xg = x + (n * s.channels + c0) * pixels;
      T* yg = y + (n * s.channels + c0) * pixels;
      auto added = [&](int64_t cl) { return p.add ? p.add[n * s.channels + c0 + cl] : 0.f; };

      // One pass of sums of d = h - shift and d^2 (shift: the group's first element). Shifted, the float
      // sums keep the mean and the variance when the mean is large next to the spread; plain sums of h and
      // h^2 lose both there (torch's channels-last CPU kernel misses by 28 at mean 100, spread 0.01).
      const float shift = static_cast<float>(xg[0]) + added(0);
      Vec sum_vec(0.f), sq_vec(0.f);
      float sum_tail = 0.f, sq_tail = 0.f;
      for (int64_t cl = 0; cl < per_group; ++cl) {
        const T* row = xg + cl * pixels;
        const float a = added(cl) - shift;
        const Vec av(a);
        int64_t i = 0;
        for (; i + kLanes <= pixels; i += kLanes) {
          const Vec d = load_floats(row + i) + av;
          sum_vec += d;
          sq_vec = at::vec::fmadd(d, d, sq_vec);
        }
        for (; i < pixels; ++i) {
          const float d = static_cast<float>(row[i]) + a;
          sum_tail += d;
          sq_tail += d * d;
        }
      }
      const float shifted_mean = (sum_lanes(sum_vec) + sum_tail) / static_cast<float>(count);
      const float var = std::max(
          (sum_lanes(sq_vec) + sq_tail) / static_cast<float>(count) - shifted_mean * shifted_mean, 0.f);
      const float mean = shift + shifted_mean;
      const float rstd = 1.f / std::sqrt(var + p.eps);

      for (int64_t cl = 0; cl < per_group; ++cl) {
        const T* row = xg + cl * pixels;
        T* out = yg + cl * pixels;
        const float a = added(cl);
        const ChannelAffine k = channel_affine(p, n, c0 + cl, s.channels, mean, rstd);
        const Vec av(a), km(k.mean), ka(k.a), kb(k.b), ks1(k.s1), ks0(k.s0);
        int64_t i = 0;
        for (; i + kLanes <= pixels; i += kLanes) {
          store_floats(out + i,
                       apply_vec(load_floats(row + i) + av, km, ka, kb, ks1, ks0, p.scale != nullptr, p.silu));
        }
        for (; i < pixels; ++i) {
          out[i] = static_cast<T>(apply_scalar(static_cast<float>(row[i]) + a, k, p.scale != nullptr, p.silu));
        }
      }
    }
  });
}

// Adds d = h - shift[c] (h = row[c] + add[c]) and d^2 into sum[c] and sq[c] for every channel of one pixel.
template <typename T>
inline void accumulate_pixel(const T* row, const float* add, const float* shift, float* sum, float* sq,
                             int64_t channels) {
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
    const Vec d = load_floats(row + c) + Vec::loadu(add + c) - Vec::loadu(shift + c);
    (Vec::loadu(sum + c) + d).store(sum + c);
    at::vec::fmadd(d, d, Vec::loadu(sq + c)).store(sq + c);
  }
  for (; c < channels; ++c) {
    const float d = static_cast<float>(row[c]) + add[c] - shift[c];
    sum[c] += d;
    sq[c] += d * d;
  }
}

// Pixels per statistics task in channels-last: 128 gives a 32x32 image 8 tasks and a 16x16 one 2.
constexpr int64_t kStatisticsChunkPixels = 128;

template <typename T>
void group_norm_channels_last(const T* x, T* y, const GroupNormShape& s, const Params& p) {
  const int64_t C = s.channels, pixels = s.pixels, per_group = C / s.groups;
  const float count = static_cast<float>(per_group * pixels);
  // Pixel chunks per sample, so that batch 1 still uses several threads for the statistics. Their number
  // comes from the image alone, never from the batch or the thread count: a sample's sums are then added in
  // the same order whatever it is normalised with (batch-invariant sampling, see README).
  const int64_t chunks = (pixels + kStatisticsChunkPixels - 1) / kStatisticsChunkPixels;
  const int64_t tasks = s.batch * chunks;
  std::vector<float> zeros(C, 0.f);
  std::vector<float> partial_sum(tasks * C, 0.f), partial_sq(tasks * C, 0.f);
  // Per channel, the group's first element (pixel 0): the shift that keeps float sums exact, as in NCHW.
  std::vector<float> shift(s.batch * C);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t first = (c / per_group) * per_group;
      shift[n * C + c] = static_cast<float>(x[n * pixels * C + first]) + (p.add ? p.add[n * C + first] : 0.f);
    }
  }
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, k = task % chunks;
      const float* add = p.add ? p.add + n * C : zeros.data();
      for (int64_t px = k * pixels / chunks; px < (k + 1) * pixels / chunks; ++px) {
        accumulate_pixel<T>(x + (n * pixels + px) * C, add, &shift[n * C], &partial_sum[task * C],
                            &partial_sq[task * C], C);
      }
    }
  });

  // Per-(sample, channel) coefficients laid out like x's channel vector, for vector loads in the write pass.
  std::vector<float> km(s.batch * C), ka(s.batch * C), kb(s.batch * C), ks1(s.batch * C), ks0(s.batch * C);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      float total = 0.f, total_sq = 0.f;
      for (int64_t k = 0; k < chunks; ++k) {
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          total += partial_sum[(n * chunks + k) * C + c];
          total_sq += partial_sq[(n * chunks + k) * C + c];
        }
      }
      const float shifted_mean = total / count;
      const float var = std::max(total_sq / count - shifted_mean * shifted_mean, 0.f);
      const float mean = shift[n * C + g * per_group] + shifted_mean;
      const float rstd = 1.f / std::sqrt(var + p.eps);
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const ChannelAffine k = channel_affine(p, n, c, C, mean, rstd);
        km[n * C + c] = k.mean;
        ka[n * C + c] = k.a;
        kb[n * C + c] = k.b;
        ks1[n * C + c] = k.s1;
        ks0[n * C + c] = k.s0;
      }
    }
  }

  const bool scaled = p.scale != nullptr;
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  at::parallel_for(0, s.batch * pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t np = begin; np < end; ++np) {
      const int64_t n = np / pixels;
      const T* row = x + np * C;
      T* out = y + np * C;
      const float* add = p.add ? p.add + n * C : zeros.data();
      const float *m = &km[n * C], *a = &ka[n * C], *b = &kb[n * C], *s1 = &ks1[n * C], *s0 = &ks0[n * C];
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        const Vec h = load_floats(row + c) + Vec::loadu(add + c);
        store_floats(out + c, apply_vec(h, Vec::loadu(m + c), Vec::loadu(a + c), Vec::loadu(b + c),
                                        Vec::loadu(s1 + c), Vec::loadu(s0 + c), scaled, p.silu));
      }
      for (; c < C; ++c) {
        const ChannelAffine k{m[c], a[c], b[c], s1[c], s0[c]};
        out[c] = static_cast<T>(apply_scalar(static_cast<float>(row[c]) + add[c], k, scaled, p.silu));
      }
    }
  });
}

template <typename T>
void run(const at::Tensor& x, at::Tensor& y, const GroupNormShape& s, const Params& p) {
  if (s.channels_last) {
    group_norm_channels_last<T>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), s, p);
  } else {
    group_norm_nchw<T>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), s, p);
  }
}

}  // namespace

at::Tensor group_norm_cpu(
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
  if (x.numel() == 0) {
    return call.y;
  }
  const Params params{float_ptr_or_null(call.weight), float_ptr_or_null(call.bias),
                      float_ptr_or_null(call.add),    float_ptr_or_null(call.scale),
                      float_ptr_or_null(call.shift),  static_cast<float>(eps),
                      silu};
  switch (x.scalar_type()) {
    case at::kFloat:
      run<float>(call.input, call.y, call.shape, params);
      break;
    case at::kHalf:
      run<at::Half>(call.input, call.y, call.shape, params);
      break;
    case at::kBFloat16:
      run<at::BFloat16>(call.input, call.y, call.shape, params);
      break;
    default:
      TORCH_CHECK(false, "fastddpm::group_norm: unsupported dtype ", x.scalar_type());
  }
  return call.y;
}

}  // namespace fastddpm

// fastddpm::winograd_conv3x3 on the CPU: a 3x3, stride-1, padding-1 convolution of a channels-last input
// (float32, or bfloat16 / float16 loaded as float32 and rounded back on the way out) by Winograd's minimal
// filtering F(m x m, 3 x 3) (Lavin & Gray 2015), m = 2 or 4. fastddpm/conv.py decides where it runs.
//
// The image is cut into m x m output tiles. For each tile, the (m+2) x (m+2) input patch goes through the
// input transform B^T d B; then for each of the (m+2)^2 transform positions one matrix product
// (tiles x C) @ (C x C_out) with the transformed weight G g G^T (computed once in Python, in float64);
// then the output transform A^T M A gives the m x m outputs, to which the bias (and, optionally, a residual)
// is added. Per output pixel this is (m+2)^2 / m^2 multiply-adds per (C, C_out) pair instead of 9: 4 for
// m = 2 (2.25x fewer), 2.25 for m = 4 (4x fewer).
//
// Three passes per chunk of tiles: input transform (vectorised over C, parallel over tiles), the (m+2)^2
// matrix products (matmul_rows.h: each sum in a fixed order, so a tile's result does not depend on how many
// tiles of how many samples share the chunk; about 70% of the time at cifar10-32 shapes), output transform
// (vectorised over C_out, parallel over tiles). Every pass computes a tile from that tile's inputs alone,
// in an order set by the channel counts: the convolution is batch-invariant. The transforms only add, subtract and scale by
// small powers of two, written out by hand: a generic matrix product would multiply by the zeros too (the
// compiler may not drop x * 0.f).

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <c10/util/Exception.h>

#include <algorithm>

#include "cpu_vec_io.h"
#include "fastddpm_ops.h"
#include "matmul_rows.h"

namespace fastddpm {
namespace {

using cpu_vec::kLanes;
using cpu_vec::Vec;
// The transform domain (v, m) is float32 whatever the activations' type T.
using cpu_vec::load_floats;
using cpu_vec::store_floats;

// One-dimensional transforms of F(m, 3); applying each to the rows and then to the columns gives the 2-D
// transform. `In` maps m+2 inputs to m+2, `Out` maps m+2 to m.
template <int M>
struct Transforms;

template <>
struct Transforms<2> {
  static inline void in(const Vec* d, Vec* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  static inline void out(const Vec* s, Vec* o) {
    o[0] = s[0] + s[1] + s[2];
    o[1] = s[1] - s[2] - s[3];
  }
};

template <>
struct Transforms<4> {
  static inline void in(const Vec* d, Vec* r) {
    const Vec four(4.f), five(5.f), two(2.f);
    r[0] = four * d[0] - five * d[2] + d[4];
    r[1] = d[3] + d[4] - four * (d[1] + d[2]);
    r[2] = four * (d[1] - d[2]) + d[4] - d[3];
    r[3] = two * (d[3] - d[1]) + d[4] - d[2];
    r[4] = two * (d[1] - d[3]) + d[4] - d[2];
    r[5] = four * d[1] - five * d[3] + d[5];
  }
  static inline void out(const Vec* s, Vec* o) {
    const Vec two(2.f), four(4.f), eight(8.f);
    const Vec sum12 = s[1] + s[2], diff12 = s[1] - s[2];
    const Vec sum34 = s[3] + s[4], diff34 = s[3] - s[4];
    o[0] = s[0] + sum12 + sum34;
    o[1] = diff12 + two * diff34;
    o[2] = sum12 + four * sum34;
    o[3] = diff12 + eight * diff34 + s[5];
  }
};

struct Geometry {
  int64_t n, h, w, c, c_out;
  int64_t tiles_h, tiles_w, tiles;
};

// v[(i * A + j) * rows + tile - first][c] = (B^T d B)[i][j] for the patch d of input tile `tile` in
// [first, first + rows), channels c.
template <int M, typename T>
void input_transform(const T* x, float* v, const Geometry& g, int64_t first, int64_t rows) {
  constexpr int A = M + 2;
  at::parallel_for(first, first + rows, 8, [&](int64_t begin, int64_t end) {
    Vec d[A][A], t[A][A], column[A], result[A];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t sample = tile / (g.tiles_h * g.tiles_w);
      const int64_t tile_y = tile / g.tiles_w % g.tiles_h;
      const int64_t tile_x = tile % g.tiles_w;
      const int64_t y0 = tile_y * M - 1, x0 = tile_x * M - 1;  // padding 1: the patch starts one pixel out
      const T* image = x + sample * g.h * g.w * g.c;
      for (int64_t c = 0; c < g.c; c += kLanes) {
        const int64_t count = std::min(kLanes, g.c - c);
        for (int i = 0; i < A; ++i) {
          const int64_t y = y0 + i;
          for (int j = 0; j < A; ++j) {
            const int64_t xx = x0 + j;
            d[i][j] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w) ? load_floats(image + (y * g.w + xx) * g.c + c, count)
                                                                  : Vec(0.f);
          }
        }
        for (int j = 0; j < A; ++j) {  // B^T d: transform each column
          for (int i = 0; i < A; ++i) column[i] = d[i][j];
          Transforms<M>::in(column, result);
          for (int i = 0; i < A; ++i) t[i][j] = result[i];
        }
        for (int i = 0; i < A; ++i) {  // (B^T d) B: transform each row
          Transforms<M>::in(t[i], result);
          for (int j = 0; j < A; ++j) store_floats(v + ((i * A + j) * rows + tile - first) * g.c + c, result[j], count);
        }
      }
    }
  });
}

// y[pixel][o] = (A^T m A)[i][j] + bias[o] (+ residual[pixel][o]) for output tile `tile` in
// [first, first + rows), whose transform-domain values are m[(i * A + j) * rows + tile - first]; cropped at
// the image's edges.
template <int M, typename T>
void output_transform(
    const float* m, const float* bias, const T* residual, T* y, const Geometry& g, int64_t first, int64_t rows) {
  constexpr int A = M + 2;
  at::parallel_for(first, first + rows, 8, [&](int64_t begin, int64_t end) {
    Vec s[A][A], t[M][A], column[A], result[M];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t sample = tile / (g.tiles_h * g.tiles_w);
      const int64_t tile_y = tile / g.tiles_w % g.tiles_h;
      const int64_t tile_x = tile % g.tiles_w;
      const int64_t height = std::min<int64_t>(M, g.h - tile_y * M), width = std::min<int64_t>(M, g.w - tile_x * M);
      const int64_t first_pixel = (sample * g.h + tile_y * M) * g.w + tile_x * M;
      for (int64_t o = 0; o < g.c_out; o += kLanes) {
        const int64_t count = std::min(kLanes, g.c_out - o);
        for (int i = 0; i < A; ++i) {
          for (int j = 0; j < A; ++j) s[i][j] = load_floats(m + ((i * A + j) * rows + tile - first) * g.c_out + o, count);
        }
        for (int j = 0; j < A; ++j) {  // A^T s: transform each column
          for (int i = 0; i < A; ++i) column[i] = s[i][j];
          Transforms<M>::out(column, result);
          for (int i = 0; i < M; ++i) t[i][j] = result[i];
        }
        const Vec b = bias != nullptr ? load_floats(bias + o, count) : Vec(0.f);
        for (int i = 0; i < height; ++i) {  // (A^T s) A: transform each row, keep the pixels inside the image
          Transforms<M>::out(t[i], result);
          for (int j = 0; j < width; ++j) {
            const int64_t offset = (first_pixel + i * g.w + j) * g.c_out + o;
            Vec value = result[j] + b;
            if (residual != nullptr) value = value + load_floats(residual + offset, count);
            store_floats(y + offset, value, count);
          }
        }
      }
    }
  });
}

// Tiles per chunk: as many as keep one chunk's v (or m) within 2 MiB, at least 32 (smaller GEMMs run
// slowly), at most all of them. Chunking bounds the scratch memory (a 256 px image would otherwise need
// hundreds of MB) and keeps v and m in cache between the passes. Measured (2 threads, median of 15, F(2,3)
// at (8, 384, 32, 32) -> 128, whose unchunked v of 50 MB outgrows this machine's 48 MB L3): 38.6 ms
// unchunked, 23.3 ms with 2 MiB chunks; F(4,3) shapes within the noise (6.8 -> 6.2 ms at (8, 128, 32, 32)).
int64_t chunk_tiles(int64_t bytes_per_tile, int64_t tiles) {
  constexpr int64_t kBudget = int64_t(2) << 20;
  return std::min(tiles, std::max<int64_t>(32, kBudget / bytes_per_tile));
}

// (A*A, rows, C_out) m = (A*A, rows, C) v @ the packed (A*A, panels, C, kPanel) weight, one task per
// (position, row block, panel group).
void transform_domain_products(const float* v, const float* packed, float* m, int64_t positions, int64_t rows,
                               const Geometry& g) {
  const int64_t panel_count = matmul::panels(g.c_out);
  const int64_t tasks = matmul::task_count(rows, g.c_out);
  at::parallel_for(0, positions * tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / tasks;
      float* out = m + p * rows * g.c_out;
      const auto store = [&](int64_t row, int64_t column, const float* acc, int64_t count) {
        std::copy(acc, acc + count, out + row * g.c_out + column);
      };
      matmul::gemm_tasks(v + p * rows * g.c, g.c, rows, g.c, packed + p * panel_count * g.c * matmul::kPanel,
                         g.c_out, store, task % tasks, task % tasks + 1);
    }
  });
}

// The three passes of F(M x M, 3 x 3) over all tiles, chunk by chunk, for activations (x, residual, y) of
// type T.
template <int M, typename T>
void winograd_passes(
    const at::Tensor& x,
    const at::Tensor& weight,
    const float* bias,
    const T* residual,
    at::Tensor& y,
    const Geometry& g) {
  constexpr int64_t a = M + 2;
  // Chunks of tiles, so that the transform-domain buffers v and m stay in cache between the three passes
  // instead of going through main memory (see chunk_tiles).
  const int64_t chunk = chunk_tiles(a * a * std::max(g.c, g.c_out) * int64_t(sizeof(float)), g.tiles);
  const auto options = weight.options();
  at::Tensor v = at::empty({a * a, chunk, g.c}, options);
  at::Tensor m = at::empty({a * a, chunk, g.c_out}, options);
  const T* x_data = x.const_data_ptr<T>();
  T* y_data = y.mutable_data_ptr<T>();
  float* v_data = v.mutable_data_ptr<float>();
  float* m_data = m.mutable_data_ptr<float>();
  for (int64_t first = 0; first < g.tiles; first += chunk) {
    // The last chunk may have fewer rows: the front of the same buffers, as (A*A, rows, .) matrices.
    const int64_t rows = std::min(chunk, g.tiles - first);
    input_transform<M>(x_data, v_data, g, first, rows);
    transform_domain_products(v_data, weight.const_data_ptr<float>(), m_data, a * a, rows, g);
    output_transform<M>(m_data, bias, residual, y_data, g, first, rows);
  }
}

}  // namespace

at::Tensor winograd_conv3x3_cpu(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual,
    int64_t tile,
    int64_t out_channels) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_conv3x3: tile must be 2 or 4, got ", tile);
  const int64_t a = tile + 2;
  const auto dtype = x.scalar_type();
  TORCH_CHECK(
      x.dim() == 4 && (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf) &&
          x.is_contiguous(at::MemoryFormat::ChannelsLast),
      "winograd_conv3x3: x must be a float32, bfloat16 or float16 (N, C, H, W) tensor in channels_last, got ",
      x.sizes(), " ", dtype);
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(0) == a * a && weight.size(1) == matmul::panels(out_channels) &&
          weight.size(2) == x.size(1) && weight.size(3) == matmul::kPanel && weight.scalar_type() == at::kFloat &&
          weight.is_contiguous(),
      "winograd_conv3x3: weight must be the packed float32 transformed weight (", a * a, ", ",
      matmul::panels(out_channels), ", ", x.size(1), ", ", matmul::kPanel, ") for ", out_channels,
      " output channels, got ", weight.sizes());
  Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), out_channels, 0, 0, 0};
  g.tiles_h = (g.h + tile - 1) / tile;
  g.tiles_w = (g.w + tile - 1) / tile;
  g.tiles = g.n * g.tiles_h * g.tiles_w;
  const float* bias_data = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(
        bias->dim() == 1 && bias->size(0) == g.c_out && bias->scalar_type() == at::kFloat && bias->is_contiguous(),
        "winograd_conv3x3: bias must be a contiguous float32 (", g.c_out, ",) tensor");
    bias_data = bias->const_data_ptr<float>();
  }
  if (residual.has_value()) {
    TORCH_CHECK(
        residual->sizes() == at::IntArrayRef({g.n, g.c_out, g.h, g.w}) && residual->scalar_type() == dtype &&
            residual->is_contiguous(at::MemoryFormat::ChannelsLast),
        "winograd_conv3x3: residual must be a channels_last tensor of the output's shape and x's dtype");
  }
  at::Tensor y = at::empty({g.n, g.c_out, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (g.tiles == 0) {
    return y;
  }
  const auto run = [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* residual_data = residual.has_value() ? residual->const_data_ptr<T>() : nullptr;
    if (tile == 2) {
      winograd_passes<2, T>(x, weight, bias_data, residual_data, y, g);
    } else {
      winograd_passes<4, T>(x, weight, bias_data, residual_data, y, g);
    }
  };
  if (dtype == at::kFloat) {
    run(float{});
  } else if (dtype == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(c10::Half{});
  }
  return y;
}

}  // namespace fastddpm

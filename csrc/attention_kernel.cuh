// fastddpm::attention's CUDA kernel and its launch code: softmax(q k^T * scale) v for (B, heads, L, D), D up to 512, flash-style:
// an online softmax over tiles of 16 keys, float32 accumulation, no L x L matrix anywhere (the scores of a
// row live in 16 registers for one tile at a time).
//
// Block = 4 warps = 16 query rows of one (batch, head); each warp owns 4 rows. Shared memory holds the
// 16 query rows and one tile of 16 keys and 16 values as float32 (row stride D: lanes read consecutive
// elements, no bank conflicts): 48 * D * 4 bytes, 96 KB at D = 512 (opt-in), 48 KB at D = 256.
// A row's score for key j is a warp-wide dot product (lane l holds elements l, l + 32, ...) finished by a
// butterfly sum, so every lane holds every score of its row and updates its D / 32 output elements
// without further communication. This is a SIMT kernel (CUDA cores, no tensor-core MMA): correct for every
// supported shape and dtype, not tuned. Where its time should go, by instruction count per row and tile of
// 16 keys at D = 256: 128 FMAs for q.k, 128 for p.v, but 80 shuffles (a warp shuffle issues at a quarter of
// the FMA rate) and 16 expf per lane, computed redundantly by all 32 lanes. The next steps, to be measured
// on a GPU: a reduce-scatter of the 16 partial dot products (16 shuffles instead of 80, one exp per lane),
// exp2f with log2(e) folded into the scale, and tensor-core MMA for float16 / bfloat16.
// This header holds everything but the device guard: csrc/attention_cuda.cu includes it for nvcc (after
// csrc/cuda_platform.cuh), csrc/simt/simt_ops.cpp for the host emulation that tests run in CI (after
// csrc/simt/simt_emulation.h).
// Status: compiled with nvcc 13.0 for sm_90 and run on the CPU through the SIMT emulation in CI; not run on
// a GPU in this session.

#pragma once

#ifndef FASTDDPM_SIMT_HOST  // the host build includes csrc/simt/simt_emulation.h first
#include "cuda_platform.cuh"
#endif

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>

#include "attention_args.h"
#include "cuda_reduce.cuh"

namespace fastddpm::attention_gpu {  // its own namespace: the host build includes both kernel headers
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockM = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kBlockN = 16;  // keys per tile

size_t shared_bytes(int64_t d) {
  return size_t(kBlockM + 2 * kBlockN) * d * sizeof(float);
}

// DCH = ceil(D / 32) rounded up to the instantiated widths: lane l owns output elements l + 32 * c, c < DCH.
template <typename T, int DCH>
__global__ void __launch_bounds__(kThreads) attention_kernel(const T* __restrict__ q,  // (B*heads, len_q, d)
                                                             const T* __restrict__ k,  // (B*heads, len_k, d)
                                                             const T* __restrict__ v,  // (B*heads, len_k, d)
                                                             T* __restrict__ out,  // (B*heads, len_q, d)
                                                             const int len_q,
                                                             const int len_k,
                                                             const int d,
                                                             const float scale) {
  FASTDDPM_DYNAMIC_SHARED(float, tiles);
  float* q_tile = tiles;  // [kBlockM][d]
  float* k_tile = q_tile + kBlockM * d;  // [kBlockN][d]
  float* v_tile = k_tile + kBlockN * d;  // [kBlockN][d]
  const int64_t head = blockIdx.x;
  const int row0 = blockIdx.y * kBlockM;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const T* q_head = q + head * len_q * d;
  const T* k_head = k + head * len_k * d;
  const T* v_head = v + head * len_k * d;

  for (int idx = threadIdx.x; idx < kBlockM * d; idx += kThreads) {
    const int row = row0 + idx / d;
    q_tile[idx] = row < len_q ? static_cast<float>(q_head[int64_t(row0) * d + idx]) : 0.f;
  }

  float acc[kRowsPerWarp][DCH];
  float row_max[kRowsPerWarp];
  float row_sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DCH; ++c) {
      acc[r][c] = 0.f;
    }
  }

  for (int j0 = 0; j0 < len_k; j0 += kBlockN) {
    __syncthreads();  // the previous tile is consumed (first pass: nothing to wait for but q_tile's writes)
    for (int idx = threadIdx.x; idx < kBlockN * d; idx += kThreads) {
      const bool present = j0 + idx / d < len_k;
      const int64_t offset = int64_t(j0) * d + idx;
      k_tile[idx] = present ? static_cast<float>(k_head[offset]) : 0.f;
      v_tile[idx] = present ? static_cast<float>(v_head[offset]) : 0.f;
    }
    __syncthreads();

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local_row = warp * kRowsPerWarp + r;
      if (row0 + local_row >= len_q) {
        continue;  // uniform across the warp, so the shuffles below never see a partial warp
      }
      const float* q_row = q_tile + local_row * d;
      float s[kBlockN];
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBlockN; ++j) {
        float part = 0.f;
#pragma unroll
        for (int c = 0; c < DCH; ++c) {
          const int e = lane + 32 * c;
          if (e < d) {
            part += q_row[e] * k_tile[j * d + e];
          }
        }
        s[j] = j0 + j < len_k ? warp_sum(part) * scale : -INFINITY;
        tile_max = fmaxf(tile_max, s[j]);
      }
      const float new_max = fmaxf(row_max[r], tile_max);  // finite: every tile holds at least one key
      const float rescale = expf(row_max[r] - new_max);  // 0 on the first tile
      float tile_sum = 0.f;
#pragma unroll
      for (int j = 0; j < kBlockN; ++j) {
        s[j] = expf(s[j] - new_max);
        tile_sum += s[j];
      }
      row_max[r] = new_max;
      row_sum[r] = row_sum[r] * rescale + tile_sum;
#pragma unroll
      for (int c = 0; c < DCH; ++c) {
        const int e = lane + 32 * c;
        if (e < d) {
          float o = acc[r][c] * rescale;
#pragma unroll
          for (int j = 0; j < kBlockN; ++j) {
            o += s[j] * v_tile[j * d + e];
          }
          acc[r][c] = o;
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = row0 + warp * kRowsPerWarp + r;
    if (row < len_q) {
      const float inv = 1.f / row_sum[r];
      T* out_row = out + (head * len_q + row) * d;
#pragma unroll
      for (int c = 0; c < DCH; ++c) {
        const int e = lane + 32 * c;
        if (e < d) {
          out_row[e] = static_cast<T>(acc[r][c] * inv);
        }
      }
    }
  }
}

template <typename T, int DCH>
void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, float scale) {
  const int64_t heads_total = q.size(0) * q.size(1);
  const int len_q = static_cast<int>(q.size(2)), len_k = static_cast<int>(k.size(2)), d = static_cast<int>(q.size(3));
  const size_t bytes = shared_bytes(d);
  const auto kernel = attention_kernel<T, DCH>;
  if (bytes > 48 * 1024) {
    FASTDDPM_SET_MAX_DYNAMIC_SHARED(kernel, bytes);  // the kernel has no static shared memory
  }
  const dim3 grid(static_cast<uint32_t>(heads_total), static_cast<uint32_t>((len_q + kBlockM - 1) / kBlockM));
  FASTDDPM_LAUNCH(kernel, grid, dim3(kThreads), bytes, q.const_data_ptr<T>(), k.const_data_ptr<T>(),
                  v.const_data_ptr<T>(), out.mutable_data_ptr<T>(), len_q, len_k, d, scale);
}

template <typename T>
void dispatch_head_dim(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, float scale) {
  const int64_t d = q.size(3);
  if (d <= 64) {
    launch<T, 2>(q, k, v, out, scale);
  } else if (d <= 128) {
    launch<T, 4>(q, k, v, out, scale);
  } else if (d <= 256) {
    launch<T, 8>(q, k, v, out, scale);
  } else {
    launch<T, 16>(q, k, v, out, scale);
  }
}

at::Tensor run_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check_attention_args(q, k, v);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options(), at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  TORCH_CHECK(q.size(0) * q.size(1) <= std::numeric_limits<int32_t>::max(), "fastddpm::attention: B * heads = ",
              q.size(0) * q.size(1), " exceeds the CUDA grid");
  TORCH_CHECK((q.size(2) + kBlockM - 1) / kBlockM <= 65535 && k.size(2) <= std::numeric_limits<int32_t>::max(),
              "fastddpm::attention: sequence length ", q.size(2), " exceeds the CUDA grid (", 65535 * kBlockM,
              " queries)");
  const float s = static_cast<float>(scale);
  switch (q.scalar_type()) {
    case at::kFloat:
      dispatch_head_dim<float>(qc, kc, vc, out, s);
      break;
    case at::kHalf:
      dispatch_head_dim<c10::Half>(qc, kc, vc, out, s);
      break;
    case at::kBFloat16:
      dispatch_head_dim<c10::BFloat16>(qc, kc, vc, out, s);
      break;
    default:
      TORCH_CHECK(false, "fastddpm::attention: unsupported dtype ", q.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace fastddpm::attention_gpu

// A float32 matrix product C = A @ B whose every output element is summed in one fixed order: k = 0, 1, ...,
// K - 1, one fused multiply-add per step, from 0. That order does not depend on M (how many rows are
// multiplied together), on which rows share a micro-tile, on the thread count or on the partition of the
// work, so a row's result is the same whether it is multiplied alone or inside any batch: the property that
// makes sampling batch-invariant. BLAS libraries give no such promise (MKL picks another kernel, blocking or
// split of K by M), which is why the U-Net's matrix products on the CPU come here.
//
// B is packed once (pack_matmul_weight) into panels of kPanel columns: panel p holds B[k][p * kPanel + j] at
// [p][k][j], zero-padded past N. A micro-tile of up to kTileRows rows times one panel keeps its 2 x kTileRows
// vector accumulators in registers (12 of AVX2's 16, 24 of AVX-512's 32); each step k loads two vectors of
// the panel and broadcasts one A value per row. How many rows share a micro-tile changes nothing in any
// element's sum, only how often the panel is loaded. Cache blocking is by rows (kBlockRows) and panels
// (kGroupPanels), never by K, so no partial sums are ever combined.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu_vec_io.h"

namespace fastddpm::matmul {

using cpu_vec::kLanes;
using cpu_vec::Vec;

constexpr int64_t kPanel = 2 * kLanes;  // columns per packed panel: two vectors
// Rows per micro-tile: 2 accumulators per row + 2 panel vectors + 1 broadcast fill the vector registers.
// AVX-512's 32 registers take 12 rows: on a 2-core Intel Xeon (AVX-512, AMX), 2 threads, the cifar10-32
// U-Net's step at batch 8 went from 1.10x to 1.02x of the release before matmul_rows (which used MKL's
// batched products there), together with the unrolled k loop below (bench/batch_invariance_cost.py).
constexpr int kTileRows = kLanes >= 16 ? 12 : 6;
constexpr int64_t kBlockRows = 8 * kTileRows;  // rows per task: A's block (48 or 96 x K floats) stays in L2
constexpr int64_t kGroupPanels = 4;            // panels per task: B's group (K x 4 panels) stays in L2

inline int64_t panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

// acc[r][0..kPanel) = sum_k a[r * lda + k] * panel[k * kPanel + 0..kPanel), k in order, for R rows.
template <int R>
inline void micro_tile(const float* a, int64_t lda, const float* panel, int64_t k_size, float* acc) {
  Vec c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    c0[r] = Vec(0.f);
    c1[r] = Vec(0.f);
  }
#if defined(CPU_CAPABILITY_AVX512)
  // Unrolled 4x: 3-8% off the Winograd convolutions on the Intel Xeon above (2, 4 and 8 alike); no change
  // measured for the AVX2 build on the same machine, so that one is left as the compiler makes it.
#pragma GCC unroll 4
#endif
  for (int64_t k = 0; k < k_size; ++k) {
    const Vec b0 = Vec::loadu(panel + k * kPanel);
    const Vec b1 = Vec::loadu(panel + k * kPanel + kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec ar(a[r * lda + k]);
      c0[r] = at::vec::fmadd(ar, b0, c0[r]);
      c1[r] = at::vec::fmadd(ar, b1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    c0[r].store(acc + r * kPanel);
    c1[r].store(acc + r * kPanel + kLanes);
  }
}

// micro_tile<rows> for 1 <= rows <= R, chosen at run time (the last tile of a block may be short).
template <int R = kTileRows>
inline void micro_tile_rows(int rows, const float* a, int64_t lda, const float* panel, int64_t k_size, float* acc) {
  if constexpr (R > 1) {
    if (rows < R) {
      micro_tile_rows<R - 1>(rows, a, lda, panel, k_size, acc);
      return;
    }
  }
  micro_tile<R>(a, lda, panel, k_size, acc);
}

// The work of C = A @ B (m rows, n columns) comes in tasks of kBlockRows rows x kGroupPanels panels.
inline int64_t task_count(int64_t m, int64_t n) {
  return ((m + kBlockRows - 1) / kBlockRows) * ((panels(n) + kGroupPanels - 1) / kGroupPanels);
}

// Tasks [begin, end) of C = A @ B for A (m x k_size, row stride lda) and packed B (n columns);
// store(row, column, acc, count) receives each micro-tile row's sums for columns [column, column + count).
template <typename Store>
void gemm_tasks(const float* a, int64_t lda, int64_t m, int64_t k_size, const float* packed, int64_t n,
                const Store& store, int64_t begin, int64_t end) {
  const int64_t panel_count = panels(n);
  const int64_t groups = (panel_count + kGroupPanels - 1) / kGroupPanels;
  alignas(64) float acc[kTileRows * kPanel];
  for (int64_t task = begin; task < end; ++task) {
    const int64_t row0 = (task / groups) * kBlockRows, group = task % groups;
    const int64_t row_end = std::min(m, row0 + kBlockRows);
    const int64_t panel_end = std::min(panel_count, (group + 1) * kGroupPanels);
    for (int64_t r = row0; r < row_end; r += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, row_end - r));
      for (int64_t p = group * kGroupPanels; p < panel_end; ++p) {
        micro_tile_rows(rows, a + r * lda, lda, packed + p * k_size * kPanel, k_size, acc);
        const int64_t count = std::min(kPanel, n - p * kPanel);
        for (int i = 0; i < rows; ++i) {
          store(r + i, p * kPanel, acc + i * kPanel, count);
        }
      }
    }
  }
}

// All of C = A @ B, its tasks spread over torch's threads.
template <typename Store>
void gemm(const float* a, int64_t lda, int64_t m, int64_t k_size, const float* packed, int64_t n,
          const Store& store) {
  at::parallel_for(0, task_count(m, n), 1, [&](int64_t begin, int64_t end) {
    gemm_tasks(a, lda, m, k_size, packed, n, store, begin, end);
  });
}

}  // namespace fastddpm::matmul

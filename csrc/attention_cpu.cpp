// fastddpm::attention on the CPU: softmax(q k^T * scale) v for (B, heads, L, D), blocked with an online
// softmax so that only a (32 x 64) tile of scores exists at a time, float32 math for every input dtype.
//
// One task per (batch * head, block of 32 queries). For each block of 64 keys the task transposes K into
// (D, 64) so that a query row's 64 scores are 8 vector accumulators updated by broadcast FMAs over D, then
// rescales its running output (B, D) and adds p @ V vectorised over D.
// backend_ext refuses this kernel in favour of torch's SDPA where SDPA was measured faster (see there).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention_args.h"
#include "fastddpm_ops.h"

namespace fastddpm {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kBlockQ = 32;
constexpr int64_t kBlockK = 64;
constexpr int64_t kScoreVecs = kBlockK / kLanes;

// Scratch of one task, reused across the tasks a thread runs.
struct Tiles {
  explicit Tiles(int64_t d)
      : q(kBlockQ * d), k_t(d * kBlockK), v(kBlockK * d), acc(kBlockQ * d), row_max(kBlockQ), row_sum(kBlockQ) {}
  std::vector<float> q, k_t, v, acc, row_max, row_sum;
};

template <typename T>
void attention_blocked(const T* q, const T* k, const T* v, T* out, int64_t heads_total, int64_t len_q, int64_t len_k,
                       int64_t d, float scale) {
  const int64_t q_blocks = (len_q + kBlockQ - 1) / kBlockQ;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, heads_total * q_blocks, 1, [&](int64_t begin, int64_t end) {
    Tiles t(d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks;
      const int64_t i0 = (task % q_blocks) * kBlockQ;
      const int64_t rows = std::min(kBlockQ, len_q - i0);
      const T* q_head = q + (bh * len_q + i0) * d;
      const T* k_head = k + bh * len_k * d;
      const T* v_head = v + bh * len_k * d;
      for (int64_t i = 0; i < rows * d; ++i) {
        t.q[i] = static_cast<float>(q_head[i]);
      }
      std::fill(t.acc.begin(), t.acc.end(), 0.f);
      std::fill(t.row_max.begin(), t.row_max.end(), neg_inf);
      std::fill(t.row_sum.begin(), t.row_sum.end(), 0.f);

      for (int64_t j0 = 0; j0 < len_k; j0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, len_k - j0);
        // Missing keys of the last block read as zeros and are masked to -inf below.
        std::fill(t.k_t.begin(), t.k_t.end(), 0.f);
        for (int64_t j = 0; j < cols; ++j) {
          const T* k_row = k_head + (j0 + j) * d;
          const T* v_row = v_head + (j0 + j) * d;
          for (int64_t e = 0; e < d; ++e) {
            t.k_t[e * kBlockK + j] = static_cast<float>(k_row[e]);
            t.v[j * d + e] = static_cast<float>(v_row[e]);
          }
        }
        for (int64_t i = 0; i < rows; ++i) {
          Vec s[kScoreVecs];
          for (int64_t u = 0; u < kScoreVecs; ++u) {
            s[u] = Vec(0.f);
          }
          const float* q_row = &t.q[i * d];
          for (int64_t e = 0; e < d; ++e) {
            const Vec qe(q_row[e]);
            const float* k_col = &t.k_t[e * kBlockK];
            for (int64_t u = 0; u < kScoreVecs; ++u) {
              s[u] = at::vec::fmadd(qe, Vec::loadu(k_col + u * kLanes), s[u]);
            }
          }
          float p[kBlockK];
          for (int64_t u = 0; u < kScoreVecs; ++u) {
            (s[u] * Vec(scale)).store(p + u * kLanes);
          }
          float block_max = neg_inf;
          for (int64_t j = 0; j < kBlockK; ++j) {
            p[j] = j < cols ? p[j] : neg_inf;
            block_max = std::max(block_max, p[j]);
          }
          const float new_max = std::max(t.row_max[i], block_max);
          const float rescale = std::exp(t.row_max[i] - new_max);  // 0 on the first block (max was -inf)
          float block_sum = 0.f;
          for (int64_t u = 0; u < kScoreVecs; ++u) {
            const Vec e = (Vec::loadu(p + u * kLanes) - Vec(new_max)).exp();
            e.store(p + u * kLanes);
          }
          for (int64_t j = 0; j < cols; ++j) {
            block_sum += p[j];
          }
          t.row_max[i] = new_max;
          t.row_sum[i] = t.row_sum[i] * rescale + block_sum;

          float* acc_row = &t.acc[i * d];
          int64_t e = 0;
          for (; e + kLanes <= d; e += kLanes) {
            Vec o = Vec::loadu(acc_row + e) * Vec(rescale);
            for (int64_t j = 0; j < cols; ++j) {
              o = at::vec::fmadd(Vec(p[j]), Vec::loadu(&t.v[j * d + e]), o);
            }
            o.store(acc_row + e);
          }
          for (; e < d; ++e) {
            float o = acc_row[e] * rescale;
            for (int64_t j = 0; j < cols; ++j) {
              o += p[j] * t.v[j * d + e];
            }
            acc_row[e] = o;
          }
        }
      }
      T* out_rows = out + (bh * len_q + i0) * d;
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.f / t.row_sum[i];
        for (int64_t e = 0; e < d; ++e) {
          out_rows[i * d + e] = static_cast<T>(t.acc[i * d + e] * inv);
        }
      }
    }
  });
}

}  // namespace

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check_attention_args(q, k, v);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options(), at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  const int64_t heads_total = q.size(0) * q.size(1), len_q = q.size(2), len_k = k.size(2), d = q.size(3);
  const float s = static_cast<float>(scale);
  switch (q.scalar_type()) {
    case at::kFloat:
      attention_blocked<float>(qc.const_data_ptr<float>(), kc.const_data_ptr<float>(), vc.const_data_ptr<float>(),
                               out.mutable_data_ptr<float>(), heads_total, len_q, len_k, d, s);
      break;
    case at::kHalf:
      attention_blocked<at::Half>(qc.const_data_ptr<at::Half>(), kc.const_data_ptr<at::Half>(),
                                  vc.const_data_ptr<at::Half>(), out.mutable_data_ptr<at::Half>(), heads_total, len_q,
                                  len_k, d, s);
      break;
    case at::kBFloat16:
      attention_blocked<at::BFloat16>(qc.const_data_ptr<at::BFloat16>(), kc.const_data_ptr<at::BFloat16>(),
                                      vc.const_data_ptr<at::BFloat16>(), out.mutable_data_ptr<at::BFloat16>(),
                                      heads_total, len_q, len_k, d, s);
      break;
    default:
      TORCH_CHECK(false, "fastddpm::attention: unsupported dtype ", q.scalar_type());
  }
  return out;
}

}  // namespace fastddpm

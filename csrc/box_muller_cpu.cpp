// fastddpm::box_muller on the CPU: Box-Muller (cosine branch) of two streams of 32-bit random words, the
// transform at the end of fastddpm.ops.noise.philox_normal.
//
// torch.log and torch.cos are vectorised with a scalar loop for each thread's tail, and the two disagree in
// the last bit on some CPUs; which elements fall in a tail depends on the tensor's size and its split over
// threads, so a sample's noise would depend on its batch. Here every element goes through the same vector
// code (a tail is computed in a zero-padded vector), so an element's value depends on its two words alone.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <c10/util/Exception.h>

#include <algorithm>

#include "cpu_vec_io.h"
#include "fastddpm_ops.h"

namespace fastddpm {
namespace {

using cpu_vec::kLanes;
using cpu_vec::Vec;

constexpr float kTwoPi = 6.2831853071795864769f;

// u1 in (0, 1] from the top 24 bits of r0 (never 0, so the log is finite), u2 in [0, 1) from r1's.
inline void normals(const int64_t* r0, const int64_t* r1, float* out, int64_t count) {
  float u1[kLanes] = {}, u2[kLanes] = {};
  for (int64_t i = 0; i < count; ++i) {
    u1[i] = (static_cast<float>(static_cast<uint32_t>(r0[i]) >> 8) + 0.5f) * (1.f / 16777216.f);
    u2[i] = static_cast<float>(static_cast<uint32_t>(r1[i]) >> 8) * (1.f / 16777216.f);
  }
  for (int64_t i = count; i < kLanes; ++i) u1[i] = 1.f;  // padding lanes: log(1) = 0, discarded
  const Vec radius = (Vec(-2.f) * Vec::loadu(u1).log()).sqrt();
  const Vec y = radius * (Vec(kTwoPi) * Vec::loadu(u2)).cos();
  y.store(out, static_cast<int>(count));
}

}  // namespace

at::Tensor box_muller_cpu(const at::Tensor& r0, const at::Tensor& r1) {
  TORCH_CHECK(r0.scalar_type() == at::kLong && r1.scalar_type() == at::kLong && r0.sizes() == r1.sizes(),
              "box_muller: r0 and r1 must be int64 tensors of one shape, got ", r0.sizes(), " ", r0.scalar_type(),
              " and ", r1.sizes(), " ", r1.scalar_type());
  const at::Tensor a = r0.contiguous(), b = r1.contiguous();
  at::Tensor y = at::empty(a.sizes(), a.options().dtype(at::kFloat));
  const int64_t* pa = a.const_data_ptr<int64_t>();
  const int64_t* pb = b.const_data_ptr<int64_t>();
  float* out = y.mutable_data_ptr<float>();
  const int64_t vectors = (a.numel() + kLanes - 1) / kLanes;
  at::parallel_for(0, vectors, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t i = v * kLanes;
      normals(pa + i, pb + i, out + i, std::min(kLanes, a.numel() - i));
    }
  });
  return y;
}

}  // namespace fastddpm

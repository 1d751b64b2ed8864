"""nn.Conv2d with faster CPU inference on NHWC activations; exactly nn.Conv2d everywhere else.

In the batch-invariant mode (fastddpm.models.batch_invariant, the default on the CPU) every convolution of
float32 or 16-bit activations is computed so that a sample's numbers do not depend on its batch: 3x3 /
stride 1 / padding 1 by Winograd (below; F(4x4) from 16 px, F(2x2) under, whatever the channel count), the
rest (1x1 shortcuts, stride-2 downsampling) by fastddpm._C's matmul_rows on the NHWC pixels or on their
image-to-column patches, in float32 inside. With FASTDDPM_BATCH_INVARIANT=0, the batch-variant paths below.

Two CPU paths for float32, chosen per call by ``cpu_algorithm()`` (environment variable FASTDDPM_CPU_CONV):

- ``direct``: oneDNN's convolution on a weight kept in oneDNN's blocked layout. torch's CPU convolution
  reorders the weight on every call; this keeps the reordered weight (per weight version and input shape).
  Bit-identical to nn.Conv2d. Measured per call, float32, 2 threads, quiet machine (cifar10-32 U-Net
  shapes, 3x3): (8,128,32,32) 23.2 -> 15.5 ms, (8,256,8,8) 5.37 -> 4.31 ms, (8,256,16,16) 15.2 -> 14.8 ms,
  (1,128,32,32) 2.26 -> 2.19 ms.
- ``winograd4`` / ``winograd2``: for 3x3, stride 1, padding 1 convolutions, Winograd's F(4x4, 3x3) or
  F(2x2, 3x3) in fastddpm._C (csrc/winograd_cpu.cpp): 4x or 2.25x fewer multiply-adds. The transformed
  weight is computed once in float64 and cached like the reordered one. Measured with
  `python -m pytest bench/test_bench_ext.py -k conv3x3 --benchmark-enable` (median, 2 threads, float32,
  NHWC, ms; the cifar10-32 U-Net's shapes, including the up path's concatenated inputs):

      (N, C, H, C_out)     nn.Conv2d  direct   F(2,3)   F(4,3)
      (8, 128, 32, 128)      12.96     9.46     5.98     5.89
      (8, 384, 32, 128)      31.38    31.11    29.23    13.19
      (8, 256, 16, 256)      10.91    10.76     6.77     6.12
      (8, 512, 16, 256)      24.04    21.81    12.50     8.96
      (8, 256,  8, 256)       4.09     2.64     1.48     1.00
      (8, 256,  4, 256)       1.81     1.08     0.46     0.46
      (1, 128, 32, 128)       1.56     1.68     3.31     0.69
      (1, 256, 16, 256)       2.28     1.64     1.04     0.94
      (1, 256,  8, 256)       0.75     0.56     0.26     0.50
      (1, 256,  4, 256)       0.73     0.28     0.23     0.32

  Error, max |y - y_float64| / max |y_float64| on random data: direct ~3e-7, F(2,3) ~3e-7, F(4,3) ~5e-6;
  on the whole cifar10-32 U-Net against diffusers, 8% of the 1e-4 float32 criterion for F(4,3).
- ``auto`` (the default): Winograd for 3x3, stride 1, padding 1 convolutions with at least
  ``WINOGRAD_MIN_IN_CHANNELS`` input channels, F(4,3) on images of at least ``WINOGRAD4_MIN_SIZE`` pixels a
  side and F(2,3) on smaller ones (where each measured faster; by image size, not batch, so that a
  sample's numbers do not depend on its batch); the direct path for the rest. The U-Net still matches
  diffusers within the float32 tolerance (tests/models/test_unet.py); FASTDDPM_CPU_CONV=direct gives nn.Conv2d's
  bits.

bf16 / fp16 activations on a CPU without bf16 / fp16 instructions (fastddpm.cpu_emulation) take the same
paths with float32 arithmetic inside: the Winograd kernel loads 16-bit values and rounds its results back;
the direct path converts around oneDNN's float32 convolution. Where the CPU has the instructions, and
everywhere else (CUDA, autograd, other layouts, torch.compile), it is exactly nn.Conv2d. Parameter
names are nn.Conv2d's, so state dicts are unchanged. ``forward(x, residual)`` returns conv(x) + residual;
the Winograd path adds the residual in its output pass, which saves a read and a write of the activation.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from fastddpm.models import batch_invariant
from fastddpm.ops import backend_ext, cpu_emulation

CPU_ALGORITHMS = ("auto", "winograd4", "winograd2", "direct")
# Below this many input channels the transforms cost more than the multiply-adds they save (conv_in, 3
# channels, measured above).
WINOGRAD_MIN_IN_CHANNELS = 16
# Below this height or width, F(2,3) instead of F(4,3): with few tiles the GEMMs turn into matrix-vector
# products that mostly read the transformed weight, 36 / 9 of the direct weight's size for F(4,3) against
# 16 / 9 for F(2,3). Measured, 2 threads, median of 21, speed-up over the direct path, F(4,3) / F(2,3):
#     (1, 256, 4, 4) -> 256   0.66x / 1.04x      (1, 256, 8, 8) -> 256   1.06x / 1.46x
#     (2, 256, 4, 4) -> 256   0.84x / 1.38x      (1, 512, 8, 8) -> 256   0.63x / 1.28x
#     (8, 256, 4, 4) -> 256   1.43x / 1.49x      (1, 256, 16, 16) -> 256 1.70x / 1.41x
#     (1, 128, 32, 32) -> 128 2.54x / 1.73x      (1, 256, 32, 32) -> 128 2.59x / 1.74x
WINOGRAD4_MIN_SIZE = 16

# Winograd's weight transform G (Lavin & Gray 2015) for F(2x2, 3x3) and F(4x4, 3x3); the input and
# output transforms are written out in csrc/winograd_cpu.cpp.
_WEIGHT_TRANSFORMS = {
    2: ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
    4: (
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
}

# module -> (key, prepared weight), for the reordered (direct) and the transformed (Winograd) weight. Kept
# outside the module so copy.deepcopy and pickling of the network never meet an opaque oneDNN tensor.
_reordered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_transformed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # batch-invariant 1x1 / image-to-column


def cpu_algorithm() -> str:
    """FASTDDPM_CPU_CONV: auto (default), winograd4, winograd2 or direct."""
    name = os.environ.get("FASTDDPM_CPU_CONV", "auto").strip().lower() or "auto"
    if name not in CPU_ALGORITHMS:
        raise ValueError(f"FASTDDPM_CPU_CONV={name!r} is not one of {', '.join(CPU_ALGORITHMS)}")
    return name


def winograd_weight(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """G g G^T of a (C_out, C, 3, 3) weight, as ((tile + 2)^2, C, C_out) float32 matrices packed for
    fastddpm._C's batch-invariant matrix product (pack_matmul_weight)."""
    g = torch.tensor(_WEIGHT_TRANSFORMS[tile], dtype=torch.float64)
    c_out, c = weight.shape[:2]
    transformed = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)
    return backend_ext.pack_matmul_weight(transformed.reshape((tile + 2) ** 2, c, c_out).float())


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if kernels := self._batch_invariant_kernels(x):
            return self._batch_invariant(x, residual, kernels)
        if not self._fast_cpu_path(x):
            out = super().forward(x)
        elif tile := self._winograd_tile(x):
            return self._winograd(x, residual, tile)  # adds the residual itself
        elif x.dtype == torch.float32:
            out = self._direct(x)
        else:  # 16-bit activations this CPU would emulate: float32 arithmetic, rounded back (as Winograd does)
            out = self._direct(x.float()).to(x.dtype)
        return out if residual is None else out + residual

    def _parameter_stamp(self) -> tuple:
        """Changes when the weight or bias is replaced (data pointer) or written in place (version)."""
        stamp = (self.weight._version, self.weight.data_ptr())
        return stamp if self.bias is None else stamp + (self.bias._version, self.bias.data_ptr())

    def _fast_cpu_path(self, x: torch.Tensor) -> bool:
        return (
            not torch.compiler.is_compiling()
            and x.device.type == "cpu"
            and (x.dtype == torch.float32 or cpu_emulation.emulates(x.dtype))
            and self.weight.dtype == x.dtype
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_grad_enabled()
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            # 1x1: on an AMD EPYC with AVX2 (no AVX-512), nn.Conv2d runs NHWC 1x1 convolutions through
            # another kernel than oneDNN's, so the cached-weight path was not bit-identical there (it was on
            # the AVX-512 Xeon the table above was measured on); 1x1 convolutions (the ResNet shortcuts,
            # a few % of the U-Net's time) stay nn.Conv2d.
            and self.kernel_size != (1, 1)
            and _onednn_available()
        )

    def _batch_invariant_kernels(self, x: torch.Tensor) -> str | None:
        """batch_invariant.kernels(x) where this convolution has a batch-invariant path, else None."""
        shape_ok = (
            x.dim() == 4
            and self.weight.dtype == x.dtype
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
        )
        return batch_invariant.kernels(x) if shape_ok else None

    def _batch_invariant(self, x: torch.Tensor, residual: torch.Tensor | None, kernels: str) -> torch.Tensor:
        """conv(x) + residual with each sample's numbers independent of the batch (fastddpm.models.
        batch_invariant): Winograd for 3x3 / stride 1 / padding 1, fastddpm._C's matmul_rows for the rest
        (1x1 directly on the NHWC pixels, others on image-to-column patches). NHWC out."""
        if kernels == "triton":
            return self._triton_rows(x, residual)
        x = x.contiguous(memory_format=torch.channels_last)
        algorithm = cpu_algorithm()
        winograd_shape = self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
        if winograd_shape and algorithm != "direct":  # "direct": no Winograd, the product on image patches
            if algorithm == "winograd2" or algorithm == "winograd4":
                tile = 2 if algorithm == "winograd2" else 4
            else:  # by the image's size, as _winograd_tile
                tile = 4 if min(x.shape[2], x.shape[3]) >= WINOGRAD4_MIN_SIZE else 2
            if residual is not None:
                residual = residual.contiguous(memory_format=torch.channels_last)
            return self._winograd(x, residual, tile)
        pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C), a view of the NHWC tensor
        if self.kernel_size != (1, 1) or self.stride != (1, 1) or self.padding != (0, 0):
            (pad_h, pad_w), (kernel_h, kernel_w) = self.padding, self.kernel_size
            padded = F.pad(pixels, (0, 0, pad_w, pad_w, pad_h, pad_h))
            patches = padded.unfold(1, kernel_h, self.stride[0]).unfold(2, kernel_w, self.stride[1])
            pixels = patches.reshape(*patches.shape[:3], -1)  # (N, H', W', C * kh * kw), weight's order
        key = (self._parameter_stamp(), "rows")
        cached = _packed.get(self)
        if cached is None or cached[0] != key:
            weight = self.weight.detach().float().reshape(self.out_channels, -1).t()
            bias32 = None if self.bias is None else self.bias.detach().float().contiguous()
            cached = (key, backend_ext.pack_matmul_weight(weight), bias32)
            _packed[self] = cached
        fuse = residual is not None and residual.dtype == x.dtype
        res = residual.permute(0, 2, 3, 1) if fuse else None
        out = backend_ext.matmul_rows(pixels, cached[1], self.out_channels, cached[2], res).permute(
            0, 3, 1, 2
        )
        return out + residual if residual is not None and not fuse else out

    def _triton_rows(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """kernels/conv_rows.py's fixed-tile implicit GEMM, any kernel size, stride and padding."""
        from fastddpm.ops import backend_triton

        key = (self._parameter_stamp(), "triton", x.dtype)
        cached = _packed.get(self)
        if cached is None or cached[0] != key:
            weight = backend_triton.kernel_module("conv_rows").pack_weight(self.weight, x.dtype)
            bias32 = None if self.bias is None else self.bias.detach().float().contiguous()
            cached = (key, weight, bias32)
            _packed[self] = cached
        return backend_triton.conv2d_rows(
            x, cached[1], cached[2], residual, self.kernel_size, self.stride, self.padding
        )

    def _winograd_tile(self, x: torch.Tensor) -> int:
        """4 or 2 for the Winograd path, 0 for the direct one."""
        algorithm = cpu_algorithm()
        if algorithm == "direct":
            return 0
        if (
            self.kernel_size != (3, 3)
            or self.stride != (1, 1)
            or self.padding != (1, 1)
            or self.dilation != (1, 1)
            or self.groups != 1
        ):
            return 0
        if algorithm == "auto" and self.in_channels < WINOGRAD_MIN_IN_CHANNELS:
            return 0
        if backend_ext.why_not_winograd_conv3x3(x):
            return 0
        if algorithm == "auto":
            # By the image's size, never the batch's, so a sample's numbers do not depend on its batch.
            return 4 if min(x.shape[2], x.shape[3]) >= WINOGRAD4_MIN_SIZE else 2
        return 2 if algorithm == "winograd2" else 4

    def _winograd(self, x: torch.Tensor, residual: torch.Tensor | None, tile: int) -> torch.Tensor:
        bias = self.bias
        key = (self._parameter_stamp(), tile)
        cached = _transformed.get(self)
        if cached is None or cached[0] != key:
            # The kernel works in float32 whatever the activations' dtype: the weight transform and the
            # bias are float32 copies, made once.
            bias32 = None if bias is None else bias.detach().float().contiguous()
            cached = (key, winograd_weight(self.weight, tile), bias32)
            _transformed[self] = cached
        fuse = (
            residual is not None
            and residual.dtype == x.dtype
            and residual.shape == (x.shape[0], self.out_channels, x.shape[2], x.shape[3])
            and residual.is_contiguous(memory_format=torch.channels_last)
        )
        out = backend_ext.winograd_conv3x3(
            x, cached[1], cached[2], residual if fuse else None, tile, self.out_channels
        )
        return out + residual if residual is not None and not fuse else out

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        """oneDNN's float32 convolution of float32 x with the reordered (float32) weight."""
        bias = self.bias
        key = (self._parameter_stamp(), tuple(x.shape))
        cached = _reordered.get(self)
        if cached is None or cached[0] != key:
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().float().to_mkldnn(), list(self.padding), list(self.stride),
                list(self.dilation), self.groups, list(x.shape),
            )  # fmt: skip
            cached = (key, weight, None if bias is None else bias.detach().float())
            _reordered[self] = cached
        return torch.ops.mkldnn._convolution_pointwise(
            x, cached[1], cached[2], list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "",
        )  # fmt: skip

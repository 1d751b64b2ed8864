"""Batch-invariant convolution and matrix product: y = (act(x) * W + bias + residual) / divisor.

One kernel serves every convolution of the U-Nets (3x3, stride 1 or 2, any padding; 1x1) and every linear
layer (a linear layer is a 1x1 convolution of a 1x1 image whose channels are the features). It is an
implicit GEMM: the rows are output pixels (n, oh, ow) over the whole batch, the columns output channels,
and K runs over (kh, kw, c) in that fixed order, BLOCK_K channels per tl.dot. The tile sizes are constants,
never chosen by shape, and K is never split, so an output element is the same sum in the same order
whatever the batch, whichever program computes it and wherever its row sits in a tile: the property cuBLAS
and cuDNN do not give (they pick algorithms, tiles and split-K by shape). That is what
fastddpm.models.batch_invariant needs on CUDA.

Numerics: float32 inputs multiply in TF32 when torch allows TF32 for that kind of layer (cuDNN's
default for convolutions; torch's matmul default is IEEE float32), else in IEEE float32; 16-bit inputs
multiply in their dtype; the sum is float32, rounded once to x's dtype on store. Compiled for a GPU, ``/``
is div.full (approximate) and SiLU's exp is ex2.approx: not bit-identical to torch, deterministic all the
same. Under the Triton interpreter the tile product is an explicit sum over k in order (ORDERED_SUM):
the interpreter's tl.dot is numpy's matmul, whose result for a row depends on the row's place in the
tile (measured: a sample alone and in a batch differed), and its bfloat16 tl.dot returns garbage
(Triton 3.8); on a GPU each row of an MMA is summed the same way wherever it sits in the tile.

Compiled for sm_90 in the tests and run under the interpreter; not run on a GPU yet.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import FLOAT_DTYPES, INTERPRETED

BLOCK_M = 64  # output pixels (rows) per program
BLOCK_N = 64  # output channels per program
BLOCK_K = 32  # input channels per tl.dot


# Ints that change with the image size and the batch are not specialised (Triton would compile one variant
# per value class of each: equal to 1, divisible by 16), so a U-Net costs one compile per layer kind and
# dtype, not per resolution and batch. Channel counts and channel strides stay specialised: they decide
# whether the loads along C and along the output channels are aligned vectors.
_VARYING = ["rows", "height", "width", "out_height", "out_width", "x_sn", "x_sh", "y_sn", "y_sh",
            "stride_h", "stride_w", "pad_h", "pad_w"]  # fmt: skip


@triton.jit(do_not_specialize=_VARYING)
def _conv_rows_kernel(
    x_ptr,
    w_ptr,  # (KERNEL_H * KERNEL_W * channels, out_channels), row (kh * KERNEL_W + kw) * channels + c
    bias_ptr,  # float32 (out_channels,)
    res_ptr,  # the residual, in y's layout (same strides)
    y_ptr,
    rows,  # batch * out_height * out_width
    height,
    width,
    channels,
    out_height,
    out_width,
    out_channels,
    x_sn,  # element strides of x as (N, H, W, C)
    x_sh,
    x_sw,
    x_sc,
    y_sn,  # element strides of y (and the residual) as (N, H, W, C)
    y_sh,
    y_sw,
    y_sc,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    divisor,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    INPUT_SILU: tl.constexpr,
    DIVIDE: tl.constexpr,
    PRECISION: tl.constexpr,  # "tf32" or "ieee"
    ORDERED_SUM: tl.constexpr,  # products summed over k in order instead of tl.dot
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = row < rows
    col_ok = col < out_channels
    ow = row % out_width
    oh = (row // out_width) % out_height
    n = (row // (out_width * out_height)).to(tl.int64)
    k_lane = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in tl.static_range(KERNEL_H):
        ih = oh * stride_h - pad_h + kh
        for kw in tl.static_range(KERNEL_W):
            iw = ow * stride_w - pad_w + kw
            pixel_ok = row_ok & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
            pixel = n * x_sn + ih.to(tl.int64) * x_sh + iw.to(tl.int64) * x_sw
            tap = (kh * KERNEL_W + kw) * channels
            for c0 in range(0, channels, BLOCK_K):
                c = c0 + k_lane
                c_ok = c < channels
                a = tl.load(
                    x_ptr + pixel[:, None] + c[None, :].to(tl.int64) * x_sc,
                    mask=pixel_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                if INPUT_SILU:
                    wide = a.to(tl.float32)
                    a = (wide / (1.0 + tl.exp(-wide))).to(a.dtype)
                b = tl.load(
                    w_ptr + (tap + c)[:, None].to(tl.int64) * out_channels + col[None, :],
                    mask=c_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )
                if ORDERED_SUM:  # the interpreter (see the module's docstring)
                    acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
                else:
                    acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col, mask=col_ok, other=0.0)[None, :]
    out = (n * y_sn + oh.to(tl.int64) * y_sh + ow.to(tl.int64) * y_sw)[:, None] + col[None, :].to(
        tl.int64
    ) * y_sc
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(res_ptr + out, mask=mask, other=0.0).to(tl.float32)
    if DIVIDE:
        acc = acc / divisor
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=mask)


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (O, C, KH, KW) convolution weight or an (O, C) linear weight as the kernel's (KH * KW * C, O)
    matrix in ``dtype`` (x's dtype: float32 for float32 inputs, else the 16-bit type)."""
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    out_channels = weight.shape[0]
    return weight.detach().permute(2, 3, 1, 0).reshape(-1, out_channels).to(dtype).contiguous()


def _precision(x: torch.Tensor, convolution: bool) -> str:
    if x.dtype != torch.float32 or not x.is_cuda:
        return "ieee"  # 16-bit tiles ignore it; the interpreter has no TF32
    allowed = torch.backends.cudnn.allow_tf32 if convolution else torch.backends.cuda.matmul.allow_tf32
    return "tf32" if allowed else "ieee"


def _launch(x, strides_x, geometry, weight, bias, residual, y, strides_y, kernel, stride, padding, silu, divisor,
            convolution):  # fmt: skip
    rows = geometry[0] * geometry[4] * geometry[5]
    out_channels = weight.shape[1]
    if rows == 0 or out_channels == 0:
        return y
    if x.dtype not in FLOAT_DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"kernels/conv_rows.py: x and the packed weight must share a float dtype, got "
                         f"{x.dtype} and {weight.dtype}")  # fmt: skip
    grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(out_channels, BLOCK_N))
    _conv_rows_kernel[grid](
        x, weight, x if bias is None else bias, y if residual is None else residual, y,
        rows, geometry[1], geometry[2], geometry[3], geometry[4], geometry[5], out_channels,
        *strides_x, *strides_y, stride[0], stride[1], padding[0], padding[1], float(divisor),
        KERNEL_H=kernel[0], KERNEL_W=kernel[1], HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        INPUT_SILU=bool(silu), DIVIDE=divisor != 1.0, PRECISION=_precision(x, convolution),
        ORDERED_SUM=INTERPRETED,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return y


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """conv2d(x, W, bias, stride, padding) + residual, channels_last out. ``weight`` from pack_weight,
    ``bias`` float32; x in any layout (read through its strides; NHWC reads whole channel runs)."""
    batch, channels, height, width = x.shape
    if weight.shape[0] != kernel[0] * kernel[1] * channels:
        raise ValueError(f"kernels/conv_rows.py: weight has {weight.shape[0]} rows, the kernel {kernel} over "
                         f"{channels} channels needs {kernel[0] * kernel[1] * channels}")  # fmt: skip
    out_height = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_width = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    y = torch.empty(
        (batch, weight.shape[1], out_height, out_width), device=x.device, dtype=x.dtype,
        memory_format=torch.channels_last,
    )  # fmt: skip
    if residual is not None:
        if residual.shape != y.shape:
            raise ValueError(f"kernels/conv_rows.py: residual has shape {tuple(residual.shape)}, the output "
                             f"{tuple(y.shape)}")  # fmt: skip
        residual = residual.to(x.dtype).contiguous(memory_format=torch.channels_last)
    sn, sc, sh, sw = x.stride()
    yn, yc, yh, yw = y.stride()
    geometry = (batch, height, width, channels, out_height, out_width)
    return _launch(x, (sn, sh, sw, sc), geometry, weight, bias, residual, y, (yn, yh, yw, yc), kernel, stride,
                   padding, False, 1.0, True)  # fmt: skip


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    input_silu: bool = False,
    divisor: float = 1.0,
) -> torch.Tensor:
    """(act(x) @ W + bias + residual) / divisor over x's last dimension (act = SiLU when input_silu);
    ``weight`` from pack_weight of the (out, in) weight, ``bias`` float32."""
    features = x.shape[-1]
    if weight.shape[0] != features:
        raise ValueError(f"kernels/conv_rows.py: weight has {weight.shape[0]} rows, x {features} features")
    rows_x = x.reshape(-1, features)
    if rows_x.stride(-1) != 1:
        rows_x = rows_x.contiguous()
    y = torch.empty((rows_x.shape[0], weight.shape[1]), device=x.device, dtype=x.dtype)
    if residual is not None:
        residual = residual.to(x.dtype).reshape(y.shape).contiguous()
    geometry = (rows_x.shape[0], 1, 1, features, 1, 1)
    _launch(rows_x, (rows_x.stride(0), 0, 0, 1), geometry, weight, bias, residual, y, (y.stride(0), 0, 0, 1),
            (1, 1), (1, 1), (0, 0), input_silu, divisor, False)  # fmt: skip
    return y.view(*x.shape[:-1], weight.shape[1])

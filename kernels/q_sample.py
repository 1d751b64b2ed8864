"""Fused forward noising: x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps, one read of x0 (and eps).

eps is read from a tensor, or drawn in-kernel with the "philox" noise of fastddpm/ops/noise.py and written out
(training needs it). Per-sample timesteps index an abar table on the device, so nothing syncs with the host.
The arithmetic rounds where reference.q_sample rounds (each torch op in x0's dtype), so fp16 / bf16 results
match the reference to its last bit in most elements, and float32 results exactly for a noise tensor; with
in-kernel Philox noise, eps itself may differ in the last bits on a GPU (libdevice log / cos, ops/noise.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import EXACT_FLOAT32, FLOAT_DTYPES, is_channels_last, memory_format_of, rounded
from .philox import NO_PHILOX, philox_arguments, sample_normal


@triton.jit(do_not_specialize=["seed", "sample_offset", "noise_stream"])
def _q_sample_kernel(
    x0_ptr,  # (B, ...) clean samples, fp32 / fp16 / bf16
    eps_ptr,  # noise, same layout and dtype as x0: read, or written when PHILOX
    out_ptr,  # x_t, same layout and dtype as x0
    timesteps_ptr,  # (B,) integer timesteps
    abar_ptr,  # (T,) alphas_cumprod table, float32 or float64
    seed,  # PHILOX: 64-bit key
    sample_offset,  # PHILOX: sample index of batch row 0, an int or a pointer to a 0-d int64
    noise_stream,  # PHILOX: stream counter, an int or a pointer to a 0-d int64
    per_sample,  # elements per sample
    channels,  # C (the element counter of philox noise is the NCHW index)
    spatial,  # H * W
    blocks_per_sample,  # programs per sample
    PHILOX: tl.constexpr,  # draw eps in-kernel instead of reading it
    OFFSET_IN_MEMORY: tl.constexpr,  # sample_offset is a device pointer
    STREAM_IN_MEMORY: tl.constexpr,  # noise_stream is a device pointer
    CHANNELS_LAST: tl.constexpr,  # x0 is NHWC-dense (memory order != the logical NCHW order)
    BLOCK: tl.constexpr,  # elements per program
):
    # Bytes moved per element: 2 * sizeof(dtype) read (x0, eps) + 1 written, or 1 read + 2 written with
    # PHILOX; the two table loads per program are negligible.
    program = tl.program_id(0)
    b = program // blocks_per_sample
    position = (program % blocks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    mask = position < per_sample
    offset = b.to(tl.int64) * per_sample + position
    DTYPE: tl.constexpr = x0_ptr.dtype.element_ty

    t = tl.load(timesteps_ptr + b)
    abar = rounded(tl.load(abar_ptr + t).to(tl.float32), DTYPE)
    sqrt_abar = rounded(tl.sqrt_rn(abar), DTYPE)
    sqrt_one_minus_abar = rounded(tl.sqrt_rn(rounded(1.0 - abar, DTYPE)), DTYPE)

    x0 = tl.load(x0_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    if PHILOX:
        if CHANNELS_LAST:  # the noise is defined on the NCHW index
            element = (position % channels) * spatial + position // channels
        else:
            element = position
        eps = sample_normal(seed, sample_offset, noise_stream, b, element, OFFSET_IN_MEMORY, STREAM_IN_MEMORY)
        eps = rounded(eps, DTYPE)
        tl.store(eps_ptr + offset, eps.to(DTYPE), mask=mask)
    else:
        eps = tl.load(eps_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    x_t = rounded(rounded(sqrt_abar * x0, DTYPE) + rounded(sqrt_one_minus_abar * eps, DTYPE), DTYPE)
    tl.store(out_ptr + offset, x_t.to(DTYPE), mask=mask)


def q_sample(
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise,
    *,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps) for x0 (B, ...); ``noise`` is eps (x0's shape and dtype) or an ops.PhiloxNoise.

    x_t and eps come back in x0's dtype and memory format (NCHW or channels_last).
    """
    if x0.dtype not in FLOAT_DTYPES or x0.dim() < 1:
        raise ValueError(f"kernels/q_sample.py: x0 must be a float32/float16/bfloat16 tensor, got {x0.dtype}")
    batch = x0.shape[0]
    if timesteps.shape != (batch,) or timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
        raise ValueError(
            f"kernels/q_sample.py: timesteps must be an integer tensor of shape ({batch},), got "
            f"{tuple(timesteps.shape)} {timesteps.dtype}"
        )
    if alphas_cumprod.dim() != 1 or not alphas_cumprod.dtype.is_floating_point:
        raise ValueError("kernels/q_sample.py: alphas_cumprod must be a 1-D float tensor")
    memory_format = memory_format_of(x0)
    x0 = x0.contiguous(memory_format=memory_format)
    timesteps = timesteps.to(x0.device).contiguous()
    alphas_cumprod = alphas_cumprod.to(x0.device).contiguous()
    out = torch.empty_like(x0, memory_format=memory_format)
    philox = not isinstance(noise, torch.Tensor)
    if philox:
        eps = torch.empty_like(x0, memory_format=memory_format)
        philox_args = philox_arguments(noise, x0.device)
    else:
        if noise.shape != x0.shape or noise.dtype != x0.dtype:
            raise ValueError(
                f"kernels/q_sample.py: noise must match x0 ({tuple(x0.shape)} {x0.dtype}), got "
                f"{tuple(noise.shape)} {noise.dtype}"
            )
        eps = noise.contiguous(memory_format=memory_format)
        philox_args = NO_PHILOX
    per_sample = x0[0].numel() if batch else 0
    if batch == 0 or per_sample == 0:
        return out, eps
    channels = x0.shape[1] if x0.dim() > 1 else 1
    blocks_per_sample = triton.cdiv(per_sample, block)
    _q_sample_kernel[(batch * blocks_per_sample,)](
        x0,
        eps,
        out,
        timesteps,
        alphas_cumprod,
        per_sample=per_sample,
        channels=channels,
        spatial=per_sample // channels,
        blocks_per_sample=blocks_per_sample,
        PHILOX=philox,
        CHANNELS_LAST=is_channels_last(x0),
        BLOCK=block,
        **philox_args,
        **EXACT_FLOAT32,
    )
    return out, eps

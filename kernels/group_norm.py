"""GroupNorm fused with what surrounds it in a U-Net ResnetBlock, for NCHW and channels_last inputs.

y = GroupNorm(x + add[n, c]) * weight[c] + bias[c], then y * (1 + scale[n, c]) + shift[n, c], then SiLU:
reference.group_norm's formula, with float32 statistics and arithmetic for every input dtype and one
rounding to x's dtype at the end. It is not bit for bit: the sums run in tile order, not torch's, and
compiled for a GPU it divides with div.full (``/``), takes SiLU's exp as ex2.approx and contracts FMAs;
the tests hold it to tests/tolerances.py.

Two paths, picked by the launcher:

- fused: one program per (sample, group) holds the whole group in registers: one read, one write.
  Taken while a group fits one block and the launch has enough programs to fill the GPU.
- split: groups too large for a block, or too few of them (batch 1), are cut into chunks. The stats
  kernel writes per-chunk partial sums, the apply kernel combines the partials of its group and
  normalises its chunk: one more read of x, but (sample, group, chunk) programs instead of (sample, group).

Partial sums are taken about a pivot (the group's first element): sum(x - p) and sum((x - p)^2) give
var = E[(x - p)^2] - E[x - p]^2 without the cancellation of E[x^2] - E[x]^2 when |mean| >> std.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import FLOAT_DTYPES, is_channels_last, memory_format_of, rounded

FUSED_MAX_GROUP = 4096  # elements of one group held in registers by the fused kernel
TARGET_PROGRAMS = 1024  # split so that a launch has about this many programs (H200: 132 SMs x ~8)
DEFAULT_BLOCK = 1024
MIN_CHUNK = 256  # elements: below this a program's fixed cost (partials, pivot, launch) dominates


@triton.jit
def _group_offsets(element, group_channels, spatial, channels, CHANNELS_LAST: tl.constexpr):
    """(offset from the group's first element, channel within the group) of group elements 0, 1, ...

    Elements are numbered in memory order: NCHW walks a channel's H*W run, channels_last walks the
    group's channels at one pixel, then the next pixel.
    """
    if CHANNELS_LAST:
        channel_in_group = element % group_channels
        offset = (element // group_channels) * channels + channel_in_group
    else:
        channel_in_group = element // spatial
        offset = element
    return offset, channel_in_group


@triton.jit
def _group_base(n, g, group_channels, spatial, channels, CHANNELS_LAST: tl.constexpr):
    """Offset of the first element of group g of sample n."""
    sample_base = n.to(tl.int64) * channels * spatial
    if CHANNELS_LAST:
        return sample_base + g * group_channels
    else:
        return sample_base + g.to(tl.int64) * group_channels * spatial


@triton.jit
def _normalise_and_store(
    x,  # float32, shifted by the pivot
    mean,  # the mean of x (shifted by the same pivot)
    rstd,
    out_ptr,
    offset,
    channel,
    n,
    channels,
    mask,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    y = (x - mean) * rstd
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + channel, mask=mask, other=1.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + channel, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE_SHIFT:
        per_sample_channel = n * channels + channel
        scale = tl.load(scale_ptr + per_sample_channel, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + per_sample_channel, mask=mask, other=0.0).to(tl.float32)
        y = y * (1.0 + scale) + shift
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    DTYPE: tl.constexpr = out_ptr.dtype.element_ty
    tl.store(out_ptr + offset, rounded(y, DTYPE).to(DTYPE), mask=mask)


@triton.jit
def _group_norm_fused_kernel(
    x_ptr,  # (N, C, ...) input, NCHW or channels_last
    out_ptr,  # output, x's dtype and layout
    add_ptr,  # (N, C) added before the statistics, when HAS_ADD
    weight_ptr,  # (C,) affine weight, when HAS_WEIGHT
    bias_ptr,  # (C,) affine bias, when HAS_BIAS
    scale_ptr,  # (N, C) scale of scale-shift, when HAS_SCALE_SHIFT
    shift_ptr,  # (N, C) shift of scale-shift, when HAS_SCALE_SHIFT
    num_groups,  # G
    channels,  # C
    group_channels,  # C // G
    spatial,  # elements per channel (H * W)
    eps,  # added to the variance
    HAS_ADD: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # x is NHWC-dense
    BLOCK: tl.constexpr,  # >= elements per group
):
    # Bytes moved: one read and one write of x (2 * sizeof(dtype) per element) plus per-channel vectors.
    program = tl.program_id(0)
    n = program // num_groups
    g = program % num_groups
    group_size = group_channels * spatial
    element = tl.arange(0, BLOCK)
    mask = element < group_size
    base = _group_base(n, g, group_channels, spatial, channels, CHANNELS_LAST)
    offset, channel_in_group = _group_offsets(element, group_channels, spatial, channels, CHANNELS_LAST)
    channel = g * group_channels + channel_in_group
    x = tl.load(x_ptr + base + offset, mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        x += tl.load(add_ptr + n * channels + channel, mask=mask, other=0.0).to(tl.float32)
    # About the pivot (the group's first element), the sum is of small numbers: its rounding error no
    # longer scales with |mean| (sum(x)/n at mean 100 in float32 is off by ~1e-5).
    shifted = tl.where(mask, x - tl.sum(tl.where(element == 0, x, 0.0), axis=0), 0.0)
    shifted_mean = tl.sum(shifted, axis=0) / group_size
    centred = tl.where(mask, shifted - shifted_mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(centred * centred, axis=0) / group_size + eps)
    _normalise_and_store(
        shifted,
        shifted_mean,
        rstd,
        out_ptr + base,
        offset,
        channel,
        n,
        channels,
        mask,
        weight_ptr,
        bias_ptr,
        scale_ptr,
        shift_ptr,
        HAS_WEIGHT,
        HAS_BIAS,
        HAS_SCALE_SHIFT,
        SILU,
    )


@triton.jit
def _group_norm_stats_kernel(
    x_ptr,  # (N, C, ...) input, NCHW or channels_last
    add_ptr,  # (N, C) added before the statistics, when HAS_ADD
    partial_ptr,  # float32 (N * G, num_chunks, 2): sum(x - pivot), sum((x - pivot)^2) per chunk
    num_groups,  # G
    channels,  # C
    group_channels,  # C // G
    spatial,  # elements per channel (H * W)
    chunk,  # elements per chunk, a multiple of BLOCK
    HAS_ADD: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # x is NHWC-dense
    BLOCK: tl.constexpr,  # elements per loop iteration
):
    # Bytes moved: one read of x (sizeof(dtype) per element) and 8 bytes written per chunk.
    program = tl.program_id(0)
    chunk_index = tl.program_id(1)
    n = program // num_groups
    g = program % num_groups
    group_size = group_channels * spatial
    base = _group_base(n, g, group_channels, spatial, channels, CHANNELS_LAST)
    pivot = tl.load(x_ptr + base).to(tl.float32)
    if HAS_ADD:
        pivot += tl.load(add_ptr + n * channels + g * group_channels).to(tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    total_squares = tl.zeros([BLOCK], dtype=tl.float32)
    chunk_start = chunk_index * chunk
    for start in range(0, chunk, BLOCK):
        element = chunk_start + start + tl.arange(0, BLOCK)
        mask = element < group_size
        offset, channel_in_group = _group_offsets(element, group_channels, spatial, channels, CHANNELS_LAST)
        x = tl.load(x_ptr + base + offset, mask=mask, other=0.0).to(tl.float32)
        if HAS_ADD:
            channel = g * group_channels + channel_in_group
            x += tl.load(add_ptr + n * channels + channel, mask=mask, other=0.0).to(tl.float32)
        shifted = tl.where(mask, x - pivot, 0.0)
        total += shifted
        total_squares += shifted * shifted
    partial = partial_ptr + (program.to(tl.int64) * tl.num_programs(1) + chunk_index) * 2
    tl.store(partial, tl.sum(total, axis=0))
    tl.store(partial + 1, tl.sum(total_squares, axis=0))


@triton.jit
def _group_norm_apply_kernel(
    x_ptr,  # (N, C, ...) input, NCHW or channels_last
    out_ptr,  # output, x's dtype and layout
    add_ptr,  # (N, C) added before the statistics, when HAS_ADD
    weight_ptr,  # (C,) affine weight, when HAS_WEIGHT
    bias_ptr,  # (C,) affine bias, when HAS_BIAS
    scale_ptr,  # (N, C) scale of scale-shift, when HAS_SCALE_SHIFT
    shift_ptr,  # (N, C) shift of scale-shift, when HAS_SCALE_SHIFT
    partial_ptr,  # float32 (N * G, num_chunks, 2) from the stats kernel
    num_groups,  # G
    channels,  # C
    group_channels,  # C // G
    spatial,  # elements per channel (H * W)
    chunk,  # elements per chunk, a multiple of BLOCK
    eps,  # added to the variance
    HAS_ADD: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # x is NHWC-dense
    CHUNKS_POW2: tl.constexpr,  # num_chunks rounded up to a power of two
    BLOCK: tl.constexpr,  # elements per loop iteration
):
    # Bytes moved: one read and one write of x (2 * sizeof(dtype) per element), 8 per chunk of partials.
    program = tl.program_id(0)
    chunk_index = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    n = program // num_groups
    g = program % num_groups
    group_size = group_channels * spatial
    base = _group_base(n, g, group_channels, spatial, channels, CHANNELS_LAST)

    pivot = tl.load(x_ptr + base).to(tl.float32)
    if HAS_ADD:
        pivot += tl.load(add_ptr + n * channels + g * group_channels).to(tl.float32)
    chunks = tl.arange(0, CHUNKS_POW2)
    partial = partial_ptr + program.to(tl.int64) * num_chunks * 2 + chunks * 2
    shifted_mean = tl.sum(tl.load(partial, mask=chunks < num_chunks, other=0.0), axis=0) / group_size
    mean_square = tl.sum(tl.load(partial + 1, mask=chunks < num_chunks, other=0.0), axis=0) / group_size
    variance = tl.maximum(mean_square - shifted_mean * shifted_mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(variance + eps)

    chunk_start = chunk_index * chunk
    for start in range(0, chunk, BLOCK):
        element = chunk_start + start + tl.arange(0, BLOCK)
        mask = element < group_size
        offset, channel_in_group = _group_offsets(element, group_channels, spatial, channels, CHANNELS_LAST)
        channel = g * group_channels + channel_in_group
        x = tl.load(x_ptr + base + offset, mask=mask, other=0.0).to(tl.float32)
        if HAS_ADD:
            x += tl.load(add_ptr + n * channels + channel, mask=mask, other=0.0).to(tl.float32)
        _normalise_and_store(
            x - pivot,  # (x - pivot) - shifted_mean: no rounding of a large mean in between
            shifted_mean,
            rstd,
            out_ptr + base,
            offset,
            channel,
            n,
            channels,
            mask,
            weight_ptr,
            bias_ptr,
            scale_ptr,
            shift_ptr,
            HAS_WEIGHT,
            HAS_BIAS,
            HAS_SCALE_SHIFT,
            SILU,
        )


def _plan(
    groups_total: int,
    group_size: int,
    path: str | None,
    block: int | None,
    chunk: int | None,
    target_programs: int = TARGET_PROGRAMS,
    batch_invariant: bool = False,
) -> tuple[bool, int, int]:
    """(fused, block, chunk): the fused kernel when a group fits a block and the launch is wide enough.
    batch_invariant: chosen by the group's size alone (fused when it fits, else chunks of
    FUSED_MAX_GROUP), so that a sample's statistics are summed the same way in any batch."""
    if path not in (None, "fused", "split"):
        raise ValueError(f"kernels/group_norm.py: path {path!r} is not one of None, 'fused', 'split'")
    fits = group_size <= FUSED_MAX_GROUP
    if path == "fused" and not fits:
        raise ValueError(f"kernels/group_norm.py: a group of {group_size} elements is too large to fuse")
    if batch_invariant and path is None:
        if fits:
            return True, triton.next_power_of_2(group_size), group_size
        path, chunk, block = "split", FUSED_MAX_GROUP, DEFAULT_BLOCK
    if path == "fused" or (path is None and fits and groups_total >= target_programs):
        return True, triton.next_power_of_2(group_size), group_size
    if chunk is None:
        chunks_wanted = max(1, triton.cdiv(target_programs, groups_total))
        chunk = max(MIN_CHUNK, triton.cdiv(group_size, chunks_wanted))
    if block is None:
        block = min(DEFAULT_BLOCK, triton.next_power_of_2(min(chunk, group_size)))
    chunk = triton.cdiv(max(chunk, 1), block) * block  # whole blocks per chunk
    return False, block, chunk


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
    path: str | None = None,
    block: int | None = None,
    chunk: int | None = None,
    batch_invariant: bool = False,
) -> torch.Tensor:
    """reference.group_norm. ``path`` ("fused" / "split"), ``block`` and ``chunk`` (elements) force the
    kernel choice and the split path's tiling (tests, benchmarks).

    By default the launcher picks the fused kernel for small groups with many programs, else the split
    kernels with about TARGET_PROGRAMS programs; ``batch_invariant`` picks by the group's size alone.
    """
    if x.dtype not in FLOAT_DTYPES or x.dim() < 2:
        raise ValueError(
            f"kernels/group_norm.py: x must be a float32/float16/bfloat16 (N, C, ...), got {x.dtype}"
        )
    batch, channels = x.shape[:2]
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(f"kernels/group_norm.py: {channels} channels do not split into {num_groups} groups")
    if (scale is None) != (shift is None):
        raise ValueError("kernels/group_norm.py: scale and shift must be given together")
    for name, param, shape in (
        ("weight", weight, (channels,)),
        ("bias", bias, (channels,)),
        ("add", add, (batch, channels)),
        ("scale", scale, (batch, channels)),
        ("shift", shift, (batch, channels)),
    ):
        if param is not None and param.shape != shape:
            raise ValueError(
                f"kernels/group_norm.py: {name} must have shape {shape}, got {tuple(param.shape)}"
            )
    memory_format = memory_format_of(x)
    x = x.contiguous(memory_format=memory_format)
    out = torch.empty_like(x, memory_format=memory_format)
    group_channels = channels // num_groups
    spatial = x[0, 0].numel() if batch else 0
    group_size = group_channels * spatial
    if batch == 0 or group_size == 0:
        return out
    channels_last = is_channels_last(x)
    weight, bias, add, scale, shift = (
        None if p is None else p.contiguous() for p in (weight, bias, add, scale, shift)
    )
    flags = dict(
        HAS_ADD=add is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        HAS_SCALE_SHIFT=scale is not None,
        SILU=bool(silu),
        CHANNELS_LAST=channels_last,
    )
    add, weight, bias, scale, shift = (x if p is None else p for p in (add, weight, bias, scale, shift))
    groups_total = batch * num_groups
    # The interpreter (CPU tensors) runs programs one after another, each with a fixed Python overhead:
    # there the fewest programs are fastest.
    target_programs = TARGET_PROGRAMS if x.is_cuda else 1
    fused, block, chunk = _plan(
        groups_total, group_size, path, block, chunk, target_programs, batch_invariant
    )
    geometry = dict(num_groups=num_groups, channels=channels, group_channels=group_channels, spatial=spatial)
    if fused:
        _group_norm_fused_kernel[(groups_total,)](
            x,
            out,
            add,
            weight,
            bias,
            scale,
            shift,
            **geometry,
            eps=float(eps),
            **flags,
            BLOCK=block,
            num_warps=4 if block <= 1024 else 8,  # 4096 elements: 16 per thread with 8 warps
        )
        return out
    num_chunks = triton.cdiv(group_size, chunk)
    partial = torch.empty((groups_total, num_chunks, 2), dtype=torch.float32, device=x.device)
    grid = (groups_total, num_chunks)
    _group_norm_stats_kernel[grid](
        x,
        add,
        partial,
        **geometry,
        chunk=chunk,
        HAS_ADD=flags["HAS_ADD"],
        CHANNELS_LAST=channels_last,
        BLOCK=block,
    )
    _group_norm_apply_kernel[grid](
        x,
        out,
        add,
        weight,
        bias,
        scale,
        shift,
        partial,
        **geometry,
        chunk=chunk,
        eps=float(eps),
        **flags,
        CHUNKS_POW2=triton.next_power_of_2(num_chunks),
        BLOCK=block,
    )
    return out

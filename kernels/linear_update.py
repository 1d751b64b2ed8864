"""One step of any table-driven sampler (DPM-Solver, UniPC, DEIS, PNDM, Euler, Heun): a linear map in one pass.

Every output element depends only on the inputs at its own index, so one program reads the K + 3 inputs of
BLOCK elements (x, model output, noise, state_0..state_{K-1}) once and writes all K + 1 outputs (x_next,
next state_0..state_{K-1}) from registers. The (K + 1) x (K + 3) coefficients (step_columns.py, LIN_*) are
loaded from device memory: the sampling loop passes ``table.index_select(0, step_index)[LIN_MATRIX:]``, so
one captured CUDA graph replays for every step, and no coefficient is ever read on (or specialised by)
the host. The noise is read from a tensor, drawn in-kernel with the "philox" noise of
fastddpm/ops/noise.py, or absent (zeros).

Each output row accumulates in reference.linear_update's order (x, model output, noise, then the state
slots), each product and sum rounded to float32 on its own (no FMA contraction: EXACT_FLOAT32). A float16 /
bfloat16 model output is multiplied as torch multiplies ``0-d float32 coefficient * half tensor``: the
coefficient rounded to the half dtype, the product rounded back to it (``rounded``) before the float32 sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import EXACT_FLOAT32, FLOAT_DTYPES, is_channels_last, memory_format_of, rounded
from .philox import sample_normal, step_noise_arguments
from .step_columns import LIN_MAX_STATE, LIN_NOISE, LIN_OUT, LIN_STATE, LIN_X


@triton.jit
def _output_row(
    matrix_ptr, matrix_stride, ROW: tl.constexpr, K: tl.constexpr, x, out, z, h0, h1, h2, h3, h4, MODEL_DTYPE
):
    """Row ROW of M times the inputs, summed in the reference's order (columns: x, out, z, h0..h{K-1})."""
    row_ptr = matrix_ptr + ROW * (K + 3) * matrix_stride
    acc = tl.load(row_ptr) * x
    coefficient = rounded(tl.load(row_ptr + matrix_stride), MODEL_DTYPE)
    acc = acc + rounded(coefficient * out, MODEL_DTYPE)
    acc = acc + tl.load(row_ptr + 2 * matrix_stride) * z
    if K > 0:
        acc = acc + tl.load(row_ptr + 3 * matrix_stride) * h0
    if K > 1:
        acc = acc + tl.load(row_ptr + 4 * matrix_stride) * h1
    if K > 2:
        acc = acc + tl.load(row_ptr + 5 * matrix_stride) * h2
    if K > 3:
        acc = acc + tl.load(row_ptr + 6 * matrix_stride) * h3
    if K > 4:
        acc = acc + tl.load(row_ptr + 7 * matrix_stride) * h4
    return acc


@triton.jit(do_not_specialize=["seed", "sample_offset", "noise_stream"])
def _linear_update_kernel(
    model_output_ptr,  # (B, C, ...) network output, fp32 / fp16 / bf16, the sample's layout
    sample_ptr,  # (B, C, ...) float32 x
    state_ptr,  # (K, B, C, ...) float32 state, each slot in the sample's layout, slots `plane` apart
    matrix_ptr,  # float32 (K + 1) x (K + 3) coefficients, row-major, element stride matrix_stride
    noise_ptr,  # float32 noise of the sample's shape and layout, when NOISE == NOISE_TENSOR
    x_next_ptr,  # float32 output x_next, the sample's layout
    next_state_ptr,  # float32 output state, laid out as state_ptr
    seed,  # NOISE_PHILOX: 64-bit key
    sample_offset,  # NOISE_PHILOX: sample index of batch row 0, an int or a pointer to a 0-d int64
    noise_stream,  # NOISE_PHILOX: stream counter, an int or a pointer to a 0-d int64
    matrix_stride,  # element stride of the coefficients
    plane,  # B * per_sample: elements of one state slot
    per_sample,  # C * spatial elements of the sample
    channels,  # C
    spatial,  # elements per channel (H * W)
    blocks_per_sample,  # programs per sample
    K: tl.constexpr,  # state slots, 0..LIN_MAX_STATE
    NOISE: tl.constexpr,  # 0 none, 1 tensor, 2 philox
    OFFSET_IN_MEMORY: tl.constexpr,  # sample_offset is a device pointer
    STREAM_IN_MEMORY: tl.constexpr,  # noise_stream is a device pointer
    CHANNELS_LAST: tl.constexpr,  # all tensors are NHWC-dense
    BLOCK: tl.constexpr,  # elements per program
):
    # Bytes moved per element: reads 4 (x) + model output 2-4 + state 4K (+ noise 4 as a tensor), writes
    # 4 (K + 1): 14 to 54 bytes. The (K + 1)(K + 3) scalar coefficient loads per program hit the cache.
    MODEL_DTYPE: tl.constexpr = model_output_ptr.dtype.element_ty
    program = tl.program_id(0)
    b = program // blocks_per_sample
    position = (program % blocks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    mask = position < per_sample
    offset = b.to(tl.int64) * per_sample + position
    slot = tl.cast(plane, tl.int64)  # K * plane can pass 2^31 where one slot does not

    x = tl.load(sample_ptr + offset, mask=mask, other=0.0)
    out = tl.load(model_output_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    if NOISE == 1:
        z = tl.load(noise_ptr + offset, mask=mask, other=0.0)
    elif NOISE == 2:
        if CHANNELS_LAST:  # the noise is defined on the NCHW index
            element = (position % channels) * spatial + position // channels
        else:
            element = position
        z = sample_normal(seed, sample_offset, noise_stream, b, element, OFFSET_IN_MEMORY, STREAM_IN_MEMORY)
    else:
        z = tl.zeros([BLOCK], tl.float32)  # the reference's zeros: M[r, noise] * 0 is still added
    # Slots past K are never read (_output_row's K > k branches are compiled out); x stands in for them.
    h0 = x
    h1 = x
    h2 = x
    h3 = x
    h4 = x
    if K > 0:
        h0 = tl.load(state_ptr + offset, mask=mask, other=0.0)
    if K > 1:
        h1 = tl.load(state_ptr + slot + offset, mask=mask, other=0.0)
    if K > 2:
        h2 = tl.load(state_ptr + 2 * slot + offset, mask=mask, other=0.0)
    if K > 3:
        h3 = tl.load(state_ptr + 3 * slot + offset, mask=mask, other=0.0)
    if K > 4:
        h4 = tl.load(state_ptr + 4 * slot + offset, mask=mask, other=0.0)

    x_next = _output_row(matrix_ptr, matrix_stride, 0, K, x, out, z, h0, h1, h2, h3, h4, MODEL_DTYPE)
    tl.store(x_next_ptr + offset, x_next, mask=mask)
    for row in tl.static_range(1, K + 1):
        value = _output_row(matrix_ptr, matrix_stride, row, K, x, out, z, h0, h1, h2, h3, h4, MODEL_DTYPE)
        tl.store(next_state_ptr + (row - 1) * slot + offset, value, mask=mask)


def _check_columns() -> None:
    # The kernel indexes M's columns by literal numbers; keep them in step with the table layout.
    if (LIN_X, LIN_OUT, LIN_NOISE, LIN_STATE) != (0, 1, 2, 3) or LIN_MAX_STATE != 5:
        raise RuntimeError("kernels/linear_update.py: kernels/step_columns.py changed; update the kernel")


_check_columns()


def _state_layout(shape: tuple[int, ...], memory_format: torch.memory_format) -> tuple[int, ...]:
    """The permutation of (K, B, C, ...) whose contiguous storage puts each slot in ``memory_format``."""
    if memory_format == torch.channels_last:
        return (0, 1, 3, 4, 2)
    return tuple(range(len(shape)))


def _in_layout(state: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``state`` with dense slots, each in the sample's layout (a copy only when it is not already)."""
    inverse = tuple(order.index(dim) for dim in range(len(order)))
    return state.permute(order).contiguous().permute(inverse)


def _empty_in_layout(like: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    inverse = tuple(order.index(dim) for dim in range(len(order)))
    shape = tuple(like.shape[dim] for dim in order)
    return torch.empty(shape, dtype=like.dtype, device=like.device).permute(inverse)


def linear_update(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    state: torch.Tensor,
    matrix: torch.Tensor,
    noise,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, next_state) as reference.linear_update; ``noise`` a float32 tensor, ops.PhiloxNoise or None.

    Both outputs are new float32 tensors in the sample's memory format (each state slot in it).
    """
    if sample.dtype != torch.float32 or sample.dim() < 2:
        raise ValueError(f"kernels/linear_update.py: sample must be float32 (B, C, ...), got {sample.dtype}")
    if model_output.dtype not in FLOAT_DTYPES or model_output.shape != sample.shape:
        raise ValueError(
            f"kernels/linear_update.py: model_output must be float32/float16/bfloat16 of the sample's shape, "
            f"got {model_output.dtype} {tuple(model_output.shape)}"
        )
    slots = state.shape[0] if state.dim() else -1
    if state.dtype != torch.float32 or state.shape[1:] != sample.shape or not 0 <= slots <= LIN_MAX_STATE:
        raise ValueError(
            f"kernels/linear_update.py: state must be float32 (K, *sample.shape) with K <= {LIN_MAX_STATE}, "
            f"got {state.dtype} {tuple(state.shape)}"
        )
    width = (slots + 1) * (slots + 3)
    if matrix.shape != (width,) or matrix.dtype != torch.float32 or matrix.device != sample.device:
        raise ValueError(
            f"kernels/linear_update.py: matrix must be {width} float32 coefficients on {sample.device}, got "
            f"{matrix.dtype} {tuple(matrix.shape)} on {matrix.device}"
        )

    memory_format = memory_format_of(sample)
    sample = sample.contiguous(memory_format=memory_format)
    model_output = model_output.contiguous(memory_format=memory_format)
    order = _state_layout(state.shape, memory_format)
    state = _in_layout(state, order)
    noise_mode, noise_tensor, philox = step_noise_arguments(
        noise, sample, memory_format, "kernels/linear_update.py"
    )

    x_next = torch.empty_like(sample, memory_format=memory_format)
    next_state = _empty_in_layout(state, order)
    batch, channels = sample.shape[:2]
    per_sample = sample[0].numel() if batch else 0
    if per_sample == 0:
        return x_next, next_state
    blocks_per_sample = triton.cdiv(per_sample, block)
    # Without slots the kernel never touches the state: pass the sample, not an empty tensor's pointer.
    state_arg, next_state_arg = (state, next_state) if slots else (sample, x_next)
    _linear_update_kernel[(batch * blocks_per_sample,)](
        model_output,
        sample,
        state_arg,
        matrix,
        noise_tensor,
        x_next,
        next_state_arg,
        matrix_stride=matrix.stride(0),
        plane=sample.numel(),
        per_sample=per_sample,
        channels=channels,
        spatial=per_sample // channels,
        blocks_per_sample=blocks_per_sample,
        K=slots,
        NOISE=noise_mode,
        CHANNELS_LAST=is_channels_last(sample),
        BLOCK=block,
        **philox,
        **EXACT_FLOAT32,
    )
    return x_next, next_state

"""What the Triton kernels share: the float dtypes they take, layout helpers, the no-FMA launch option and
bfloat16 rounding. (It imports triton; the package's __init__ does not, so the step-table layout in
step_columns.py is importable without it.)"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # triton >= 3.4 reads its settings through knobs; older ones read the variable directly
    from triton import knobs

    INTERPRETED = bool(knobs.runtime.interpret)
except ImportError:
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Launch options of the kernels that promise torch's float32 arithmetic bit for bit (q_sample, sampler_step,
# linear_update; the transcendental functions aside -- tl.exp is ex2.approx and Box-Muller's log / cos come
# from libdevice on a GPU -- see each kernel's docstring):
# compiled Triton contracts a * b + c into one FMA (one rounding instead of torch's two, as torch runs each op
# as its own kernel), which changes the last bit. Without contraction these memory-bound kernels lose
# nothing measurable: they wait on DRAM, not on the FP units. The interpreter ignores the option.
EXACT_FLOAT32 = {"enable_fp_fusion": False}


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D NHWC-dense tensor that is not also NCHW-contiguous (C == 1 or H == W == 1 are both)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout a kernel runs in: channels_last when x is NHWC-dense, else contiguous (copied if not)."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """float32 x rounded to nearest-even in DTYPE, returned as float32: the rounding of one torch op.

    bfloat16 is rounded with integer arithmetic because the Triton interpreter truncates float32 to
    bfloat16 (round toward zero), while CUDA and torch round to nearest even; this is exact on both.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)

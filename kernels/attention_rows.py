"""Batch-invariant attention: o = softmax(q k^T * scale) v for q, k, v of shape (B, heads, L, D).

One program computes BLOCK_M queries of one (sample, head) against all L keys, BLOCK_N keys at a time in
order, with the running-maximum softmax (each query's maximum, denominator and weighted sum of values are
carried across key blocks in float32). The tile sizes follow the head size alone, never the batch or the
length, and the key axis is never split across programs: a query's output is the same sequence of
operations whatever the batch, which programs run beside it and where the batch places it. torch's
scaled_dot_product_attention on CUDA does not promise that: it chooses its kernel by shape, and flash
attention's heuristic for splitting the key axis counts the (batch x heads x query blocks) programs. So
fastddpm.models.batch_invariant takes this kernel on the Triton path.

Numerics: the scores and the softmax are float32 (exp2 of the scores pre-multiplied by scale * log2(e));
16-bit inputs multiply in their dtype, the weights rounded to it before the product with v (as flash
attention does); float32 inputs multiply in TF32 only when torch allows TF32 for matrix products (its
default is IEEE float32). The output is rounded once to q's dtype. Under the Triton interpreter the
products are explicit sums in order (ORDERED_SUM, as in conv_rows.py: the interpreter's tl.dot is numpy's,
and its bfloat16 tl.dot is unusable).

Compiled for sm_90 in the tests and run under the interpreter; not run on a GPU yet.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import FLOAT_DTYPES, INTERPRETED

MAX_HEAD_DIM = 512  # the widest head of the published checkpoints (one head over 512 channels)
LOG2_E = 1.4426950408889634

# Lengths and the batch / head strides change with the image size and the batch: not specialised (one
# compile per head size and dtype, not per resolution and batch).
_VARYING = ["length", "heads", "q_sb", "q_sh", "q_sl", "k_sb", "k_sh", "k_sl", "v_sb", "v_sh", "v_sl",
            "o_sb", "o_sh", "o_sl"]  # fmt: skip


@triton.jit(do_not_specialize=_VARYING)
def _attention_rows_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    length,
    heads,
    q_sb,  # element strides of q as (B, heads, L, D)
    q_sh,
    q_sl,
    q_sd,
    k_sb,
    k_sh,
    k_sl,
    k_sd,
    v_sb,
    v_sh,
    v_sl,
    v_sd,
    o_sb,
    o_sh,
    o_sl,
    o_sd,
    scale_log2e,  # scale * log2(e): the scores go through exp2
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two (at least 16, tl.dot's minimum)
    PRECISION: tl.constexpr,  # "tf32" or "ieee"
    ORDERED_SUM: tl.constexpr,  # products summed in order instead of tl.dot (the interpreter)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    sample_head = tl.program_id(1)
    sample = (sample_head // heads).to(tl.int64)
    head = (sample_head % heads).to(tl.int64)
    query = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    query_ok = query < length
    d_ok = d < HEAD_DIM
    q_base = q_ptr + sample * q_sb + head * q_sh
    k_base = k_ptr + sample * k_sb + head * k_sh
    v_base = v_ptr + sample * v_sb + head * v_sh
    q = tl.load(
        q_base + query[:, None].to(tl.int64) * q_sl + d[None, :] * q_sd,
        mask=query_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    denominator = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        key = start + tl.arange(0, BLOCK_N)
        key_ok = key < length
        tile_ok = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + key[:, None].to(tl.int64) * k_sl + d[None, :] * k_sd, mask=tile_ok, other=0.0)
        if ORDERED_SUM:
            scores = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
        else:
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        scores = tl.where(key_ok[None, :], scores * scale_log2e, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        weights = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(running_max - new_max)  # 0 on the first block (running_max is -inf)
        denominator = denominator * rescale + tl.sum(weights, axis=1)
        v = tl.load(v_base + key[:, None].to(tl.int64) * v_sl + d[None, :] * v_sd, mask=tile_ok, other=0.0)
        weights_in = weights.to(v.dtype)  # 16-bit: rounded as the tensor-core product takes them
        if ORDERED_SUM:
            values = tl.sum(weights_in.to(tl.float32)[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        else:
            values = tl.dot(weights_in, v, input_precision=PRECISION)
        acc = acc * rescale[:, None] + values
        running_max = new_max
    out = acc / denominator[:, None]
    o_base = o_ptr + sample * o_sb + head * o_sh
    tl.store(
        o_base + query[:, None].to(tl.int64) * o_sl + d[None, :] * o_sd,
        out.to(o_ptr.dtype.element_ty),
        mask=query_ok[:, None] & d_ok[None, :],
    )


def tiles(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_M, BLOCK_N) for a head size: a function of the head size only, so a sample's sums never
    depend on the batch. Wider heads take smaller query / key blocks to keep the tiles in registers and
    shared memory (at 512 channels: 16 x 512 float32 tiles of q, k, v and the accumulator, 32 KiB each)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block = 64 if block_d <= 64 else 32 if block_d <= 256 else 16
    return block_d, block, block


def _precision(q: torch.Tensor) -> str:
    if q.dtype != torch.float32 or not q.is_cuda:
        return "ieee"  # 16-bit tiles ignore it; the interpreter has no TF32
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, heads, L, D) tensors of one float dtype, in any strides (the views of
    a fused qkv projection are read in place); scale defaults to D ** -0.5. The result is (B, heads, L, D)
    laid out as (B, L, heads, D), so that ``out.transpose(1, 2).reshape(B, L, heads * D)`` is a view."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"kernels/attention_rows.py: q, k and v must share one (B, heads, L, D) shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"kernels/attention_rows.py: q, k and v must share a float dtype, got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    batch, heads, length, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"kernels/attention_rows.py: heads of {head_dim} channels are over its {MAX_HEAD_DIM}"
        )
    out = torch.empty((batch, length, heads, head_dim), device=q.device, dtype=q.dtype).transpose(1, 2)
    if out.numel() == 0:
        return out
    scale = head_dim**-0.5 if scale is None else float(scale)
    block_d, block_m, block_n = tiles(head_dim)
    grid = (triton.cdiv(length, block_m), batch * heads)
    _attention_rows_kernel[grid](
        q, k, v, out, length, heads, *q.stride(), *k.stride(), *v.stride(), *out.stride(), scale * LOG2_E,
        HEAD_DIM=head_dim, BLOCK_D=block_d, PRECISION=_precision(q), ORDERED_SUM=INTERPRETED,
        BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    return out

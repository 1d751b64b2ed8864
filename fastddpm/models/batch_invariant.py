"""Batch-invariant CPU inference: each sample's numbers do not depend on the batch it is computed in.

A U-Net on the CPU sums the same products whatever the batch, but not in the same order: MKL picks its
matrix-product kernel (and its blocking of K) by the number of rows, oneDNN its convolution algorithm by
the batch, torch's vectorised log / sin / cos compute the last elements of each thread's range with scalar
code. Each choice moves a sample's result by an ulp or so, and over a sampling loop those differences grow
until an 8-bit pixel flips, so image i of a run would depend on the batch size and the number of processes.

In this mode (the default on the CPU; FASTDDPM_BATCH_INVARIANT, fastddpm.ops.invariance, says when it
applies and with which kernels) every op of the U-Net computes each sample's values in an order fixed by
the sample's own shape:

- matrix products (the time-embedding MLP, the time-embedding projections, the attention projections,
  1x1 convolutions, and the convolutions that are neither 1x1 nor Winograd's, as image-to-column products)
  go through fastddpm._C's matmul_rows, which sums every output element over k = 0 .. K-1 in order;
- 3x3 convolutions go through the Winograd kernel (per-tile transforms, the same matrix product);
- GroupNorm's statistics split a sample's pixels into chunks fixed by the image size (csrc/group_norm_cpu.cpp);
- attention's core is torch's scaled_dot_product_attention, which on the CPU works per (sample, head,
  block of queries) with block sizes fixed by the sequence length;
- the timestep embedding is computed once for the shared timestep and broadcast;
- Philox noise's Box-Muller runs every element through one code path (fastddpm._C's box_muller).

16-bit networks take the same float32-inside kernels (their inputs widened, their outputs rounded once),
also on CPUs with native 16-bit instructions, whose oneDNN / MKL kernels choose by batch too.
The promise needs the extension built for this CPU; tests/test_batch_invariance.py checks it with
torch.equal on float images.

With the Triton kernels (CUDA, or FASTDDPM_BATCH_INVARIANT=triton under the interpreter) every convolution
and matrix product is kernels/conv_rows.py's fixed-tile implicit GEMM, attention is kernels/attention_rows.py
(tiles by head size, the key axis never split) and GroupNorm is planned by group size. Compiled for sm_90
and tested under the interpreter, not run on a GPU yet, so CUDA takes it only when
FASTDDPM_BATCH_INVARIANT=1 is set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fastddpm import ops
from fastddpm.ops import backend_ext, invariance

ENV_VAR = invariance.ENV_VAR
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernels(x: torch.Tensor) -> str | None:
    """'cpu' (fastddpm._C), 'triton' (kernels/conv_rows.py) or None (the batch-variant layers) for input x."""
    if (
        torch.compiler.is_compiling()
        or torch.is_grad_enabled()
        or x.dtype not in DTYPES
        or not invariance.enabled()
    ):
        return None
    if invariance.uses_triton(x):
        from fastddpm.ops import backend_triton  # not at import: it is the layer that imports triton

        reasons = backend_triton.why_not_batch_invariant(x)
        if reasons:
            raise RuntimeError(
                f"{ENV_VAR}={invariance.mode()}: the Triton kernels cannot serve: {'; '.join(reasons)}"
            )
        return "triton"
    if x.device.type == "cpu" and backend_ext.cpu_kernels_usable():
        return "cpu"
    return None


def applies(x: torch.Tensor) -> bool:
    """Whether a layer should take its batch-invariant path for input x."""
    return kernels(x) is not None


def cached_tensor(
    owner: nn.Module, key: str, sources: list[torch.Tensor], build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """build(), cached on ``owner`` under ``key`` until one of ``sources`` is replaced (new data pointer) or
    written in place (version counter); a normal tensor even inside inference_mode, so the cache stays usable
    outside it. The cache keeps the sources, so their memory cannot be reused at the same address.
    fastddpm.models.unet_blocks.concat_parameters and the packed weights here share it."""
    try:
        stamp = tuple([(t.data_ptr(), t._version) for t in sources])
    except RuntimeError:  # inference tensors keep no version counter: nothing to cache safely
        with torch.inference_mode(False), torch.no_grad():
            return build()
    cache = owner.__dict__.setdefault("_fused_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        built = build()
        kept = [t.detach() for t in sources]  # so their memory cannot be reused at the same address
    cache[key] = (stamp, built, kept)
    return built


def packed_linear_weight(owner: nn.Module, key: str, weights: list[torch.Tensor]) -> torch.Tensor:
    """The (out, in) weights of nn.Linear layers, stacked along out and packed for matmul_rows."""
    return cached_tensor(
        owner,
        f"packed:{key}",
        weights,
        lambda: backend_ext.pack_matmul_weight(torch.cat([w.detach().float() for w in weights]).t()),
    )


def float32_bias(owner: nn.Module, key: str, biases: list[torch.Tensor]) -> torch.Tensor:
    return cached_tensor(
        owner, f"bias32:{key}", biases, lambda: torch.cat([b.detach().float() for b in biases])
    )


def triton_weight(
    owner: nn.Module, key: str, weights: list[torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """The weights of nn.Linear layers (or convolutions), stacked along out, as kernels/conv_rows.py's
    packed matrix in ``dtype``."""

    def build():
        from fastddpm.ops import backend_triton

        stacked = torch.cat([w.detach() for w in weights])
        return backend_triton.kernel_module("conv_rows").pack_weight(stacked, dtype)

    return cached_tensor(owner, f"triton:{key}:{dtype}", weights, build)


def linear(
    owner: nn.Module,
    key: str,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor] | None,
    *,
    input_silu: bool = False,
    residual: torch.Tensor | None = None,
    divisor: float = 1.0,
) -> torch.Tensor:
    """(act(x) @ cat(weights).T + cat(biases) + residual) / divisor over x's last dimension, act = SiLU when
    ``input_silu``; float32 accumulation, x's dtype out; each row's numbers independent of the other rows."""
    bias = None if biases is None else float32_bias(owner, key, biases)
    if kernels(x) == "triton":
        from fastddpm.ops import backend_triton

        weight = triton_weight(owner, key, weights, x.dtype)
        return backend_triton.linear_rows(x, weight, bias, residual, input_silu, divisor)
    packed = packed_linear_weight(owner, key, weights)
    out_features = sum(w.shape[0] for w in weights)
    return backend_ext.matmul_rows(x, packed, out_features, bias, residual, input_silu, divisor)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, kernels: str) -> torch.Tensor:
    """softmax(q k^T * scale) v over (B, heads, L, D) for the batch-invariant attention blocks: on the Triton
    path kernels/attention_rows.py (fixed tiles by head size, the key axis never split); on the CPU
    fastddpm._C's attention, which computes each (sample, head) on its own."""
    if kernels == "triton":
        from fastddpm.ops import backend_triton

        return backend_triton.attention_rows(q, k, v, scale)
    return ops.attention(q, k, v, scale)

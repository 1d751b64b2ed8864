"""csrc/attention_kernel.cuh's CUDA kernel, run on the CPU through the SIMT emulation (csrc/simt/), against
reference.attention: every head-dimension instantiation (D <= 64, 128, 256, 512; above 48 KiB of shared
memory it opts in), partial row blocks and key tiles, strided inputs, every dtype."""

import pytest
import torch

from fastddpm.ops import reference
from tests.csrc import simt_ops
from tests.tolerances import assert_close, tolerance

pytestmark = pytest.mark.simt
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_qkv(batch, heads, len_q, len_k, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, len_q, d, generator=gen).to(dtype)
    k = torch.randn(batch, heads, len_k, d, generator=gen).to(dtype)
    v = torch.randn(batch, heads, len_k, d, generator=gen).to(dtype)
    return q, k, v


def check(q, k, v, scale):
    actual = simt_ops.load().attention(q, k, v, scale)
    expected = reference.attention(q, k, v, scale)
    what = f"simt attention q{tuple(q.shape)} k{tuple(k.shape)} {q.dtype}"
    assert actual.dtype == q.dtype and actual.is_contiguous(), what
    assert_close(actual, expected, *tolerance(q.dtype), what=what)


# (batch, heads, len_q, len_k, d): one per head-dimension instantiation; partial blocks everywhere.
SHAPES = [(1, 2, 7, 9, 5), (2, 1, 17, 20, 72), (1, 1, 5, 17, 130), (1, 1, 3, 6, 260)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype):
    q, k, v = make_qkv(*shape, dtype, seed=sum(shape))
    check(q, k, v, shape[-1] ** -0.5)


def test_strided_inputs_and_large_scores():
    # (B, L, heads, D) transposed to (B, heads, L, D): the launcher makes them contiguous. A scale of 3
    # makes scores near 30: the online softmax must subtract the running maximum.
    q, k, v = (t.transpose(1, 2) for t in make_qkv(1, 9, 2, 2, 33, torch.float32, seed=4))
    check(q, k, v, 3.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inputs_with_a_storage_offset(dtype):
    """q, k, v sliced one element into their storage (contiguous, but not 16-byte aligned)."""

    def shifted(t):
        storage = torch.zeros(t.numel() + 1, dtype=t.dtype)
        view = torch.as_strided(storage, t.shape, t.stride(), 1)
        view.copy_(t)
        return view

    q, k, v = (shifted(t) for t in make_qkv(1, 2, 7, 9, 24, dtype, seed=5))
    assert q.storage_offset() == 1 and q.is_contiguous()
    check(q, k, v, 24**-0.5)

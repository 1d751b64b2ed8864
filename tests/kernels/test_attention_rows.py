"""kernels/attention_rows.py, the batch-invariant attention, under the Triton interpreter: lengths that fill
no tile, heads of every size class (and the published 512), strided views of a fused qkv projection, all
three dtypes, against float64 attention; and the property itself: a sample alone gives the same bits as
inside a batch. Its sm_90 compile is checked with the other kernels' (tests/kernels/test_q_sample.py)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.ops import backend_triton  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
# max |o - o_float64| / max |o_float64| measured over these cases (Intel Xeon, AVX-512): float32 3.8e-7
# (scores, softmax and sums in float32); bfloat16 4.9e-3 and float16 3.4e-4: the softmax weights rounded to
# the 16-bit type before the product with v, and the output's one rounding (bf16 2^-9, fp16 2^-12).
# Bounds 2.4-3.5x above.
RELATIVE_ERROR = {torch.float32: 1e-6, torch.bfloat16: 1.2e-2, torch.float16: 1.2e-3}


def attention():
    return backend_triton.kernel_module("attention_rows").attention


def float64_attention(q, k, v, scale):
    weights = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1)
    return weights @ v.double()


def qkv_views(batch, heads, length, head_dim, dtype, seed=0, new_order=True):
    """q, k, v as the attention blocks take them: strided views of one (B, L, 3C) projection."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(batch, length, 3 * heads * head_dim, generator=gen) * 1.5).to(dtype)
    if new_order:  # all q, all k, all v (diffusers; ADM's QKVAttention)
        views = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    else:  # q, k, v of each head in turn (ADM's QKVAttentionLegacy)
        views = qkv.view(batch, length, heads, 3, head_dim).permute(3, 0, 2, 1, 4)
    return views.unbind(0)


@interpreter_only
@pytest.mark.parametrize(
    "batch, heads, length, head_dim",
    [
        (3, 4, 16, 5),  # the test U-Net's blocks: 4 heads of 5 over 4x4, head below tl.dot's 16
        (2, 1, 70, 64),  # one head of 64, length over a key block and a part (64 + 6)
        (2, 3, 1, 8),  # one token: the softmax of a single score
        (2, 2, 37, 130),  # head over 128: 32-wide tiles, 256-wide head padding
        (1, 1, 20, 512),  # one head over 512 channels (the widest published), 16-wide tiles
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_attention_matches_float64_and_a_sample_alone_matches_its_batch(
    batch, heads, length, head_dim, dtype
):
    check_attention(*qkv_views(batch, heads, length, head_dim, dtype), head_dim**-0.5)


def check_attention(q, k, v, scale, singles_to_check=None):
    batch, dtype = q.shape[0], q.dtype
    out = attention()(q, k, v, scale)
    assert out.shape == q.shape and out.dtype == dtype
    # laid out (B, L, heads, D): the blocks' transpose + reshape to (B, L, C) is a view
    assert out.transpose(1, 2).is_contiguous()
    expected = float64_attention(q, k, v, scale)
    assert_close(out.double(), expected, RELATIVE_ERROR[dtype] * float(expected.abs().max()), 0, f"{dtype}")
    for i in range(batch) if singles_to_check is None else singles_to_check:
        alone = attention()(q[i : i + 1], k[i : i + 1], v[i : i + 1], scale)
        assert torch.equal(alone, out[i : i + 1]), (
            f"sample {i} alone differs from the same sample in its batch"
        )


@interpreter_only
def test_attention_reads_any_strides_and_defaults_the_scale():
    q, k, v = qkv_views(2, 2, 19, 12, torch.float32, seed=3, new_order=False)
    expected = attention()(q.contiguous(), k.contiguous(), v.contiguous(), 12**-0.5)
    # the same kernel and tiles on the same values: only the addresses it reads them from differ
    assert torch.equal(attention()(q, k, v, None), expected)


@interpreter_only
def test_sharper_scores_stay_finite_and_exact_to_float32():
    """Large scores: the running maximum keeps exp2 in range (a plain softmax of these overflows)."""
    q, k, v = qkv_views(1, 2, 50, 16, torch.float32, seed=5)
    out = attention()(q * 40, k * 40, v, 0.25)
    expected = float64_attention(q * 40, k * 40, v, 0.25)
    assert torch.isfinite(out).all()
    assert_close(
        out.double(), expected, RELATIVE_ERROR[torch.float32] * float(expected.abs().max()), 0, "sharp"
    )


@interpreter_only
def test_launcher_refuses_mismatched_arguments():
    q, k, v = qkv_views(1, 1, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="must share one \\(B, heads, L, D\\) shape"):
        attention()(q, k[:, :, :3], v, None)
    with pytest.raises(ValueError, match="must share a float dtype"):
        attention()(q, k.half(), v, None)
    wide = torch.zeros(1, 1, 2, 520)
    with pytest.raises(ValueError, match="heads of 520 channels are over its 512"):
        attention()(wide, wide, wide, None)


def test_tiles_depend_on_the_head_size_only():
    tiles = backend_triton.kernel_module("attention_rows").tiles
    assert tiles(5) == (16, 64, 64) and tiles(64) == (64, 64, 64)
    assert tiles(130) == (256, 32, 32) and tiles(512) == (512, 16, 16)


@pytest.mark.gpu
# float32 and bf16 (fp16 takes bf16's tensor-core path; the interpreter checks its numbers): each variant
# compiles in 0.3-3.3 s for sm_90 on a 2-core Intel Xeon (bench/triton_compile_cost.py), inside the
# kernels stage's limit in bench/gpu_check.sh
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads, length, head_dim", [(4, 256, 64), (2, 256, 128), (1, 64, 512), (3, 17, 5)])
def test_cuda_attention_matches_float64_and_is_batch_invariant(heads, length, head_dim, dtype):
    """On the GPU, at the U-Nets' sizes (16x16 tokens, heads of 64 / 128 / 512 channels: each tile class)
    and batch 32: the programs beside a sample and its place in the launch change, its bits must not."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    q, k, v = (t.cuda() for t in qkv_views(32, heads, length, head_dim, dtype, seed=7))
    assert not torch.backends.cuda.matmul.allow_tf32, "torch's default: float32 products in IEEE float32"
    check_attention(q, k, v, head_dim**-0.5, singles_to_check=[0, 13, 31])

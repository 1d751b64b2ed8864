"""fastddpm._C's attention against reference.attention: every dtype, irregular shapes, D up to 512."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastddpm.ops import backend_ext, reference
from tests.tolerances import assert_close, tolerance

pytestmark = pytest.mark.skipif(
    not backend_ext.is_built(), reason="fastddpm._C is not built (pip install -e . or .ci/build_ext.sh)"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_qkv(batch, heads, len_q, len_k, d, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, len_q, d, generator=gen).to(dtype)
    k = torch.randn(batch, heads, len_k, d, generator=gen).to(dtype)
    v = torch.randn(batch, heads, len_k, d, generator=gen).to(dtype)
    return q.to(device), k.to(device), v.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "batch,heads,len_q,len_k,d",
    [(3, 2, 37, 70, 24), (1, 1, 5, 5, 1), (2, 3, 65, 64, 100), (1, 1, 9, 130, 512), (3, 1, 64, 17, 33)],
)
@pytest.mark.parametrize("scale", [None, 0.3])
def test_cpu_matches_reference(dtype, batch, heads, len_q, len_k, d, scale):
    q, k, v = make_qkv(batch, heads, len_q, len_k, d, dtype, seed=len_q + d)
    actual = backend_ext.attention(q, k, v, scale)
    assert actual.dtype == dtype and actual.shape == q.shape
    assert_close(
        actual, reference.attention(q, k, v, scale), *tolerance(dtype), what=f"attention {q.shape} {dtype}"
    )


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    len_q=st.integers(1, 80),
    len_k=st.integers(1, 80),
    d=st.integers(1, 72),
    dtype=st.sampled_from(DTYPES),
)
def test_cpu_matches_reference_for_any_shape(batch, heads, len_q, len_k, d, dtype):
    q, k, v = make_qkv(batch, heads, len_q, len_k, d, dtype, seed=len_q * len_k)
    assert_close(
        backend_ext.attention(q, k, v),
        reference.attention(q, k, v),
        *tolerance(dtype),
        what=f"attention {q.shape} vs k {k.shape} {dtype}",
    )


def test_strided_inputs_and_large_scores_stay_exact():
    # Scores of several hundred test the online softmax's rescaling; (B, L, heads, D) storage viewed as
    # (B, heads, L, D), as the U-Net's fused QKV projection produces it, tests the strides.
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 9, 3, 16, generator=gen).transpose(1, 2)
    k, v = (torch.randn(2, 40, 3, 16, generator=gen).transpose(1, 2) for _ in range(2))
    actual = backend_ext.attention(q * 8, k * 8, v, 0.5)
    assert_close(
        actual, reference.attention(q * 8, k * 8, v, 0.5), *tolerance(torch.float32), what="large scores"
    )


def test_bad_arguments_raise_naming_the_argument():
    q, k, v = make_qkv(1, 1, 4, 4, 8, torch.float32)
    with pytest.raises(RuntimeError, match="v .* must have k's shape"):
        torch.ops.fastddpm.attention(q, k, v[:, :, :3], 1.0)
    with pytest.raises(RuntimeError, match="head dimension D = 600"):
        torch.ops.fastddpm.attention(*make_qkv(1, 1, 2, 2, 600, torch.float32), 1.0)
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.fastddpm.attention(q, k.half(), v, 1.0)


@pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels do not serve on this CPU"
)
def test_why_not_refuses_cpu_under_auto_and_serves_when_ext_is_named(monkeypatch):
    q, k, v = make_qkv(1, 1, 4, 4, 8, torch.float32)
    monkeypatch.setenv("FASTDDPM_BACKEND", "auto")
    assert any("measured" in r for r in backend_ext.why_not_attention(q, k, v))
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")
    assert backend_ext.why_not_attention(q, k, v) == []
    assert any(
        "outside 1..512" in r
        for r in backend_ext.why_not_attention(*make_qkv(1, 1, 2, 2, 513, torch.float32))
    )
    assert any("dtype" in r for r in backend_ext.why_not_attention(q.double(), k.double(), v.double()))
    assert any("do not match" in r for r in backend_ext.why_not_attention(q, k, v[:, :, :2]))
    assert backend_ext.why_not_attention(q, k, None) == ["attention: q, k and v must all be tensors"]


def test_fake_kernel_and_schema_pass_opcheck():
    q, k, v = make_qkv(2, 1, 5, 7, 8, torch.float16)
    torch.library.opcheck(
        torch.ops.fastddpm.attention.default, (q, k, v, 0.5), test_utils=("test_schema", "test_faketensor")
    )


# --- GPU: the DDPM attention shapes (one head, L = 16 x 16, D = 256 for cifar10-32, 512 for 256 px) ---
@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("d", [256, 512])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference_at_ddpm_shapes(batch, d, dtype, monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")  # past the not-yet-run-on-a-GPU gate of auto
    q, k, v = make_qkv(batch, 1, 256, 256, d, dtype, seed=d, device="cuda")
    assert backend_ext.why_not_attention(q, k, v) == []
    actual = backend_ext.attention(q, k, v)
    assert_close(
        actual, reference.attention(q, k, v), *tolerance(dtype), what=f"cuda attention {q.shape} {dtype}"
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "batch,heads,len_q,len_k,d",
    [(3, 2, 37, 70, 24), (1, 1, 5, 5, 1), (2, 3, 65, 64, 100), (1, 2, 17, 130, 300)],
)
def test_cuda_matches_reference_on_irregular_shapes(batch, heads, len_q, len_k, d):
    for dtype in DTYPES:
        q, k, v = make_qkv(batch, heads, len_q, len_k, d, dtype, device="cuda")
        actual = backend_ext.attention(q, k, v, 0.7)
        assert_close(
            actual, reference.attention(q, k, v, 0.7), *tolerance(dtype), what=f"cuda attention {dtype}"
        )


@pytest.mark.gpu
def test_cuda_agrees_with_sdpa_in_float32():
    q, k, v = make_qkv(2, 1, 256, 256, 512, torch.float32, device="cuda")
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    assert_close(backend_ext.attention(q, k, v), expected, *tolerance(torch.float32), what="vs float64 SDPA")

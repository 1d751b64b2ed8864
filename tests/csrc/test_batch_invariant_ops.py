"""fastddpm._C's batch-invariant CPU ops: matmul_rows (and pack_matmul_weight), box_muller, and GroupNorm's
channels-last statistics. Each is checked against a float64 (or float32 formula) truth on awkward shapes,
and for the property itself: a row computed alone equals the same row computed inside any batch, on any
thread count (torch.equal)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastddpm.ops import backend_ext, noise
from tests.tolerances import assert_close

pytestmark = pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels are not built for this CPU"
)
# max |y - y_float64| / (|x| |W| row norms) measured for matmul_rows on these shapes: ~2e-7 (float32
# accumulation of K <= 300 products); the bound leaves a factor of 5. 16-bit: one rounding of the output.
MATMUL_RELATIVE_ERROR = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def with_threads(count: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 70),
    k=st.integers(1, 300),
    n=st.integers(1, 150),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    bias=st.booleans(),
    residual=st.booleans(),
    silu=st.booleans(),
    divisor=st.sampled_from([1.0, 1.4142135]),
    seed=st.integers(0, 2**16),
)
def test_matmul_rows_matches_float64_on_any_shape(rows, k, n, dtype, bias, residual, silu, divisor, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    weight = torch.randn(k, n, generator=gen) / k**0.5
    b = torch.randn(n, generator=gen) if bias else None
    r = torch.randn(rows, n, generator=gen).to(dtype) if residual else None
    out = backend_ext.matmul_rows(x, backend_ext.pack_matmul_weight(weight), n, b, r, silu, divisor)
    assert out.shape == (rows, n) and out.dtype == dtype
    act = F.silu(x.double()) if silu else x.double()
    expected = act @ weight.double()
    if b is not None:
        expected = expected + b.double()
    if r is not None:
        expected = expected + r.double()
    expected = expected / divisor
    scale = float(act.abs().max() * weight.abs().max() * k**0.5 + expected.abs().max())
    assert_close(out.double(), expected, MATMUL_RELATIVE_ERROR[dtype] * scale, 0, f"{dtype} {rows}x{k}x{n}")


@pytest.mark.parametrize("k, n", [(3, 5), (64, 256), (129, 97), (512, 512)])
def test_a_row_alone_equals_the_row_in_any_batch_on_any_thread_count(k, n):
    gen = torch.Generator().manual_seed(k + n)
    x = torch.randn(300, k, generator=gen)
    packed = backend_ext.pack_matmul_weight(torch.randn(k, n, generator=gen))
    b = torch.randn(n, generator=gen)
    whole = with_threads(2, backend_ext.matmul_rows, x, packed, n, b, None, True, 1.0)
    for start, stop in [(0, 1), (7, 8), (299, 300), (5, 18), (100, 157)]:
        part = with_threads(1, backend_ext.matmul_rows, x[start:stop], packed, n, b, None, True, 1.0)
        assert torch.equal(part, whole[start:stop]), f"rows {start}:{stop}"


def test_matmul_rows_takes_strided_rows_and_leading_dimensions():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 24, 5, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 10, generator=gen)
    pixels = image.permute(0, 2, 3, 1)  # (N, H, W, C): channels-last pixels as rows, no copy
    out = backend_ext.matmul_rows(pixels, backend_ext.pack_matmul_weight(weight), 10)
    assert out.shape == (2, 5, 3, 10)
    assert_close(out, pixels @ weight, 2e-6, 0, "NHWC rows")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, p: backend_ext.matmul_rows(x.int(), p, 16), "float32, bfloat16 or float16"),
        (lambda x, p: backend_ext.matmul_rows(x[:, :5], p, 16), "packed must be"),
        (lambda x, p: backend_ext.matmul_rows(x, p, 40), "packed must be"),
        (lambda x, p: backend_ext.matmul_rows(x, p, 16, torch.zeros(3)), "bias must have shape"),
        (lambda x, p: backend_ext.matmul_rows(x, p, 16, None, torch.zeros(2, 16)), "residual must have"),
        (lambda x, p: backend_ext.pack_matmul_weight(torch.zeros(2, 2, 2, 2)), "must be \\(K, N\\)"),
    ],
)
def test_matmul_rows_checks_its_arguments(call, message):
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=message):
        call(x, backend_ext.pack_matmul_weight(torch.randn(8, 16)))


def test_matmul_fake_kernels_pass_opcheck():
    x, packed = torch.randn(3, 4, 8), backend_ext.pack_matmul_weight(torch.randn(8, 20))
    torch.library.opcheck(
        torch.ops.fastddpm.matmul_rows.default,
        (x, packed, 20, torch.randn(20), torch.randn(3, 4, 20), True, 2.0),
        test_utils=("test_schema", "test_faketensor"),
    )
    for weight in (torch.randn(8, 20), torch.randn(3, 8, 20)):
        torch.library.opcheck(
            torch.ops.fastddpm.pack_matmul_weight.default,
            (weight,),
            test_utils=("test_schema", "test_faketensor"),
        )
    words = torch.randint(0, 2**32, (2, 37), dtype=torch.int64)
    torch.library.opcheck(
        torch.ops.fastddpm.box_muller.default, (words, words), test_utils=("test_schema", "test_faketensor")
    )


def philox_words(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2**32, (count,), generator=gen, dtype=torch.int64) for _ in range(2))


def test_box_muller_is_noise_py_formula_and_position_independent():
    r0, r1 = philox_words(100_003)
    z = with_threads(2, backend_ext.box_muller, r0, r1)
    u1 = ((r0 >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = (r1 >> 8).to(torch.float32) * (1.0 / 16777216.0)
    formula = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(noise.TWO_PI * u2)  # noise.py's, torch's log / cos
    # The same float32 formula with another log / cos: measured 9.5e-7 apart at most (AMD EPYC AVX2), the
    # rounding of a value up to 5.8; a wrong branch, constant or bit shift is off by far more.
    assert_close(z, formula, 2e-6, 0, "box_muller vs torch's float32 formula")
    for start, count in [(0, 1), (3, 5), (100_000, 3), (12_345, 1000)]:
        part = with_threads(1, backend_ext.box_muller, r0[start : start + count], r1[start : start + count])
        assert torch.equal(part, z[start : start + count]), f"elements {start}..{start + count}"


def test_philox_noise_of_a_sample_does_not_depend_on_its_batch():
    # 3 x 7 x 7 = 147 elements per sample: each sample's last elements are a vector tail in one batch and not
    # in another, which is where torch's scalar and vector log / cos disagree on some CPUs.
    whole = noise.philox_normal(5, 0, 9, (3, 7, 7), 2)
    for b in range(9):
        assert torch.equal(noise.philox_normal(5, b, 1, (3, 7, 7), 2), whole[b : b + 1])


@pytest.mark.parametrize("shape", [(6, 40, 17, 19), (5, 64, 32, 32), (3, 24, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_channels_last_group_norm_of_a_sample_does_not_depend_on_batch_or_threads(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    channels = shape[1]
    weight, bias = (
        torch.randn(channels, generator=gen).to(dtype),
        torch.randn(channels, generator=gen).to(dtype),
    )
    add = torch.randn(shape[0], channels, generator=gen)

    def norm(rows):
        return backend_ext.group_norm(
            x[rows], 4 if channels % 4 == 0 else 8, weight, bias, 1e-5, add=add[rows], silu=True
        )

    whole = with_threads(1, norm, slice(0, shape[0]))
    assert torch.equal(with_threads(2, norm, slice(0, shape[0])), whole), "1 vs 2 threads"
    for b in range(shape[0]):
        for threads in (1, 2):  # the old kernel split a lone sample's pixels over the threads
            single = with_threads(threads, norm, slice(b, b + 1))
            assert torch.equal(single, whole[b : b + 1]), f"sample {b} alone on {threads} threads"

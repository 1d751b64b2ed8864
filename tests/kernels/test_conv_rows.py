"""kernels/conv_rows.py, the batch-invariant implicit GEMM, under the Triton interpreter: every convolution
shape the U-Nets use (and awkward ones) against a float64 convolution, linear layers with their fused SiLU,
residual and divisor, and the property itself: a sample alone gives the same bits as inside a batch.
Its sm_90 compile is checked with the other kernels' (tests/kernels/test_q_sample.py)."""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm.ops import backend_triton  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
# max |y - y_float64| / max |y_float64| measured over these cases: float32 ~3e-7 (the sum in float32, in
# order); 16-bit: the output's one rounding (bf16 2^-9, fp16 2^-12 of the value) plus the inputs' rounding,
# which the reference shares. Bounds a factor of ~4 above.
RELATIVE_ERROR = {torch.float32: 1.5e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def kernels():
    return backend_triton.kernel_module("conv_rows")


def conv_case(n, c, h, w, o, k, stride, pad, dtype=torch.float32, layout="nhwc", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x
    weight = (torch.randn(o, c, k, k, generator=gen) / (c * k * k) ** 0.5).to(dtype)
    bias = torch.randn(o, generator=gen)
    return x, weight, bias


def run_conv(x, weight, bias, residual, k, stride, pad):
    packed = kernels().pack_weight(weight, x.dtype)
    return kernels().conv2d(x, packed, bias, residual, (k, k), (stride, stride), (pad, pad))


@pytest.mark.parametrize(
    "n, c, h, w, o, k, stride, pad",
    [
        (2, 5, 7, 6, 9, 3, 1, 1),  # channels and outputs below one tile, H != W
        (3, 40, 8, 8, 70, 3, 2, 1),  # stride 2: ADM's downsampling; 40 = a tile and a part; 70 outputs
        (2, 33, 9, 5, 8, 3, 2, 0),  # stride 2 without padding (diffusers pads right / bottom first)
        (2, 16, 6, 6, 8, 1, 1, 0),  # 1x1 shortcut
        (1, 3, 9, 9, 5, 3, 1, 1),  # conv_in: 3 channels
        (5, 8, 4, 4, 130, 3, 1, 1),  # outputs over two column tiles
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_conv_matches_float64_and_a_sample_alone_matches_its_batch(n, c, h, w, o, k, stride, pad, dtype):
    x, weight, bias = conv_case(n, c, h, w, o, k, stride, pad, dtype)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), stride=stride, padding=pad)
    residual = torch.randn(expected.shape).to(dtype)
    out = run_conv(x, weight, bias, residual, k, stride, pad)
    assert out.dtype == dtype and out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = expected + residual.double()
    scale = float(expected.abs().max())
    assert_close(out.double(), expected, RELATIVE_ERROR[dtype] * scale, 0, f"conv {dtype}")
    singles = torch.cat(
        [run_conv(x[i : i + 1], weight, bias, residual[i : i + 1], k, stride, pad) for i in range(n)]
    )
    assert torch.equal(singles, out), "a sample alone differs from the same sample in its batch"


def test_conv_reads_nchw_and_sliced_inputs_through_their_strides():
    x, weight, bias = conv_case(3, 12, 7, 7, 10, 3, 1, 1, layout="nchw")
    wide = torch.randn(3, 20, 7, 7)[:, 4:16]  # a channel slice: storage offset and strides of a view
    wide.copy_(x)
    expected = run_conv(x.contiguous(memory_format=torch.channels_last), weight, bias, None, 3, 1, 1)
    # the same kernel and tiles on the same values: only the addresses it reads them from differ
    assert torch.equal(run_conv(x, weight, bias, None, 3, 1, 1), expected)
    assert torch.equal(run_conv(wide, weight, bias, None, 3, 1, 1), expected)


@pytest.mark.parametrize("silu, divisor", [(False, 1.0), (True, 1.0), (False, 1.4142135)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_matches_float64_and_rows_are_independent(silu, divisor, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 37, generator=gen).to(dtype)
    weight = (torch.randn(70, 37, generator=gen) / 37**0.5).to(dtype)
    bias, residual = torch.randn(70, generator=gen), torch.randn(5, 3, 70, generator=gen).to(dtype)
    packed = kernels().pack_weight(weight, dtype)
    out = kernels().linear(x, packed, bias, residual, silu, divisor)
    act = x.double()
    # The kernel rounds SiLU's output to x's dtype before the product (the tile's input type).
    act = F.silu(act).to(dtype).double() if silu else act
    expected = (act @ weight.double().t() + bias.double() + residual.double()) / divisor
    assert out.shape == (5, 3, 70) and out.dtype == dtype
    assert_close(out.double(), expected, RELATIVE_ERROR[dtype] * float(expected.abs().max()), 0, "linear")
    rows = torch.cat(
        [kernels().linear(x[i : i + 1], packed, bias, residual[i : i + 1], silu, divisor) for i in range(5)]
    )
    assert torch.equal(rows, out)


def test_launchers_refuse_mismatched_arguments():
    x, weight, bias = conv_case(1, 4, 5, 5, 6, 3, 1, 1)
    packed = kernels().pack_weight(weight, torch.float32)
    with pytest.raises(ValueError, match="weight has 36 rows, the kernel \\(1, 1\\) over 4 channels needs 4"):
        kernels().conv2d(x, packed, bias, None, (1, 1), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="residual has shape"):
        kernels().conv2d(x, packed, bias, torch.zeros(1, 6, 4, 4), (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="share a float dtype"):
        kernels().conv2d(x, packed.half(), bias, None, (3, 3), (1, 1), (1, 1))


def test_group_norm_plan_depends_on_the_group_size_only():
    group_norm = backend_triton.kernel_module("group_norm")
    for group_size in (96, 4096, 4097, 65536):
        plans = {group_norm._plan(groups, group_size, None, None, None, target, True)
                 for groups in (1, 8, 32, 8192) for target in (1, group_norm.TARGET_PROGRAMS)}  # fmt: skip
        assert len(plans) == 1, (group_size, plans)
    # Without the flag the plan follows the launch's width, which is why it exists.
    assert group_norm._plan(1, 4096, None, None, None)[0] != group_norm._plan(8192, 4096, None, None, None)[0]


def test_group_norm_of_a_sample_alone_matches_its_batch_in_invariant_mode():
    group_norm = backend_triton.kernel_module("group_norm")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 48, 48, generator=gen).contiguous(
        memory_format=torch.channels_last
    )  # groups of 4608
    weight, bias, add = torch.randn(8, generator=gen), torch.randn(8, generator=gen), torch.randn(3, 8)
    whole = group_norm.group_norm(x, 2, weight, bias, 1e-6, add=add, silu=True, batch_invariant=True)
    for i in range(3):
        alone = group_norm.group_norm(x[i : i + 1], 2, weight, bias, 1e-6, add=add[i : i + 1], silu=True,
                                      batch_invariant=True)  # fmt: skip
        assert torch.equal(alone, whole[i : i + 1])

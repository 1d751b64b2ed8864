"""fastddpm.models.conv.Conv2d: the direct path bit-identical to nn.Conv2d, the Winograd path within its measured
error of a float64 convolution; prepared weights reused and refreshed correctly."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastddpm.models import conv
from fastddpm.ops import backend_ext, cpu_emulation
from tests.tolerances import assert_close

# Conv2d takes the extension's kernels only where torch reports the instruction set they were built for
# (ATEN_CPU_CAPABILITY=default forces less, and Conv2d then stays on oneDNN).
needs_ext = pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(),
    reason="fastddpm._C is not built for this CPU (pip install -e . or .ci/build_ext.sh)",
)
# max |y - y_float64| / max |y_float64| measured on random data (fastddpm/models/conv.py): F(2,3) ~3e-7,
# F(4,3) ~5e-6. The bounds leave a factor of 4-10 for other shapes and seeds.
WINOGRAD_RELATIVE_ERROR = {2: 3e-6, 4: 2e-5}


@pytest.fixture(autouse=True)
def batch_variant_paths(monkeypatch):
    """These tests are about the oneDNN and auto-selected paths, which the batch-invariant mode (on by
    default, tests/models/test_batch_invariant_layers.py) bypasses."""
    monkeypatch.setenv("FASTDDPM_BATCH_INVARIANT", "0")


def pair(in_channels=6, out_channels=10, **kwargs):
    reference = nn.Conv2d(in_channels, out_channels, **kwargs)
    ours = conv.Conv2d(in_channels, out_channels, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize(
    "kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=0), dict(kernel_size=1)]
)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("in_channels", [6, 16])  # below and at WINOGRAD_MIN_IN_CHANNELS
def test_direct_path_matches_nn_conv2d(kwargs, channels_last, in_channels, monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", "direct")
    ours, reference = pair(in_channels, **kwargs)
    x = torch.randn(3, in_channels, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, expected = ours(x), reference(x)
    # Exact: NCHW and 1x1 take nn.Conv2d itself; NHWC 3x3 takes torch's oneDNN convolution
    # (mkldnn._convolution_pointwise) with the weight reordered ahead, the primitive nn.Conv2d runs at a
    # batch of 3 (torch takes oneDNN for batch > 1; a lone 1x1 or small single-sample input may not).
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize(
    "kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=0), dict(kernel_size=1)]
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_auto_keeps_nn_conv2d_bits_where_winograd_does_not_apply(kwargs, channels_last, monkeypatch):
    monkeypatch.delenv("FASTDDPM_CPU_CONV", raising=False)
    # auto: 6 input channels is below WINOGRAD_MIN_IN_CHANNELS; stride 2 and 1x1 are never Winograd.
    ours, reference = pair(**kwargs)
    x = torch.randn(3, 6, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, expected = ours(x), reference(x)
    assert torch.equal(out, expected)  # the direct path's oneDNN primitive or nn.Conv2d itself, as above
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_reordered_weight_is_reused_and_refreshed_after_changes():
    # Exact below: the direct path's oneDNN convolution against nn.Conv2d's, at batches of 2 and 5 (as above).
    ours, reference = pair(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours(x)
        first = conv._reordered[ours]
        ours(x)
        assert conv._reordered[ours] is first  # same weight, same shape: reused
        ours.weight.mul_(0.5)
        reference.weight.mul_(0.5)
        assert torch.equal(ours(x), reference(x))  # in-place change: refreshed
        x2 = torch.randn(5, 6, 4, 4).contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours(x2), reference(x2))  # new shape: refreshed
    clone = copy.deepcopy(ours)  # the cache lives outside the module
    with torch.no_grad():
        assert torch.equal(clone(x), reference(x))


def test_autograd_goes_through_nn_conv2d():
    ours, reference = pair(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    ours(x).sum().backward()
    reference(x).sum().backward()
    assert ours not in conv._reordered
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)


def winograd_case(n, c, h, w, c_out, *, bias=True, seed=0):
    torch.manual_seed(seed)
    module = conv.Conv2d(c, c_out, kernel_size=3, padding=1, bias=bias)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(n, c_out, h, w).contiguous(memory_format=torch.channels_last)
    return module, x, residual


def float64_conv(module, x, residual=None):
    bias = None if module.bias is None else module.bias.detach().double()
    y = F.conv2d(x.double(), module.weight.detach().double(), bias, padding=1)
    return y if residual is None else y + residual.double()


def assert_winograd_close(actual, expected, tile, what):
    scale = float(expected.abs().max())
    assert_close(actual, expected, atol=WINOGRAD_RELATIVE_ERROR[tile] * scale, rtol=0, what=what)


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize(
    "shape",
    [
        (3, 20, 7, 5, 37),
        (1, 16, 4, 4, 16),
        (2, 33, 9, 13, 18),
        (1, 17, 1, 1, 5),
        (2, 24, 6, 11, 3),
        (3, 16, 66, 62, 20),  # more tiles than one 2 MiB chunk holds, and a partial last chunk, at both sizes
    ],
    ids=str,
)
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_matches_a_float64_convolution(tile, shape, bias, monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", f"winograd{tile}")
    module, x, residual = winograd_case(*shape, bias=bias)
    with torch.no_grad():
        out = module(x)
        fused = module(x, residual=residual)
    assert module in conv._transformed and conv._transformed[module][0][-1] == tile  # the Winograd path ran
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert_winograd_close(out, float64_conv(module, x), tile, f"F({tile},3) {shape}")
    assert_winograd_close(fused, float64_conv(module, x, residual), tile, f"F({tile},3) + residual {shape}")


@needs_ext
def test_winograd_residual_in_another_layout_is_added_after(monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", "winograd4")
    module, x, residual = winograd_case(2, 16, 8, 6, 16)
    nchw = residual.contiguous()
    with torch.no_grad():
        assert_winograd_close(module(x, residual=nchw), float64_conv(module, x, residual), 4, "NCHW residual")


@needs_ext
@pytest.mark.parametrize("batch", [1, 5])
def test_auto_picks_the_tile_by_image_size_and_channels_never_by_batch(batch, monkeypatch):
    monkeypatch.delenv("FASTDDPM_CPU_CONV", raising=False)
    for size, tile in [(16, 4), (17, 4), (15, 2), (4, 2)]:
        module, x, _ = winograd_case(batch, 16, size, conv.WINOGRAD4_MIN_SIZE + 3, 8)
        with torch.no_grad():
            module(x)
        assert conv._transformed[module][0][-1] == tile, f"{size} px: expected F({tile},3)"
    narrow, x_narrow, _ = winograd_case(batch, 15, 16, 16, 8)
    with torch.no_grad():
        narrow(x_narrow)
    assert narrow not in conv._transformed and narrow in conv._reordered


@needs_ext
def test_transformed_weight_is_reused_and_refreshed_after_changes(monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", "winograd4")
    module, x, _ = winograd_case(2, 16, 8, 8, 12)
    with torch.no_grad():
        module(x)
        first = conv._transformed[module]
        module(x)
        assert conv._transformed[module] is first  # same weight: reused
        module.weight.mul_(-0.5)
        assert_winograd_close(module(x), float64_conv(module, x), 4, "after an in-place change")
        module.weight = nn.Parameter(torch.randn_like(module.weight))
        assert_winograd_close(module(x), float64_conv(module, x), 4, "after a new weight")
        monkeypatch.setenv("FASTDDPM_CPU_CONV", "winograd2")
        assert_winograd_close(module(x), float64_conv(module, x), 2, "after a tile change")


@needs_ext
def test_winograd_is_not_used_for_autograd():
    module, x, _ = winograd_case(2, 16, 6, 6, 8)
    module(x).sum().backward()  # grad mode: nn.Conv2d
    assert module.weight.grad is not None and module not in conv._transformed


# A 16-bit result is rounded once: half an ulp, 2^-9 of |y| for bfloat16 and 2^-12 for float16.
ROUNDING = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=0), dict(kernel_size=1)],
    ids=["3x3", "3x3-stride2", "1x1"],
)
def test_16_bit_activations_this_cpu_emulates_are_computed_in_float32(dtype, kwargs, monkeypatch):
    # Where the CPU has no bf16/fp16 instructions, the 16-bit tensors go in and come out, with float32
    # arithmetic inside (Winograd for the 3x3 stride-1 case, oneDNN float32 for the rest).
    monkeypatch.setattr(cpu_emulation, "emulates", lambda d: d == dtype)
    torch.manual_seed(0)
    module = conv.Conv2d(20, 12, **kwargs).to(dtype)
    x = torch.randn(3, 20, 9, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    residual = (
        torch.randn(3, 12, *module(x).shape[2:]).to(dtype).contiguous(memory_format=torch.channels_last)
    )
    with torch.no_grad():
        out, fused = module(x), module(x, residual=residual)
    assert (module in conv._transformed) == (kwargs == dict(kernel_size=3, padding=1))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(
        x.double(),
        module.weight.detach().double(),
        module.bias.detach().double(),
        module.stride,
        module.padding,
    )
    scale = float(expected.abs().max())
    assert_close(
        out, expected, atol=WINOGRAD_RELATIVE_ERROR[4] * scale, rtol=ROUNDING[dtype], what=f"{dtype}"
    )
    # With the residual: one more rounding where the add is not fused (stride 2, 1x1).
    with_residual = expected + residual.double()
    atol = WINOGRAD_RELATIVE_ERROR[4] * scale + ROUNDING[dtype] * scale
    assert_close(fused, with_residual, atol=atol, rtol=ROUNDING[dtype], what=f"{dtype} + residual")


@needs_ext
def test_16_bit_convolutions_stay_nn_conv2d_where_the_cpu_has_the_instructions(monkeypatch):
    monkeypatch.setattr(cpu_emulation, "emulates", lambda d: False)
    ours, reference = pair(16, 8, kernel_size=3, padding=1)
    ours, reference = ours.to(torch.bfloat16), reference.to(torch.bfloat16)
    x = torch.randn(2, 16, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))  # nn.Conv2d.forward on both sides
    assert ours not in conv._transformed


def test_without_the_extension_auto_falls_back_to_the_direct_path(monkeypatch):
    monkeypatch.setattr(backend_ext, "why_not_winograd_conv3x3", lambda x: ["fastddpm._C is not built"])
    ours, reference = pair(16, 8, kernel_size=3, padding=1)
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))  # the direct path: nn.Conv2d's oneDNN primitive, as above


def test_unknown_algorithm_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("FASTDDPM_CPU_CONV", "fft")
    ours, _ = pair(16, 8, kernel_size=3, padding=1)
    x = torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), pytest.raises(ValueError, match="FASTDDPM_CPU_CONV='fft' is not one of"):
        ours(x)


@needs_ext
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(tile=3), "tile must be 2 or 4"),
        (dict(x="nchw"), "channels_last"),
        (dict(weight="short"), "transformed weight"),
        (dict(bias="long"), "bias must be"),
        (dict(residual="small"), "residual must be"),
    ],
)
def test_op_checks_its_arguments(change, message):
    module, x, residual = winograd_case(2, 16, 6, 6, 8)
    args = dict(
        x=x, weight=conv.winograd_weight(module.weight, 4), bias=module.bias.detach(), residual=residual
    )
    tile = change.get("tile", 4)
    if change.get("x") == "nchw":
        args["x"] = x.contiguous()
    if change.get("weight") == "short":
        args["weight"] = args["weight"][:, :, :8].contiguous()
    if change.get("bias") == "long":
        args["bias"] = torch.zeros(9)
    if change.get("residual") == "small":
        args["residual"] = residual[:1].contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastddpm.winograd_conv3x3(
            args["x"], args["weight"], args["bias"], args["residual"], tile, module.out_channels
        )


@needs_ext
def test_fake_kernel_and_schema_pass_opcheck():
    module, x, residual = winograd_case(2, 16, 5, 7, 8)
    weight = conv.winograd_weight(module.weight, 4)
    for res in (None, residual):
        torch.library.opcheck(
            torch.ops.fastddpm.winograd_conv3x3.default,
            (x, weight, module.bias.detach(), res, 4, module.out_channels),
            test_utils=("test_schema", "test_faketensor"),
        )


@needs_ext
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 40),
    h=st.integers(1, 19),
    w=st.integers(1, 19),
    c_out=st.integers(1, 40),
    tile=st.sampled_from([2, 4]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    bias=st.booleans(),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_winograd_op_matches_a_float64_convolution_on_any_shape(
    n, c, h, w, c_out, tile, dtype, bias, residual, seed
):
    # The op itself, on every shape: partial tiles at the edges, channel counts that are not a multiple of
    # the vector width (tails), 16-bit activations.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c_out, c, 3, 3, generator=gen) / (3 * c**0.5)).to(dtype)
    b = torch.randn(c_out, generator=gen) if bias else None
    r = torch.randn(n, c_out, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    out = torch.ops.fastddpm.winograd_conv3x3(
        x, conv.winograd_weight(weight, tile), b, r if residual else None, tile, c_out
    )
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    if residual:
        expected = expected + r.double()
    scale = max(float(expected.abs().max()), 1e-6)
    rounding = ROUNDING.get(dtype, 0.0)
    assert_close(
        out, expected, atol=WINOGRAD_RELATIVE_ERROR[tile] * scale, rtol=rounding, what=f"{dtype} F({tile},3)"
    )

"""fastddpm._C's group_norm against reference.group_norm: every dtype, both layouts, irregular shapes."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastddpm.ops import backend_ext, reference
from tests.tolerances import assert_close, tolerance

pytestmark = pytest.mark.skipif(
    not backend_ext.is_built(), reason="fastddpm._C is not built (pip install -e . or .ci/build_ext.sh)"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(
    shape, groups, dtype, *, channels_last=False, affine=True, add=False, scaled=False, seed=0, device="cpu"
):
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)

    def per(*dims):
        return torch.randn(dims, generator=gen).to(device)

    return dict(
        x=x.to(device),
        num_groups=groups,
        weight=per(c) if affine else None,
        bias=per(c) if affine else None,
        eps=1e-6,
        add=per(n, c) if add else None,
        scale=per(n, c) if scaled else None,
        shift=per(n, c) if scaled else None,
    )


def run_both(inputs, silu):
    args = dict(inputs)
    x, groups, weight, bias, eps = (args.pop(k) for k in ("x", "num_groups", "weight", "bias", "eps"))
    actual = backend_ext.group_norm(x, groups, weight, bias, eps, silu=silu, **args)
    expected = reference.group_norm(x, groups, weight, bias, eps, silu=silu, **args)
    return actual, expected


SHAPES = [((3, 12, 5, 7), 4), ((1, 6, 9, 4), 3), ((2, 10, 1, 3), 5), ((5, 8, 3, 3), 1), ((2, 96, 4, 6), 32)]
OPTIONS = [
    dict(affine=False, add=False, scaled=False, silu=False),
    dict(affine=True, add=False, scaled=False, silu=True),
    dict(affine=True, add=True, scaled=True, silu=True),
    dict(affine=True, add=True, scaled=False, silu=False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "plain")
def test_cpu_matches_reference(dtype, channels_last, shape, groups, options):
    options = dict(options)
    silu = options.pop("silu")
    inputs = make_inputs(shape, groups, dtype, channels_last=channels_last, seed=sum(shape), **options)
    actual, expected = run_both(inputs, silu)
    assert actual.dtype == dtype
    assert actual.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    assert_close(actual, expected, *tolerance(dtype), what=f"group_norm {shape} G={groups} {dtype}")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
    channels_last=st.booleans(),
    extras=st.booleans(),
)
def test_cpu_matches_reference_for_any_shape(n, groups, per_group, h, w, dtype, channels_last, extras):
    assume(per_group * h * w > 1)  # F.group_norm (the reference) refuses one-element groups
    shape = (n, groups * per_group, h, w)
    inputs = make_inputs(
        shape, groups, dtype, channels_last=channels_last, add=extras, scaled=extras, seed=h * w
    )
    actual, expected = run_both(inputs, silu=extras)
    assert_close(actual, expected, *tolerance(dtype), what=f"group_norm {shape} G={groups} {dtype}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_large_mean_small_spread_keeps_its_variance(channels_last):
    # A spread of 1e-2 under a mean of 1e2: float32 itself places the mean only to ~4e-6 (4e-4 of the
    # spread), and the kernel must not lose more. Plain float sums would (torch's CPU group_norm misses by
    # 9e-4 in NCHW and by 28 in channels-last at this input).
    x = 100 + 0.01 * torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    actual = backend_ext.group_norm(x, 4, None, None, 1e-6)
    exact = F.group_norm(x.double(), 4, eps=1e-6)
    assert_close(actual, exact, 6e-4, 0, what="group_norm of a large-mean input against float64")


def test_non_contiguous_input_gives_contiguous_result():
    x = torch.randn(2, 6, 10, 7)[:, :, ::2]
    actual = backend_ext.group_norm(x, 3, None, None, 1e-5, silu=True)
    assert actual.is_contiguous()
    assert_close(actual, reference.group_norm(x, 3, None, None, 1e-5, silu=True), *tolerance(torch.float32))


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(num_groups=5), "num_groups"),
        (dict(weight=torch.ones(7)), "weight must have shape"),
        (dict(add=torch.ones(3, 12)), "add must have shape"),
        (dict(x=torch.ones(2, 12, 4)), "x must be 4-d"),
        (dict(x=torch.ones(2, 12, 4, 4, dtype=torch.float64)), "float32, float16 or bfloat16"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(change, message):
    args = dict(x=torch.ones(2, 12, 4, 4), num_groups=4, weight=None, bias=None, eps=1e-5)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastddpm.group_norm(
            args["x"],
            args["num_groups"],
            args["weight"],
            args["bias"],
            args["eps"],
            args.get("add"),
            None,
            None,
            False,
        )


@pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels do not serve on this CPU"
)
def test_why_not_names_what_the_kernel_cannot_do():
    x = torch.randn(2, 12, 4, 4)
    assert backend_ext.why_not_group_norm(x, 4, None, None, 1e-5) == []
    assert any("divide" in r for r in backend_ext.why_not_group_norm(x, 5, None, None, 1e-5))
    assert any("dtype" in r for r in backend_ext.why_not_group_norm(x.double(), 4, None, None, 1e-5))
    assert any("4-d" in r for r in backend_ext.why_not_group_norm(x[0], 4, None, None, 1e-5))
    assert any("device meta" in r for r in backend_ext.why_not_group_norm(x.to("meta"), 4, None, None, 1e-5))
    assert any("not a tensor" in r for r in backend_ext.why_not_group_norm(x, 4, [1.0] * 12, None, 1e-5))
    assert any(
        "shift without scale" in r
        for r in backend_ext.why_not_group_norm(x, 4, None, None, 1e-5, shift=x[:, :, 0, 0])
    )
    weight = torch.ones(12, requires_grad=True)
    assert any("grad" in r for r in backend_ext.why_not_group_norm(x, 4, weight, None, 1e-5))
    with torch.no_grad():
        assert backend_ext.why_not_group_norm(x, 4, weight, None, 1e-5) == []


def test_fake_kernel_and_schema_pass_opcheck():
    for channels_last in (False, True):
        inputs = make_inputs(
            (3, 6, 5, 4), 3, torch.float32, channels_last=channels_last, add=True, scaled=True
        )
        args = tuple(inputs.values()) + (True,)
        torch.library.opcheck(
            torch.ops.fastddpm.group_norm.default, args, test_utils=("test_schema", "test_faketensor")
        )


def test_traces_under_torch_compile_without_graph_breaks():
    inputs = make_inputs((3, 6, 5, 4), 3, torch.float32, add=True)

    def block(x, weight, bias, add):
        return backend_ext.group_norm(x, 3, weight, bias, 1e-6, add=add, silu=True) * 2

    args = (inputs["x"], inputs["weight"], inputs["bias"], inputs["add"])
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    # backend="eager" runs the traced ops as they are (no code generation): the same computation
    assert_close(compiled(*args), block(*args), 0, 0, what="compiled vs eager")


# --- GPU: every GroupNorm input (C, H = W, 32 groups) of the two U-Nets, found by running diffusers'
# UNet2DModel with tests/model_factory's configs on the meta device with hooks on its GroupNorms ---
CIFAR10_GROUP_NORM_SHAPES = [
    (128, 32), (256, 32), (384, 32), (128, 16), (256, 16), (384, 16), (512, 16), (256, 8), (512, 8), (256, 4),
    (512, 4),
]  # fmt: skip
FAMILY_256_GROUP_NORM_SHAPES = [
    (128, 256), (256, 256), (128, 128), (256, 128), (384, 128), (128, 64), (256, 64), (384, 64), (512, 64),
    (256, 32), (512, 32), (768, 32), (256, 16), (512, 16), (768, 16), (1024, 16), (512, 8), (1024, 8),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels,size", CIFAR10_GROUP_NORM_SHAPES + FAMILY_256_GROUP_NORM_SHAPES)
def test_cuda_matches_reference_at_unet_shapes(batch, channels, size, monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "ext")  # past the not-yet-run-on-a-GPU gate of auto
    for dtype in DTYPES:
        for channels_last in (False, True):
            inputs = make_inputs(
                (batch, channels, size, size),
                32,
                dtype,
                channels_last=channels_last,
                add=True,
                scaled=True,
                device="cuda",
            )
            assert backend_ext.why_not_group_norm(**inputs) == []
            actual, expected = run_both(inputs, silu=True)
            assert actual.is_cuda
            layout = "channels_last" if channels_last else "nchw"
            what = f"cuda group_norm {(batch, channels, size, size)} {dtype} {layout}"
            assert_close(actual, expected, *tolerance(dtype), what=what)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,groups", SHAPES + [((1, 12, 3, 5), 4), ((2, 32, 70, 3), 8)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cuda_matches_reference_on_irregular_shapes(shape, groups, channels_last):
    for dtype in DTYPES:
        inputs = make_inputs(
            shape, groups, dtype, channels_last=channels_last, add=True, scaled=True, device="cuda"
        )
        actual, expected = run_both(inputs, silu=True)
        assert_close(actual, expected, *tolerance(dtype), what=f"cuda group_norm {shape} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("size", [8, 96], ids=["shared", "split"])  # 2 x 96 x 96 per group: the split path
def test_cuda_keeps_a_large_mean_exact(size):
    x = 100 + 0.01 * torch.randn(2, 64, size, size, device="cuda")
    actual = backend_ext.group_norm(x, 32, None, None, 1e-6)
    assert_close(actual, F.group_norm(x.double(), 32, eps=1e-6), 6e-4, 0, what=f"{size}x{size}, large mean")


@pytest.mark.gpu
def test_cuda_graph_capture_replays_the_kernel():
    inputs = make_inputs((2, 64, 16, 16), 32, torch.float32, add=True, device="cuda")
    x = inputs["x"]
    call = lambda: backend_ext.group_norm(
        x, 32, inputs["weight"], inputs["bias"], 1e-6, add=inputs["add"], silu=True
    )
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.group_norm(
        x, 32, inputs["weight"], inputs["bias"], 1e-6, add=inputs["add"], silu=True
    )
    assert_close(out, expected, *tolerance(torch.float32), what="graph replay")

"""kernels/group_norm.py against reference.group_norm: fused and split-reduction paths, every dtype, NCHW
and channels_last, with and without add / affine / scale-shift / SiLU, on irregular shapes.

Without CUDA the kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set here, before any
kernel is defined. With CUDA they are compiled, and the interpreter tests skip (the GPU tests run).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the definition of every triton kernel

pytest.importorskip("triton")

from fastddpm import ops  # noqa: E402
from fastddpm.ops import (
    backend_triton,  # noqa: E402
    reference,  # noqa: E402
)
from tests.tolerances import assert_close, tolerance  # noqa: E402

group_norm_kernels = backend_triton.kernel_module("group_norm")
interpreter_only = pytest.mark.skipif(
    not backend_triton.interpreted(),
    reason="kernels are compiled for CUDA here; interpreter tests run on CPU",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# A tiny group spanning several blocks: 2 channels x 5 x 7 = 70 elements, blocks of 16, chunks of 32 ->
# three chunks of two blocks each, the last one masked.
SPLIT_TILING = dict(path="split", block=16, chunk=32)


def _inputs(shape, groups, dtype, *, channels_last=False, options="all", offset=0.0, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(shape, generator=gen) * 2 + offset).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)

    def per(*dims):
        return torch.randn(dims, generator=gen).to(device)

    affine = options in ("all", "affine")
    extras = options == "all"
    return dict(
        x=x.to(device),
        num_groups=groups,
        weight=per(c) if affine else None,
        bias=per(c) if affine else None,
        eps=1e-5,
        add=per(n, c) if extras else None,
        scale=per(n, c) if extras else None,
        shift=per(n, c) if extras else None,
        silu=options in ("all", "silu"),
    )


def _check(inputs, **tiling):
    actual = group_norm_kernels.group_norm(**inputs, **tiling)
    expected = reference.group_norm(**inputs)
    x = inputs["x"]
    what = f"group_norm {tuple(x.shape)} groups={inputs['num_groups']} {x.dtype} {tiling}"
    assert actual.dtype == x.dtype, what
    layout = torch.channels_last if group_norm_kernels.is_channels_last(x) else torch.contiguous_format
    assert actual.is_contiguous(memory_format=layout), f"{what}: layout not kept"
    assert_close(actual, expected, *tolerance(x.dtype), what=what)


# Every dtype, layout, option set and path appears, without the full product (the interpreter is slow).
CPU_CASES = [
    (torch.float32, False, "all", SPLIT_TILING),
    (torch.float32, True, "affine", SPLIT_TILING),
    (torch.float32, False, "silu", dict(path="fused")),
    (torch.float32, True, "all", dict(path="fused")),
    (torch.float16, True, "all", SPLIT_TILING),
    (torch.float16, False, "affine", dict(path="fused")),
    (torch.bfloat16, False, "all", SPLIT_TILING),
    (torch.bfloat16, True, "silu", dict(path="fused")),
]


@interpreter_only
@pytest.mark.parametrize("dtype, channels_last, options, tiling", CPU_CASES)
def test_group_norm_matches_reference(dtype, channels_last, options, tiling):
    shape = (3, 6, 5, 7)  # odd batch, C not a power of two, H != W
    _check(_inputs(shape, 3, dtype, channels_last=channels_last, options=options), **tiling)


@interpreter_only
def test_default_plan_other_group_counts_and_ranks():
    _check(_inputs((1, 6, 3, 4), 6, torch.float32))  # one channel per group, the default plan
    _check(_inputs((2, 5, 9, 2), 1, torch.float32, channels_last=True), path="split", block=8, chunk=40)
    _check(
        _inputs((3, 4, 10), 2, torch.float32, options="affine"), path="split", block=8, chunk=8
    )  # (N, C, L)


@interpreter_only
@pytest.mark.parametrize("tiling", [SPLIT_TILING, dict(path="fused")])
def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread(tiling):
    # sum(x^2)/n - mean^2 loses the variance to cancellation at mean 100, std 2 (float32 sums near 1e4),
    # and even sum(x)/n is off by ~1e-5; the pivot-shifted sums are not. The truth here is float64:
    # torch's own float32 group_norm is off by ~1e-5 at this offset.
    inputs = _inputs((3, 6, 5, 7), 3, torch.float32, options="affine", offset=100.0)
    actual = group_norm_kernels.group_norm(**inputs, **tiling)
    x, weight, bias = (inputs[name].double() for name in ("x", "weight", "bias"))
    expected = torch.nn.functional.group_norm(x, 3, weight, bias, inputs["eps"])
    assert_close(actual, expected, 1e-6, 1e-6, what=f"group_norm at mean 100 {tiling} vs float64")


@interpreter_only
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_256x256_group_in_half_precision_through_the_split_path(channels_last):
    # 2 x 256 x 256 = 131072 elements per group: float16 sums would overflow, float32 statistics do not.
    inputs = _inputs((1, 4, 256, 256), 2, torch.float16, channels_last=channels_last, offset=3.0)
    _check(inputs, path="split", block=16384, chunk=32768)


@interpreter_only
def test_weight_without_bias_and_non_contiguous_input():
    inputs = _inputs((3, 6, 7, 5), 2, torch.float32, options="affine")
    inputs["bias"] = None
    inputs["x"] = inputs["x"].transpose(2, 3)  # neither NCHW- nor NHWC-dense: copied to contiguous
    _check(inputs, path="split", block=16, chunk=16)


def test_plan_fills_the_gpu_at_batch_1_and_fuses_small_groups_at_large_batch():
    plan = group_norm_kernels._plan
    # cifar10-32 (B, 128, 32, 32), 32 groups of 4096: fused at batch 64, split into chunks at batch 1
    assert plan(64 * 32, 4096, None, None, None) == (True, 4096, 4096)
    fused, block, chunk = plan(32, 4096, None, None, None)
    assert not fused and 32 * -(-4096 // chunk) >= group_norm_kernels.TARGET_PROGRAMS // 2
    # 256 px (B, 128, 256, 256): groups of 4 x 65536 never fit a block; chunks are whole blocks
    fused, block, chunk = plan(8 * 32, 4 * 65536, None, None, None)
    assert not fused and chunk % block == 0 and 8 * 32 * -(-4 * 65536 // chunk) >= 1024
    # the interpreter (target 1 program): fused whenever a group fits
    assert plan(2, 70, None, None, None, target_programs=1)[0]


def test_group_norm_launcher_rejects_bad_input_naming_the_argument():
    inputs = _inputs((2, 6, 3, 3), 4, torch.float32)
    with pytest.raises(ValueError, match="6 channels do not split into 4 groups"):
        group_norm_kernels.group_norm(**inputs)
    inputs = _inputs((2, 6, 3, 3), 3, torch.float32)
    inputs["shift"] = None
    with pytest.raises(ValueError, match="scale and shift"):
        group_norm_kernels.group_norm(**inputs)
    with pytest.raises(ValueError, match="too large to fuse"):
        group_norm_kernels.group_norm(**_inputs((1, 2, 64, 65), 1, torch.float32), path="fused")


@interpreter_only
def test_explicit_triton_serves_group_norm_and_says_why_when_it_cannot(monkeypatch):
    monkeypatch.setenv("FASTDDPM_BACKEND", "triton")
    inputs = _inputs((3, 6, 5, 7), 3, torch.float32)
    actual = ops.group_norm(**inputs)
    assert_close(actual, reference.group_norm(**inputs), 1e-5, 1e-5, what="ops.group_norm under triton")
    inputs["weight"] = torch.randn(5)
    with pytest.raises(ops.BackendUnavailable, match=r"triton: weight is not a float tensor of shape \(6,\)"):
        ops.group_norm(**inputs)


# --------------------------------------------------------------------------------------------------- GPU

CIFAR_SHAPES = [(128, 32), (256, 16), (256, 8), (256, 4)]  # (channels, size) of the cifar10-32 U-Net
LARGE_SHAPES = [(128, 256), (256, 64), (512, 16)]  # of the 256 px U-Net


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("channels, size", CIFAR_SHAPES)
def test_cuda_group_norm_at_cifar_unet_shapes(channels, size, batch, dtype, channels_last):
    _check(_inputs((batch, channels, size, size), 32, dtype, channels_last=channels_last, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels, size", LARGE_SHAPES)
def test_cuda_group_norm_at_256px_unet_shapes(channels, size, dtype, channels_last):
    _check(_inputs((2, channels, size, size), 32, dtype, channels_last=channels_last, device="cuda"))


# (shape, groups) per path: the fused kernel holds a whole group in registers, so its shapes stay within
# FUSED_MAX_GROUP elements per group; the split path also takes a group of 5 x 1023 = 5115.
IRREGULAR_SHAPES = {
    "fused": (((3, 6, 5, 7), 3), ((5, 96, 17, 9), 32), ((1, 40, 15, 17), 8)),
    "split": (((3, 6, 5, 7), 3), ((5, 96, 17, 9), 32), ((1, 40, 31, 33), 8)),
}


def test_the_fused_gpu_cases_fit_the_fused_kernel():
    # A fused case with a larger group raises instead of testing anything (runs on CPU: no launch).
    for (_, c, h, w), groups in IRREGULAR_SHAPES["fused"]:
        assert c // groups * h * w <= group_norm_kernels.FUSED_MAX_GROUP


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fused", "split"])
def test_cuda_group_norm_both_paths_on_irregular_shapes(path):
    for shape, groups in IRREGULAR_SHAPES[path]:
        for options in ("all", "affine", "silu"):
            _check(_inputs(shape, groups, torch.float32, options=options, device="cuda"), path=path)

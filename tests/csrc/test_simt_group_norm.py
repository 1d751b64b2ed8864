"""csrc/group_norm_kernel.cuh's CUDA kernels, run on the CPU through the SIMT emulation (csrc/simt/), against
reference.group_norm: both paths (one block per group through shared memory; split reduction), both vector
widths, both layouts, every dtype. `python -m pytest -m simt` runs these; .ci/run also runs them under
ASan and TSan (FASTDDPM_SIMT_SANITIZE)."""

import pytest
import torch

from fastddpm.ops import reference
from tests.csrc import simt_ops
from tests.tolerances import assert_close, tolerance

pytestmark = pytest.mark.simt
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHARED_GROUP_LIMIT = (48 * 1024 - 32 * 4) // 4  # csrc/group_norm_kernel.cuh kSharedGroupLimit


def make_inputs(shape, groups, dtype, channels_last, options, seed):
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    per = lambda *dims: torch.randn(dims, generator=gen)  # noqa: E731
    return dict(
        x=x,
        num_groups=groups,
        # Distinct values per channel: a kernel that applies one channel's parameters to another fails.
        weight=per(c) if "affine" in options else None,
        bias=per(c) if "affine" in options else None,
        eps=1e-6,
        add=per(n, c) if "add" in options else None,
        scale=per(n, c) if "scale" in options else None,
        shift=per(n, c) if "scale" in options else None,
        silu="silu" in options,
    )


def check(inputs):
    x = inputs["x"]
    ops = simt_ops.load()
    actual = ops.group_norm(
        x,
        inputs["num_groups"],
        inputs["weight"],
        inputs["bias"],
        inputs["eps"],
        inputs["add"],
        inputs["scale"],
        inputs["shift"],
        inputs["silu"],
    )
    keys = ("add", "scale", "shift", "silu")
    expected = reference.group_norm(
        x,
        inputs["num_groups"],
        inputs["weight"],
        inputs["bias"],
        inputs["eps"],
        **{k: inputs[k] for k in keys},
    )
    layout = (
        torch.channels_last if inputs["x"].dim() == 4 and not x.is_contiguous() else torch.contiguous_format
    )
    what = f"simt group_norm {tuple(x.shape)} G={inputs['num_groups']} {x.dtype} layout={layout}"
    assert actual.dtype == x.dtype and actual.is_contiguous(memory_format=layout), what
    assert_close(actual, expected, *tolerance(x.dtype), what=what)


ALL = ("affine", "add", "scale", "silu")
# (shape, groups): which path and vector width each takes, for float32 (16-byte packs of 4) / 16-bit (8).
SHAPES = [
    ((2, 6, 5, 7), 2),  # H*W = 35 and C/G = 3: no packs in either layout
    ((2, 16, 4, 6), 2),  # H*W = 24, C/G = 8: packs in both layouts, for every dtype
    ((1, 32, 3, 3), 4),  # C/G = 8, H*W = 9: packs only channels-last
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_shared_memory_path_matches_reference(shape, groups, channels_last, dtype):
    check(make_inputs(shape, groups, dtype, channels_last, ALL, seed=sum(shape)))


@pytest.mark.parametrize("options", [(), ("affine",), ("add", "silu")], ids=lambda o: "-".join(o) or "plain")
def test_option_subsets(options):
    check(make_inputs((2, 16, 4, 6), 2, torch.float32, True, options, seed=3))


@pytest.mark.parametrize(
    "dtype, channels_last",
    [(torch.float32, False), (torch.float32, True), (torch.float16, True), (torch.bfloat16, False)],
    ids=str,
)
def test_split_path_matches_reference(dtype, channels_last):
    # 8 x 2000 = 16000 elements per group, over the shared-memory limit: split into 2 chunks of 8192 (f32).
    check(make_inputs((1, 16, 40, 50), 2, dtype, channels_last, ALL, seed=7))


def test_split_path_unaligned_run():
    # C/G = 5 channels-last and H*W = 2601 NCHW: scalar loads in the split path.
    check(make_inputs((1, 5, 51, 51), 1, torch.float32, True, ALL, seed=8))
    check(make_inputs((1, 5, 51, 51), 1, torch.float16, False, ALL, seed=9))


def test_a_group_of_12288_floats_launches():
    # C = 384, G = 32 at 32 x 32 (a cifar10 up block) has groups of 12 x 1024 floats: 48 KiB of dynamic plus
    # 128 B of static shared memory is over the default limit, so such a group must take the split path.
    check(make_inputs((1, 12, 32, 32), 1, torch.float32, False, ("affine",), seed=10))


def test_the_largest_shared_memory_group_launches():
    check(make_inputs((1, 32, 1, SHARED_GROUP_LIMIT // 32), 1, torch.float32, True, ("affine",), seed=11))


def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread():
    x = 100 + 0.01 * torch.randn(1, 8, 6, 5, generator=torch.Generator().manual_seed(1))
    actual = simt_ops.load().group_norm(x, 2, None, None, 1e-6, None, None, None, False)
    exact = torch.nn.functional.group_norm(x.double(), 2, eps=1e-6)
    # float32 places a mean of 100 only to ~4e-6, 4e-4 of the spread (measured max |diff| ~1e-4)
    assert_close(actual, exact, 6e-4, 0, what="simt group_norm of a large-mean input against float64")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_an_input_with_a_storage_offset_takes_the_scalar_path(channels_last, dtype):
    """A slice one element into its storage: its 16-byte packs are misaligned, which a GPU faults on (and
    the emulation aborts on), so the launcher must read it element by element."""
    inputs = make_inputs((2, 16, 4, 6), 2, dtype, channels_last, ALL, seed=12)  # packs when aligned
    x = inputs["x"]
    storage = torch.zeros(x.numel() + 1, dtype=dtype)
    sliced = torch.as_strided(storage, x.shape, x.stride(), 1)
    sliced.copy_(x)
    assert sliced.data_ptr() % 16 != 0
    check({**inputs, "x": sliced})

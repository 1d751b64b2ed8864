"""Batch-invariant sampling on the CPU (fastddpm.models.batch_invariant): with Philox noise, image i depends
on (seed, i, settings) only. The float images of one batch of 8, of eight batches of 1 and of batches of
3 + 5 are compared with torch.equal, for every sampler, on nets with awkward shapes (channel counts that
are not a multiple of the vector width, several heads, scale-shift norm, an ADM net with its fp16 blocks),
in float32 and bfloat16. Each case failed before the mode existed (the time-embedding MLP went through MKL,
which picks its kernel by the number of rows: differences of 1e-7 to 1e-6 after a few steps).
"""

from __future__ import annotations

import pytest
import torch

import fastddpm
from fastddpm.models import batch_invariant
from fastddpm.ops import backend_ext
from fastddpm.schedulers.samplers import SAMPLERS
from tests import model_factory
from tests.adm_checkpoint import reference_model, save_checkpoint

pytestmark = pytest.mark.skipif(
    not backend_ext.cpu_kernels_usable(), reason="fastddpm._C's CPU kernels are not built for this CPU"
)

STEPS = 4  # PNDM's warm-up needs 4
# 18 and 30 channels: neither a multiple of AVX2's 8 nor AVX-512's 16 lanes; 30 / 6 = 5 heads.
ODD_CONFIG = model_factory.small_cifar10_config(
    sample_size=8, block_out_channels=[18, 30, 30, 30], norm_num_groups=3, attention_head_dim=6
)
SCALE_SHIFT_CONFIG = model_factory.small_cifar10_config(
    sample_size=8,
    block_out_channels=[16, 32, 32, 32],
    norm_num_groups=4,
    resnet_time_scale_shift="scale_shift",
    in_channels=1,
    out_channels=1,
)


def unet_pipe(config: dict, seed: int) -> fastddpm.Pipeline:
    return fastddpm.Pipeline(model_factory.random_fastddpm_unet(config, seed=seed))


@pytest.fixture(scope="module")
def odd_pipe():
    return unet_pipe(ODD_CONFIG, 1)


@pytest.fixture(scope="module")
def scale_shift_pipe():
    return unet_pipe(SCALE_SHIFT_CONFIG, 2)


@pytest.fixture(scope="module")
def adm_pipe(tmp_path_factory):
    model, given, _, size = reference_model("guided_64_cond")  # fp16 blocks, scale-shift, resblock up/down
    path = save_checkpoint(model, tmp_path_factory.mktemp("adm") / "model.pt")
    return fastddpm.load(path, sample_size=8, **given)


def draw(pipe, batch, offset, sampler, **settings) -> torch.Tensor:
    run = dict(num_inference_steps=STEPS, noise="philox", seed=11, output_type="pt", progress=False)
    if sampler is not None:
        run["sampler"] = sampler
    return pipe(batch_size=batch, sample_offset=offset, **run, **settings).images


def assert_batch_invariant(pipe, sampler, **settings):
    whole = draw(pipe, 8, 0, sampler, **settings)
    singles = torch.cat([draw(pipe, 1, i, sampler, **settings) for i in range(8)])
    split = torch.cat([draw(pipe, 3, 0, sampler, **settings), draw(pipe, 5, 3, sampler, **settings)])
    assert whole.dtype == torch.float32 and torch.isfinite(whole).all()
    assert (whole[0] - whole[1]).abs().max() > 0.05, "the images must differ from each other"
    gap = float((whole - singles).abs().max())
    assert torch.equal(whole, singles), f"batch 8 vs 8 x batch 1: max difference {gap:.3g}"
    assert torch.equal(whole, split), (
        f"batch 8 vs 3 + 5: max difference {float((whole - split).abs().max()):.3g}"
    )


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_is_batch_invariant_on_odd_channels_and_heads(odd_pipe, sampler):
    assert_batch_invariant(odd_pipe, sampler)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m-sde"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("net", ["odd_pipe", "scale_shift_pipe", "default"])
def test_unets_are_batch_invariant_in_float32_and_bfloat16(net, dtype, sampler, request, monkeypatch):
    pipe = fastddpm.load(None) if net == "default" else request.getfixturevalue(net)
    pipe.to(dtype=dtype)
    # Which kernels served, too: bf16 rounding between layers hides the batch-variant kernels' 1e-7
    # differences on this small net (with FASTDDPM_BATCH_INVARIANT=0 the bf16 cases pass the equality here).
    served = []
    for name in ("matmul_rows", "winograd_conv3x3"):
        original = getattr(backend_ext, name)
        monkeypatch.setattr(
            backend_ext, name, lambda *a, _f=original, _n=name, **k: served.append(_n) or _f(*a, **k)
        )
    try:
        assert_batch_invariant(pipe, sampler)
    finally:
        pipe.to(dtype=torch.float32)
    assert {"matmul_rows", "winograd_conv3x3"} <= set(served)


@pytest.mark.parametrize("sampler", [None, "ddim", "dpm++2m"])  # None: theirs, p_sample_loop
def test_adm_net_is_batch_invariant(adm_pipe, sampler):
    assert_batch_invariant(adm_pipe, sampler)


def test_thread_count_does_not_change_an_image(odd_pipe):
    # torchrun gives each process one thread, a single process takes every core: the same images.
    whole = draw(odd_pipe, 8, 0, "ddpm")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two_threads = draw(odd_pipe, 8, 0, "ddpm")
        single = draw(odd_pipe, 1, 5, "ddpm")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(whole, two_threads)
    assert torch.equal(whole[5:6], single)


def test_opting_out_takes_the_batch_variant_kernels(odd_pipe, monkeypatch):
    # The switch is read per call; the opt-out path (oneDNN / MKL) still samples correctly, and the two
    # paths agree to float32 rounding over the steps: measured 4e-7 on one AMD EPYC (AVX2) and 1.2e-5 on
    # another (AVX2 too; oneDNN / MKL block by the CPU model). A wrong kernel moves the images by 1e-1.
    # Which kernels served tells the paths apart; the images cannot (two computations that may agree).
    served = []
    original = backend_ext.matmul_rows
    monkeypatch.setattr(backend_ext, "matmul_rows", lambda *a, **k: served.append(1) or original(*a, **k))
    invariant = draw(odd_pipe, 4, 0, "ddim")
    assert served, "the batch-invariant mode should take fastddpm._C's matmul_rows"
    served.clear()
    monkeypatch.setenv(batch_invariant.ENV_VAR, "0")
    variant = draw(odd_pipe, 4, 0, "ddim")
    assert not served, "FASTDDPM_BATCH_INVARIANT=0 should take other kernels"
    assert float((invariant - variant).abs().max()) < 5e-5
    monkeypatch.setenv(batch_invariant.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="FASTDDPM_BATCH_INVARIANT='maybe' is not one of"):
        draw(odd_pipe, 1, 0, "ddim")

"""ADM upsamplers (their SuperResModel) through the pipeline, as their super_res_sample.py samples them.

Each published upsampler's structure at reduced width (tests/adm_families.py's SUPER_RES_FAMILIES) is saved as
they save it, loaded with its flags and sampled with the same x_T, low-resolution images, labels and per-step
noise as the independent reference's loops (tests/adm_reference.py's SuperResModel and SpacedDiffusion, with
model_kwargs {"low_res", "y"} as their script passes them).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.ops import backend_ext
from fastddpm.schedulers import samplers
from tests import adm_reference
from tests.adm_checkpoint import reference_model, reference_upsampler, save_checkpoint
from tests.adm_families import SUPER_RES_FAMILIES
from tests.tolerances import assert_close

# Measured max |ours - reference| over images in [0, 1] after the whole loop (AMD EPYC, one thread):
# 1.3e-6 .. 3.6e-6 over the three families and both loops (6 levels each, 32 px). Without low_res's
# bilinear upsampling (nearest instead) the images move by 0.1 and more: see the last test.
TOLERANCE = 1e-3
# A sample alone against the same sample in a batch of 3 where fastddpm._C's CPU kernels do not serve (built
# for another instruction set): oneDNN / MKL then choose their kernels by batch, so the two are different
# computations. Measured max 1.3e-4 (ATEN_CPU_CAPABILITY=avx2) and 1.5e-4 (default) over every sampler, on
# an Intel Xeon with the AVX-512 extension refused; the bound is ~3x that.
BATCH_VARIANT_TOLERANCE = 5e-4
SETTINGS = {  # family -> (sampler, respacing, eta, low_res given as uint8 NHWC pixels)
    "guided_64_256_upsampler": ("ddpm", "3", 0.0, True),
    "guided_128_512_upsampler": ("ddim", "ddim3", 0.5, False),
    "improved_64_256_upsampler": ("ddpm", "2,1", 0.0, False),
}


@functools.cache
def _upsampler(family: str, folder: str):
    model, given, flags, size, small = reference_upsampler(family)
    path = save_checkpoint(model, __import__("pathlib").Path(folder) / f"{family}.pt")
    return model, given, flags, size, small, fastddpm.load(path, sample_size=size, **given)


@pytest.fixture(scope="module")
def upsamplers(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("upsamplers"))
    return lambda family: _upsampler(family, folder)


def low_res_pixels(batch: int, small: int, seed: int = 2) -> np.ndarray:
    """uint8 NHWC images, as their base samples' npz holds them."""
    return np.random.default_rng(seed).integers(0, 256, (batch, small, small, 3), dtype=np.uint8)


def as_their_batch(pixels: np.ndarray) -> torch.Tensor:
    """Their load_data_for_worker: float, / 127.5 - 1, NHWC -> NCHW."""
    return (torch.from_numpy(pixels).float() / 127.5 - 1.0).permute(0, 3, 1, 2)


def reference_images(flags, model, sampler, respacing, eta, x_T, kwargs, seed):
    diffusion = adm_reference.SpacedDiffusion({**flags, "timestep_respacing": respacing})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if sampler == "ddpm":
            x = diffusion.p_sample_loop(model, x_T.shape, noise=x_T, generator=generator, model_kwargs=kwargs)
        else:
            x = diffusion.ddim_sample_loop(
                model, x_T.shape, noise=x_T, generator=generator, model_kwargs=kwargs, eta=eta
            )
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("family", list(SUPER_RES_FAMILIES))
def test_upsampling_matches_their_loops(family, upsamplers):
    model, given, flags, size, small, pipe = upsamplers(family)
    sampler, respacing, eta, as_pixels = SETTINGS[family]
    pixels = low_res_pixels(2, small)
    low_res = pixels if as_pixels else as_their_batch(pixels)
    x_T = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 777]) if flags["class_cond"] else None
    images = pipe(
        batch_size=2, sampler=sampler, eta=eta, timestep_respacing=respacing, latents=x_T, low_res=low_res,
        class_labels=labels, generator=torch.Generator().manual_seed(5), output_type="pt", progress=False,
    ).images  # fmt: skip
    kwargs = {"low_res": as_their_batch(pixels), **({"y": labels} if labels is not None else {})}
    expected = reference_images(flags, model, sampler, respacing, eta, x_T, kwargs, 5)
    assert (images - expected).abs().max().item() < TOLERANCE


def test_the_low_resolution_image_steers_the_sample(upsamplers):
    """Two different low-resolution images give different samples from the same noise (a dropped or ignored
    low_res would give the same), and the reference with a nearest-neighbour upsampling differs (a wrong
    interpolation would not pass the test above)."""
    model, given, flags, size, small, pipe = upsamplers("improved_64_256_upsampler")
    x_T = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    def run(pixels):
        return pipe(batch_size=1, sampler="ddim", timestep_respacing="3", latents=x_T, low_res=pixels,
                    output_type="pt", progress=False).images  # fmt: skip

    first, second = run(low_res_pixels(1, small, seed=3)), run(low_res_pixels(1, small, seed=4))
    assert (first - second).abs().max().item() > 0.1

    class Nearest(adm_reference.SuperResModel):
        def forward(self, x, timesteps, low_res=None, y=None):
            upsampled = torch.nn.functional.interpolate(low_res, x.shape[2:], mode="nearest")
            return adm_reference.UNetModel.forward(self, torch.cat([x, upsampled], dim=1), timesteps, y)

    model.__class__ = Nearest
    try:
        kwargs = {"low_res": as_their_batch(low_res_pixels(1, small, seed=3))}
        nearest = reference_images(flags, model, "ddim", "3", 0.0, x_T, kwargs, 0)
    finally:
        model.__class__ = adm_reference.SuperResModel
    assert (first - nearest).abs().max().item() > 20 * TOLERANCE


FAST_SAMPLERS = [name for name in samplers.NAMES if name not in ("ddpm", "ddim")]


@pytest.mark.parametrize("name", FAST_SAMPLERS)
def test_every_sampler_draws_image_b_from_low_res_b(name, upsamplers):
    """Philox: each image depends on its own low-resolution image and index only (batch of 3 == each alone)."""
    model, given, flags, size, small, pipe = upsamplers("guided_64_256_upsampler")
    pixels = low_res_pixels(3, small)
    labels = torch.tensor([1, 500, 999])

    def run(rows):
        return pipe(
            batch_size=len(rows), sampler=name, num_inference_steps=4, low_res=pixels[rows], seed=7,
            class_labels=labels[rows], noise="philox", sample_offset=rows[0], output_type="pt", progress=False,
        ).images  # fmt: skip

    together = run([0, 1, 2])
    assert torch.isfinite(together).all()
    for b in range(3):
        alone = run([b])
        if backend_ext.cpu_kernels_usable():  # the batch-invariant kernels: the same computation
            assert torch.equal(alone, together[b : b + 1]), b
        else:
            assert_close(alone, together[b : b + 1], BATCH_VARIANT_TOLERANCE, 0, f"{name} sample {b}")


def test_a_fast_sampler_matches_diffusers_loop_on_an_upsampler(upsamplers):
    """dpm++2m on an upsampler against diffusers' standard loop over the reference net with low_res bound."""
    pytest.importorskip("diffusers")
    from tests.test_adm_fast_samplers import diffusers_loop

    model, given, flags, size, small, pipe = upsamplers("improved_64_256_upsampler")
    low_res = as_their_batch(low_res_pixels(2, small))
    bound = functools.partial(model, low_res=low_res)
    expected = diffusers_loop(
        bound, flags, "dpm++2m", False, 4, 2, size, None, torch.Generator().manual_seed(3)
    )
    ours = pipe(batch_size=2, sampler="dpm++2m", num_inference_steps=4, low_res=low_res,
                generator=torch.Generator().manual_seed(3), output_type="pt", progress=False).images  # fmt: skip
    # measured 2.4e-4 (images in [0, 1]; dpm++2m's first step multiplies the net's ~1e-5 difference from the
    # reference by sigma_max ~ 157); low_res dropped (zeros in the pipeline): 1.0
    assert (ours - (expected / 2 + 0.5).clamp(0, 1)).abs().max().item() < TOLERANCE


# ------------------------------------------------------------------------------------------ bad input


def test_bad_low_res_is_one_line(upsamplers):
    model, given, flags, size, small, pipe = upsamplers("guided_64_256_upsampler")
    call = functools.partial(pipe, batch_size=2, sampler="ddim", num_inference_steps=1, progress=False)
    cases = [
        ({}, "low_res is required"),
        ({"low_res": low_res_pixels(2, small + 1)}, "must be NHWC (2, 8, 8, 3)"),
        ({"low_res": low_res_pixels(3, small)}, "must be NHWC (2, 8, 8, 3)"),
        ({"low_res": as_their_batch(low_res_pixels(2, small)).permute(0, 2, 3, 1)}, "must be NCHW"),
        ({"low_res": low_res_pixels(2, small).astype(np.int32)}, "dtype torch.int32"),
        ({"low_res": as_their_batch(low_res_pixels(2, small)) * 127.5 + 127.5}, "must lie in [-1, 1]"),
        ({"low_res": [[0]]}, "got list"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=__import__("re").escape(message)):
            call(class_labels=[1, 2], **kwargs)


def test_low_res_for_a_model_that_is_no_upsampler_is_refused(tmp_path):
    model, given, flags, size = reference_model("improved_cifar10")
    pipe = fastddpm.load(save_checkpoint(model, tmp_path / "m.pt"), sample_size=size, **given)
    with pytest.raises(ValueError, match="not an upsampler"):
        pipe(batch_size=1, num_inference_steps=1, low_res=low_res_pixels(1, 8), progress=False)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"large_size": "128"}, "flag large_size=128 is not a size their upsamplers are built for"),
        ({"large_size": "64"}, "flag large_size=64 contradicts the weights"),
        ({"small_size": "300"}, "flag small_size=300 must be between 1 and large_size=256"),
        ({"image_size": "64"}, "flag image_size does not apply to an upsampler"),
        ({"use_new_attention_order": "True"}, "flag use_new_attention_order does not apply"),
    ],
)
def test_contradicting_upsampler_flags_are_one_line(flags, message, upsamplers, tmp_path):
    model, given, _, size, _, _ = upsamplers("guided_64_256_upsampler")
    path = save_checkpoint(model, tmp_path / "up.pt")
    with pytest.raises(ValueError, match=message):
        fastddpm.load(path, sample_size=size, **{**given, **flags})


def test_upsampler_flags_on_a_base_model_are_refused(tmp_path):
    model, given, flags, size = reference_model("improved_cifar10")
    path = save_checkpoint(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="flag large_size applies to upsamplers"):
        fastddpm.load(path, large_size=256, **given)

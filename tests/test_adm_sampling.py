"""Sampling ADM checkpoints through the pipeline as their p_sample_loop / ddim_sample_loop do.

Each family's reduced-width net is saved as they save it, loaded with its flags, and sampled with the same
x_T and the same per-step noise (noise="torch": one normal of the batch's shape per step from the
generator, the last step's included) as the independent reference's loops (tests/adm_reference.py, which
matches OpenAI's own code; see its docstring). Steps are few to keep the CPU suite fast.
"""

from __future__ import annotations

import pytest
import torch

import fastddpm
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_families import FAMILIES

# The criterion. Measured max |ours - reference| over images in [0, 1] after the whole loop:
# 2.3e-6 .. 3.5e-6 for the 4-level nets, 2.6e-5 .. 5.3e-4 for the 5- to 7-level ones (guided_512_cond the
# largest; 3.9e-4 with FASTDDPM_CPU_CONV=direct). Their few, long steps divide by sqrt(abar_T) ~ 0.006:
# the float32 reference itself is 1.5e-4 (512) and 5e-5 (improved_lsun) off its own float64 run.
# Fixed variances / x0 prediction (improved_lsun structure): 7.2e-6 .. 8.7e-6.
TOLERANCE = 1e-3
# Each family with one sampler setting; every sampler kind and respacing syntax appears.
SETTINGS = {
    "improved_cifar10": ("ddpm", "3", 0.0),
    "improved_imagenet64": ("ddim", "ddim3", 0.0),
    "improved_lsun": ("ddpm", "1,2", 0.0),
    "guided_64_cond": ("ddim", "2,1", 0.5),
    "guided_128_cond": ("ddpm", "3", 0.0),
    "guided_256_cond": ("ddim", "ddim3", 1.0),
    "guided_256_uncond": ("ddpm", "ddim3", 0.0),
    "guided_512_cond": ("ddim", "2", 0.0),
    "guided_lsun_256": ("ddpm", "2", 0.0),
}


def reference_images(family, flags, model, sampler, respacing, eta, x_T, labels, seed):
    from tests import adm_reference

    diffusion = adm_reference.SpacedDiffusion({**flags, "timestep_respacing": respacing})
    kwargs = {"y": labels} if labels is not None else {}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if sampler == "ddpm":
            x = diffusion.p_sample_loop(model, x_T.shape, noise=x_T, generator=generator, model_kwargs=kwargs)
        else:
            x = diffusion.ddim_sample_loop(
                model, x_T.shape, noise=x_T, generator=generator, model_kwargs=kwargs, eta=eta
            )
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sampling_matches_their_loops(family, tmp_path):
    model, given, flags, size = reference_model(family)
    pipe = fastddpm.load(save_checkpoint(model, tmp_path / "model.pt"), sample_size=size, **given)
    sampler, respacing, eta = SETTINGS[family]
    x_T = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 777]) if flags["class_cond"] else None
    images = pipe(
        batch_size=2, sampler=sampler, eta=eta, timestep_respacing=respacing, latents=x_T,
        class_labels=labels.tolist() if family == "guided_64_cond" else labels,  # a list once
        generator=torch.Generator().manual_seed(5), output_type="pt", progress=False,
    ).images  # fmt: skip
    expected = reference_images(family, flags, model, sampler, respacing, eta, x_T, labels, 5)
    assert (images - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize(
    "extra, sampler",
    [
        ("--learn_sigma False --sigma_small True --predict_xstart True", "ddpm"),  # fixed small, x0 output
        ("--learn_sigma False", "ddpm"),  # fixed large: the first step's posterior variance
        ("--learn_sigma False --predict_xstart True", "ddim"),
    ],
)
def test_fixed_variances_and_x0_prediction_match_their_loops(extra, sampler, tmp_path):
    model, given, flags, size = reference_model("improved_lsun", extra_flags=extra)
    pipe = fastddpm.load(save_checkpoint(model, tmp_path / "model.pt"), sample_size=size, **given)
    x_T = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    eta = 0.3 if sampler == "ddim" else 0.0  # ddpm has no eta (refused)
    images = pipe(batch_size=2, sampler=sampler, eta=eta, timestep_respacing="2,1", latents=x_T,
                  generator=torch.Generator().manual_seed(5), output_type="pt", progress=False).images  # fmt: skip
    expected = reference_images("improved_lsun", flags, model, sampler, "2,1", eta, x_T, None, 5)
    assert (images - expected).abs().max().item() < TOLERANCE


def test_random_class_labels_come_from_the_generator_before_x_T(tmp_path):
    model, given, flags, size = reference_model("guided_128_cond")
    pipe = fastddpm.load(save_checkpoint(model, tmp_path / "model.pt"), sample_size=size, **given)
    images = pipe(batch_size=2, timestep_respacing="2", generator=torch.Generator().manual_seed(9),
                  output_type="pt", progress=False).images  # fmt: skip
    generator = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 1000, (2,), generator=generator)  # their image_sample.py: classes first
    x_T = torch.randn(2, 3, size, size, generator=generator)
    generator_state = generator.get_state()
    expected_generator = torch.Generator()
    expected_generator.set_state(generator_state)
    expected = reference_images("guided_128_cond", flags, model, "ddpm", "2", 0.0, x_T, labels, 0)
    # the reference loop draws its step noise from a fresh generator: redo it from the shared one
    from tests import adm_reference

    diffusion = adm_reference.SpacedDiffusion({**flags, "timestep_respacing": "2"})
    with torch.no_grad():
        x = diffusion.p_sample_loop(
            model, x_T.shape, noise=x_T, generator=expected_generator, model_kwargs={"y": labels}
        )
    expected = (x / 2 + 0.5).clamp(0, 1)
    assert (images - expected).abs().max().item() < TOLERANCE


def test_philox_labels_do_not_depend_on_the_batch(tmp_path):
    model, given, flags, size = reference_model("guided_64_cond")
    pipe = fastddpm.load(save_checkpoint(model, tmp_path / "model.pt"), sample_size=size, **given)
    run = dict(timestep_respacing="1", noise="philox", seed=3, output_type="pt", progress=False)
    both = pipe(batch_size=2, **run).images
    second = pipe(batch_size=1, sample_offset=1, **run).images
    assert (both[1:] - second).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="class_labels must lie in"):
        pipe(batch_size=1, class_labels=[1000], **run)
    with pytest.raises(ValueError, match="timestep_respacing .* cannot take 600"):
        pipe(batch_size=1, **{**run, "timestep_respacing": "600,600"})

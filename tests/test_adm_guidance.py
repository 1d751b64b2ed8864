"""Classifier guidance as guided-diffusion's classifier_sample.py runs it: sampler="ddpm" as their
p_sample_loop with cond_fn (condition_mean), sampler="ddim" as ddim_sample_loop with cond_fn
(condition_score), for class-conditional and unconditional models, against the independent reference
(tests/adm_classifier_reference.py on tests/adm_reference.py) with the same x_T, labels and per-step noise.

Every published classifier's structure at reduced width (tests/adm_classifiers.py) guides the diffusion
family of its size (tests/adm_families.py), at the classifier's image size (its attention pool takes no
other). The scale is large enough that guidance moves the images by far more than the tolerance, so a
dropped or mis-scaled gradient fails.
"""

from __future__ import annotations

import pytest
import torch

import fastddpm
from fastddpm.ops import backend_ext
from tests.adm_checkpoint import reference_model, save_checkpoint
from tests.adm_classifiers import CLASSIFIERS, reference_classifier, save_classifier

# Measured max |ours - reference| over images in [0, 1] after the whole loop (float32 on both sides):
# 4.9e-6 .. 1.6e-5 for the class-conditional cases, 2.6e-5 for the unconditional 256 px ones, 5.2e-6 /
# 6.6e-6 for fixed small variances / x0 prediction. The respacings are "ddimN" (no step at t = 999): a
# first step at t = 999 divides the net's float32 error by sqrt(abar) ~ 0.003 (cosine), and there the
# unguided loops alone are already 1e-2 apart at 64 px, which would hide guidance's own error.
TOLERANCE = 1e-4
# Where fastddpm._C's CPU kernels are not used (built for another CPU, or under a forced lower
# ATEN_CPU_CAPABILITY), the network runs torch's ops: measured on an Intel Xeon (AVX-512, AMX) under
# ATEN_CPU_CAPABILITY=avx2, 3.5e-6 .. 3.8e-5 up to 256 px but 1.0e-4 and 2.7e-4 (two runs) at 512 px,
# where the wider net (64 channels) and the larger image leave more float32 error for the scale-300
# gradient to amplify.
TORCH_PATH_TOLERANCE_512 = 1e-3
SCALE = 300.0  # random-init classifiers have gradients of ~1e-3: this moves the images by 0.05 .. 0.3
MOVES_AT_LEAST = 0.02  # |guided - unguided| must exceed this (200 x the tolerance); measured 0.05 .. 0.31

# family, classifier, sampler, respacing, batch
CASES = {
    "64_cond_ddpm": ("guided_64_cond", "64x64", "ddpm", "ddim3", 2),
    "64_cond_ddim": ("guided_64_cond", "64x64", "ddim", "ddim2", 2),
    "128_cond_ddim": ("guided_128_cond", "128x128", "ddim", "ddim2", 1),
    "256_cond_ddpm": ("guided_256_cond", "256x256", "ddpm", "ddim2", 1),
    "256_uncond_ddim": ("guided_256_uncond", "256x256", "ddim", "ddim2", 1),
    "256_uncond_ddpm": ("guided_256_uncond", "256x256", "ddpm", "ddim2", 1),
}
SLOW_CASES = {"512_cond_ddpm": ("guided_512_cond", "512x512", "ddpm", "ddim2", 1)}


def reference_guided(flags, model, classifier, sampler, respacing, x_T, labels, seed, scale):
    from tests.adm_classifier_reference import GuidedDiffusion, cond_fn_for

    diffusion = GuidedDiffusion({**flags, "timestep_respacing": respacing})
    class_cond = flags["class_cond"]

    def model_fn(x, t, y=None):  # classifier_sample.py's: labels to the model only if class-conditional
        return model(x, t, y if class_cond else None)

    generator = torch.Generator().manual_seed(seed)
    loop = diffusion.p_sample_loop_guided if sampler == "ddpm" else diffusion.ddim_sample_loop_guided
    with torch.no_grad():
        x = loop(model_fn, cond_fn_for(classifier, scale), x_T.shape, x_T, generator, {"y": labels})
    return (x / 2 + 0.5).clamp(0, 1)


def guided_pair(case, tmp_path, extra_flags=""):
    family, classifier_name, sampler, respacing, batch = {**CASES, **SLOW_CASES}[case]
    model, given, flags, _ = reference_model(family, extra_flags=extra_flags)
    classifier, classifier_given = reference_classifier(CLASSIFIERS[classifier_name], seed=1)
    size = flags["image_size"]
    pipe = fastddpm.load(
        save_checkpoint(model, tmp_path / "model.pt"),
        classifier=save_classifier(classifier, tmp_path / "classifier.pt"),
        **given,
        **{k: v for k, v in classifier_given.items() if k != "image_size"},
    )
    x_T = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 777][:batch])
    run = dict(batch_size=batch, sampler=sampler, timestep_respacing=respacing, latents=x_T, class_labels=labels,
               output_type="pt", progress=False)  # fmt: skip
    images = pipe(generator=torch.Generator().manual_seed(5), classifier_scale=SCALE, **run).images
    unguided = pipe(generator=torch.Generator().manual_seed(5), classifier_scale=0, **run).images
    expected = reference_guided(flags, model, classifier, sampler, respacing, x_T, labels, 5, SCALE)
    return images, unguided, expected


def check(images, unguided, expected, tolerance=TOLERANCE):
    error = (images - expected).abs().max().item()
    moved = (images - unguided).abs().max().item()
    assert error < tolerance, error
    assert moved > MOVES_AT_LEAST, moved


@pytest.mark.parametrize("case", list(CASES))
def test_guided_sampling_matches_their_classifier_sample(case, tmp_path):
    check(*guided_pair(case, tmp_path))


@pytest.mark.slow  # 512 px on 2 cores
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_guided_sampling_at_512_px_matches_their_classifier_sample(case, tmp_path):
    tolerance = TOLERANCE if backend_ext.cpu_kernels_usable() else TORCH_PATH_TOLERANCE_512
    check(*guided_pair(case, tmp_path), tolerance)


@pytest.mark.parametrize(
    "extra", ["--learn_sigma False --sigma_small True", "--learn_sigma False --predict_xstart True"]
)
def test_fixed_variances_and_x0_prediction_guided_as_theirs(extra, tmp_path):
    """fixed_small's condition_mean uses the unclipped posterior variance (0 at the last step)."""
    check(*guided_pair("64_cond_ddpm", tmp_path, extra))

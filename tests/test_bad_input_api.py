"""Bad input to the Python API (issue 22): a one-sentence ValueError naming the argument, not NaN images
or a failure deep inside the network; and a setting that cannot apply is refused, not ignored."""

from __future__ import annotations

import math
import re

import pytest
import torch

import fastddpm
from tests.adm_checkpoint import reference_model, save_checkpoint

RUN = dict(batch_size=1, output_type="pt", progress=False, noise="philox", seed=0)


@pytest.mark.parametrize("eta", [1.5, -0.1, math.nan])
def test_ddim_eta_outside_0_1_is_refused_by_name(eta):
    pipe = fastddpm.load(None)
    with pytest.raises(ValueError, match=r"^eta must be a number in \[0, 1\], got") as error:
        pipe(sampler="ddim", eta=eta, num_inference_steps=2, **RUN)
    assert "\n" not in str(error.value)
    images = pipe(sampler="ddim", eta=1.0, num_inference_steps=2, **RUN).images  # the bound itself is taken
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "euler-a"])
def test_eta_with_a_sampler_that_has_none_is_refused_not_ignored(sampler):
    pipe = fastddpm.load(None)
    with pytest.raises(
        ValueError,
        match=rf"^eta=0.5 applies to sampler ddim only; sampler {re.escape(sampler)} does not use it$",
    ):
        pipe(sampler=sampler, eta=0.5, num_inference_steps=4, **RUN)
    assert torch.isfinite(pipe(sampler=sampler, eta=0.0, num_inference_steps=4, **RUN).images).all()


@pytest.mark.parametrize("size", [0, -8, (8, 0), (8,) * 3, "8", 8.0, True])
def test_load_refuses_a_sample_size_that_is_not_positive_integers(size):
    with pytest.raises(
        ValueError, match=r"^sample_size must be a positive integer or a \(height, width\) pair"
    ):
        fastddpm.load(None, sample_size=size)


@pytest.fixture(scope="module")
def adm_respaced(tmp_path_factory):
    """An ADM checkpoint loaded with their flags and timestep_respacing="2" (of 4000 diffusion steps)."""
    model, given, _, size = reference_model("improved_cifar10")
    path = save_checkpoint(model, tmp_path_factory.mktemp("adm") / "model.pt")
    return fastddpm.load(path, sample_size=size, **given, timestep_respacing="2")


def test_a_load_time_respacing_is_refused_where_it_cannot_apply(adm_respaced):
    pipe = adm_respaced
    assert pipe.loaded_respacing() == "2"
    # their ddpm loop takes it: two steps
    images = pipe(sampler="ddpm", **RUN).images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    # a fast sampler runs over all 4000 steps: the load's respacing would be ignored, as one given here is
    with pytest.raises(
        ValueError, match="given to load applies to ADM checkpoints' ddpm and ddim samplers only"
    ):
        pipe(sampler="dpm++2m", num_inference_steps=2, **RUN)
    with pytest.raises(ValueError, match="applies to ADM checkpoints' ddpm and ddim samplers only"):
        pipe(sampler="dpm++2m", num_inference_steps=2, timestep_respacing="2", **RUN)
    # num_inference_steps would silently replace the load's respacing: refused, naming both
    with pytest.raises(
        ValueError, match=r"num_inference_steps=3 and the timestep_respacing '2' given to load"
    ):
        pipe(sampler="ddpm", num_inference_steps=3, **RUN)
    with pytest.raises(
        ValueError, match=r"num_inference_steps=3 and timestep_respacing='1' both set the steps"
    ):
        pipe(sampler="ddim", num_inference_steps=3, timestep_respacing="1", **RUN)
    # the call's respacing replaces the load's
    assert pipe(sampler="ddim", timestep_respacing="1", **RUN).images.shape == (1, 3, 16, 16)

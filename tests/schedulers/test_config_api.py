"""diffusers' scheduler API on fastddpm's schedulers: config, save/load, from_config, outputs."""

import json

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.sampler_registry import SAMPLERS
from fastddpm.schedulers import SchedulerOutput

# module-level skip where diffusers is absent (the GPU image), not a collection error
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_save_pretrained_writes_diffusers_json_that_both_libraries_read(tmp_path, name):
    ours = getattr(fastddpm, name)(num_train_timesteps=321, beta_schedule="squaredcos_cap_v2")
    ours.save_pretrained(tmp_path / "pipe" / "scheduler")
    data = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert data["_class_name"] == name and data["num_train_timesteps"] == 321
    assert "_use_default_values" not in data
    again = getattr(fastddpm, name).from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    theirs = getattr(diffusers, name).from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    saved = {k: v for k, v in ours.config.items() if k != "_use_default_values"}  # diffusers: same
    assert dict(again.config) == saved
    assert dict(theirs.config) == dict(again.config)


def test_config_is_frozen_and_reads_by_attribute():
    config = fastddpm.DDIMScheduler(clip_sample=False).config
    assert config.clip_sample is False and config["clip_sample"] is False
    for mutate in (
        lambda: config.__setitem__("clip_sample", True),
        lambda: config.update(clip_sample=True),
        lambda: config.pop("clip_sample"),
        lambda: setattr(config, "clip_sample", True),
    ):
        with pytest.raises(TypeError, match="frozen"):
            mutate()
    assert sorted(config["_use_default_values"]) == sorted(
        set(config) - {"clip_sample", "_use_default_values"}
    )


def test_from_config_takes_diffusers_schedulers_and_overrides():
    theirs = diffusers.DDPMScheduler(num_train_timesteps=500, variance_type="fixed_large")
    ours = fastddpm.DDIMScheduler.from_config(theirs.config, clip_sample=False)
    assert ours.config.num_train_timesteps == 500 and ours.config.clip_sample is False
    assert ours.config.variance_type == "fixed_large"  # kept hidden for a later DDPM, as diffusers does
    back = fastddpm.DDPMScheduler.from_config(ours.config)
    assert back.config.variance_type == "fixed_large"
    scheduler, unused = fastddpm.DDPMScheduler.from_config({"foo": 1}, return_unused_kwargs=True)
    assert unused == {"foo": 1}


def test_register_to_config_and_deprecated_attribute_access():
    scheduler = fastddpm.DDPMScheduler()
    scheduler.register_to_config(extra=3)
    assert scheduler.config.extra == 3
    with pytest.warns(FutureWarning):
        assert scheduler.extra == 3
    with pytest.raises(AttributeError, match="'DDPMScheduler' object has no attribute 'nope'"):
        _ = scheduler.nope


def test_compatibles_build_from_each_others_config():
    names = {c.__name__ for c in fastddpm.DDPMScheduler().compatibles}
    assert {"DDPMScheduler", "DDIMScheduler"} <= names


@pytest.mark.parametrize("name", sorted({entry.class_name for entry in SAMPLERS.values()}))
def test_compatibles_are_diffusers_own_and_each_builds_from_this_config(name):
    """The same list as diffusers' class (its KarrasDiffusionSchedulers, which leave SASolverScheduler out:
    offering it from DPMSolverMultistepScheduler failed diffusers' own test_compatibles, as its from_config
    refuses algorithm_type "dpmsolver++"), and every compatible class builds from this class's config."""
    ours = getattr(fastddpm, name)()
    theirs = {c.__name__ for c in getattr(diffusers, name)().compatibles}
    registered = {entry.class_name for entry in SAMPLERS.values()}
    assert {c.__name__ for c in ours.compatibles} == theirs & registered
    for compatible in ours.compatibles:
        assert compatible.from_config(ours.config) is not None


def test_scheduler_output_behaves_like_base_output():
    prev, x0 = torch.ones(1), torch.zeros(1)
    out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
    assert out[0] is prev and out["pred_original_sample"] is x0 and out.to_tuple() == (prev, x0)
    assert list(out) == ["prev_sample", "pred_original_sample"]
    only = SchedulerOutput(prev_sample=prev)
    assert only.to_tuple() == (prev,) and only.pred_original_sample is None


def test_previous_timestep_returns_what_diffusers_returns():
    ours, theirs = fastddpm.DDPMScheduler(), diffusers.DDPMScheduler()
    assert ours.previous_timestep(7) == theirs.previous_timestep(7) == 6
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    for t in theirs.timesteps:
        a, b = ours.previous_timestep(t), theirs.previous_timestep(t)
        assert torch.is_tensor(a) and int(a) == int(b)


def test_trained_betas_array_round_trips(tmp_path):
    scheduler = fastddpm.DDPMScheduler(trained_betas=np.array([0.1, 0.3]), num_train_timesteps=2)
    scheduler.save_config(tmp_path)
    assert fastddpm.DDPMScheduler.from_pretrained(tmp_path).betas.tolist() == scheduler.betas.tolist()

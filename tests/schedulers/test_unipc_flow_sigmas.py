"""UniPC with flow-matching sigmas (use_flow_sigmas, flow_shift, alone or under Karras sigmas, custom sigmas,
flow_prediction) against diffusers 0.42.1: schedule, full loops, add_noise and the refusals."""

import numpy as np
import pytest
import torch

from fastddpm.schedulers import UniPCMultistepScheduler
from tests.schedulers.sampler_parity import SHAPE, dummy_model, ids, max_diff

diffusers = pytest.importorskip("diffusers")

TOL = 0.0  # both sides do the same float32 operations; measured 0.0 for every config below

FLOW = [
    {"use_flow_sigmas": True},
    {"use_flow_sigmas": True, "flow_shift": 3.0, "timestep_spacing": "trailing"},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"},
    {"use_flow_sigmas": True, "solver_order": 3, "flow_shift": 5.0},  # (bh1: NaN at 1 step, both sides)
    {
        "use_flow_sigmas": True,
        "prediction_type": "v_prediction",
        "lower_order_final": False,
        "final_sigmas_type": "sigma_min",
    },  # fmt: skip
    {"use_flow_sigmas": True, "use_karras_sigmas": True},
    {
        "use_flow_sigmas": True,
        "use_karras_sigmas": True,
        "sigma_min": 0.01,
        "sigma_max": 200.0,
        "final_sigmas_type": "sigma_min",
        "prediction_type": "flow_prediction",
    },  # fmt: skip
    {"use_flow_sigmas": True, "disable_corrector": [1], "beta_schedule": "scaled_linear"},
]
# the Karras bounds from the config apply without flow sigmas too (diffusers reads config.sigma_min / max)
KARRAS_BOUNDS = [{"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 50.0}]


@pytest.mark.parametrize("config", FLOW + KARRAS_BOUNDS, ids=ids)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_unipc_flow_sigmas_match_diffusers(config, steps):
    assert max_diff("UniPCMultistepScheduler", config, steps) <= TOL


@pytest.mark.parametrize("steps", [2, 7])
def test_noise_prediction_with_flow_sigmas_matches_diffusers(steps):
    # (one step to a zero final sigma divides by it: NaN on both sides)
    assert max_diff("UniPCMultistepScheduler", {"use_flow_sigmas": True, "predict_x0": False}, steps) <= TOL


@pytest.mark.parametrize("config", FLOW[:3] + FLOW[6:8], ids=ids)
def test_flow_schedule_matches_diffusers(config):
    ours, theirs = UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert ours.sigmas.dtype == theirs.sigmas.dtype == torch.float32
    assert torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.sigmas[0] < 1  # the first sigma moves off 1, so log(alpha) = log(1 - sigma) is finite


@pytest.mark.parametrize("karras", [False, True])
def test_custom_flow_sigmas_match_diffusers(karras):
    config = {"use_flow_sigmas": True, "use_karras_sigmas": karras, "flow_shift": 2.0}
    custom = np.array([1.0, 0.8, 0.55, 0.3, 0.1])  # diffusers multiplies it by flow_shift: an array
    ours, theirs = UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config)
    ours.set_timesteps(sigmas=custom)
    theirs.set_timesteps(sigmas=custom)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.num_inference_steps == theirs.num_inference_steps == len(custom)
    x_a = x_b = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        x_a = ours.step(dummy_model(x_a, t), t, x_a).prev_sample
        x_b = theirs.step(dummy_model(x_b, t), t, x_b).prev_sample
        assert torch.equal(x_a, x_b)


def test_flow_add_noise_matches_diffusers():
    config = {"use_flow_sigmas": True, "flow_shift": 3.0}
    ours, theirs = UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config)
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    t = ours.timesteps[[0, 3, 7]]
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


def test_flow_refusals_are_one_line_naming_the_field():
    with pytest.raises(ValueError, match="prediction_type='flow_prediction' needs predict_x0=True"):
        UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", predict_x0=False)
    with pytest.raises(ValueError, match=r"set_timesteps\(sigmas=...\) needs use_flow_sigmas=True"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[0.9, 0.5])

"""Euler, Euler ancestral and Heun against diffusers 0.42.1 over their config matrices."""

import pytest
import torch

from fastddpm.schedulers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
from tests.schedulers.sampler_parity import ids, max_diff

TOL = 1e-6  # measured: 0.0 (bit-exact) for every config below

SPACINGS = [
    {},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
]
SIGMA_SPACINGS = [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True}]
EULER = (
    SPACINGS
    + SIGMA_SPACINGS
    + [
        {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 20.0},
        {"interpolation_type": "log_linear"},
        {"final_sigmas_type": "sigma_min"},
        {"prediction_type": "sample"},
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    ]
)
HEUN = (
    SPACINGS[:-1]
    + SIGMA_SPACINGS
    + [{"clip_sample": True, "clip_sample_range": 0.5}, {"prediction_type": "sample"}]
)


@pytest.mark.parametrize("config", EULER, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_euler_matches_diffusers(config, steps):
    assert max_diff("EulerDiscreteScheduler", config, steps) <= TOL


@pytest.mark.parametrize("config", SPACINGS, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_euler_ancestral_matches_diffusers(config, steps):
    assert max_diff("EulerAncestralDiscreteScheduler", config, steps) <= TOL


@pytest.mark.parametrize("config", HEUN, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_heun_matches_diffusers(config, steps):
    assert max_diff("HeunDiscreteScheduler", config, steps) <= TOL


def test_euler_churn_matches_diffusers():
    import diffusers

    outs = []
    for cls in (EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler):
        scheduler = cls(use_karras_sigmas=True)
        scheduler.set_timesteps(6)
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(2, 3, 4, 5, generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            out = torch.tanh(scheduler.scale_model_input(x, t))
            x = scheduler.step(
                out, t, x, s_churn=0.8, s_tmin=0.5, s_tmax=50.0, generator=generator
            ).prev_sample
        outs.append(x)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "cls,config,field",
    [
        (EulerDiscreteScheduler, {"interpolation_type": "cubic"}, "interpolation_type"),
        (EulerDiscreteScheduler, {"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas"),
        (EulerAncestralDiscreteScheduler, {"prediction_type": "sample"}, "prediction_type"),
        (HeunDiscreteScheduler, {"timestep_spacing": "even"}, "timestep_spacing"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(cls, config, field):
    with pytest.raises(ValueError, match=field):
        cls(**config)


def test_integer_timestep_is_refused_as_in_diffusers():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(x, int(scheduler.timesteps[0]), x)

"""ADM's schedule (betas, respacing, step tables) against the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastddpm.kernels.step_columns import COEF_X0, COEF_XT, LOG_VAR_MAX, LOG_VAR_MIN, NOISE_ON, SQRT_ABAR

from fastddpm.schedulers.gaussian_diffusion import GaussianDiffusion, named_betas, space_timesteps
from tests import adm_reference


@pytest.mark.parametrize(
    "schedule, steps", [("linear", 1000), ("cosine", 4000), ("linear", 4000), ("cosine", 50)]
)
def test_betas_match_reference(schedule, steps):
    assert np.array_equal(named_betas(schedule, steps), adm_reference.named_beta_schedule(schedule, steps))


@pytest.mark.parametrize(
    "steps, respacing",
    [
        (1000, "250"),
        (1000, "ddim25"),
        (1000, "ddim50"),
        (300, "10,15,20"),
        (4000, "100"),
        (1000, "1000"),
        (7, "3,2"),
    ],
)
def test_space_timesteps_matches_reference(steps, respacing):
    assert space_timesteps(steps, respacing) == sorted(adm_reference.space_timesteps(steps, respacing))


@pytest.mark.parametrize(
    "respacing, message",
    [("ddim600", "no integer stride"), ("2,x", "not a step count"), ("5,600", "cannot take 600")],
)
def test_bad_respacing_is_an_error(respacing, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, respacing)


@pytest.mark.parametrize("sigma_small", [False, True])
def test_ddpm_table_is_their_posterior(sigma_small):
    flags = {
        "diffusion_steps": 4000,
        "noise_schedule": "cosine",
        "learn_sigma": True,
        "sigma_small": sigma_small,
        "predict_xstart": False,
        "rescale_timesteps": True,
        "timestep_respacing": "10,15,20",
    }
    diffusion = GaussianDiffusion(**flags)
    timesteps, table = diffusion.schedule("ddpm")
    ref = adm_reference.SpacedDiffusion(flags)
    kept = ref.timestep_map[::-1]
    assert torch.equal(timesteps, torch.tensor(kept, dtype=torch.float32))
    # what the conditioned network hands the net: their _scale_timesteps, in float32
    model_t = timesteps.float() * diffusion.network_timestep_scale()
    assert torch.equal(model_t, torch.tensor(kept, dtype=torch.float32) * (1000.0 / 4000))
    # Exact: both sides evaluate the same float64 numpy expressions on arrays of the same length, then round
    # to float32 once (not a float32 table against a float64 one).
    f32 = lambda a: torch.from_numpy(np.asarray(a)[::-1].copy()).float()  # noqa: E731
    assert torch.equal(table[:, COEF_X0], f32(ref.posterior_mean_coef1))
    assert torch.equal(table[:, COEF_XT], f32(ref.posterior_mean_coef2))
    assert torch.equal(table[:, LOG_VAR_MIN], f32(ref.posterior_log_variance_clipped))
    assert torch.equal(table[:, LOG_VAR_MAX], f32(np.log(ref.betas)))
    assert torch.equal(table[:, SQRT_ABAR], f32(np.sqrt(ref.alphas_cumprod)))
    assert table[:, NOISE_ON].tolist() == [1.0] * (len(kept) - 1) + [0.0]

"""DPMSolverMultistepScheduler against diffusers 0.42.1 over its config matrix."""

import itertools

import pytest
import torch

from fastddpm.schedulers import DPMSolverMultistepScheduler
from tests.schedulers.sampler_parity import ids, max_diff

# measured: 0.0 (bit-exact) for every config below; the tolerance leaves room for a libm difference only
TOL = 1e-6

CONFIGS = [
    {"algorithm_type": a, "solver_order": o, "solver_type": s}
    for a, o, s in itertools.product(["dpmsolver++", "sde-dpmsolver++"], [1, 2, 3], ["midpoint", "heun"])
]
CONFIGS += [
    {"algorithm_type": a, "solver_order": o, "solver_type": s, "final_sigmas_type": "sigma_min"}
    for a, o, s in itertools.product(["dpmsolver", "sde-dpmsolver"], [1, 2], ["midpoint", "heun"])
]
CONFIGS += [
    {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True},
    {"use_karras_sigmas": True, "solver_order": 3, "beta_schedule": "scaled_linear"},
    {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"use_lu_lambdas": True},
    {"lower_order_final": False, "solver_order": 3},
    {"euler_at_final": True},
    {"final_sigmas_type": "sigma_min"},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"lambda_min_clipped": -5.1},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_matches_diffusers(config, steps):
    assert max_diff("DPMSolverMultistepScheduler", config, steps) <= TOL


def test_learned_variance_uses_the_mean_channels():
    scheduler = DPMSolverMultistepScheduler(variance_type="learned_range")
    scheduler.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4)
    out = torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)
    assert scheduler.step(out, scheduler.timesteps[0], x).prev_sample.shape == x.shape


@pytest.mark.parametrize(
    "config,field",
    [
        ({"use_flow_sigmas": True}, "use_flow_sigmas"),
        ({"algorithm_type": "dpmsolver"}, "final_sigmas_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ],
)
def test_unsupported_or_invalid_config_is_one_line_naming_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        DPMSolverMultistepScheduler(**config)


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_update_row_is_the_linear_form_of_step(algorithm, order):
    """The row over (x, m0, m1, m2, z) gives step's result (to float32 rounding: measured <= 3e-7)."""
    extra = {"final_sigmas_type": "sigma_min"} if algorithm == "dpmsolver" else {}
    scheduler = DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_order=order, **extra)
    scheduler.set_timesteps(9)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for t in scheduler.timesteps[:5]:
        scheduler._start_step(t)
        order_now = scheduler._order_now()
        converted = scheduler.convert_model_output(torch.sin(x), sample=x)
        scheduler._push_model_output(converted)
        noise = torch.randn_like(x)
        expected = scheduler._update(order_now, x, noise)
        row = scheduler.update_row(order_now)
        history = [m if m is not None else torch.zeros_like(x) for m in scheduler.model_outputs[::-1]]
        history += [torch.zeros_like(x)] * (3 - len(history))
        got = row[0] * x + sum(row[k + 1] * history[k] for k in range(3)) + row[4] * noise
        assert (got - expected).abs().max() <= 3e-6 * (1 + expected.abs().max())
        scheduler.lower_order_nums = min(scheduler.lower_order_nums + 1, order)
        scheduler._step_index += 1
        x = expected

"""ops.multistep_update: the table-driven DPM-Solver step against the scheduler's own step."""

import itertools

import pytest
import torch

from fastddpm import ops
from fastddpm.ops import reference
from fastddpm.ops.step_columns import MS_HISTORY
from fastddpm.schedulers import DPMSolverMultistepScheduler

SHAPE = (3, 2, 5, 7)


def dummy_model(x, t):
    return torch.sin(0.7 * x + float(t) / 97.0) * 1.3


CONFIGS = [
    {"algorithm_type": a, "solver_order": o, "prediction_type": p}
    for a, o, p in itertools.product(
        ["dpmsolver++", "sde-dpmsolver++"], [1, 2, 3], ["epsilon", "v_prediction", "sample"]
    )
] + [
    {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "sde-dpmsolver", "solver_order": 2, "final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "solver_type": "heun"},
    {"use_lu_lambdas": True, "lower_order_final": False, "solver_order": 3},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_table_loop_matches_scheduler_step(config):
    """The row form reorders float32 sums; measured max |diff| / (1 + max|x|) over these configs: 2.2e-6."""
    scheduler = DPMSolverMultistepScheduler(**config)
    scheduler.set_timesteps(9)
    table = scheduler.step_table()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    noises = [torch.randn(SHAPE, generator=generator) for _ in scheduler.timesteps]
    sde = config.get("algorithm_type", "dpmsolver++").startswith("sde")
    ours, history, worst = x.clone(), torch.zeros((MS_HISTORY, *SHAPE)), 0.0
    for i, t in enumerate(scheduler.timesteps):
        expected = scheduler.step(
            dummy_model(x, t), t, x, variance_noise=noises[i] if sde else None
        ).prev_sample
        ours, converted = ops.multistep_update(
            dummy_model(ours, t), ours, history, table[i], noises[i] if sde else None
        )
        history[1].copy_(history[0])
        history[0].copy_(converted)
        x = expected
        worst = max(worst, float((ours - expected).abs().max() / (1 + expected.abs().max())))
    assert worst <= 1e-5, worst


def test_backends_agree_and_philox_noise_is_drawn_in_the_op():
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    history = torch.randn((MS_HISTORY, *SHAPE))
    coeffs = torch.tensor([0.5, -0.3, 0.9, 0.2, -0.1, 0.05, 0.4])
    noise = ops.noise.philox_normal(7, 3, SHAPE[0], SHAPE[1:], 5)
    expected = reference.multistep_update(out, x, history, coeffs, noise)
    got = ops.multistep_update(out, x, history, coeffs, ops.PhiloxNoise(7, 3, 5))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_thresholding_is_refused_by_the_table_form():
    scheduler = DPMSolverMultistepScheduler(thresholding=True)
    scheduler.set_timesteps(4)
    assert "thresholding" in scheduler.graph_refusal()

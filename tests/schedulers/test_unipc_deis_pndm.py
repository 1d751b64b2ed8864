"""UniPC, DEIS and PNDM against diffusers 0.42.1 over their config matrices."""

import itertools

import pytest
import torch

from fastddpm.schedulers import DEISMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler
from tests.schedulers.sampler_parity import ids, max_diff

TOL = 1e-6  # measured: 0.0 (bit-exact) for every config below

COMMON = [
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"beta_schedule": "squaredcos_cap_v2"},
]
UNIPC = (
    [
        {"solver_type": s, "solver_order": o, "predict_x0": p}
        for s, o, p in itertools.product(["bh1", "bh2"], [1, 2, 3], [True, False])
    ]
    + COMMON
    + [
        {"disable_corrector": [0, 2]},
        # (lower_order_final=False with a zero final sigma: singular solve in diffusers too)
        {"lower_order_final": False, "solver_order": 3, "final_sigmas_type": "sigma_min"},
        {"final_sigmas_type": "sigma_min"},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ]
)
DEIS = [{"solver_order": o} for o in (1, 2, 3)] + COMMON + [{"lower_order_final": False, "solver_order": 3}]
PNDM = [
    {"skip_prk_steps": s, "set_alpha_to_one": a, "prediction_type": p}
    for s, a, p in itertools.product([False, True], [False, True], ["epsilon", "v_prediction"])
] + [
    {"timestep_spacing": "linspace"},
    {"timestep_spacing": "trailing", "skip_prk_steps": True},
    {"steps_offset": 1, "beta_schedule": "scaled_linear"},
]


@pytest.mark.parametrize("config", UNIPC, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_unipc_matches_diffusers(config, steps):
    assert max_diff("UniPCMultistepScheduler", config, steps) <= TOL


@pytest.mark.parametrize("config", DEIS, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_deis_matches_diffusers(config, steps):
    assert max_diff("DEISMultistepScheduler", config, steps) <= TOL


@pytest.mark.parametrize("config", PNDM, ids=ids)
@pytest.mark.parametrize("steps", [7, 20])
def test_pndm_matches_diffusers(config, steps):
    assert max_diff("PNDMScheduler", config, steps) <= TOL


@pytest.mark.parametrize(
    "cls,config,field",
    [
        (UniPCMultistepScheduler, {"solver_type": "rk"}, "solver_type"),
        (UniPCMultistepScheduler, {"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        (UniPCMultistepScheduler, {"solver_p": object()}, "solver_p"),
        (DEISMultistepScheduler, {"algorithm_type": "x"}, "algorithm_type"),
        (DEISMultistepScheduler, {"solver_order": 5}, "solver_order"),
        (PNDMScheduler, {"prediction_type": "sample"}, "prediction_type"),
    ],
)
def test_bad_or_unsupported_config_is_one_line_naming_the_field(cls, config, field):
    with pytest.raises(ValueError, match=field):
        cls(**config)


def test_plms_without_warm_up_is_refused():
    scheduler = PNDMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="skip_prk_steps"):
        scheduler.step_plms(x, 900, x)
